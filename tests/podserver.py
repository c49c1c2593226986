"""Servers run *inside* test pods (on the pod's own loopback).

SINK_PORT    reads to EOF, then answers "<bytes> <sha256>" (half-close, uploads)
SOURCE_PORT  reads "<n>\\n", sends n deterministic bytes, closes (downloads)
STALL_PORT   accepts and never reads (backpressure)
RANDOM_PORT  reads "<seed> <n>\\n", sends L{randomized}(seed, n) in odd chunks, closes
ECHO_PORT    sends back everything it reads, closes after EOF

Run with arguments, it is a command for exec tests instead (see L{COMMANDS}).
"""

import hashlib
import os
import random
import socket
import socketserver
import sys
import threading
import time

SINK_PORT, SOURCE_PORT, STALL_PORT = 7001, 7002, 7003
RANDOM_PORT, ECHO_PORT = 7004, 7005


def pattern(n: int) -> bytes:
    """n bytes anyone can recompute: blocks of sha256 chained from b'podshell'."""
    out, block = bytearray(), b"podshell"
    while len(out) < n:
        block = hashlib.sha256(block).digest() * 2048
        out += block
    return bytes(out[:n])


def download(port: int, n: int, digest: bool = True, host: str = "127.0.0.1") -> tuple[int, str]:
    """The client of a Source (on this host, or forwarded to one): asks for n
    bytes and reads to EOF; returns the count and their sha256 (or "")."""
    h, total, buf = hashlib.sha256(), 0, bytearray(1 << 20)
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(b"%d\n" % n)
        while k := s.recv_into(buf):
            if digest:
                h.update(memoryview(buf)[:k])
            total += k
    return total, h.hexdigest() if digest else ""


class Sink(socketserver.BaseRequestHandler):
    def handle(self):
        digest, total = hashlib.sha256(), 0
        while chunk := self.request.recv(1 << 16):
            digest.update(chunk)
            total += len(chunk)
        self.request.sendall(f"{total} {digest.hexdigest()}".encode())


class Source(socketserver.StreamRequestHandler):
    def handle(self):
        n = int(self.rfile.readline())
        data = pattern(min(n, 64 << 20))
        sent = 0
        while sent < n:
            chunk = data[: min(len(data), n - sent)]
            self.wfile.write(chunk)
            sent += len(chunk)


def randomized(seed: int, n: int) -> bytes:
    """n random bytes that every process recomputes from the seed alone."""
    return random.Random(seed).randbytes(n)


def chunks(data: bytes, seed: int):
    """C{data} in pieces of random, mostly odd sizes (none lines up with a frame or a window)."""
    rng, view, at = random.Random(~seed), memoryview(data), 0
    while at < len(data):
        size = rng.choice((1, 7, 4093, 16385, 65537, 200003))
        yield view[at : at + size]
        at += size


def _hash(sock: socket.socket, stall: float = 0.0) -> tuple[int, str]:
    """Reads to EOF; with C{stall}, stops reading that long after every 2 MiB."""
    h, total, buf = hashlib.sha256(), 0, bytearray(1 << 16 if stall else 1 << 20)
    while k := sock.recv_into(buf):
        h.update(memoryview(buf)[:k])
        if stall and (total + k) >> 21 > total >> 21:
            time.sleep(stall)
        total += k
    return total, h.hexdigest()


def fetch(port: int, seed: int, n: int, stall: float = 0.0) -> tuple[int, str]:
    """The client of a Random server: the count and sha256 of what came."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"%d %d\n" % (seed, n))
        return _hash(s, stall)


def send(port: int, seed: int, n: int) -> str:
    """The client of a Sink: sends L{randomized}(seed, n), half-closes, returns its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        for piece in chunks(randomized(seed, n), seed):
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: s.recv(1 << 16), b"")).decode()


def echo(port: int, seed: int, n: int) -> tuple[int, str]:
    """The client of an Echo server: sends and reads at the same time."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:

        def write() -> None:
            for piece in chunks(randomized(seed, n), seed):
                s.sendall(piece)
            s.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        got = _hash(s)
        writer.join()
        return got


class Random(socketserver.StreamRequestHandler):
    def handle(self):
        seed, n = map(int, self.rfile.readline().split())
        for piece in chunks(randomized(seed, n), seed):
            self.wfile.write(piece)


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while chunk := self.request.recv(1 << 16):
            self.request.sendall(chunk)


def _write_all(fd: int, data: bytes, seed: int) -> None:
    for piece in chunks(data, seed):
        while piece:
            piece = piece[os.write(fd, piece) :]


def emit(out_seed: int, out_n: int, err_seed: int, err_n: int) -> None:
    """Random stdout and stderr, written at the same time."""
    err = threading.Thread(target=_write_all, args=(2, randomized(err_seed, err_n), err_seed))
    err.start()
    _write_all(1, randomized(out_seed, out_n), out_seed)
    err.join()


def duplex(err_seed: int, err_n: int) -> None:
    """stdin copied to stdout while random stderr is written."""
    err = threading.Thread(target=_write_all, args=(2, randomized(err_seed, err_n), err_seed))
    err.start()
    while chunk := os.read(0, 1 << 16):
        _write_all(1, chunk, len(chunk))
    err.join()


def _print(result) -> None:
    print(*result) if isinstance(result, tuple) else print(result)


COMMANDS = {
    "emit": emit,
    "duplex": duplex,
    "fetch": lambda *a: _print(fetch(*a)),
    "send": lambda *a: _print(send(*a)),
    "echo": lambda *a: _print(echo(*a)),
}


class Stall(socketserver.BaseRequestHandler):
    def handle(self):
        time.sleep(3600)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256  # 100 forwards connecting at once must not wait on SYN retries


if __name__ == "__main__" and len(sys.argv) > 1:
    COMMANDS[sys.argv[1]](*map(int, sys.argv[2:]))
elif __name__ == "__main__":
    servers = ((SINK_PORT, Sink), (SOURCE_PORT, Source), (STALL_PORT, Stall), (RANDOM_PORT, Random), (ECHO_PORT, Echo))
    for port, handler in servers:
        threading.Thread(target=Server(("127.0.0.1", port), handler).serve_forever, daemon=True).start()
    print("podserver ready", flush=True)
    while True:
        time.sleep(3600)

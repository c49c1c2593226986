"""Servers run *inside* test pods (on the pod's own loopback).

SINK_PORT    reads to EOF, then answers "<bytes> <sha256>" (half-close, uploads)
SOURCE_PORT  reads "<n>\\n", sends n deterministic bytes, closes (downloads)
STALL_PORT   accepts and never reads (backpressure)
"""

import hashlib
import socket
import socketserver
import threading
import time

SINK_PORT, SOURCE_PORT, STALL_PORT = 7001, 7002, 7003


def pattern(n: int) -> bytes:
    """n bytes anyone can recompute: blocks of sha256 chained from b'podshell'."""
    out, block = bytearray(), b"podshell"
    while len(out) < n:
        block = hashlib.sha256(block).digest() * 2048
        out += block
    return bytes(out[:n])


def download(port: int, n: int, digest: bool = True) -> tuple[int, str]:
    """The client of a Source (on this host, or forwarded to one): asks for n
    bytes and reads to EOF; returns the count and their sha256 (or "")."""
    h, total, buf = hashlib.sha256(), 0, bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
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


class Stall(socketserver.BaseRequestHandler):
    def handle(self):
        time.sleep(3600)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256  # 100 forwards connecting at once must not wait on SYN retries


if __name__ == "__main__":
    for port, handler in ((SINK_PORT, Sink), (SOURCE_PORT, Source), (STALL_PORT, Stall)):
        threading.Thread(target=Server(("127.0.0.1", port), handler).serve_forever, daemon=True).start()
    print("podserver ready", flush=True)
    while True:
        time.sleep(3600)

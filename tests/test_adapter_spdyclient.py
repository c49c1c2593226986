"""The SPDY channel client (what podshell dials on a CRI runtime's
streaming server) on Twisted's fakes: a runtime played by the sans-IO core,
a ChannelProcess as the app, a sink as the front door."""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport

from podshell.core.process import ExitStatus, WindowSize
from podshell.kube.spdy import StreamType
from podshell.kube.spdyclient import ClientSpdy
from podshell.kube.wsclient import ChannelProcess
from podshell.protocols import spdy

from .conftest import Collect

UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
SUCCESS = json.dumps({"metadata": {}, "status": "Success"}).encode()


class TCP(StringTransport):
    """As Twisted's TCP transport: unregistering no producer is harmless."""

    def unregisterProducer(self) -> None:
        self.producer = None


class Runtime:
    """The runtime's streaming server, as far as one stream goes."""

    def __init__(self, tty: bool = False) -> None:
        self.sink = Collect()
        self.process = ChannelProcess(self.sink, tty, "the runtime ended the stream without a status")
        wanted = [StreamType.STDIN, StreamType.STDOUT, StreamType.RESIZE if tty else StreamType.STDERR]
        self.client = ClientSpdy("10.0.0.1:1234", "/attach/abc", wanted, self.process, "the runtime")
        self.tcp = TCP()
        self.client.makeConnection(self.tcp)
        self.core = spdy.SpdyConnection(client=False)
        self.streams: dict[str, int] = {}
        self.received: dict[str, bytearray] = {}
        self.finished: set[str] = set()

    def upgrade(self, then: bytes = b"") -> None:
        request = self.tcp.value()
        assert request.startswith(b"POST /attach/abc HTTP/1.1\r\n")
        assert b"x-stream-protocol-version: v4.channel.k8s.io" in request.lower()
        self.tcp.clear()
        self.client.dataReceived(UPGRADED + then)
        self.read()

    def read(self) -> None:
        for event in self.core.receive_data(self.tcp.value()):
            if isinstance(event, spdy.SynStream):
                kind = event.headers["streamtype"]
                self.streams[kind] = event.stream_id
                self.received[kind] = bytearray()
            elif isinstance(event, spdy.Data):
                kind = next(k for k, s in self.streams.items() if s == event.stream_id)
                self.received[kind] += event.data
                if event.fin:
                    self.finished.add(kind)
        self.tcp.clear()

    def reply_all(self) -> None:
        for stream in self.streams.values():
            self.core.reply(stream)
        self.send()

    def data(self, kind: str, data: bytes, fin: bool = False) -> None:
        self.core.send_data(self.streams[kind], data, fin)
        self.send()

    def send(self) -> None:
        self.client.dataReceived(self.core.data_to_send())
        self.read()


def test_the_streams_a_kubelet_opens_error_first_and_input_kept_until_they_are_answered():
    runtime = Runtime()
    runtime.process.write(b"early")
    runtime.upgrade()
    assert list(runtime.streams) == ["error", "stdin", "stdout", "stderr"]
    assert runtime.received["stdin"] == b""  # nothing before the runtime answers
    runtime.reply_all()
    assert runtime.received["stdin"] == b"early"
    runtime.data("stdout", b"out")
    runtime.data("stderr", b"err")
    assert (runtime.sink.out, runtime.sink.err) == (b"out", b"err")


def test_closing_stdin_is_a_fin_on_its_stream_and_nothing_after_it():
    runtime = Runtime()
    runtime.upgrade()
    runtime.reply_all()
    runtime.process.write(b"last")
    runtime.process.closeStdin()
    runtime.process.write(b"ignored")
    runtime.read()
    assert runtime.received["stdin"] == b"last" and "stdin" in runtime.finished


def test_the_status_waits_for_the_output_still_on_its_way():
    runtime = Runtime()
    runtime.upgrade()
    runtime.reply_all()
    runtime.data("error", SUCCESS, fin=True)
    assert not runtime.sink.done.called
    runtime.data("stdout", b"tail", fin=True)
    assert not runtime.sink.done.called  # stderr is still open
    runtime.data("stderr", b"", fin=True)
    assert runtime.sink.done.called and runtime.process.status == ExitStatus(code=0)
    assert runtime.sink.out == b"tail"


def test_a_terminal_resizes_on_its_stream():
    runtime = Runtime(tty=True)
    runtime.upgrade()
    assert list(runtime.streams) == ["error", "stdin", "stdout", "resize"]
    runtime.reply_all()
    runtime.process.resize(WindowSize(40, 120))
    runtime.read()
    assert json.loads(runtime.received["resize"]) == {"Width": 120, "Height": 40}


def test_a_refusal_says_the_runtimes_message():
    runtime = Runtime()
    body = json.dumps({"kind": "Status", "message": "container not found"}).encode()
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    runtime.client.dataReceived(answer)
    assert runtime.sink.done.called
    assert runtime.sink.err == b"podshell: container not found\r\n"


def test_a_runtime_that_breaks_spdy_ends_the_stream_with_why():
    runtime = Runtime()
    runtime.upgrade()
    runtime.reply_all()
    runtime.client.dataReceived(b"\x80\x02\x00\x01" + b"\x00" * 12)  # SPDY/2: not ours
    assert runtime.sink.done.called and b"broke the SPDY stream" in runtime.sink.err
    assert runtime.tcp.disconnecting


def test_hanging_up_says_goaway_and_drops_the_connection():
    runtime = Runtime()
    runtime.upgrade()
    runtime.reply_all()
    runtime.process.hangup()
    assert runtime.tcp.disconnecting
    runtime.client.connectionLost()
    assert runtime.process.status == ExitStatus(255) and runtime.sink.err == b""

"""The WebSocket channel framing and remote-command semantics, without a reactor."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podshell.protocols import channels
from podshell.protocols import remotecommand as rc


def test_binary_and_base64_framing():
    assert channels.encode(1, b"hi", b64=False) == b"\x01hi"
    assert channels.encode(1, b"hi", b64=True) == "1aGk="
    assert channels.decode(b"\x00data", b64=False) == (0, b"data")
    assert channels.decode(b"0aGk=", b64=True) == (0, b"hi")
    assert channels.decode(b"\xff\x00", b64=False) == (255, b"\x00")  # v5 close stdin


@pytest.mark.parametrize(("payload", "message"), [(b"", "empty"), (b"x!!", "digit"), (b"0%%%", "base64")])
def test_bad_base64_messages(payload, message):
    with pytest.raises(ValueError, match=message):
        channels.decode(payload, b64=True)


def test_port_forward_prefix_is_little_endian():
    assert bytes((0,)) + channels.port_prefix(8080) == bytes.fromhex("00901f")  # the shared notes' vector


@pytest.mark.parametrize(
    ("values", "ports"), [(["8080"], [8080]), (["8080,9090"], [8080, 9090]), (["1", "65535"], [1, 65535])]
)
def test_ports_query(values, ports):
    assert channels.parse_ports(values) == ports


@pytest.mark.parametrize(("values", "message"), [([], "required"), (["0"], "'0'"), (["http"], "'http'"), ([""], "''")])
def test_bad_ports_query(values, message):
    with pytest.raises(ValueError, match=message):
        channels.parse_ports(values)


def test_negotiation_takes_the_clients_order():
    assert rc.choose(["v9", rc.V4, rc.V5], rc.WEBSOCKET_EXEC) == rc.V4
    assert rc.choose(["v9"], rc.WEBSOCKET_EXEC) is None
    assert rc.choose([rc.V5, rc.V4], rc.SPDY_EXEC) == rc.V4  # kubelets offer no v5 over SPDY


def test_query_flags_and_the_tty_rule():
    options = rc.StreamOptions.fromQuery({"stdin": ["1"], "stderr": ["true"], "tty": ["true"]})
    assert options == rc.StreamOptions(stdin=True, stdout=False, stderr=False, tty=True)
    with pytest.raises(ValueError, match="at least 1 of"):
        rc.StreamOptions.fromQuery({"stdout": ["false"], "stderr": ["0"]})


def test_final_status_per_protocol():
    assert json.loads(rc.final_status(rc.Ended(0), ["x"], rc.V4)) == {"metadata": {}, "status": "Success"}
    failure = json.loads(rc.final_status(rc.Ended(signal="KILL"), ["x"], rc.V5))
    assert failure["reason"] == "NonZeroExitCode"
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "137"}]
    assert rc.final_status(rc.Ended(0), ["x"], rc.V1) == b""  # old protocols: silence is success
    assert b"exit code 3" in rc.final_status(rc.Ended(3), ["x"], rc.V2)


def test_resize_messages_in_any_shape():
    decoder = rc.ResizeDecoder()
    assert decoder.feed(b'{"Width":120,"Height":40}\n{"wid') == [rc.Size(40, 120)]
    assert decoder.feed(b'th":80,"height":24}{"Width":0,"Height":1}') == [rc.Size(24, 80)]
    with pytest.raises(ValueError, match="too long"):
        decoder.feed(b"{" + b" " * 5000 + b"[" * 5000)
    with pytest.raises(ValueError, match="nested too deeply"):
        rc.ResizeDecoder().feed(b"[" * 3000 + b"]" * 3000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.booleans())
def test_fuzz_channel_decoding_fails_only_with_value_error(payload, b64):
    try:
        channel, data = channels.decode(payload, b64)
    except ValueError:
        return
    assert 0 <= channel <= 255 and isinstance(data, bytes)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_fuzz_resize_decoding_fails_only_with_value_error(chunks):
    decoder = rc.ResizeDecoder()
    for chunk in chunks:
        try:
            sizes = decoder.feed(chunk)
        except ValueError:
            return
        assert all(0 < s.rows < 65536 and 0 < s.cols < 65536 for s in sizes)


@pytest.mark.parametrize(
    "status, protocol",
    [
        (rc.Ended(0), rc.V5),
        (rc.Ended(3), rc.V5),
        (rc.Ended(3), rc.PROCESS),
        (rc.Ended(signal="TERM"), rc.PROCESS),
    ],
)
def test_exit_status_reads_back_what_final_status_wrote(status, protocol):
    assert rc.exit_status(rc.final_status(status, ["x"], protocol)) == status


def test_a_signal_travels_only_between_gateway_and_node():
    # kubectl sees 128 + n, as from a kubelet; a gateway learns the signal itself.
    assert rc.exit_status(rc.final_status(rc.Ended(signal="KILL"), ["x"], rc.V5)) == rc.Ended(137)


@pytest.mark.parametrize(
    "payload, message",
    [
        (rc.internal_error("container gone", rc.V5), "Internal error occurred: container gone"),
        (b"not json", "not json"),
        (b"[1]", "the server sent a malformed status"),
        (b'{"status": "Failure"}', "the command failed"),
    ],
)
def test_exit_status_reports_failures_in_words(payload, message):
    with pytest.raises(rc.RemoteFailure, match=message):
        rc.exit_status(payload)


@given(st.lists(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]), min_size=1, max_size=4), st.data())
@settings(max_examples=60, deadline=None)
def test_the_servers_binary_frames_read_back_in_a_websocket_client(lengths, data):
    """Headers written by hand must frame exactly what wsproto, as a client, reads."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage

    from podshell.protocols.wsframe import binary_header

    payloads = [bytes([n % 251]) * n for n in lengths]
    wire = b"".join(binary_header(len(p)) + p for p in payloads)
    client = Connection(ConnectionType.CLIENT)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        client.receive_data(wire[start:end])
    got: list[bytes] = []
    parts = b""
    for event in client.events():
        assert isinstance(event, BytesMessage)
        parts += event.data
        if event.message_finished:
            got.append(parts)
            parts = b""
    assert got == payloads


class _App:
    def opened(self, ws):
        pass

    def messageReceived(self, payload, text):
        pass

    def closed(self):
        pass


def _held_endpoint(seconds: float):
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from wsproto.connection import Connection, ConnectionType

    from podshell.kube.websocket import WebSocketEndpoint

    clock = Clock()
    endpoint = WebSocketEndpoint(Connection(ConnectionType.SERVER), _App(), clock)
    endpoint.hold(seconds)
    transport = StringTransport()
    endpoint.makeConnection(transport)
    return endpoint, transport, clock


def _client_reads(wire: bytes) -> list:
    from wsproto.connection import Connection, ConnectionType

    client = Connection(ConnectionType.CLIENT)
    client.receive_data(wire)
    return list(client.events())


def test_a_held_endpoint_sends_its_messages_and_close_in_order_after_the_hold():
    from wsproto.events import BytesMessage, CloseConnection

    endpoint, transport, clock = _held_endpoint(0.02)
    endpoint.send(b"\x01out\n")
    endpoint.send(b"\x03status")
    endpoint.close(1000)
    assert transport.value() == b""
    clock.advance(0.02)
    events = _client_reads(transport.value())
    assert [e.data for e in events if isinstance(e, BytesMessage)] == [b"\x01out\n", b"\x03status"]
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000


def test_a_hold_lets_go_early_rather_than_pile_up_output():
    from podshell.kube.websocket import HOLD_LIMIT

    endpoint, transport, _ = _held_endpoint(10)
    endpoint.send(b"\x01" + b"x" * HOLD_LIMIT)
    assert len(transport.value()) > HOLD_LIMIT
    endpoint.send(b"\x01more")  # the hold is over
    assert transport.value().endswith(b"\x01more")


@pytest.mark.parametrize(
    "agent, held",
    [
        ("kubectl.1.31/v1.31.9 (linux/amd64) kubernetes/abc", True),
        ("kubectl/v1.29.14 (linux/amd64) kubernetes/abc", True),
        ("kubectl/v1.32.5 (linux/amd64) kubernetes/abc", True),
        ("kubectl/v1.33.1 (linux/amd64) kubernetes/abc", False),
        ("kubectl/v1.28.15 (linux/amd64) kubernetes/abc", False),
        ("OpenAPI-Generator/31.0.0/python", False),
        ("", False),
    ],
)
def test_only_clients_that_read_before_their_streams_are_held(agent, held):
    from podshell.kube.resources import _reads_before_its_streams

    assert _reads_before_its_streams(agent) is held


# The endpoint under bad and arbitrary input: a close code, never an exception.


class _Recorder(_App):
    """Keeps messages; one that starts with "!" is bad input, as the real apps close on."""

    def opened(self, ws):
        self.ws = ws
        self.messages: list[tuple[bytes, bool]] = []

    def messageReceived(self, payload, text):
        self.messages.append((payload, text))
        if payload.startswith(b"!"):
            self.ws.close(1007, "bad message")


def _open_endpoint():
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from wsproto.connection import Connection, ConnectionType

    from podshell.kube.websocket import WebSocketEndpoint

    class TCP(StringTransport):
        def unregisterProducer(self):  # as a TCP or TLS transport: harmless without one
            self.producer = None

    app = _Recorder()
    endpoint = WebSocketEndpoint(Connection(ConnectionType.SERVER), app, Clock())
    transport = TCP()
    endpoint.makeConnection(transport)
    return endpoint, transport, app


def _frame(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bytes | None = b"\x37\xfa\x21\x3d"
) -> bytes:
    """One frame as a client writes it (or, with any bits, as a broken one does)."""
    length = len(payload)
    if length < 126:
        size = bytes((length,))
    elif length < 1 << 16:
        size = bytes((126,)) + struct.pack("!H", length)
    else:
        size = bytes((127,)) + struct.pack("!Q", length)
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode, size[0] | (0x80 if mask else 0))) + size[1:]
    if mask is None:
        return head + payload
    key = (mask * (length // 4 + 1))[:length]
    return head + mask + (int.from_bytes(payload) ^ int.from_bytes(key)).to_bytes(length)


def _close(wire: bytes):
    from wsproto.events import CloseConnection

    closes = [e for e in _client_reads(wire) if isinstance(e, CloseConnection)]
    return closes[-1] if closes else None


def _close_code(wire: bytes) -> int | None:
    close = _close(wire)
    return close.code if close else None


def test_a_text_frame_carries_its_utf8_bytes():
    """Outside latin-1 too: a client's text frame is its UTF-8 on the wire (as a kubelet reads it)."""
    endpoint, transport, app = _open_endpoint()
    endpoint.dataReceived(_frame(0x1, "\x00h€llo ✓".encode()))
    assert app.messages == [("\x00h€llo ✓".encode(), True)]
    assert not transport.disconnecting


def test_invalid_utf8_in_a_text_frame_closes_with_1007():
    endpoint, transport, app = _open_endpoint()
    endpoint.dataReceived(_frame(0x1, b"\x00\xff\xfe"))
    close = _close(transport.value())
    assert (app.messages, close.code, transport.disconnecting) == ([], 1007, True)
    assert "can't decode byte 0xff" in close.reason


@pytest.mark.parametrize(
    "wire",
    [
        _frame(0x3, b"x"),  # a reserved opcode
        _frame(0x2, b"x", rsv=4),  # an extension bit nobody negotiated
        _frame(0x2, b"x", mask=None),  # a client's frame must be masked
        _frame(0x0, b"x"),  # a continuation of nothing
        _frame(0x9, b"x", fin=False),  # a fragmented control frame
    ],
    ids=["reserved-opcode", "extension-bit", "unmasked", "lone-continuation", "fragmented-ping"],
)
def test_broken_frames_close_with_a_protocol_error_code(wire):
    endpoint, transport, app = _open_endpoint()
    endpoint.dataReceived(wire)
    endpoint.dataReceived(_frame(0x2, b"after"))  # more may come before TCP is down
    close = _close(transport.value())
    assert (app.messages, close.code, transport.disconnecting) == ([], 1002, True)
    assert close.reason  # wsproto's words for what was wrong


def test_messages_up_to_a_kubelets_limit_arrive_and_larger_ones_close_with_1009():
    from podshell.kube.websocket import MAX_MESSAGE

    endpoint, transport, app = _open_endpoint()
    whole = bytes(MAX_MESSAGE)
    endpoint.dataReceived(_frame(0x2, whole[:-1], fin=False) + _frame(0x0, whole[-1:]))
    assert app.messages == [(whole, False)] and not transport.disconnecting
    endpoint.dataReceived(_frame(0x2, whole, fin=False) + _frame(0x0, b"x"))
    assert (len(app.messages), _close_code(transport.value()), transport.disconnecting) == (1, 1009, True)


def test_data_after_the_close_handshake_is_ignored():
    endpoint, transport, app = _open_endpoint()
    endpoint.dataReceived(_frame(0x8, struct.pack("!H", 1000)))
    assert _close_code(transport.value()) == 1000 and transport.disconnecting
    endpoint.dataReceived(_frame(0x2, b"late"))
    assert app.messages == []


_good = st.one_of(st.binary(max_size=300), st.text(max_size=100)).filter(lambda m: m[:1] not in ("!", b"!"))
_messages = st.lists(st.tuples(_good, st.integers(1, 4)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(_messages, st.data())
def test_fuzz_fragmented_messages_arrive_whole_whatever_the_split(messages, data):
    wire, expected = b"", []
    for message, fragments in messages:
        text = isinstance(message, str)
        payload = message.encode() if text else message
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), min_size=fragments - 1, max_size=fragments - 1)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = (0x1 if text else 0x2) if i == 0 else 0x0
            wire += _frame(opcode, piece, fin=i == len(pieces) - 1)
            if data.draw(st.booleans()):
                wire += _frame(0x9, b"ping")  # control frames may come between fragments
        expected.append((payload, text))
    endpoint, transport, app = _open_endpoint()
    splits = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    for a, b in zip([0, *splits], [*splits, len(wire)], strict=True):
        endpoint.dataReceived(wire[a:b])
    assert app.messages == expected
    assert not transport.disconnecting


_frames = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]),
        st.one_of(st.binary(max_size=200), st.text(max_size=60).map(str.encode), st.just(b"!")),
        st.booleans(),
        st.sampled_from([0, 0, 0, 1, 4]),
        st.sampled_from([b"\x37\xfa\x21\x3d", b"\x00\x00\x00\x00", None]),
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(_frames, st.binary(max_size=20), st.data())
def test_fuzz_arbitrary_frames_either_work_or_close_with_a_code(frames, tail, data):
    """Any opcode, fragmentation, extension bits, masking, and a garbage tail,
    split anywhere: nothing escapes dataReceived, and a connection that ends
    ends with a Close frame that says why (or answers the client's own)."""
    wire = b"".join(_frame(op, payload, fin, rsv, mask) for op, payload, fin, rsv, mask in frames) + tail
    endpoint, transport, app = _open_endpoint()
    splits = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    for a, b in zip([0, *splits], [*splits, len(wire)], strict=True):
        endpoint.dataReceived(wire[a:b])
    assert all(isinstance(payload, bytes) for payload, _ in app.messages)
    if transport.disconnecting:
        client_closed = any(op == 0x8 for op, *_ in frames)
        assert _close_code(transport.value()) is not None or client_closed

"""The SPDY/3.1 core, byte by byte, without a reactor (vectors from the shared
wire-protocol notes, Appendix B), plus a fuzz run."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podshell.protocols import spdy
from podshell.protocols.spdy import (
    ConnectionBroken,
    Data,
    GoAway,
    PingAcknowledged,
    SpdyConnection,
    StreamReset,
    SynReply,
    SynStream,
)

H = bytes.fromhex


def test_dictionary_is_the_spdy3_one():
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_syn_replies_match_the_vectors():
    server = SpdyConnection(client=False)
    client_syn = H("80030001000000280000000100000000000078f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff")
    assert server.receive_data(client_syn) == [SynStream(1, {"streamtype": "error"})]
    server.reply(1)
    assert server.data_to_send() == H("80030002000000140000000178f9e3c6a7c202a6230600000000ffff")
    server.receive_data(client_syn_for(3))
    server.reply(3)
    assert server.data_to_send() == H("800300020000000c00000003020100000000ffff")


def client_syn_for(stream_id: int) -> bytes:
    """A later SYN_STREAM from the same client compressor as the vector's."""
    client = SpdyConnection(client=True)
    while True:
        sid = client.open_stream({"streamtype": "error"})
        out = client.data_to_send()
        if sid == stream_id:
            return out


def test_data_rst_ping_goaway_vectors():
    conn = SpdyConnection(client=False)
    conn.receive_data(client_syn_for(1))
    conn.data_to_send()
    conn._streams[5] = spdy._Stream()
    conn.send_data(5, b"hello\n")
    assert conn.data_to_send() == H("000000050000000668656c6c6f0a")
    conn.send_data(5, b"", fin=True)
    assert conn.data_to_send() == H("0000000501000000")
    conn.reset(5)
    assert conn.data_to_send() == H("80030003000000080000000500000005")
    assert conn.receive_data(H("800300060000000400000001")) == []
    assert conn.data_to_send() == H("800300060000000400000001")  # echoed at once
    conn._last_peer_id = 9
    conn.go_away()
    assert conn.data_to_send() == H("80030007000000080000000900000000")


def test_client_and_server_talk():
    client, server = SpdyConnection(client=True), SpdyConnection(client=False)
    first = client.open_stream({"streamtype": "error", "port": "80", "requestid": "0"})
    second = client.open_stream({"streamtype": "data", "port": "80", "requestid": "0"}, fin=False)
    assert (first, second) == (1, 3)
    events = server.receive_data(client.data_to_send())
    assert [e.headers["streamtype"] for e in events if isinstance(e, SynStream)] == ["error", "data"]
    server.reply(1)
    server.reply(3)
    big = bytes(range(256)) * 400  # more than one DATA frame
    server.send_data(3, big, fin=True)
    got = client.receive_data(server.data_to_send())
    assert got[:2] == [SynReply(1, {}), SynReply(3, {})]
    assert b"".join(e.data for e in got if isinstance(e, Data)) == big
    assert [e for e in got if isinstance(e, Data) and e.fin] == [
        Data(3, big[-(len(big) % spdy.MAX_DATA_CHUNK) :], True)
    ]
    ping = client.ping()
    server.receive_data(client.data_to_send())
    assert client.receive_data(server.data_to_send()) == [PingAcknowledged(ping)]
    server.go_away()
    assert client.receive_data(server.data_to_send()) == [GoAway(3, 0)]


def test_data_is_delivered_as_it_arrives():
    """A 1 MiB frame is passed on in pieces, not held until its end."""
    server = SpdyConnection(client=False)
    server.receive_data(client_syn_for(1))
    header = struct.pack(">IB", 1, 1) + (1 << 20).to_bytes(3, "big")
    assert server.receive_data(header + b"x" * 1000) == [Data(1, b"x" * 1000)]
    assert server._buffer == b""
    events = server.receive_data(b"y" * ((1 << 20) - 1000))
    assert events == [Data(1, b"y" * ((1 << 20) - 1000), True)]


def test_streams_must_increase_and_be_odd():
    server, client = SpdyConnection(client=False), SpdyConnection(client=True)
    for stream_id, accepted in ((3, True), (1, False), (4, False), (5, True)):
        client._next_id = stream_id
        client.open_stream({"streamtype": "data"})
        events = server.receive_data(client.data_to_send())
        if accepted:
            assert events == [SynStream(stream_id, {"streamtype": "data"})]
        else:
            assert events == [StreamReset(stream_id, 1, by_peer=False)]
            assert server.data_to_send() == H("8003000300000008") + struct.pack(">II", stream_id, 1)


def _syn(stream_id: int) -> bytes:
    block = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    data = block.compress(struct.pack(">I", 0)) + block.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + data
    return struct.pack(">HHB", 0x8003, 1, 0) + len(payload).to_bytes(3, "big") + payload


def _control(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHB", 0x8003, kind, flags) + len(payload).to_bytes(3, "big") + payload


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_control(6, b"\0\0\0\1\0"), "PING must carry exactly 4 bytes"),
        (struct.pack(">HHB", 0x8002, 6, 0) + b"\0\0\4" + b"\0\0\0\1", "version 2"),
        (struct.pack(">HHB", 0x8003, 1, 0) + b"\xff\xff\xff", "too large"),
        (_control(1, b"\0\0\0\1\0\0\0\0\0\0" + b"not zlib at all"), "does not decompress"),
        (_control(3, b"\0\0\0\1"), "RST_STREAM must carry exactly 8 bytes"),
        (_control(4, b"\0\0\0\2" + b"\0" * 8), "SETTINGS length"),
        (H("0000000000000001") + b"x", "DATA frame on stream 0"),
    ],
)
def test_broken_frames_end_the_connection_with_a_goaway(frame, message):
    conn = SpdyConnection(client=False)
    [broken] = conn.receive_data(frame)
    assert isinstance(broken, ConnectionBroken) and message in broken.reason
    assert conn.data_to_send() == H("80030007000000080000000000000001")
    assert conn.receive_data(b"anything") == []


def test_header_bombs_are_refused():
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    value = b"a" * (4 << 20)
    raw = struct.pack(">I", 1) + struct.pack(">I", 1) + b"x" + struct.pack(">I", len(value)) + value
    block = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(block) < 10_000
    conn = SpdyConnection(client=False)
    [broken] = conn.receive_data(_control(1, struct.pack(">IIBB", 1, 0, 0, 0) + block))
    assert isinstance(broken, ConnectionBroken) and "inflates beyond" in broken.reason


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack(">I", 1000), "more pairs"),
        (struct.pack(">II", 1, 0) + struct.pack(">I", 0), "empty name"),
        (struct.pack(">II", 1, 1) + b"a" + struct.pack(">I", 9) + b"b", "truncated"),
        (struct.pack(">II", 2, 1) + b"a" + struct.pack(">II", 0, 1) + b"A" + struct.pack(">I", 0), "repeats"),
        (struct.pack(">I", 0) + b"x", "after its last pair"),
    ],
)
def test_bad_header_blocks(raw, message):
    with pytest.raises(spdy.ProtocolError, match=message):
        spdy.parse_header_block(raw)


def test_settings_window_update_noop_and_unknown_frames_are_ignored():
    conn = SpdyConnection(client=False)
    frames = (
        _control(4, struct.pack(">III", 1, 7, 1 << 16))
        + _control(9, struct.pack(">II", 1, 1000))
        + _control(5, b"")
        + _control(77, b"whatever")
    )
    assert conn.receive_data(frames) == []
    assert conn.data_to_send() == b""


def test_data_after_fin_resets_the_stream():
    conn = SpdyConnection(client=False)
    conn.receive_data(client_syn_for(1))
    assert conn.receive_data(H("0000000101000000")) == [Data(1, b"", True)]
    assert conn.receive_data(H("0000000100000001") + b"z") == [StreamReset(1, 9, by_peer=False)]
    assert conn.receive_data(H("0000000700000001") + b"z") == []  # never opened: dropped


def _frames() -> st.SearchStrategy[bytes]:
    """Mostly well-formed frames with random fields, and some noise."""
    control = st.builds(
        lambda kind, flags, body: _control(kind, body, flags),
        st.integers(1, 10),
        st.integers(0, 3),
        st.binary(max_size=40),
    )
    data = st.builds(
        lambda sid, flags, body: struct.pack(">IB", sid, flags) + len(body).to_bytes(3, "big") + body,
        st.integers(0, 9),
        st.integers(0, 1),
        st.binary(max_size=40),
    )
    syn = st.integers(0, 12).map(_syn)
    return st.lists(st.one_of(control, data, syn, st.binary(max_size=12)), max_size=12).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(_frames(), st.lists(st.integers(1, 64), max_size=8))
def test_fuzz_any_bytes_give_events_or_a_protocol_error(stream, cuts):
    """Whatever arrives, in whatever pieces: events (the last perhaps
    ConnectionBroken), never an exception, and the same events however the
    bytes are split."""
    assert _merge(_run(stream, [len(stream)])) == _merge(_run(stream, cuts))


def _run(stream: bytes, cuts: list[int]) -> list:
    conn = SpdyConnection(client=False)
    events: list = []
    pos = 0
    for n in [*cuts, len(stream)]:
        events += conn.receive_data(stream[pos : pos + n])
        pos += n
        if pos >= len(stream):
            break
    assert all(not isinstance(e, ConnectionBroken) for e in events[:-1])
    return events


def _merge(events: list) -> list:
    """Data events joined per frame (splitting changes only their pieces)."""
    out: list = []
    for e in events:
        if (
            isinstance(e, Data)
            and out
            and isinstance(out[-1], Data)
            and out[-1].stream_id == e.stream_id
            and not out[-1].fin
        ):
            out[-1] = Data(e.stream_id, out[-1].data + e.data, e.fin)
        else:
            out.append(e)
    return out


def _opened_by_client(*, fin: bool = False, uni: bool = False) -> tuple[SpdyConnection, SpdyConnection, int]:
    """A client and a server that has received the client's stream (not replied to)."""
    client, server = SpdyConnection(client=True), SpdyConnection(client=False)
    client._next_id = 1
    stream_id = client.open_stream({"streamtype": "data"}, fin=fin)
    syn = bytearray(client.data_to_send())
    if uni:
        syn[4] |= spdy.FLAG_UNIDIRECTIONAL
    assert server.receive_data(bytes(syn)) == [SynStream(stream_id, {"streamtype": "data"}, fin, uni)]
    return client, server, stream_id


def _refused(conn: SpdyConnection, call, match: str) -> None:
    """The misuse raises and queues nothing."""
    conn.data_to_send()
    with pytest.raises(spdy.LocalProtocolError, match=match):
        call()
    assert conn.data_to_send() == b""


def test_data_for_a_stream_never_opened():
    server = SpdyConnection(client=False)
    _refused(server, lambda: server.send_data(7, b"x"), "stream 7 is not open")


def test_data_before_our_reply():
    _, server, sid = _opened_by_client()
    _refused(server, lambda: server.send_data(sid, b"x"), "needs our SYN_REPLY")
    server.reply(sid)
    server.send_data(sid, b"x")
    assert server.data_to_send()


def test_data_after_our_fin():
    client, server, sid = _opened_by_client()
    server.reply(sid)
    server.send_data(sid, b"last", fin=True)
    assert server.is_open(sid)  # the client may still send
    _refused(server, lambda: server.send_data(sid, b"more"), "closed on our side")
    _refused(server, lambda: server.send_data(sid, b"", fin=True), "closed on our side")
    sid2 = client.open_stream({}, fin=True)
    _refused(client, lambda: client.send_data(sid2, b"x"), "closed on our side")


def test_data_on_a_unidirectional_stream_from_the_peer():
    _, server, sid = _opened_by_client(uni=True)
    _refused(server, lambda: server.send_data(sid, b"x"), "closed on our side")
    _refused(server, lambda: server.reply(sid), "unidirectional")


def test_data_after_the_peer_reset_the_stream():
    client, server, sid = _opened_by_client()
    server.reply(sid)
    client.receive_data(server.data_to_send())
    client.reset(sid)
    assert server.receive_data(client.data_to_send()) == [StreamReset(sid, spdy.Status.CANCEL)]
    assert not server.is_open(sid)
    _refused(server, lambda: server.send_data(sid, b"x"), "is not open")
    _refused(client, lambda: client.send_data(sid, b"x"), "is not open")  # we reset it ourselves


def test_data_after_the_stream_closed_both_ways():
    _, server, sid = _opened_by_client(fin=True)
    server.reply(sid, fin=True)
    assert not server.is_open(sid)
    _refused(server, lambda: server.send_data(sid, b"x"), "is not open")


def test_replying_twice():
    _, server, sid = _opened_by_client()
    server.reply(sid)
    _refused(server, lambda: server.reply(sid), "replied to already")


def test_replying_to_our_own_stream_or_none():
    client = SpdyConnection(client=True)
    sid = client.open_stream({})
    _refused(client, lambda: client.reply(sid), f"stream {sid} is not one the peer opened")
    server = SpdyConnection(client=False)
    _refused(server, lambda: server.reply(9), "stream 9 is not one the peer opened")


def test_no_new_stream_after_goaway():
    client, server = SpdyConnection(client=True), SpdyConnection(client=False)
    server.go_away()
    assert client.receive_data(server.data_to_send()) == [GoAway(0, 0)]
    _refused(client, lambda: client.open_stream({}), "after a GOAWAY")
    client = SpdyConnection(client=True)
    client.go_away()
    _refused(client, lambda: client.open_stream({}), "after a GOAWAY")

"""The watch stream decoder: events split across any chunking, the kinds
a watch carries, and a clear error for what is not a watch."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podshell.protocols.watch import EventKind, WatchDecoder, WatchError

POD = {"kind": "Pod", "metadata": {"name": "web", "namespace": "team-a", "resourceVersion": "41"}}
GONE = {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}
STREAM = b"".join(
    json.dumps(e).encode() + b"\n"
    for e in (
        {"type": "ADDED", "object": POD},
        {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "57"}}},
        {"type": "DELETED", "object": {**POD, "spec": {"containers": [{"name": "x" * 70_000}]}}},
        {"type": "ERROR", "object": GONE},
    )
)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_events_come_out_the_same_however_the_stream_is_cut(cuts):
    decoder, events, last = WatchDecoder(), [], 0
    for cut in [*sorted(cuts), len(STREAM)]:
        events += decoder.feed(STREAM[last:cut])
        last = cut
    decoder.end()
    assert [e.kind for e in events] == [EventKind.ADDED, EventKind.BOOKMARK, EventKind.DELETED, EventKind.ERROR]
    assert [e.resource_version for e in events[:2]] == ["41", "57"]
    assert [e.status_code for e in events] == [None, None, None, 410]
    assert len(events[2].object["spec"]["containers"][0]["name"]) == 70_000


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"<html>proxy error</html>\n", "not JSON"),
        (b'{"type": "ADDED"}\n', "not {type, object}"),
        (b'{"type": "RENAMED", "object": {}}\n', "unknown watch event type 'RENAMED'"),
        (b"[1, 2]\n", "not {type, object}"),
    ],
)
def test_what_is_not_a_watch_event_is_an_error_that_says_so(line, error):
    with pytest.raises(WatchError, match=error):
        WatchDecoder().feed(line)


def test_an_endless_line_is_refused_before_memory_grows_with_it():
    decoder = WatchDecoder(max_event=1000)
    decoder.feed(b"x" * 1000)
    with pytest.raises(WatchError, match="longer than 1000 bytes"):
        decoder.feed(b"x")


def test_a_stream_that_ends_inside_an_event_is_an_error():
    decoder = WatchDecoder()
    decoder.feed(b'{"type": "ADDED", "obj')
    with pytest.raises(WatchError, match="middle of an event"):
        decoder.end()
    blank = WatchDecoder()
    assert blank.feed(b"\n\n") == []
    blank.end()

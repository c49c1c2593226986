"""The CRI log files: format, rotation, tail, since, limit (no root)."""

from __future__ import annotations

import os
import time

import pytest

from podshell.core.logs import Options, parse_timestamp
from podshell.node import logfile
from podshell.node.logfile import MAX_LINE, LogFile, Reader, decode, encode, instance_files, timestamp

T0 = 1475713029_669794202  # 2016-10-06T00:17:09.669794202Z, the CRI documentation's example


def read_all(directory, instance=0, **options) -> bytes:
    reader = Reader(directory, instance, Options(**options))
    out = bytearray()
    while not reader.at_end and not reader.done:
        out += reader.read(100)
    reader.close()
    return bytes(out)


def test_timestamps_are_rfc3339_nano_as_go_writes_them():
    assert timestamp(T0) == b"2016-10-06T00:17:09.669794202Z"
    assert timestamp(1475713029_500000000) == b"2016-10-06T00:17:09.5Z"
    assert timestamp(1475713029_000000000) == b"2016-10-06T00:17:09Z"
    for text in (b"2016-10-06T00:17:09.669794202Z", b"2016-10-06T02:17:09.669794202+02:00"):
        assert parse_timestamp(text) == T0
    with pytest.raises(ValueError):
        parse_timestamp(b"yesterday")


def test_entries_are_cri_lines_with_partial_ones():
    assert encode(T0, "stdout", b"a\nb\n") == (
        b"2016-10-06T00:17:09.669794202Z stdout F a\n2016-10-06T00:17:09.669794202Z stdout F b\n"
    )
    assert encode(T0, "stderr", b"\nprompt: ") == (
        b"2016-10-06T00:17:09.669794202Z stderr F \n2016-10-06T00:17:09.669794202Z stderr P prompt: \n"
    )
    assert encode(T0, "stdout", b"") == b""
    long = encode(T0, "stdout", b"x" * (2 * MAX_LINE + 5) + b"\n")
    assert [(e.partial, len(e.text)) for e in map(decode, long.splitlines())] == [
        (True, MAX_LINE),
        (True, MAX_LINE),
        (False, 5),
    ]
    assert decode(b"2016-10-06T00:17:09.669794202Z stdout F with  spaces ").text == b"with  spaces "
    with pytest.raises(ValueError):
        decode(b"2016-10-06T00:17:09Z stdout X text")


def test_partial_entries_join_and_timestamps_come_once_per_line(tmp_path):
    log = LogFile(tmp_path, 0)
    log.write("stdout", b"hel", T0)
    log.write("stdout", b"lo\nwor", T0 + 1)
    log.write("stderr", b"oops\n", T0 + 2)
    log.write("stdout", b"ld\n", T0 + 3)
    log.close()
    assert read_all(tmp_path) == b"hello\nworoops\nld\n"  # in the order written, as the kubelet sends it
    assert read_all(tmp_path, timestamps=True) == (
        b"2016-10-06T00:17:09.669794202Z hello\n"
        b"2016-10-06T00:17:09.669794203Z wor"
        b"2016-10-06T00:17:09.669794204Z oops\n"
        b"ld\n"
    )


def test_tail_counts_lines_not_entries(tmp_path):
    log = LogFile(tmp_path, 0)
    for i in range(5):
        log.write("stdout", b"line %d\n" % i, T0 + i)
    log.write("stdout", b"unfinished", T0 + 9)
    log.close()
    assert read_all(tmp_path, tail=1) == b"unfinished"
    assert read_all(tmp_path, tail=2) == b"line 4\nunfinished"
    assert read_all(tmp_path, tail=0) == b""
    assert read_all(tmp_path, tail=100).count(b"\n") == 5


def test_tail_over_many_blocks_and_rotated_files(tmp_path):
    log = LogFile(tmp_path, 3, max_size=50_000, max_files=100)
    lines = [b"%06d %s" % (i, b"y" * (i % 97)) for i in range(20_000)]
    for i in range(0, len(lines), 7):
        log.write("stdout", b"\n".join(lines[i : i + 7]) + b"\n", T0 + i)
    log.close()
    files = instance_files(tmp_path, 3)
    assert len(files) > 10 and all(f.stat().st_size <= 50_000 for f in files)
    assert read_all(tmp_path, 3, tail=4321) == b"\n".join(lines[-4321:]) + b"\n"
    assert read_all(tmp_path, 3) == b"\n".join(lines) + b"\n"


def test_since_and_limit(tmp_path):
    log = LogFile(tmp_path, 0)
    for i in range(10):
        log.write("stdout", b"%d\n" % i, T0 + i * 1_000_000_000)
    log.close()
    assert read_all(tmp_path, since=T0 + 7_000_000_000) == b"7\n8\n9\n"
    assert read_all(tmp_path, since=T0 + 7_000_000_000, tail=2) == b"8\n9\n"
    assert read_all(tmp_path, limit=5) == b"0\n1\n2"
    assert read_all(tmp_path, limit=40, timestamps=True) == b"2016-10-06T00:17:09.669794202Z 0\n2016-10"


def test_rotation_keeps_a_bounded_number_of_files(tmp_path):
    log = LogFile(tmp_path, 0, max_size=1000, max_files=3)
    for i in range(500):
        log.write("stdout", b"%04d\n" % i, T0)
    log.close()
    files = instance_files(tmp_path, 0)
    assert [f.name for f in files][-1] == "0.log" and len(files) == 3
    assert sum(f.stat().st_size for f in files) <= 3000
    text = read_all(tmp_path).split()
    assert text[-1] == b"0499" and len(text) < 500 and text == [b"%04d" % i for i in range(500 - len(text), 500)]


def test_a_follower_goes_on_across_rotation(tmp_path):
    log = LogFile(tmp_path, 0, max_size=300, max_files=2)
    reader = Reader(tmp_path, 0, Options())
    got = bytearray()
    for i in range(200):
        log.write("stdout", b"%03d\n" % i, T0)
        got += reader.read()
        assert reader.at_end or reader.read() == b""
    log.close()
    assert got == b"".join(b"%03d\n" % i for i in range(200))


def test_torn_lines_are_skipped(tmp_path):
    (tmp_path / "0.log").write_bytes(b"garbage\n" + encode(T0, "stdout", b"ok\n") + b"2016-10-06T00:17")
    assert read_all(tmp_path) == b"ok\n"


def test_writing_50_mib_fast_is_quick_and_bounded(tmp_path):
    """A noisy container: 64 KiB chunks of short lines, as a pipe delivers them."""
    chunk = b"".join(b"noisy line %05d of output\n" % i for i in range(2500))[: 64 * 1024]
    log = LogFile(tmp_path, 0)
    start = time.perf_counter()
    for _ in range(50 * 16):
        log.write("stdout", chunk, time.time_ns())
    elapsed = time.perf_counter() - start
    log.close()
    files = instance_files(tmp_path, 0)
    assert len(files) == logfile.MAX_FILES and all(f.stat().st_size <= logfile.MAX_SIZE for f in files)
    per_chunk_ms = elapsed / 800 * 1000
    print(f"50 MiB in {elapsed:.2f}s: {per_chunk_ms:.2f} ms per 64 KiB chunk")
    assert per_chunk_ms < 5, "writing a chunk must not hold the reactor"
    assert os.path.getsize(files[-1]) > 0


def test_pods_log_queries_as_the_api_server_reads_them():
    from podshell.core.target import LogsUnavailable
    from podshell.kube.logs import LogRequest, container_of

    q = LogRequest.fromQuery(
        {"container": ["app"], "follow": ["True"], "tailLines": ["10"], "sinceSeconds": ["60"],
         "insecureSkipTLSVerifyBackend": ["true"]}, T0,
    )  # fmt: skip
    assert (q.container, q.follow, q.previous, q.options) == ("app", True, False, Options(False, 10, T0 - 60 * 10**9))
    assert q.query == (("follow", "true"), ("sinceSeconds", "60"), ("tailLines", "10"))
    since = LogRequest.fromQuery({"sinceTime": ["2016-10-06T00:17:09Z"], "timestamps": ["1"]}, 0).options
    assert (since.since, since.timestamps) == (1475713029 * 10**9, True)
    for query, message in (
        ({"follow": ["yes"]}, 'invalid value for follow: strconv.ParseBool: parsing "yes": invalid syntax'),
        ({"limitBytes": ["0"]}, "PodLogOptions is invalid: limitBytes: Invalid value: 0: must be greater than 0"),
        ({"tailLines": ["x"]}, 'invalid value for tailLines: strconv.ParseInt: parsing "x": invalid syntax'),
        ({"sinceSeconds": ["5"], "sinceTime": ["2016-10-06T00:17:09Z"]},
         "PodLogOptions is invalid: at most one of `sinceTime` or `sinceSeconds` may be specified"),
    ):  # fmt: skip
        with pytest.raises(ValueError) as e:
            LogRequest.fromQuery(query, T0)
        assert str(e.value) == message
    pod = {"metadata": {"name": "web-0"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    assert container_of(pod, "b") == "b"
    with pytest.raises(
        LogsUnavailable, match=r"^a container name must be specified for pod web-0, choose one of: \[a b\]$"
    ):
        container_of(pod, None)

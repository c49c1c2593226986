"""kubectl cp's tar command lines, recognised (and nothing else)."""

from __future__ import annotations

import tarfile

import pytest

from podshell.node import tarserver
from podshell.protocols.tar import TarCommand, parse


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tar", "cf", "-", "/tmp/x"], TarCommand(True, ("/tmp/x",))),
        (["tar", "-xmf", "-", "-C", "/tmp"], TarCommand(False, (), "/tmp", keep_mtime=False)),
        (["tar", "-xmf", "-"], TarCommand(False, (), None, keep_mtime=False)),
        (
            ["tar", "--no-same-permissions", "--no-same-owner", "-xmf", "-", "-C", "/d"],
            TarCommand(False, (), "/d", keep_mtime=False, preserve=False),
        ),
        (["tar", "xf", "-"], TarCommand(False, ())),
    ],
)
def test_the_forms_kubectl_cp_sends(argv, expected):
    assert parse(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["tar"],
        ["tar", "cf", "-"],  # nothing to archive
        ["tar", "cf", "out.tar", "x"],  # not on stdout
        ["tar", "-xmf", "-", "-C"],
        ["tar", "-xmf", "-", "extra"],
        ["tar", "--no-same-owner", "cf", "-", "x"],
        ["tar", "tf", "-"],
        ["gtar", "cf", "-", "x"],
        ["sh", "-c", "tar cf - x"],
    ],
)
def test_anything_else_is_not_served(argv):
    assert parse(argv) is None


def test_a_file_that_shrinks_or_grows_is_read_as_its_header_says():
    import io

    from podshell.node.tarserver import _Exactly

    shrunk = _Exactly(io.BytesIO(b"abcde"), 8, "f")
    assert shrunk.read(3) + shrunk.read(100) + shrunk.read(1) == b"abcde\0\0\0"
    grown = _Exactly(io.BytesIO(b"0123456789"), 4, "g")
    assert grown.read() == b"0123" and grown.read(5) == b""


@pytest.mark.parametrize(
    ("name", "link"),
    [("d/" * 600 + "f", ""), ("link", "x/" * 600)],
)
def test_extraction_refuses_paths_past_the_bound_the_cves_need(name, link):
    member = tarfile.TarInfo(name)
    if link:
        member.type, member.linkname = tarfile.SYMTYPE, link
    with pytest.raises(tarfile.FilterError, match="longer than 1024 bytes"):
        tarserver.safe(member, "/dest")


def test_extraction_still_applies_pep_706s_filter():
    outside = tarfile.TarInfo("../escape")
    with pytest.raises(tarfile.OutsideDestinationError):
        tarserver.safe(outside, "/dest")
    assert tarserver.safe(tarfile.TarInfo("a/b"), "/dest").name == "a/b"

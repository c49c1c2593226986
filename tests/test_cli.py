"""The podshell command line, run as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PODSHELL = shutil.which("podshell", path=str(Path(sys.executable).parent))
CONF = Path(__file__).parent.parent / "conf" / "podshell.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    assert PODSHELL, "the podshell console script is installed next to the interpreter"
    return subprocess.run([PODSHELL, *args], capture_output=True, text=True, timeout=60)


def test_config_check_accepts_the_example():
    result = run("config", "check", str(CONF))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{CONF}: OK (2 users, 3 policy rules, 2 pods)\n"


def test_config_check_accepts_the_gateway_and_node_examples(tmp_path):
    for name in ("gateway.yaml", "node.yaml", "pods.yaml"):
        shutil.copy(CONF.parent / name, tmp_path / name)
    pki = str(tmp_path / "pki")
    for args in (["init"], ["issue", "--name", "gw-1", "--role", "gateway"],
                 ["issue", "--name", "node-1", "--role", "node", "--san", "10.0.0.2"]):  # fmt: skip
        assert run("ca", *args, "--dir", pki).returncode == 0
    gateway, node = (
        run("config", "check", str(tmp_path / "gateway.yaml")),
        run("config", "check", str(tmp_path / "node.yaml")),
    )
    assert gateway.stdout == f"{tmp_path}/gateway.yaml: OK (gateway gw-1: 2 nodes, 1 user, 1 policy rule)\n", (
        gateway.stderr
    )
    assert node.stdout == f"{tmp_path}/node.yaml: OK (node agent node-1: 2 pods)\n", node.stderr
    (tmp_path / "pki" / "node-1.crt").rename(tmp_path / "pki" / "gw-1.crt")
    wrong = run("config", "check", str(tmp_path / "gateway.yaml"))
    assert wrong.returncode == 1 and "pki/gw-1.key is not the key of" in wrong.stderr
    (tmp_path / "pki" / "node-1.key").rename(tmp_path / "pki" / "gw-1.key")
    wrong = run("config", "check", str(tmp_path / "gateway.yaml"))
    assert wrong.returncode == 1 and "is a certificate for role node, this server's role is gateway" in wrong.stderr


def test_config_check_reports_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: {kind: docker}\n")
    result = run("config", "check", str(bad))
    assert result.returncode == 1
    assert result.stderr == f"podshell: {bad}: runtime.kind: Input should be 'local' or 'cri'\n"
    assert result.stdout == ""


def test_help_and_usage_errors():
    assert "config" in run("--help").stdout
    assert "examples:\n  podshell config check conf/podshell.yaml\n" in run("config", "check", "--help").stdout
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr


def test_port_specs_read_like_kubectls():
    import pytest

    from podshell.cli.portforward import parse_ports
    from podshell.cli.profile import CLIError

    assert parse_ports(["8080", "9000:80", ":5432", "0:22"]) == [(8080, 8080), (9000, 80), (0, 5432), (0, 22)]
    for bad in ("http", "80:", "70000", "1:0"):
        with pytest.raises(CLIError):
            parse_ports([bad])


def test_pod_table_columns_like_kubectl():
    from podshell.cli.pods import render

    names = [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1)]
    table = {
        "columnDefinitions": [{"name": n, "priority": p} for n, p in names],
        "rows": [
            {
                "cells": ["web-0", "1/2", "CrashLoopBackOff", "3", "124m", "<none>", "node-1"],
                "object": {"metadata": {"name": "web-0", "namespace": "team-a"}},
            }
        ],
    }
    assert render(table, False, False).splitlines() == [
        "NAME    READY   STATUS             RESTARTS   AGE    NODE",
        "web-0   1/2     CrashLoopBackOff   3          124m   node-1",
    ]
    assert render(table, True, True).splitlines()[0].split() == [
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"
    ]  # fmt: skip


def test_cluster_ca_init_issue_and_show(tmp_path):
    import stat

    from cryptography import x509

    from podshell.pki import cluster_ca as pki

    pki_dir = tmp_path / "pki"
    assert run("ca", "init", "--dir", str(pki_dir)).returncode == 0
    assert stat.S_IMODE((pki_dir / "ca.key").stat().st_mode) == 0o600
    again = run("ca", "init", "--dir", str(pki_dir))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert run("ca", "issue", "--dir", str(pki_dir), "--name", "gw-1", "--role", "gateway").returncode == 0
    r = run("ca", "issue", "--dir", str(pki_dir), "--name", "node-1", "--role", "node", "--san", "10.0.0.2")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((pki_dir / "node-1.key").stat().st_mode) == 0o600
    node = pki.describe(x509.load_pem_x509_certificate((pki_dir / "node-1.crt").read_bytes()))
    assert (node.name, node.role, node.names, node.client, node.server) == (
        "node-1",
        "node",
        ["node-1", "10.0.0.2"],
        True,
        True,
    )
    gateway = pki.describe(x509.load_pem_x509_certificate((pki_dir / "gw-1.crt").read_bytes()))
    assert (gateway.role, gateway.client, gateway.server) == ("gateway", True, False)
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    for name in ("node-1", "gw-1"):  # signed by the CA
        leaf = x509.load_pem_x509_certificate((pki_dir / f"{name}.crt").read_bytes())
        leaf.verify_directly_issued_by(ca)
    shown = run("ca", "show", str(pki_dir / "node-1.crt"))
    assert "role:     node" in shown.stdout and "names:    node-1, 10.0.0.2" in shown.stdout
    missing = run("ca", "issue", "--dir", str(tmp_path / "none"), "--name", "x", "--role", "node")
    assert missing.stderr == f"podshell: no CA in {tmp_path / 'none'}: run podshell ca init --dir {tmp_path / 'none'}\n"
    twice = run("ca", "issue", "--dir", str(pki_dir), "--name", "gw-1", "--role", "gateway")
    assert twice.returncode == 1 and "already exists" in twice.stderr


def test_channel_messages_reassembled_from_any_pieces():
    """Messages cut into fragments, and the fragments' bytes into reads of any
    size, as wsproto hands them over: only each message's first byte is its
    channel, and every other byte arrives, in order, on that channel."""
    import random

    import pytest
    from wsproto.frame_protocol import FrameProtocol, Opcode

    from podshell.cli.profile import CLIError
    from podshell.cli.remote import Demux

    rng = random.Random(12)
    server, client, demux = (
        FrameProtocol(client=False, extensions=[]),
        FrameProtocol(client=True, extensions=[]),
        Demux(),
    )
    sent: dict[int, bytearray] = {1: bytearray(), 2: bytearray(), 3: bytearray()}
    wire = bytearray()
    for size in [0, 1, 16383, 16384, 16385, 65535, 65537, (1 << 20) + 3, *(rng.randrange(200000) for _ in range(20))]:
        channel = rng.choice(list(sent))
        message = bytes((channel,)) + rng.randbytes(size)
        sent[channel] += message[1:]
        cuts = sorted(rng.sample(range(1, len(message)), min(len(message) - 1, rng.randrange(4))))
        for start, end in zip([0, *cuts], [*cuts, len(message)], strict=True):
            wire += server.send_data(message[start:end], fin=end == len(message))
    got: dict[int, bytearray] = {1: bytearray(), 2: bytearray(), 3: bytearray()}
    while wire:
        n = rng.choice([1, 7, 16384, 65536, rng.randrange(1, 300000)])
        client.receive_bytes(bytes(wire[:n]))
        del wire[:n]
        for frame in client.received_frames():
            assert frame.opcode in (Opcode.BINARY, Opcode.CONTINUATION)
            piece = demux.feed(frame.payload, frame.message_finished)
            if piece is not None:
                got[piece[0]] += piece[1]
    assert got == sent
    with pytest.raises(CLIError, match="empty channel message"):
        demux.feed(b"", True)


def _parsers():
    """Every command and subcommand's parser, with its words (aliases once)."""
    import argparse

    from podshell.command import parser

    todo, seen = [((), parser())], set()
    while todo:
        words, command = todo.pop()
        yield words, command
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if id(sub) not in seen:
                        seen.add(id(sub))
                        todo.append(((*words, name), sub))


def test_every_command_has_examples():
    commands = [words for words, _ in _parsers() if words]
    assert {("get",), ("get", "pods"), ("config",), ("ca",), ("ca", "show"), ("kubeconfig",)} <= set(commands)
    for words, command in _parsers():
        if words:
            assert "\nexamples:\n  podshell " in command.format_help(), " ".join(words)
    shown = run("get", "--help")  # as a user sees it
    assert shown.returncode == 0 and "examples:\n  podshell get pods\n" in shown.stdout


def test_kubeconfig_output_is_private_and_replaced_whole(tmp_path):
    import os
    import stat

    import yaml

    target = tmp_path / "new" / "dir" / "config"
    argv = [PODSHELL, "kubeconfig", "--server", "https://gw.example:8443", "--token", "secret-token-0123456789"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSHELL_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    for before in (None, "old: world-readable\n"):
        if before is not None:
            target.write_text(before)
            target.chmod(0o644)
        r = subprocess.run(
            ["sh", "-c", 'umask 022; exec "$@"', "sh", *argv, "-n", "team-a", "--output", str(target)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (r.returncode, r.stdout, r.stderr) == (0, "", f"Wrote {target} (readable by you only).\n")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        config = yaml.safe_load(target.read_text())
        assert config["users"][0]["user"]["token"] == "secret-token-0123456789"
        assert config["contexts"][0]["context"]["namespace"] == "team-a"
        assert sorted(p.name for p in target.parent.iterdir()) == ["config"]  # no temporary left behind
    assert stat.S_IMODE(target.parent.stat().st_mode) == stat.S_IMODE(target.parent.parent.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(target)  # a kubeconfig kept in a dotfiles repository, linked into ~/.kube
    r = subprocess.run([*argv, "-n", "team-b", "--output", str(link)], env=env, capture_output=True, timeout=60)
    assert r.returncode == 0 and link.is_symlink(), r.stderr
    assert yaml.safe_load(target.read_text())["contexts"][0]["context"]["namespace"] == "team-b"
    r = subprocess.run([*argv, "--output", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith(f"podshell: cannot write {tmp_path}: ")

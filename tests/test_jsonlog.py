"""The log as JSON lines: the observer on its own, and twistd using it."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from podshell.server.jsonlog import JSONLines

from .conftest import PYTHON, needs_root, pod
from .sshserver import PodshellServer, keygen


def test_each_event_is_one_line_of_json():
    out = io.StringIO()
    log = Logger(namespace="podshell.test", observer=JSONLines(out))
    log.info("pod {name} up, pid {pid}", name="web-0\nwith a newline", pid=7)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("it broke for {who}", Failure(), who="ünïcode")
    log.warn("a {missing} key")  # formatting that fails still gives a line
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "pod web-0\nwith a newline up, pid 7"
    assert (first["level"], first["namespace"]) == ("info", "podshell.test")
    assert first["time"].endswith("+00:00")
    assert (second["level"], second["message"]) == (LogLevel.critical.name, "it broke for ünïcode")
    assert "ZeroDivisionError" in second["traceback"]
    assert third["level"] == "warn" and "missing" in third["message"]


@needs_root
def test_twistd_logs_json_lines_with_the_observer(tmp_path):
    key = tmp_path / "id"
    users = [{"name": "alice", "ssh_keys": [keygen(key)]}]
    policy = [{"subjects": ["user:alice"], "verbs": ["*"], "namespaces": ["*"]}]
    pods = [pod("web-0", {"name": "app", "command": [PYTHON, "-c", "import time; time.sleep(3600)"]})]
    server = PodshellServer(
        tmp_path, pods, users, policy, twistd_options=["--logger", "podshell.server.jsonlog.observer"]
    )
    try:
        server.wait_ready(containers=1)
    finally:
        server.stop()
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line]
    messages = [r["message"] for r in records]
    assert any(m.startswith("SSH listening on 127.0.0.1:") for m in messages), messages
    assert any(r["namespace"] == "podshell.server.tap" for r in records)

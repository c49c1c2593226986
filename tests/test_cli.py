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


def test_config_check_reports_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: {kind: docker}\n")
    result = run("config", "check", str(bad))
    assert result.returncode == 1
    assert result.stderr == f"podshell: {bad}: runtime.kind: Input should be 'local'\n"
    assert result.stdout == ""


def test_help_and_usage_errors():
    assert "config" in run("--help").stdout
    assert "example: podshell config check" in run("config", "check", "--help").stdout
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr

"""``twistd podshell``: options, and the service tree they describe.

Everything that can be wrong with the configuration is found in
L{Options.postOptions}, before anything starts, and reported as one line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from podshell.auth.audit import AuditLog
from podshell.auth.identity import Directory
from podshell.auth.policy import Policy
from podshell.config import Config, load_config, resolve_path
from podshell.defaults import embedded_config
from podshell.gateway.access import Gate
from podshell.node.runtime.local import LocalRuntime, privilege_problem
from podshell.node.runtime.manifest import Pod, load_pods
from podshell.node.spawner import Spawner
from podshell.yamlfile import ConfigError

log = Logger()


@dataclass
class Loaded:
    """A validated configuration and what was read because of it."""

    config: Config
    source: str
    state_dir: Path
    directory: Directory
    policy: Policy
    pods: list[Pod]


def load(config_file: str | None) -> Loaded:
    """Read and check everything the server will need.

    @raise ConfigError: with a one-line message naming the file and key.
    """
    if config_file is None:
        config, base, source = embedded_config(), Path.cwd(), "the embedded default"
    else:
        config, base = load_config(Path(config_file))
        source = config_file
    where = config_file or "embedded default"
    try:
        directory = Directory.fromConfig(config, base)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    pods: list[Pod] = []
    if config.runtime.pods:
        pods = load_pods(resolve_path(base, config.runtime.pods))
    return Loaded(config, source, resolve_path(base, config.state_dir), directory, Policy(config.policy), pods)


def prepare_state_dir(path: Path) -> None:
    """Create the state directory private to the server (0700)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as e:
        raise ConfigError(f"state_dir: cannot create {path}: {e.strerror}") from None


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run podshell: pods and the front doors into them. With no --config, the "
        "embedded default runs a demo pod on 127.0.0.1 for your own SSH keys."
    )
    optParameters = [
        ["config", "c", None, "the YAML configuration file (see conf/podshell.yaml)"],
    ]

    def postOptions(self) -> None:
        try:
            self.loaded = load(self["config"])
            problem = privilege_problem() if self.loaded.config.runtime.kind == "local" else None
            if problem:
                raise ConfigError(problem)
            prepare_state_dir(self.loaded.state_dir)
        except ConfigError as e:
            sys.stderr.write(f"podshell: {e}\n")
            raise SystemExit(1) from None


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    loaded: Loaded = options.loaded
    config = loaded.config
    top = MultiService()
    spawner = Spawner(reactor)
    runtime = LocalRuntime(reactor, spawner, loaded.pods, config.runtime.backoff)
    runtime.setServiceParent(top)
    audit_path = (
        resolve_path(loaded.state_dir, config.audit.path) if config.audit.path else loaded.state_dir / "audit.jsonl"
    )
    gate = Gate(runtime, loaded.policy, AuditLog(audit_path))
    top.gate = gate  # type: ignore[attr-defined]  # the front doors' shared gate
    log.info(
        "podshell starting from {source}: {n} pods, state in {state}, audit log {audit}",
        source=loaded.source,
        n=len(loaded.pods),
        state=str(loaded.state_dir),
        audit=str(audit_path),
    )
    return top

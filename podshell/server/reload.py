"""SIGHUP: read users, keys, tokens and policy again, as sshd and nginx do.

The running directory and policy take the new ones in place, so sessions
under way carry on and every request from then on is decided by the new
rules.  A file with any mistake changes nothing: the old configuration stays
in force and the log says which file and what is wrong with it, in one line.
"""

from __future__ import annotations

import signal
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import Logger

from podshell.auth.identity import Directory
from podshell.auth.policy import Policy
from podshell.core.yamlfile import ConfigError, count
from podshell.server.config import Config, load_config

log = Logger()

# What SIGHUP changes; the rest of the file takes a restart.
RELOADED = frozenset({"users", "policy"})


class Reloader:
    """Reads C{config_file} again into the running C{directory} and C{policy}."""

    def __init__(self, config_file: Path, running: Config, directory: Directory, policy: Policy) -> None:
        self.config_file = config_file
        self.running = running
        self.directory = directory
        self.policy = policy

    def reload(self) -> bool:
        """Whether the file was good and is now in force."""
        try:
            config, base = load_config(self.config_file)
            try:
                directory = Directory.fromConfig(config.users, base)
            except ConfigError as e:
                raise ConfigError(f"{self.config_file}: {e}") from None
        except ConfigError as e:
            problems = "; ".join(str(e).splitlines())
            log.error("reload: kept the running configuration: {problems}", problems=problems)
            return False
        self.directory.replace_with(directory)
        self.policy.replace_with(Policy(config.policy))
        log.info(
            "reload: {file}: {users}, {rules} in force for new requests",
            file=str(self.config_file),
            users=count(len(config.users), "user"),
            rules=count(len(config.policy), "policy rule"),
        )
        later = sorted(self._restart_only(config))
        if later:
            log.warn(
                "reload: {file}: {keys} changed, which takes a restart",
                file=str(self.config_file),
                keys=", ".join(later),
            )
        return True

    def _restart_only(self, config: Config) -> set[str]:
        """The top-level keys that changed but that a reload does not apply."""
        # The state directory may have come from --state-dir: the file's is not compared.
        old = self.running.model_dump(exclude={*RELOADED, "state_dir"})
        new = config.model_dump(exclude={*RELOADED, "state_dir"})
        return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


class ReloadOnHangup(Service):
    """Installs the SIGHUP handler once the reactor runs (after twistd's own
    handlers), and puts the previous one back at stop."""

    def __init__(self, reactor, reloader: Reloader | None) -> None:
        """C{reloader} None: no configuration file (the embedded default), and
        a SIGHUP only says so instead of ending the process as it would by default."""
        self.reactor = reactor
        self.reloader = reloader
        self._previous: object = None

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if self.running:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: object) -> None:
        # A signal handler runs between two bytecodes of whatever the reactor
        # was doing: the reload runs from the reactor's loop instead.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        if self.reloader is None:
            log.info("reload: the embedded default has no configuration file; its SSH keys are read at each login")
        else:
            self.reloader.reload()

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)  # type: ignore[arg-type]
            self._previous = None

"""The podshell console script: the client's commands (L{podshell.cli})
and the server tools' (C{config}, C{ca}: L{podshell.server.admin}), whose
code is imported only when one of them runs, so that the client starts fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from podshell.cli import main as client
from podshell.cli.profile import CLIError


def _admin(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from podshell.server import admin

        try:
            print(getattr(admin, name)(args))
        except admin.AdminError as e:
            raise CLIError(str(e)) from None
        return 0

    return run


def _recordings(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from podshell.server import recordings

        try:
            return int(getattr(recordings, name)(args))
        except (recordings.RecordingsError, OSError) as e:
            raise CLIError(str(e)) from None

    return run


def recordings_commands(commands: Any) -> None:
    recordings = commands.add_parser(
        "recordings", help="the session recordings a server wrote (on the server's machine)",
        description="The session recordings a server wrote (policy rules with record:). An operator's tool: it "
        "reads the recording directory on this machine, like podshell config check; it talks to no server. "
        "The directory is --dir, or the one --config's recordings.dir names, or the embedded default's.",
        epilog="examples:\n  podshell recordings list --user alice --since 1d\n"
        "  podshell recordings play 3f2a --speed 2\n  podshell recordings export 3f2a > session.cast\n"
        "  podshell recordings verify 3f2a",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", help="the recording directory")
    where.add_argument("--config", help="the server configuration whose recordings.dir to read")
    sub = recordings.add_subparsers(dest="recordings_command", metavar="COMMAND", required=True)
    listing = sub.add_parser(
        "list",
        parents=[where],
        help="list recordings: id, start, user, target, kind, command",
        epilog="examples:\n  podshell recordings list --since 7d\n"
        "  podshell recordings list --user alice --pod 'web-*'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--user", help="only this user's")
    listing.add_argument("--pod", help="only of pods matching this glob (POD or NS/POD/CONTAINER)")
    listing.add_argument("--since", help="only those started since: a duration (2h, 7d) or a date (2026-12-01)")
    listing.set_defaults(run=_recordings("run_list"))
    play = sub.add_parser(
        "play",
        parents=[where],
        help="play a recording in this terminal, in its time",
        epilog="examples:\n  podshell recordings play 3f2a\n"
        "  podshell recordings play 3f2a --speed 4 --dir /var/lib/podshell/recordings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    play.add_argument("id", help="the recording's id (its audit session id; a unique prefix will do)")
    play.add_argument("--speed", type=float, default=1.0, help="how many times faster (default: 1)")
    play.set_defaults(run=_recordings("run_play"))
    export = sub.add_parser(
        "export",
        parents=[where],
        help="write a recording as asciicast v2 to stdout",
        epilog="examples:\n  podshell recordings export 3f2a > session.cast && asciinema play session.cast",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("id", help="the recording's id (a unique prefix will do)")
    export.set_defaults(run=_recordings("run_export"))
    check = sub.add_parser(
        "verify",
        parents=[where],
        help="check a recording against its hash chain",
        epilog="examples:\n  podshell recordings verify 3f2a\n"
        "  podshell recordings verify 3f2a --config /etc/podshell/podshell.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("id", help="the recording's id (a unique prefix will do)")
    check.set_defaults(run=_recordings("run_verify"))


def server_commands(commands: Any) -> None:
    recordings_commands(commands)
    config = commands.add_parser(
        "config", help="work with server configuration files",
        description="Work with server configuration files.",
        epilog="examples:\n  podshell config check conf/podshell.yaml\n  podshell config check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = config_commands.add_parser(
        "check",
        help="validate a configuration (and the pod manifests it names), or a file of Pod manifests",
        description="Validate a server configuration without starting anything.",
        epilog="examples:\n  podshell config check conf/podshell.yaml\n"
        "  podshell config check conf/pods.yaml   # Pod manifests alone\n"
        "  podshell config check      # the embedded default configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("config", nargs="?", default=None, help="the file (default: the embedded default)")
    check.set_defaults(run=_admin("config_check"))

    ca = commands.add_parser(
        "ca", help="the cluster CA for gateways and node agents",
        description="The cluster CA: gateways and node agents prove who they are to each other with its certificates.",
        epilog="examples:\n  podshell ca init --dir pki\n  podshell ca issue --dir pki --name gw-1 --role gateway\n"
        "  podshell ca show pki/gw-1.crt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ca_commands = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    ca_init = ca_commands.add_parser(
        "init", help="create the CA (EC P-256; the key is written 0600)",
        epilog="examples:\n  podshell ca init --dir pki\n  podshell ca init --dir pki --name 'acme CA' --days 1825",
        description="Create the cluster CA in a directory.", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ca_init.add_argument("--dir", required=True, help="where ca.crt and ca.key go")
    ca_init.add_argument("--name", default="podshell cluster CA", help="the CA's common name")
    ca_init.add_argument("--days", type=int, default=3650, help="validity (default: 3650)")
    ca_init.set_defaults(run=_admin("ca_init"))
    ca_issue = ca_commands.add_parser(
        "issue", help="issue a gateway's or node agent's certificate",
        description="Issue NAME.crt and NAME.key (0600) signed by the CA in --dir.",
        epilog="examples:\n  podshell ca issue --dir pki --name gw-1 --role gateway\n"
        "  podshell ca issue --dir pki --name node-1 --role node --san 10.0.0.2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ca_issue.add_argument("--dir", required=True, help="the CA's directory; the new files go there too")
    ca_issue.add_argument("--name", required=True, help="the gateway's or node's name (a node's is also a DNS name)")
    ca_issue.add_argument("--role", required=True, choices=["gateway", "node"], help="what it may do")
    ca_issue.add_argument("--san", action="append", metavar="DNS|IP", help="another name or address it serves as")
    ca_issue.add_argument("--days", type=int, default=825, help="validity (default: 825)")
    ca_issue.set_defaults(run=_admin("ca_issue"))
    ca_show = ca_commands.add_parser(
        "show", help="say what a certificate is", description="Show a certificate's name, role, names and expiry.",
        epilog="examples:\n  podshell ca show pki/node-1.crt\n  podshell ca show pki/ca.crt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ca_show.add_argument("certificate", help="a PEM certificate file")
    ca_show.set_defaults(run=_admin("ca_show"))


def parser() -> argparse.ArgumentParser:
    return client.parser(server_commands)


def main(argv: list[str] | None = None) -> int:
    return client.main(argv, server_commands)


if __name__ == "__main__":
    sys.exit(main())

"""``podshell``: the command-line entry point.

Errors are one line saying what to do next, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from podshell import __version__
from podshell.yamlfile import ConfigError


def _config_check(args: argparse.Namespace) -> int:
    from podshell.tap import load

    loaded = load(args.config)
    print(
        f"{loaded.source}: OK ({len(loaded.config.users)} users, {len(loaded.config.policy)} policy rules, "
        f"{len(loaded.pods)} pods)"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="podshell",
        description="Shells, commands and port forwards inside containers. The server is `twistd -n podshell`.",
    )
    top.add_argument("--version", action="version", version=f"podshell {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config = commands.add_parser("config", help="work with server configuration files")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = config_commands.add_parser(
        "check",
        help="validate a configuration and the pod manifests it names",
        description="Validate a server configuration without starting anything.",
        epilog="example: podshell config check conf/podshell.yaml",
    )
    check.add_argument("config", nargs="?", default=None, help="the file (default: the embedded default)")
    check.set_defaults(run=_config_check)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as e:
        print(f"podshell: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

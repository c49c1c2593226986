"""``podshell``: the command-line entry point.

Errors are one line saying what to do next, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podshell import __version__
from podshell.cli.profile import CLIError


def _target(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """POD with -n/-c, or NS/POD[/CTR]."""
    parts = args.pod.split("/")
    if len(parts) == 1:
        return args.namespace, parts[0], args.container
    if len(parts) in (2, 3) and all(parts):
        if args.container and len(parts) == 3:
            raise CLIError(f"give the container once: {args.pod} already names {parts[2]}")
        return parts[0], parts[1], parts[2] if len(parts) == 3 else args.container
    raise CLIError(f"{args.pod!r} is not POD, NS/POD or NS/POD/CONTAINER")


def _api(args: argparse.Namespace):
    from podshell.cli.api import API
    from podshell.cli.profile import resolve

    return API(resolve(args))


def _exec(args: argparse.Namespace) -> int:
    from podshell.cli import remote
    from podshell.core.target import run_as_problem

    command = args.command
    if not command:
        raise CLIError("say what to run: podshell exec POD -- COMMAND [ARGS...]")
    namespace, pod, container = _target(args)
    if args.user is not None and (problem := run_as_problem(args.user)):
        raise CLIError(problem)
    return remote.run(_api(args), namespace, pod, container, command, args.stdin, args.tty, args.user)


def _attach(args: argparse.Namespace) -> int:
    from podshell.cli import remote

    namespace, pod, container = _target(args)
    return remote.run(_api(args), namespace, pod, container, None, args.stdin, args.tty)


# Here, not in cli/cp.py: the help must not load tar for every command.
CP_EPILOG = (
    "examples:\n  podshell cp ./app.conf web-0:/etc/app/app.conf\n  podshell cp team-a/web-0:/var/log ./logs\n"
    "  podshell cp -c app ./dist web-0:/srv\n\n"
    "A container path is [NAMESPACE/]POD:PATH; a local path with a ':' in it starts with ./ or /.\n"
    "A directory that exists at the destination (or a DST ending in /) receives the source under\n"
    "its own name. The container needs no tar: where it has none, podshell serves it. Progress\n"
    "shows on a terminal."
)


def _cp(args: argparse.Namespace) -> int:
    from podshell.cli import cp

    return cp.run(_api(args), args.source, args.destination, args.namespace, args.container)


def _logs(args: argparse.Namespace) -> int:
    from podshell.cli import logs

    namespace, pod, container = _target(args)
    return logs.run(_api(args), namespace, pod, container, args)


def _port_forward(args: argparse.Namespace) -> int:
    from podshell.cli.portforward import Forwarder, parse_ports

    ports = parse_ports(args.ports)
    namespace, pod, _container = _target(args)
    return Forwarder(_api(args), namespace, pod, ports, args.address).run()


def _get_pods(args: argparse.Namespace) -> int:
    from podshell.cli import pods

    path = "/api/v1/pods" if args.all_namespaces else f"/api/v1/namespaces/{args.namespace}/pods"
    if args.output == "json":
        print(json.dumps(_api(args).get(path), indent=2))
        return 0
    table = _api(args).get(path, accept=pods.TABLE)
    if not table.get("rows"):
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No pods you may use in {where}.", file=sys.stderr)
    else:
        sys.stdout.write(pods.render(table, args.all_namespaces, args.output == "wide"))
    return 0


def _sessions_list(args: argparse.Namespace) -> int:
    from podshell.cli import sessions

    return sessions.list_sessions(_api(args), args.output)


def _sessions_kill(args: argparse.Namespace) -> int:
    from podshell.cli import sessions

    if not re.fullmatch(r"[0-9a-f]{32}", args.id):
        raise CLIError(f"{args.id!r} is not a session id (32 hex digits, from podshell sessions list)")
    return sessions.kill(_api(args), args.id)


def _login(args: argparse.Namespace) -> int:
    from podshell.cli.api import API
    from podshell.cli.profile import Profile, given_token, read_ca

    token = given_token(args)
    if not args.server or not token:
        raise CLIError("podshell login needs --server https://HOST:PORT and --token TOKEN (or --token-file FILE)")
    ca = read_ca(args.certificate_authority) if args.certificate_authority else None
    profile = Profile(args.server.rstrip("/"), token, ca, args.insecure_skip_tls_verify)
    API(profile).get("/api")  # proves the server, its certificate and the token
    path = profile.save()
    print(f"Logged in to {profile.server}; profile saved in {path} (readable by you only).")
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    from podshell.cli.profile import resolve
    from podshell.core import kubeconfig

    profile = resolve(args)
    ca = profile.ca_pem.encode() if profile.ca_pem else None
    text = kubeconfig.render(profile.server, "podshell", profile.token, ca, args.namespace)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        kubeconfig.write(Path(args.output).expanduser(), text)
    except OSError as e:
        raise CLIError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"Wrote {args.output} (readable by you only).", file=sys.stderr)
    return 0


def _connection_command(commands, name: str, help: str, epilog: str, **kw) -> argparse.ArgumentParser:
    from podshell.cli.profile import add_arguments

    command = commands.add_parser(
        name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter, **kw,
    )  # fmt: skip
    add_arguments(command)
    return command


def _container_arguments(command: argparse.ArgumentParser) -> None:
    """Which container: what every command about one container takes."""
    command.add_argument("-n", "--namespace", default="default", help="the pod's namespace (default: default)")
    command.add_argument("-c", "--container", help="the container (default: the pod's default container)")
    command.add_argument("pod", metavar="POD", help="POD, NS/POD or NS/POD/CONTAINER")


def _stream_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("-i", "--stdin", action="store_true", help="pass your standard input to it")
    command.add_argument("-t", "--tty", action="store_true", help="with a terminal: yours, in raw mode")


def parser(server_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The command line; C{server_commands} adds the server tools' commands
    (L{podshell.command}: they are not the client's)."""
    top = argparse.ArgumentParser(
        prog="podshell",
        description="Shells, commands and port forwards inside containers. The server is `twistd -n podshell`.",
    )
    top.add_argument("--version", action="version", version=f"podshell {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if server_commands is not None:
        server_commands(commands)

    pod_commands = [
        (
            "exec", "run a command in a container", _exec,
            "examples:\n  podshell exec web-0 -- ls /\n  podshell exec -it team-a/web-0/app -- sh\n"
            "  tar c . | podshell exec -i web-0 -- tar x -C /tmp\n  podshell exec -u postgres db-0 -- psql\n\n"
            "The command's exit code is podshell's.",
        ),
        (
            "attach", "attach to a container's main process", _attach,
            "examples:\n  podshell attach web-0 -c app\n  podshell attach -it team-a/console\n\n"
            "Detach with Ctrl-C (without -t) or by closing the terminal; the container runs on.",
        ),
    ]  # fmt: skip
    for name, summary, run, epilog in pod_commands:
        command = _connection_command(commands, name, summary, epilog)
        _container_arguments(command)
        _stream_arguments(command)
        command.set_defaults(run=run)
        if name == "exec":
            command.add_argument(
                "-u", "--user", help="run as this user of the container (a name from its /etc/passwd, or a uid)"
            )
            command.usage = "podshell exec [-h] [-n NS] [-c CTR] [-u USER] [-i] [-t] POD -- COMMAND [ARG...]"

    from podshell.cli import logs

    copy = _connection_command(commands, "cp", "copy files and directories to and from a container", CP_EPILOG)
    copy.add_argument("-n", "--namespace", default="default", help="the pod's namespace (default: default)")
    copy.add_argument("-c", "--container", help="the container (default: the pod's default container)")
    copy.add_argument("source", metavar="SRC", help="a local path, or [NAMESPACE/]POD:PATH")
    copy.add_argument("destination", metavar="DST", help="a local path, or [NAMESPACE/]POD:PATH")
    copy.set_defaults(run=_cp)

    log = _connection_command(commands, "logs", "print a container's log", logs.EPILOG)
    _container_arguments(log)
    logs.add_arguments(log)
    log.set_defaults(run=_logs)

    forward = _connection_command(
        commands, "port-forward", "forward local ports to ports inside a pod",
        "examples:\n  podshell port-forward web-0 8080:80\n  podshell port-forward -n team-a web-0 :5432 9090\n\n"
        "One connection to the server carries every forwarded connection. If it drops, podshell\n"
        "reconnects with back-off and keeps listening; a port nothing listens on in the pod fails\n"
        "only the connection that tried it.",
    )  # fmt: skip
    forward.add_argument("-n", "--namespace", default="default", help="the pod's namespace (default: default)")
    forward.add_argument(
        "--address",
        default="localhost",
        help="addresses to listen on, comma-separated, as kubectl's (default: localhost, i.e. 127.0.0.1 and ::1)",
    )
    forward.add_argument("pod", metavar="POD", help="POD or NS/POD")
    forward.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE", help="LOCAL empty or 0: any free port")
    forward.set_defaults(run=_port_forward, container=None)

    get = commands.add_parser(
        "get", help="list resources", description="List resources.",
        epilog="examples:\n  podshell get pods\n  podshell get pods -n team-a -o wide\n  podshell get pods -A -o json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    get_commands = get.add_subparsers(dest="get_command", metavar="RESOURCE", required=True)
    pods = _connection_command(
        get_commands, "pods", "list the pods you may use",
        "examples:\n  podshell get pods\n  podshell get pods -A -o wide", aliases=["pod", "po"],
    )  # fmt: skip
    scope = pods.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default="default", help="the namespace (default: default)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    pods.add_argument("-o", "--output", choices=["wide", "json"], help="more columns, or the Pod objects")
    pods.set_defaults(run=_get_pods)

    live = commands.add_parser(
        "sessions", help="list and end the sessions under way (operators)",
        description="List and end the sessions under way: where the policy gives you the verb admin.",
        epilog="examples:\n  podshell sessions list\n  podshell sessions list -o json\n"
        "  podshell sessions kill 3f2c0a9e8d7b4c1f9e0a6b5d4c3b2a19",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    live_commands = live.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    listing = _connection_command(
        live_commands, "list", "list the sessions under way: who, from where, what, since when, bytes",
        "examples:\n  podshell sessions list\n  podshell sessions list -o json\n\n"
        "IN is bytes into the pod, OUT out of it; IDLE is since the last byte either way.", aliases=["ls"],
    )  # fmt: skip
    listing.add_argument("-o", "--output", choices=["json"], help="the sessions as JSON")
    listing.set_defaults(run=_sessions_list)
    ending = _connection_command(
        live_commands, "kill", "end a session: its user is told an operator ended it",
        "examples:\n  podshell sessions kill 3f2c0a9e8d7b4c1f9e0a6b5d4c3b2a19\n\n"
        "The audit log's record of its end names you.",
    )  # fmt: skip
    ending.add_argument("id", metavar="ID", help="the session's id, from podshell sessions list")
    ending.set_defaults(run=_sessions_kill)

    login = _connection_command(
        commands, "login", "save a server and token for the other commands",
        "examples:\n  podshell login --server https://gw:8443 --token-file token --certificate-authority ca.crt\n"
        "  printenv TOKEN | podshell login --server https://gw:8443 --token-file -\n\n"
        "The profile goes to ~/.config/podshell/profile.yaml (mode 0600), with the CA inside it.",
    )  # fmt: skip
    login.set_defaults(run=_login)

    kube = _connection_command(
        commands, "kubeconfig", "print a kubeconfig for kubectl with the same server, CA and token",
        "examples:\n  podshell kubeconfig --output ~/.kube/podshell && KUBECONFIG=~/.kube/podshell kubectl get pods\n"
        "  podshell kubeconfig -n team-a\n\n"
        "It holds your token: prefer --output (mode 0600, replaced whole) to redirecting stdout,\n"
        "which creates the file readable by everyone under the usual umask.",
    )  # fmt: skip
    kube.add_argument("-n", "--namespace", default="default", help="the context's namespace (default: default)")
    kube.add_argument(
        "--output", metavar="FILE", help="write it to FILE (mode 0600; the directory is created) instead of stdout"
    )
    kube.set_defaults(run=_kubeconfig)
    return top


def _hold_standard_descriptors() -> None:
    """/dev/null on a closed 0, 1 or 2 (C{0<&-}): else the next socket takes
    the number, and stdin is read from the server or output written to it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


def main(argv: list[str] | None = None, server_commands: Callable[[Any], None] | None = None) -> int:
    _hold_standard_descriptors()
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is the command (flags may come after POD, as with kubectl).
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser(server_commands).parse_args(argv[:split])
    args.command = argv[split + 1 :]
    if args.command and args.run is not _exec:
        parser(server_commands).error("only exec takes a command after --")
    try:
        return int(args.run(args))
    except CLIError as e:
        print(f"podshell: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

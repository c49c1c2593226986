"""The module graph flows one way (ARCHITECTURE.md, "Layers"): every import
in podshell/, at any depth (in functions, under TYPE_CHECKING), goes to the
module's own layer or a lower one; never sideways between node and gateway;
the client sees only the wire formats, the core and itself.  In tests/, no
file imports a test module: shared helpers live in tests/support/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent

# Lowest first: a layer may import its own and the lower ones, never sideways
# between node and gateway (the same rank); only the server sees both.
RANK = {"protocols": 0, "core": 1, "auth": 2, "pki": 3, "kube": 4, "node": 5, "gateway": 5, "server": 6}
ALLOWED = {layer: {o for o in RANK if RANK[o] <= RANK[layer]} for layer in RANK}
ALLOWED["node"].discard("gateway")
ALLOWED["gateway"].discard("node")
ALLOWED["cli"] = {"protocols", "core", "cli"}
# podshell/command.py, the console script: the client and the server tools.
ALLOWED["command"] = set(RANK) | {"cli"}
# No Twisted in the wire formats; no reactor installed by importing a contract.
FORBIDDEN_OUTSIDE = {"protocols": ("twisted",), "core": ("twisted.internet.reactor",), "cli": ("twisted",)}


def layer_of(module: str) -> str | None:
    """The layer of C{podshell.x.y}; None for the package itself (its version)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[-1] == "__init__"
    if package:
        parts.pop()
    return ".".join(parts), package


def _imports(path: Path, root: Path) -> list[str]:
    """Every module C{path} imports, absolute, at any depth in it."""
    name, package = _module_name(path, root)
    here = name.split(".") if package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append(module)
            for alias in node.names:  # from podshell import pki: a module, if there is one
                sub = root.joinpath(*module.split("."), alias.name)
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    found.append(f"{module}.{alias.name}")
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "podshell").rglob("*.py")):
        name, _ = _module_name(path, root)
        layer = layer_of(name)
        if layer is None:
            continue
        if layer not in ALLOWED:
            out.append(f"{path.relative_to(root)} is in no layer (layers: {', '.join(ALLOWED)})")
            continue
        for imported in _imports(path, root):
            for forbidden in FORBIDDEN_OUTSIDE.get(layer, ()):
                if imported == forbidden or imported.startswith(forbidden + "."):
                    out.append(f"{path.relative_to(root)} imports {imported} (layer {layer} may not import it)")
            if not imported.startswith("podshell."):
                continue
            other = layer_of(imported)
            if other is not None and other not in ALLOWED[layer]:
                what = f"layer {other}" if other in ALLOWED else f"{imported}, which is in no layer"
                out.append(f"{path.relative_to(root)} imports {imported} (layer {layer} may not import {what})")
    return out


def test_imports_flow_one_way():
    found = violations()
    assert not found, "\n" + "\n".join(found)


def test_the_checker_sees_every_kind_of_import(tmp_path):
    for package in ("podshell", "podshell/core", "podshell/server", "podshell/gateway"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "podshell/server/tap.py").write_text("")
    (tmp_path / "podshell/core/late.py").write_text("def f():\n    from podshell.server import tap\n")
    (tmp_path / "podshell/core/typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..gateway import x\n"
    )
    assert violations(tmp_path) == [
        "podshell/core/late.py imports podshell.server (layer core may not import layer server)",
        "podshell/core/late.py imports podshell.server.tap (layer core may not import layer server)",
        "podshell/core/typed.py imports podshell.gateway (layer core may not import layer gateway)",
    ]


def test_every_package_is_installed():
    """setup.cfg lists the packages by hand (twisted/plugins has no
    __init__.py): a package missing there is missing from every install."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "podshell").rglob("__init__.py")}
    assert found - listed == set(), "add these to setup.cfg [options] packages"
    assert "twisted.plugins" in listed


def imports_of_test_modules(root: Path = ROOT) -> list[str]:
    """Every import of a test module (tests/test_*.py) by another file under tests/."""
    out = []
    for path in sorted((root / "tests").rglob("*.py")):
        for imported in _imports(path, root):
            parts = imported.split(".")
            if parts[0] == "tests" and any(p.startswith("test_") for p in parts[1:]):
                out.append(f"{path.relative_to(root)} imports {imported} (move what it needs to tests/support/)")
    return out


def test_no_test_module_imports_another():
    """A test module's helpers live in tests/support/: each test file can
    then change, or run, without breaking another."""
    found = imports_of_test_modules()
    assert not found, "\n" + "\n".join(found)


def test_the_checker_sees_a_test_module_imported(tmp_path):
    (tmp_path / "tests" / "support").mkdir(parents=True)
    for name in ("__init__.py", "test_a.py", "support/__init__.py"):
        (tmp_path / "tests" / name).write_text("")
    (tmp_path / "tests" / "test_b.py").write_text("from .test_a import helper\nfrom .support import waiting\n")
    (tmp_path / "tests" / "support" / "late.py").write_text("def f():\n    from tests import test_a\n")
    assert imports_of_test_modules(tmp_path) == [
        "tests/support/late.py imports tests.test_a (move what it needs to tests/support/)",
        "tests/test_b.py imports tests.test_a (move what it needs to tests/support/)",
    ]


# Private Twisted names: only podshell/core/twisted_private.py spells them.
FENCE = Path("podshell/core/twisted_private.py")
_NAME_CALLS = {"getattr", "setattr", "hasattr", "delattr"}


def private_twisted_uses(root: Path = ROOT, names: frozenset[str] | None = None) -> list[str]:
    """Every use, outside the fence, of a fenced private Twisted name (an
    attribute, a method or class attribute defined, a getattr string) and
    every import of a private Twisted module or name."""
    if names is None:
        from podshell.core.twisted_private import PRIVATE_NAMES as names
    paths = [*(root / "podshell").rglob("*.py"), *(root / "twisted").rglob("*.py")]
    out = []
    for path in sorted(paths):
        where = path.relative_to(root)
        if where == FENCE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        found: list[tuple[int, str]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in names:
                found.append((node.lineno, f"uses .{node.attr}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
                found.append((node.lineno, f"defines {node.name}"))
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = statement.targets if isinstance(statement, ast.Assign) else []
                    if isinstance(statement, ast.AnnAssign):
                        targets = [statement.target]
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id in names:
                            found.append((statement.lineno, f"defines {target.id}"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NAME_CALLS:
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names:
                    found.append((node.lineno, f"uses {node.args[1].value!r}"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "twisted" and not node.level:
                private = [p for p in node.module.split(".") if p.startswith("_")]  # type: ignore[union-attr]
                private += [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    found.append((node.lineno, f"imports {', '.join(private)} from {node.module}"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "twisted" and any(p.startswith("_") for p in parts):
                        found.append((node.lineno, f"imports {alias.name}"))
        out += [f"{where}:{line} {what} (private to Twisted: go through {FENCE})" for line, what in sorted(found)]
    return out


def test_private_twisted_names_only_in_the_fence():
    found = private_twisted_uses()
    assert not found, "\n" + "\n".join(found)


def test_the_fence_checker_sees_every_kind_of_use(tmp_path):
    (tmp_path / "podshell/core").mkdir(parents=True)
    (tmp_path / "twisted/plugins").mkdir(parents=True)
    (tmp_path / FENCE).write_text("def _fork(self):\n    self._fork()\n")
    (tmp_path / "podshell/core/user.py").write_text(
        "from twisted.web.client import Agent, _HTTP11ClientFactory\n"
        "import twisted.internet._sslverify\n"
        "class P:\n"
        "    _log = None\n"
        "    def _fork(self):\n"
        "        return self._fork, getattr(self, '_fork'), self._fine\n"
    )
    (tmp_path / "twisted/plugins/plugin.py").write_text("from twisted.internet._glibbase import x\n")
    assert private_twisted_uses(tmp_path, frozenset({"_fork", "_log"})) == [
        f"podshell/core/user.py:{line} {what} (private to Twisted: go through {FENCE})"
        for line, what in [
            (1, "imports _HTTP11ClientFactory from twisted.web.client"),
            (2, "imports twisted.internet._sslverify"),
            (4, "defines _log"),
            (5, "defines _fork"),
            (6, "uses '_fork'"),
            (6, "uses ._fork"),
        ]
    ] + [
        f"twisted/plugins/plugin.py:1 imports _glibbase from twisted.internet._glibbase (private to Twisted: go through {FENCE})"
    ]

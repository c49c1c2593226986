"""Strict YAML loading and one-line errors that name the file and the key.

Used for the server configuration and for Pod manifests: a typo must stop the
server with a message a person can act on, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """Bad configuration; the message is one line for the operator."""


class StrictModel(BaseModel):
    """Unknown keys are errors: they are almost always typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, e: yaml.YAMLError) -> ConfigError:
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(e, "problem", None) or str(e)
    return ConfigError(f"{where}: invalid YAML: {problem}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None


def load_documents(path: Path) -> Iterator[tuple[int, Any]]:
    """The documents of a (multi-document) YAML file, numbered from 1."""
    text = _read(path)
    try:
        for number, doc in enumerate(yaml.load_all(text, Loader=_StrictLoader), 1):
            if doc is not None:
                yield number, doc
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None


def load_document(path: Path) -> Any:
    docs = list(load_documents(path))
    if len(docs) != 1:
        raise ConfigError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0][1]


def key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def validation_error(where: str, e: ValidationError, model: type[BaseModel]) -> ConfigError:
    """Every problem of C{e}, one per line, as C{where: key.path: what is wrong}:
    a user fixing a file wants all of them at once, not one per run."""
    lines = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key" + _expected(model, loc[:-1])
        elif kind == "missing":
            message = "missing required key"
        else:
            message = err["msg"].removeprefix("Value error, ")
        key = f"{key_path(loc)}: " if loc else ""
        lines.append(f"{where}: {key}{message}")
    return ConfigError("\n".join(lines))


def count(n: int, noun: str, plural: str | None = None) -> str:
    """C{1 pod}, C{2 pods}: the numbers people read in a summary."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _expected(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """Name the keys allowed where an unknown one was found."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return ""
        current = _model_in(field.annotation)
        if current is None:
            return ""
    fields = getattr(current, "model_fields", None)
    if not fields:
        return ""
    names = [f.alias or name for name, f in fields.items()]
    return f" (expected one of: {', '.join(names)})"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def parse(model: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, found {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(where, e, model) from None


def resolve_path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path

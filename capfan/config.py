"""TOML configuration: one file per role, checked against a schema on load.

A schema is a dict of key -> Field (a value), Table (a nested table) or Tables (an array of
tables, `[[name]]`). Every problem raises ConfigError naming the full key (`capture[1].queues`)
and saying what would be accepted; an unknown key suggests the closest known one.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from typing import Any, Callable

from capfan.errors import ConfigError

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One value: its expected type(s), default (REQUIRED if none) and an optional converter
    `check(value, key) -> value` that raises ConfigError for values of the right type but wrong
    content."""

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    help: str = ""
    check: Callable[[Any, str], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Table:
    """A nested table with its own schema; missing means all defaults."""

    schema: dict
    help: str = ""


@dataclasses.dataclass(frozen=True)
class Tables:
    """An array of tables (`[[name]]`), each checked against the schema."""

    schema: dict
    help: str = ""
    min_items: int = 0


def load_file(path: str) -> dict:
    """Parse a TOML file; a missing file or a syntax error is a ConfigError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(None, f"no config file {path!r} (pass -c FILE; examples in agents/examples/)") from None
    except IsADirectoryError:
        raise ConfigError(None, f"config file {path!r} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(None, f"cannot read config file {path!r}: permission denied (run as its owner or fix its mode)") \
            from None
    except OSError as e:  # e.g. a file where a directory should be: "/etc/capfan.toml/agent.toml"
        raise ConfigError(None, f"cannot read config file {path!r}: {e.strerror}") from None
    try:
        # decoded here, not by tomllib.load: its UnicodeDecodeError is not a TOMLDecodeError
        return tomllib.loads(data.decode())
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(None, f"config file {path} is not valid TOML: not UTF-8 text (line {line}); save it as UTF-8") \
            from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(None, f"config file {path} is not valid TOML: {e}") from None


def _type_name(types) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _is_type(value, types) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types  # TOML true is not the integer 1 here
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _unknown(prefix: str, key: str, schema: dict) -> ConfigError:
    near = difflib.get_close_matches(key, list(schema), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    known = ", ".join(sorted(schema)) or "none"
    where = f"[{prefix}]" if prefix else "the top level"
    return ConfigError(_join(prefix, key), f"unknown key in {where}; {hint}known keys: {known}")


def validate(data: dict, schema: dict, prefix: str = "") -> dict:
    """Defaults filled in, types checked, converters applied; raises ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or "config", f"expected a table, got {type(data).__name__}")
    for key in data:
        if key not in schema:
            raise _unknown(prefix, key, schema)
    out = {}
    for key, spec in schema.items():
        full = _join(prefix, key)
        if isinstance(spec, Table):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise ConfigError(full, f"expected a table ([{full}]), got {type(value).__name__}")
            out[key] = validate(value, spec.schema, full)
        elif isinstance(spec, Tables):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(full, f"expected an array of tables ([[{full}]])")
            if len(value) < spec.min_items:
                raise ConfigError(full, f"at least {spec.min_items} [[{full}]] table(s) needed")
            out[key] = [validate(v, spec.schema, f"{full}[{i}]") for i, v in enumerate(value)]
        elif key in data:
            value = data[key]
            if not _is_type(value, spec.types):
                raise ConfigError(full, f"expected {_type_name(spec.types)}, got {value!r}")
            if isinstance(value, int) and not isinstance(value, bool) and float in _as_tuple(spec.types) \
                    and int not in _as_tuple(spec.types):
                value = float(value)
            out[key] = spec.check(value, full) if spec.check else value
        elif spec.default is REQUIRED:
            raise ConfigError(full, "required key is missing")
        else:
            value = spec.default() if callable(spec.default) else spec.default
            # defaults go through the same converter, so "64M" becomes bytes either way
            out[key] = spec.check(value, full) if spec.check and value is not None else value
    return out


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def positive(value, key: str):
    """Check: a number above zero."""
    if not value > 0:  # also rejects TOML's nan
        raise ConfigError(key, f"must be above 0, not {value!r}")
    return value


def non_negative(value, key: str):
    """Check: a number of zero or more."""
    if not value >= 0:  # also rejects TOML's nan
        raise ConfigError(key, f"must be 0 or more, not {value!r}")
    return value


def one_of(*choices: str):
    """Check factory: the value must be one of `choices`."""
    def check(value, key):
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value
    return check


def size(value, key: str) -> int:
    """Check: a byte or item count given as an integer or text like '64M' / '1G'."""
    from capfan.ring import parse_size  # noqa: PLC0415 - keeps config importable without the C core
    try:
        n = parse_size(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a size like 65536, '64M' or '1G', got {value!r}") from None
    if n <= 0:
        raise ConfigError(key, f"must be above 0, not {value!r}")
    return n


def path_relative_to(base: str):
    """Check factory: a path, relative ones taken from the config file's directory."""
    def check(value, key):
        if not value:
            raise ConfigError(key, "must not be empty")
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    return check

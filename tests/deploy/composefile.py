"""docker-compose.yml read the way compose reads it (PyYAML, anchors and `<<` merges resolved),
reduced to what the tests need: each service's argv, environment, mounts, dependencies,
healthcheck and /dev/shm size; and the container paths of a service mapped onto host paths."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"


class ComposeError(Exception):
    """The compose file uses something these tests do not model."""


@dataclasses.dataclass
class Mount:
    """One volume entry: a bind mount of a host path or a named volume, at `target`."""

    kind: str          # "bind" or "volume"
    source: str        # absolute host path (bind) or the volume's name
    target: str        # absolute path inside the container
    read_only: bool


@dataclasses.dataclass
class Service:
    """What a service runs and with what."""

    name: str
    image: str
    argv: list[str]                      # entrypoint + command
    environment: dict[str, str]
    mounts: list[Mount]
    depends_on: dict[str, str]           # service -> condition
    healthcheck: list[str] | None        # argv of the check, None when there is none
    shm_size: int | None
    tmpfs: list[str]
    ports: list[str]
    user: str | None
    raw: dict

    def mount_at(self, target: str) -> Mount:
        """The mount whose target is exactly `target`."""
        for m in self.mounts:
            if m.target == target:
                return m
        raise KeyError(f"{self.name} mounts nothing at {target}")


@dataclasses.dataclass
class Compose:
    """The parsed file."""

    path: Path
    services: dict[str, Service]
    volumes: list[str]
    raw: dict

    def start_order(self) -> list[str]:
        """Services in an order that honours depends_on (compose starts dependencies first)."""
        done, order = set(), []

        def visit(name, stack=()):
            if name in stack:
                raise ComposeError(f"depends_on cycle: {' -> '.join((*stack, name))}")
            if name not in done:
                for dep in self.services[name].depends_on:
                    visit(dep, (*stack, name))
                done.add(name)
                order.append(name)

        for name in self.services:
            visit(name)
        return order


def unescape(text: str, where: str) -> str:
    """Compose's `$$` is a literal `$`; any other `$` would be variable interpolation, which the
    cluster's file does not use (the tests would not reproduce it)."""
    if re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")):
        raise ComposeError(f"{where}: variable interpolation ({text!r}) is not modelled; write $$ for a literal $")
    return text.replace("$$", "$")


def _argv(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [unescape(a, where) for a in shlex.split(value)]
    return [unescape(str(a), where) for a in value]


def _size(text) -> int | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(text).strip().lower())
    if not m:
        raise ComposeError(f"shm_size {text!r} is not a size like 128m")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2)]


def _mount(entry, base: Path, where: str) -> Mount:
    if isinstance(entry, dict):
        kind, source, target = entry.get("type", "volume"), entry.get("source"), entry["target"]
        ro = bool(entry.get("read_only", False))
    else:
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise ComposeError(f"{where}: volume {entry!r} is not SOURCE:TARGET[:MODE]")
        source, target = parts[0], parts[1]
        ro = len(parts) == 3 and "ro" in parts[2].split(",")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    if kind == "bind":
        source = str((base / os.path.expanduser(source)).resolve())
    elif kind != "volume":
        raise ComposeError(f"{where}: mount type {kind!r} is not modelled")
    if not target.startswith("/"):
        raise ComposeError(f"{where}: mount target {target!r} is not an absolute path")
    return Mount(kind, source, os.path.normpath(target), ro)


def _healthcheck(hc, where: str) -> list[str] | None:
    if not hc or hc.get("disable"):
        return None
    test = hc["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", unescape(test, where)]
    if test[0] == "CMD":
        return _argv(test[1:], where)
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", unescape(test[1], where)]
    if test[0] == "NONE":
        return None
    raise ComposeError(f"{where}: healthcheck test {test!r}")


def load(path: Path | str = COMPOSE, profiles=()) -> Compose:
    """Parse a compose file; services with profiles only when one of theirs is in `profiles`
    (compose does not start them by default either)."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    base = path.parent
    services = {}
    for name, s in raw.get("services", {}).items():
        if s.get("profiles") and not set(s["profiles"]) & set(profiles):
            continue
        where = f"services.{name}"
        deps = s.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: "service_started" for d in deps}
        else:
            deps = {d: (c or {}).get("condition", "service_started") for d, c in deps.items()}
        env = s.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        services[name] = Service(
            name=name, image=s.get("image", ""),
            argv=_argv(s.get("entrypoint"), f"{where}.entrypoint") + _argv(s.get("command"), f"{where}.command"),
            environment={k: unescape(str(v), f"{where}.environment") for k, v in env.items()},
            mounts=[_mount(v, base, f"{where}.volumes") for v in s.get("volumes") or []],
            depends_on=deps, healthcheck=_healthcheck(s.get("healthcheck"), f"{where}.healthcheck"),
            shm_size=_size(s.get("shm_size")), tmpfs=list(s.get("tmpfs") or []),
            ports=[str(p) for p in s.get("ports") or []], user=s.get("user"), raw=s)
    return Compose(path=path, services=services, volumes=list(raw.get("volumes") or {}), raw=raw)


def host_path(container_path: str, mapping: list[tuple[str, str]]) -> str | None:
    """The host path behind a container path, given (target, host dir or file) pairs; None when
    no mount covers it (it would be the image's own file)."""
    p = os.path.normpath(container_path)
    for target, host in sorted(mapping, key=lambda m: -len(m[0])):
        if p == target:
            return host
        if p.startswith(target.rstrip("/") + "/"):
            return os.path.join(host, os.path.relpath(p, target))
    return None


def remap_strings(value, mapping: list[tuple[str, str]]):
    """A parsed TOML document with every absolute container path under a mount replaced by its host path."""
    if isinstance(value, dict):
        return {k: remap_strings(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [remap_strings(v, mapping) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return host_path(value, mapping) or value
    return value

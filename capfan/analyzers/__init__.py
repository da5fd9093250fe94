"""Analyzer plugin API.

An analyzer is a class registered under the entry-point group ``capfan.analyzers`` (the
built-ins ``flowmeter``, ``recorder`` and ``stats`` are registered the same way, in capfan's
own pyproject). ``capfan analyze`` runs one per process on a ring consumer and calls:

- ``start(ctx)`` once, before the first batch;
- ``on_batch(batch)`` for every batch of packets (a :class:`capfan.ring.Batch`, zero-copy);
- ``on_tick(now_ns)`` about every ``tick`` seconds, also when no packets arrive;
- ``stop()`` once at shutdown (SIGTERM/SIGINT, end of a replay): flush what you hold.

Options come from ``-o key=value`` (or the agent's TOML); declare them in ``options`` so they
are validated and typed before ``start`` (an unknown key is an error naming the key).
Records go out with ``ctx.emit(stream, records)``.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from importlib import metadata
from typing import Any, Callable

from capfan.errors import ConfigError

GROUP = "capfan.analyzers"


@dataclasses.dataclass(frozen=True)
class Option:
    """One analyzer option: its type (int, float, str, bool or a parser), default and help."""

    type: Callable[[Any], Any]
    default: Any
    help: str = ""


class Analyzer:
    """Base class of analyzers (subclassing is optional: the four methods are the contract)."""

    #: option name -> Option
    options: dict[str, Option] = {}
    #: default consumer policy: 'reliable' (holds the producer) or 'lossy'
    policy: str = "reliable"

    def start(self, ctx: "Context") -> None:
        """Called once before the first batch."""
        self.ctx = ctx

    def on_batch(self, batch) -> None:
        """Handle one batch of packets."""

    def on_tick(self, now_ns: int) -> None:
        """Periodic call (wall clock, ns since the epoch)."""

    def stop(self) -> None:
        """Flush and release everything; called once."""

    def stats(self) -> dict:
        """Counters for status displays (optional)."""
        return {}


class Context:
    """What an analyzer gets at start: its validated config, a logger, the ring it reads and
    `emit` to hand record batches to the exporter."""

    def __init__(self, name: str, config: dict, ring: str, consumer=None,
                 emit: Callable[[str, Any], None] | None = None):
        self.name = name
        self.config = config
        self.ring = ring
        self.consumer = consumer
        self.log = logging.getLogger(f"capfan.analyzer.{name}")
        self._emit = emit
        self.emitted: dict[str, int] = {}

    def emit(self, stream: str, records) -> None:
        """Ship a batch of records (a numpy structured array or a list of dicts) on `stream`."""
        n = len(records)
        if n == 0:
            return
        self.emitted[stream] = self.emitted.get(stream, 0) + n
        if self._emit is not None:
            self._emit(stream, records)

    def linktype(self, port: int = 0) -> int:
        """pcap link type of packets from ring port `port`."""
        return self.consumer.ring.port_linktype(port) if self.consumer is not None else 1


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{v!r} is not a boolean (true/false)")


def validate_options(name: str, options: dict[str, Option], given: dict[str, Any],
                     prefix: str = "") -> dict[str, Any]:
    """Typed config for an analyzer from user values; ConfigError names a bad or unknown key."""
    out = {k: o.default for k, o in options.items()}
    for k, v in given.items():
        if k not in options:
            known = ", ".join(sorted(options)) or "none"
            raise ConfigError(f"{prefix}{k}", f"analyzer {name!r} has no option {k!r} (options: {known})")
        conv = _bool if options[k].type is bool else options[k].type
        try:
            out[k] = conv(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{prefix}{k}", f"bad value {v!r} for analyzer {name!r}: {e}") from None
    return out


def available() -> dict[str, metadata.EntryPoint]:
    """Installed analyzers by name (entry-point group capfan.analyzers)."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def load(name: str) -> type:
    """The analyzer class registered as `name`, or given as `module:Class` (handy while writing
    one, before it is packaged); ConfigError lists the installed ones."""
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError("analyzer", f"cannot load analyzer {name!r}: {e}") from e
    eps = available()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError("analyzer", f"no analyzer named {name!r} (installed: {known}); plugins "
                          f"register under the entry-point group {GROUP!r}")
    try:
        return eps[name].load()
    except Exception as e:  # a broken plugin must not take the CLI down with a traceback
        raise ConfigError("analyzer", f"analyzer {name!r} ({eps[name].value}) failed to import: {e}") from e

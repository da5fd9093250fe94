"""Pieces every `capfan bench` report shares: target lines with PASS/MISS and number formatting."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Target:
    """One line of a benchmark's targets section."""
    target: str
    measured: str
    ok: bool | None  # None: not measured in this run (part skipped, sizes/methods not chosen)
    note: str = ""


def fmt(x: float, spec: str = "{:.1f}", dash: str = "-") -> str:
    """Format a number; NaN (not measured) becomes `dash`."""
    return dash if x != x else spec.format(x)


def targets_table(ts: list[Target]):
    """rich Table of the targets with PASS/MISS."""
    from rich.table import Table  # noqa: PLC0415 - keep `capfan --help` fast

    t = Table(title="targets", title_justify="left")
    for col in ("target", "measured", "result", "note"):
        t.add_column(col)
    for x in ts:
        res = "[green]PASS[/green]" if x.ok else ("n/a" if x.ok is None else "[red]MISS[/red]")
        t.add_row(x.target, x.measured, res, x.note)
    return t


def no_nan(x):
    """Copy of a JSON-ready structure with float NaN replaced by None (strict JSON has no NaN)."""
    if isinstance(x, float):
        return None if x != x else x
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [no_nan(v) for v in x]
    return x


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' when unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return ""

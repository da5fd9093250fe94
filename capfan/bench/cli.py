"""`capfan bench`: benchmarks that print a table of results measured in the same run."""
from __future__ import annotations

import json
import shlex
import sys
import time

import click


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback: '64,1500' -> (64, 1500)."""
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) <= 0:
        raise click.BadParameter("give at least one positive integer")
    return out


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    """Click callback: validate a comma-separated list of bench methods."""
    from capfan.bench.ring import METHODS  # noqa: PLC0415

    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [m for m in out if m not in METHODS]
    if bad or not out:
        raise click.BadParameter(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    return out


@click.group()
def bench():
    """Benchmarks (not tests): print measured tables with ratios against baselines."""


@bench.command("ring")
@click.option("--packets", default=2_000_000, show_default=True, type=click.IntRange(min=1),
              help="Packets per ring run at 64 B (bigger frames get half, ZeroMQ a half/quarter of that).")
@click.option("--sizes", default="64,1500", show_default=True, callback=_int_list, help="Frame sizes in bytes.")
@click.option("--consumers", default="1,2,4,8", show_default=True, callback=_int_list,
              help="Consumer counts N.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Rounds over the whole matrix; the table shows medians.")
@click.option("--methods", default=None, callback=lambda c, p, v: _methods(c, p, v) if v else None,
              help="Comma-separated subset of: produce-only, ring-c, ring-py, ring-c-lossy, "
                   "ring-c-lossy-spin, zmq, copyq (default all).")
@click.option("--spin-us", default=0, show_default=True, type=click.IntRange(min=0),
              help="Busy-poll time of the ring consumers before they sleep (0 = the ring's default).")
@click.option("--ndesc", default=1 << 18, show_default=True, type=click.IntRange(min=64),
              help="Ring descriptors (power of two).")
@click.option("--arena", default="256M", show_default=True, help="Ring packet arena size.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also save every measurement to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No per-run progress lines on stderr.")
def ring_cmd(packets, sizes, consumers, repeat, methods, spin_us, ndesc, arena, json_path, quiet):
    """Fan-out throughput of the shared-memory ring vs ZeroMQ PUB/SUB and per-consumer copy queues."""
    from rich.console import Console  # noqa: PLC0415

    from capfan.bench import ring as B  # noqa: PLC0415
    from capfan.ring import parse_size  # noqa: PLC0415

    methods = methods or tuple(B.METHODS)
    cfg = B.Settings(ndesc=ndesc, arena_bytes=parse_size(arena), spin_us=spin_us)
    info = B.machine_info()
    command = shlex.join(sys.argv)
    t0 = time.monotonic()
    runs = B.run_bench(sizes, consumers, packets, repeat, methods, cfg, progress=None if quiet else _progress)
    rows = B.summarize(runs)
    ts = B.targets(rows, runs, sizes, consumers)
    header = (f"capfan bench ring: {info['cpus']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, "
              f"rings in {info['ring_dir']} ({info['ring_fs']}), ndesc {cfg.ndesc}, arena {arena}, "
              f"spin {cfg.spin_us} us, {repeat} repeats, {time.monotonic() - t0:.0f} s")
    # a pipe or file gets a fixed wide layout instead of rich's 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=170)
    B.render(console, rows, ts, runs, info, header)
    if json_path:
        settings = dict(command=command, packets=packets, sizes=sizes, consumers=consumers, repeat=repeat,
                        methods=methods, spin_us=spin_us, ndesc=ndesc, arena_bytes=cfg.arena_bytes,
                        flush_every=B.FLUSH_EVERY, py_batch=B.PY_BATCH, zmq_batch=B.ZMQ_BATCH)
        with open(json_path, "w") as f:
            json.dump(B.report_dict(runs, rows, ts, info, settings), f, indent=1, default=str)
    if not B.accounting_ok(runs):
        sys.exit(1)  # a bench that lost packets must not look like a success


def _progress(i: int, total: int, r, seconds: float) -> None:
    """One stderr line per finished run."""
    what = f"error: {r.error.splitlines()[0]}" if r.error else f"producer {r.producer_ns_per_pkt:.0f} ns/pkt"
    click.echo(f"[{i}/{total}] {r.method} {r.size} B N={r.nconsumers}: {what} ({seconds:.1f} s)", err=True)

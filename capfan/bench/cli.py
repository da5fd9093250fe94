"""`capfan bench`: benchmarks that print a table of results measured in the same run."""
from __future__ import annotations

import json
import os
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


def _frame_sizes(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback: frame sizes the C frame generator supports (60..2048 bytes)."""
    out = _int_list(ctx, param, value)
    bad = [v for v in out if not 60 <= v <= 2048]
    if bad:
        raise click.BadParameter(f"frame sizes must be 60..2048 bytes, not {bad}")
    return out


def _methods(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """Click callback: validate a comma-separated list of bench methods (None = the default set)."""
    if not value:
        return None
    from capfan.bench.ring import METHODS  # noqa: PLC0415 - keep `capfan --help` fast

    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [m for m in out if m not in METHODS]
    if bad or not out:
        raise click.BadParameter(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    return out


def _size(ctx, param, value: str) -> int:
    """Click callback: '256M' -> bytes."""
    from capfan.ring import parse_size  # noqa: PLC0415

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.group()
def bench():
    """Benchmarks (not tests): print measured tables with ratios against baselines."""


@bench.command("ring")
@click.option("--packets", default=4_000_000, show_default=True, type=click.IntRange(min=1),
              help="Packets per ring run at 64 B; bigger frames get half, the baselines a share that "
                   "shrinks with N (see the packets column).")
@click.option("--sizes", default="64,1500", show_default=True, callback=_frame_sizes,
              help="Frame sizes in bytes (60..2048).")
@click.option("--consumers", default="1,2,4,8", show_default=True, callback=_int_list, help="Consumer counts N.")
@click.option("--repeat", default=4, show_default=True, type=click.IntRange(min=1),
              help="Rounds over the whole matrix; the table shows medians, ratios are per-round pairs.")
@click.option("--methods", default=None, callback=_methods,
              help="Comma-separated methods: produce-only, ring-c, ring-py, ring-c-lossy, zmq, copyq "
                   "(the default set) and the diagnostic ring-c-lossy-spin.")
@click.option("--spin-us", default=0, show_default=True, type=click.IntRange(min=0),
              help="Busy-poll time of the ring consumers before they sleep (0 = the ring's default).")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Producer alone on the first CPU, consumers share the others (like a pinned capture "
                   "worker); --no-pin lets the scheduler place everything.")
@click.option("--ndesc", default=1 << 18, show_default=True, type=click.IntRange(min=64),
              help="Ring descriptors (power of two).")
@click.option("--arena", default="256M", show_default=True, callback=_size, help="Ring packet arena size.")
@click.option("--copyq-size", default="4M", show_default=True, callback=_size,
              help="Bytes of each queue of the copy-queue baseline (one queue per consumer).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also save every measurement to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No per-run progress lines on stderr.")
def ring_cmd(packets, sizes, consumers, repeat, methods, spin_us, pin, ndesc, arena, copyq_size, json_path,
             quiet):
    """Fan-out throughput of the shared-memory ring vs ZeroMQ PUB/SUB and per-consumer copy queues."""
    from rich.console import Console  # noqa: PLC0415

    from capfan.bench import ring as B  # noqa: PLC0415

    methods = methods or B.DEFAULT_METHODS
    cfg = B.Settings(ndesc=ndesc, arena_bytes=arena, copyq_bytes=copyq_size, spin_us=spin_us, pin=pin)
    info = B.machine_info()
    t0 = time.monotonic()
    runs = B.run_bench(sizes, consumers, packets, repeat, methods, cfg, progress=None if quiet else _progress)
    rows = B.summarize(runs)
    ts = B.targets(rows, runs, sizes, consumers)
    placement = _placement(B.cpu_split(pin))
    header = (f"capfan bench ring: {info['cpus']} CPUs ({info['cpu_model']}), kernel {info['kernel']}; "
              f"{placement}; rings in {info['ring_dir']} ({info['ring_fs']}), ndesc {ndesc}, arena "
              f"{arena >> 20} MiB, copy queues {copyq_size >> 20} MiB each, consumer spin {spin_us} us, "
              f"producer flush every {B.FLUSH_EVERY} packets; {repeat} rounds in {time.monotonic() - t0:.0f} s")
    # a pipe or a file gets a fixed wide layout instead of rich's 80 columns
    B.render(Console() if sys.stdout.isatty() else Console(width=170), rows, ts, runs, header)
    if json_path:
        argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
        settings = dict(command=shlex.join(argv), packets=packets, sizes=sizes, consumers=consumers,
                        repeat=repeat, methods=methods, spin_us=spin_us, pin=pin, placement=placement,
                        ndesc=ndesc, arena_bytes=arena, copyq_bytes=copyq_size, flush_every=B.FLUSH_EVERY,
                        py_batch=B.PY_BATCH, zmq_batch=B.ZMQ_BATCH)
        with open(json_path, "w") as f:
            json.dump(B.report_dict(runs, rows, ts, info, settings), f, indent=1, default=str, allow_nan=False)
    if not B.accounting_ok(runs):
        sys.exit(1)  # a bench that lost packets must not look like a success


def _progress(i: int, total: int, r, seconds: float) -> None:
    """One stderr line per finished run."""
    what = f"error: {r.error.splitlines()[0]}" if r.error else f"producer {r.producer_ns_per_pkt:.0f} ns/pkt"
    click.echo(f"[{i}/{total}] {r.method} {r.size} B N={r.nconsumers}: {what} ({seconds:.1f} s)", err=True)


def _placement(split) -> str:
    """Describe the CPU split of cpu_split() for the header."""
    pcpus, ccpus = split
    if not pcpus:
        return "no CPU pinning"
    return f"producer alone on CPU {_cpus(pcpus)}, consumers share CPU {_cpus(ccpus)}"


def _cpus(cpus) -> str:
    """{1, 2, 3} -> '1,2,3'."""
    return ",".join(str(c) for c in sorted(cpus))

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


def _method_list(value: str | None, methods) -> tuple[str, ...] | None:
    """A validated comma-separated list of bench methods (None = the default set)."""
    if not value:
        return None
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [m for m in out if m not in methods]
    if bad or not out:
        raise click.BadParameter(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(methods)}")
    return out


def _methods(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """Click callback: validate `capfan bench ring --methods`."""
    if not value:
        return None
    from capfan.bench.ring import METHODS  # noqa: PLC0415 - keep `capfan --help` fast

    return _method_list(value, METHODS)


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


# ---------------------------------------------------------------- capfan bench capture

QUICK = {"packets": 20_000, "replay_packets": 500_000, "rounds": 1}


def _capture_sizes(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback: frame sizes that fit a 1500-byte MTU veth (60..1514 bytes)."""
    out = _int_list(ctx, param, value)
    bad = [v for v in out if not 60 <= v <= 1514]
    if bad:
        raise click.BadParameter(f"frame sizes must be 60..1514 bytes (1500-byte MTU), not {bad}")
    return tuple(dict.fromkeys(out))


def _rates(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback: 'max,200k' -> (0, 200000); max = the generator's full speed."""
    out = []
    for v in (v.strip().lower() for v in value.split(",") if v.strip()):
        if v == "max":
            out.append(0)
            continue
        try:
            pps = int(float(v[:-1]) * 1000) if v.endswith("k") else int(v)
        except ValueError:
            raise click.BadParameter(f"rate {v!r}: use max or packets per second like 200000 or 200k") from None
        if pps <= 0:
            raise click.BadParameter(f"rate {v!r} must be positive (or max)")
        out.append(pps)
    if not out:
        raise click.BadParameter("give at least one rate")
    return tuple(dict.fromkeys(out))


def _capture_methods(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """Click callback: validate `capfan bench capture --methods`."""
    if not value:
        return None
    from capfan.bench.capture import METHODS  # noqa: PLC0415

    return _method_list(value, METHODS)


@bench.command("capture")
@click.option("--packets", default=250_000, show_default=True, type=click.IntRange(min=1),
              help="Live part: frames trafgen sends per run (each method, size and rate).")
@click.option("--replay-packets", default=4_000_000, show_default=True, type=click.IntRange(min=1),
              help="Replay part: 64-byte frames in the pcap file (bigger frames: the same file size).")
@click.option("--sizes", default="64,1500", show_default=True, callback=_capture_sizes,
              help="Frame sizes in bytes (60..1514).")
@click.option("--rates", default="max,200k", show_default=True, callback=_rates,
              help="Generator rates: max (full speed, one trafgen worker) and/or packets per second.")
@click.option("--methods", default=None, callback=_capture_methods,
              help="Comma-separated: replay, replay-c, tcpdump-read, python-read (replay part); afpacket, "
                   "afxdp, afxdp-skb, tcpdump (live part). Default: all.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1),
              help="Interleaved rounds over everything; tables show medians, ratios are same-round pairs.")
@click.option("--quick", is_flag=True,
              help=f"Small counts and one round ({QUICK['packets']:,} live frames, {QUICK['replay_packets']:,} "
                   "replayed; options given explicitly still win): the whole run in under 30 s.")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Replay alone on the first CPU (consumer on the others); captures on a CPU other than "
                   "trafgen's (CPU 0).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also save every measurement to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No per-run progress lines on stderr.")
@click.pass_context
def capture_cmd(ctx, packets, replay_packets, sizes, rates, methods, rounds, quick, pin, json_path, quiet):
    """Capture sources vs tcpdump: pcap replay rate, AF_PACKET/AF_XDP capture rate and drops on veth."""
    from rich.console import Console  # noqa: PLC0415

    from capfan.bench import capture as C  # noqa: PLC0415

    given = {k: v for k, v in dict(packets=packets, replay_packets=replay_packets, rounds=rounds).items()
             if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT or not quick}
    cfg = C.Settings(sizes=sizes, rates=rates, methods=methods or tuple(C.METHODS), pin=pin,
                     **{**(QUICK if quick else {}), **given})
    info = C.machine_info()
    t0 = time.monotonic()
    try:
        replay, live, live_methods, skip = _capture_runs(C, cfg, quiet)
    except KeyboardInterrupt:
        click.echo("capfan bench capture: interrupted; its namespaces, rings and files were removed", err=True)
        sys.exit(130)
    notes = [n for n in [skip] + C.live_methods(cfg)[1] if n]
    replay_rows, live_rows = C.summarize_replay(replay), C.summarize_live(live)
    ts = C.replay_targets(replay_rows) + C.live_targets(live_rows, live_methods, cfg.rates, skip)
    ok = C.accounting_ok(replay, live)
    header = _capture_header(C, cfg, info, time.monotonic() - t0, bool(live))
    C.render(Console() if sys.stdout.isatty() else Console(width=190), replay_rows, live_rows, ts, header, notes, ok)
    if json_path:
        argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
        settings = dict(command=shlex.join(argv), packets=cfg.packets, replay_packets=cfg.replay_packets,
                        sizes=cfg.sizes, rates=cfg.rates, methods=cfg.methods, rounds=cfg.rounds, quick=quick,
                        pin=pin, capture_cpus=sorted(C.capture_cpus(pin) or []), live_methods=live_methods)
        with open(json_path, "w") as f:
            json.dump(C.report_dict(replay, live, replay_rows, live_rows, ts, info, settings, notes), f,
                      indent=1, default=str, allow_nan=False)
    if not ok:
        sys.exit(1)  # a bench that lost track of packets must not look like a success


def _capture_runs(C, cfg, quiet: bool):
    """Both parts: (replay runs, live runs, live methods run, why the live part did not run)."""
    skip = C.live_skip_reason(cfg)
    if skip and "root" in skip:
        click.echo(f"capfan bench capture: {skip}", err=True)
    replay = C.run_replay(cfg, progress=None if quiet else _replay_progress)
    if skip:
        return replay, [], [], skip
    methods = C.live_methods(cfg)[0]
    try:
        live = C.run_live(cfg, progress=None if quiet else _live_progress, methods=methods)
    except C.LiveSetupError as e:
        click.echo(f"capfan bench capture: {e}", err=True)
        return replay, [], [], str(e)
    return replay, live, methods, None


def _capture_header(C, cfg, info: dict, seconds: float, live: bool) -> str:
    """One paragraph: machine, tools, placement, counts."""
    cap = C.capture_cpus(cfg.pin)
    text = (f"capfan bench capture: {info['cpus']} CPUs ({info['cpu_model']}), kernel {info['kernel']}; "
            f"replay file on tmpfs, ring in {info['ring_dir']} ({info['ring_fs']}); "
            f"{cfg.replay_packets:,} replayed 64-byte frames per run")
    if live:
        text += (f"; live: {info['trafgen'] or 'trafgen'} with one worker on CPU 0 -> veth -> captures on "
                 f"{'CPU ' + ','.join(map(str, sorted(cap))) if cap else 'any CPU'}, {cfg.packets:,} frames "
                 f"per run at {', '.join(C.rate_label(r) for r in cfg.rates)}; {info['tcpdump'] or ''}")
    return text + f"; {cfg.rounds} round(s) in {seconds:.0f} s"


def _replay_progress(i: int, total: int, r, seconds: float) -> None:
    """One stderr line per finished replay run."""
    what = f"error: {r.error.splitlines()[0]}" if r.error else f"{r.wall_pps / 1e6:.2f} Mpps wall"
    click.echo(f"[replay {i}/{total}] {r.method} {r.size} B: {what} ({seconds:.1f} s)", err=True)


def _live_progress(i: int, total: int, r, seconds: float) -> None:
    """One stderr line per finished live run."""
    from capfan.bench.capture import rate_label  # noqa: PLC0415

    what = (f"error: {r.error.splitlines()[0][:160]}" if r.error else
            f"sent {r.sent}, captured {r.captured}, drops {r.drops}, unaccounted {r.unaccounted}")
    click.echo(f"[live {i}/{total}] {r.method} {r.size} B {rate_label(r.rate)}: {what} ({seconds:.1f} s)", err=True)


# ---------------------------------------------------------------- capfan bench flowmeter

def _fm_methods(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """Click callback: validate `capfan bench flowmeter --methods`."""
    if not value:
        return None
    from capfan.bench.flowmeter import METHODS  # noqa: PLC0415

    return _method_list(value, METHODS)


def _fm_sizes(ctx, param, value: str) -> str:
    """Click callback: a size mix name or frame sizes the synthetic capture supports."""
    from capfan.bench.flowmeter import size_mix  # noqa: PLC0415
    from capfan.errors import ConfigError  # noqa: PLC0415

    try:
        return size_mix(value)[0]
    except ConfigError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


@bench.command("flowmeter")
@click.option("--packets", default=2_000_000, show_default=True, type=click.IntRange(min=1),
              help="Packets in the synthetic capture; the C methods meter all of them.")
@click.option("--flows", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Bidirectional flows in the synthetic capture (interleaved, most of them live at once).")
@click.option("--sizes", default="mix64", show_default=True, callback=_fm_sizes,
              help="Frame sizes: mix64 (80% 64 B, the rest up to 1514 B), imix (64/576/1514 B, 7:4:1) "
                   "or comma-separated sizes in bytes drawn uniformly.")
@click.option("--pcap", type=click.Path(exists=True, dir_okay=False),
              help="Meter this Ethernet pcap/pcapng instead of the synthetic capture.")
@click.option("--dpkt-packets", default=200_000, show_default=True, type=click.IntRange(min=1),
              help="Prefix of the capture the dpkt baseline meters (and the agreement check covers).")
@click.option("--scapy-packets", default=20_000, show_default=True, type=click.IntRange(min=1),
              help="Prefix of the capture the scapy baseline meters.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Rounds over every method; the table shows medians, ratios are same-round pairs.")
@click.option("--methods", default=None, callback=_fm_methods,
              help="Comma-separated: flowmeter, flowmeter-arrays, dpkt, scapy (default: all).")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the synthetic capture.")
@click.option("--ndesc", default=1 << 18, show_default=True, type=click.IntRange(min=64),
              help="Bench ring descriptors (power of two).")
@click.option("--arena", default="256M", show_default=True, callback=_size, help="Bench ring packet arena size.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also save every measurement to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No per-run progress lines on stderr.")
def flowmeter_cmd(packets, flows, sizes, pcap, dpkt_packets, scapy_packets, repeat, methods, seed, ndesc, arena,
                  json_path, quiet):
    """Flow meter packets per CPU-second vs the same metering in dpkt and scapy (one run, agreement checked)."""
    from rich.console import Console  # noqa: PLC0415

    from capfan.bench import flowmeter as F  # noqa: PLC0415

    cfg = F.Settings(packets=packets, flows=flows, sizes=sizes, seed=seed, dpkt_packets=dpkt_packets,
                     scapy_packets=scapy_packets, repeat=repeat, methods=methods or F.DEFAULT_METHODS, pcap=pcap,
                     ndesc=ndesc, arena_bytes=arena)
    t0 = time.monotonic()
    w = F.load_pcap(pcap) if pcap else F.synthesize(packets, flows, sizes, seed)
    if not quiet:
        click.echo(f"workload ready in {time.monotonic() - t0:.1f} s: {w.description}", err=True)
    info = F.machine_info()
    runs, agree = F.run_bench(w, cfg, progress=None if quiet else _fm_progress)
    rows = F.summarize(runs)
    ts = F.targets(rows)
    header = (f"capfan bench flowmeter: {info['cpus']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, "
              f"Python {info['python']}, dpkt {info['dpkt']}, scapy {info['scapy']}; {w.description}; ring "
              f"{ndesc} descriptors, {arena >> 20} MiB arena, consumer batches of {F.BATCH}; {repeat} round(s) "
              f"in {time.monotonic() - t0:.0f} s")
    F.render(Console() if sys.stdout.isatty() else Console(width=170), rows, ts, agree, header)
    if json_path:
        argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
        settings = dict(command=shlex.join(argv), packets=packets, flows=flows, sizes=sizes, pcap=pcap,
                        dpkt_packets=dpkt_packets, scapy_packets=scapy_packets, repeat=repeat,
                        methods=cfg.methods, seed=seed, ndesc=ndesc, arena_bytes=arena, batch=F.BATCH)
        with open(json_path, "w") as f:
            json.dump(F.report_dict(runs, rows, ts, agree, info, settings, w.info), f, indent=1, default=str,
                      allow_nan=False)
    if not F.results_ok(runs, agree):
        sys.exit(1)  # a meter that disagrees with the reference, or a failed run, is not a result


def _fm_progress(i: int, total: int, r, seconds: float) -> None:
    """One stderr line per finished method run."""
    what = f"error: {r.error.splitlines()[0]}" if r.error else f"{r.mpps:.3f} Mpps per CPU-second"
    click.echo(f"[{i}/{total}] round {r.round + 1} {r.method} ({r.packets:,} packets): {what} ({seconds:.1f} s)",
               err=True)


# ---------------------------------------------------------------- capfan bench spin

def _spin_rates(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback: '0,1000,10k' -> (0, 1000, 10000); 0 = an idle ring."""
    out = []
    for v in (v.strip().lower() for v in value.split(",") if v.strip()):
        try:
            pps = int(float(v[:-1]) * 1000) if v.endswith("k") else int(v)
        except ValueError:
            raise click.BadParameter(f"rate {v!r}: use packets per second like 10000 or 10k (0 = idle)") from None
        if not 0 <= pps <= 1_000_000:
            raise click.BadParameter(f"rate {v!r} must be 0 (idle) to 1000000 packets per second")
        out.append(pps)
    if not out:
        raise click.BadParameter("give at least one rate")
    return tuple(dict.fromkeys(out))


def _spin_values(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback: spin_us values (0..1000000, the agent's range)."""
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated microseconds, got {value!r}") from None
    if not out or not all(0 <= v <= 1_000_000 for v in out):
        raise click.BadParameter("give spin_us values from 0 to 1000000")
    return out


@bench.command("spin")
@click.option("--rates", default="0,1000,10000,100000", show_default=True, callback=_spin_rates,
              help="Packet rates of the replay (packets per second, 10k works too); 0 = an idle ring.")
@click.option("--spin", "spins", default="0,20,200,2000", show_default=True, callback=_spin_values,
              help="Analyzer spin_us values; 0 (adaptive, the baseline of the ratios) is always measured.")
@click.option("--seconds", default=4.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Length of each replay; CPU is measured from 0.5 s after its first packet to 0.25 s "
                   "before its end (shorter replays: 20% / 15%).")
@click.option("--quick", is_flag=True,
              help="Rates 0,10000, spin 0,200, 1.5 s replays, 1 retry (options given explicitly still win): "
                   "the whole run in 10-20 s.")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(min=0),
              help="Repeat a run up to this many times while a worker waited for a CPU over 10% of the window "
                   "(other load caps what a spinner burns); the table shows the least contended attempt.")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help='Workers with cpus = "auto" (capture and analyzer on their own cores) or "none".')
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also save every measurement to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No per-run progress lines on stderr.")
@click.pass_context
def spin_cmd(ctx, rates, spins, seconds, retries, quick, pin, json_path, quiet):
    """Analyzer CPU cost of spin_us, through a real agent (pcap replay at 1x -> stats analyzer)."""
    from rich.console import Console  # noqa: PLC0415

    from capfan.bench import spin as S  # noqa: PLC0415

    given = {k: v for k, v in dict(rates=rates, spins=spins, seconds=seconds, retries=retries).items()
             if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT or not quick}
    cfg = S.Settings(pin=pin, **{**(S.QUICK if quick else {}), **given})
    info = S.machine_info()
    t0 = time.monotonic()
    work = []
    try:
        runs = S.run_bench(cfg, progress=None if quiet else _spin_progress, work_dir=work.append)
    except KeyboardInterrupt:
        click.echo("capfan bench spin: interrupted; its agents were stopped and its files removed", err=True)
        sys.exit(130)
    rows = S.summarize(runs, cfg)
    header = (f"capfan bench spin: {info['cpus']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, Python "
              f"{info['python']}; per run one `capfan agent`: pcap replay at 1x of {S.FRAME_SIZE}-byte UDP frames "
              f"-> ring ({S.RING_NDESC} descriptors, {S.RING_ARENA}) -> one `stats` analyzer (reliable), "
              f"cpus = \"{'auto' if pin else 'none'}\" ({S.placement(runs)}); {cfg.seconds:g} s replays, CPU "
              f"measured from {cfg.warmup:.3g} s after the first packet to {cfg.tail:.3g} s before the end "
              f"({_spin_clock(runs)}); {_spin_count(runs)} in {time.monotonic() - t0:.0f} s")
    S.render(Console() if sys.stdout.isatty() else Console(width=170), rows, runs, cfg, header)
    if json_path:
        argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
        settings = dict(command=shlex.join(argv), rates=cfg.rates, spins=cfg.spins, seconds=cfg.seconds,
                        retries=cfg.retries, quick=quick, pin=pin, warmup_s=round(cfg.warmup, 3),
                        tail_s=round(cfg.tail, 3), frame_size=S.FRAME_SIZE, ring_ndesc=S.RING_NDESC,
                        ring_arena=S.RING_ARENA, analyzer="stats", policy="reliable",
                        work_dir=work[0] if work else None)
        with open(json_path, "w") as f:
            json.dump(S.report_dict(runs, rows, info, settings), f, indent=1, default=str, allow_nan=False)
    if not S.accounting_ok(runs):
        sys.exit(1)  # a run that failed or lost packets must not look like a success


def _spin_count(runs) -> str:
    """'16 runs', or '16 runs (19 agent runs: 3 contended ones repeated)'."""
    n = sum(len(r.contention_attempts) or 1 for r in runs)
    extra = f" ({n} agent runs: {n - len(runs)} contended ones repeated)" if n > len(runs) else ""
    return f"{len(runs)} runs{extra}"


def _spin_clock(runs) -> str:
    """Which CPU clock the numbers come from."""
    clocks = {r.clock for r in runs if r.clock}
    if clocks == {"schedstat"}:
        return "CPU time from /proc/PID/task/*/schedstat, ns"
    return "CPU time from /proc/PID/stat utime+stime, 10 ms ticks" if clocks == {"stat"} else "mixed CPU clocks"


def _spin_progress(i: int, total: int, r) -> None:
    """One stderr line per finished agent run."""
    from capfan.bench.spin import rate_label  # noqa: PLC0415

    if r.error:
        what = f"error: {r.error.splitlines()[0][:160]}"
    else:
        what = (f"analyzer {100 * r.analyzer_share:.2f}% ({r.analyzer_sleeps / r.window_s:,.0f} sleeps/s), capture "
                f"{100 * r.capture_share:.1f}% of a core over {r.window_s:.2f} s ({r.window_packets:,} packets"
                + ("" if r.contention != r.contention else
                   f", waited for a CPU: analyzer {100 * r.analyzer_wait_s / r.window_s:.1f}%, capture "
                   f"{100 * r.capture_wait_s / r.window_s:.1f}%")
                + f"); {r.delivered:,}/{r.packets:,} delivered")
    if len(r.contention_attempts) > 1:
        what += f"; attempt {r.attempt}, the least contended of {len(r.contention_attempts)}"
    click.echo(f"[{i}/{total}] {rate_label(r.rate)} spin_us={r.spin_us}: {what} ({r.wall_s:.1f} s)", err=True)


@bench.command("collect")
@click.option("--records", default=2_000_000, show_default=True, type=click.IntRange(min=1),
              help="Flow records sent on the capfan path.")
@click.option("--json-records", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Flow records sent on the JSON baseline (it is much slower).")
@click.option("--batch", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Records per batch (one message, one store commit, one acknowledgement).")
@click.option("--window", default=16, show_default=True, type=click.IntRange(min=1),
              help="Batches in flight before waiting for acknowledgements.")
@click.option("--quick", is_flag=True, help="200,000 and 20,000 records (what the test runs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also save the numbers to this file.")
def collect_cmd(records, json_records, batch, window, quick, json_path):
    """Flow records/s end to end (encode -> ZeroMQ -> capfan collect -> store, acked) vs JSON."""
    from rich.console import Console  # noqa: PLC0415

    from capfan.bench import collect as B  # noqa: PLC0415

    if quick:
        records, json_records = 200_000, 20_000
    t0 = time.monotonic()
    m = B.measure(records, json_records, batch, window,
                  progress=lambda name, n: click.echo(f"  {name}: {n:,} records ...", err=True))
    console = Console() if sys.stdout.isatty() else Console(width=170)
    console.print(f"capfan bench collect: {os.cpu_count()} CPUs, one collector process, store on "
                  f"{tempfile_dir()}; {time.monotonic() - t0:.0f} s")
    ok = B.render(console, m)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"batch": batch, "window": window, "ok": ok,
                       "results": [dict(vars(r), rps=r.rps) for r in m["results"]]}, f, indent=1)


def tempfile_dir() -> str:
    """Where the bench's stores live (the system temporary directory)."""
    import tempfile  # noqa: PLC0415

    return tempfile.gettempdir()

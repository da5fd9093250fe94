"""`capfan capture IFACE --ring NAME`: capture an interface (queue) into a shared-memory ring.

Generic over the source registry: `--source` names any backend, `--queue`, `--bpf`, `--fanout`
and every `-o key=value` are handed to it as keyword arguments, so a backend's own options
(AF_XDP's xdp_mode, busy_poll, ...) need no change here.
"""
from __future__ import annotations

import inspect
import json
import signal
import sys
import time

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from capfan import errors
from capfan import ring as ringlib
from capfan import sources
from capfan.ringcli import SizeType, human_bytes

RUN_SLICE_S = 0.1          # longest stretch spent in C before signals and limits are checked
STATUS_INTERVAL_S = 1.0
ETHERNET = 1
FANOUT_CHOICES = ("hash", "lb", "cpu", "rollover", "random", "qm")
KERNEL_BYPASS = ("snf", "efvi")


class StopOnSignal:
    """Set by SIGINT/SIGTERM; the capture loop checks it between slices."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def install(self):
        """Route SIGINT and SIGTERM to this flag (main thread only)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (tests calling the command directly)
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self):
        """Put the previous handlers back."""
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self):
        return self.signal is not None


def parse_options(pairs) -> dict:
    """-o key=value pairs -> dict of strings (the backend converts and validates them)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="-o")
        out[key] = value.strip()
    return out


def open_capture_source(kind: str, iface: str, options: dict):
    """Open a source by registry name; a keyword the backend does not take is a clean error."""
    cls = sources.source_class(kind)
    # check before constructing: a half-built source would complain again when collected
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise errors.SourceError(f"the {kind} source does not take option(s) {', '.join(unknown)}; "
                                     f"its options: {', '.join(n for n in accepted if n != 'ifname')}")
    return cls(ifname=iface, **options)


def source_linktype(src, port: int) -> int:
    """Link type the source delivers on port; Ethernet for backends that only know it once
    bound to a producer (AF_XDP receives Ethernet frames into the ring itself)."""
    try:
        return src.linktype(port)
    except (TypeError, AttributeError, errors.CapfanError):
        return ETHERNET


def ensure_ring(name: str, create: bool, linktype: int, ndesc: int, arena: int, snaplen: int,
                full_policy: str) -> bool:
    """Create the ring if it is missing (and allowed); True if it was created."""
    return ringlib.ensure(name, create, ndesc=ndesc, arena_bytes=arena, linktype=linktype,
                          snaplen=snaplen, full_policy=full_policy)


def interface_warnings(iface: str, options: dict) -> list[str]:
    """Offload warnings and a note when hardware timestamps were asked for but cannot come."""
    from capfan.sources import offload  # noqa: PLC0415 - only for interface captures

    try:
        out = offload.offload_warnings(iface)
        wants_hwts = str(options.get("hw_timestamps", "no")).lower() in ("1", "yes", "true", "on", "y")
        if wants_hwts and not offload.hw_timestamping(iface):
            out.append(f"{iface} cannot timestamp received packets in hardware (driver reports no "
                       "SOF_TIMESTAMPING_RAW_HARDWARE): packets keep software timestamps")
        return out
    except errors.CapfanError:
        return []


class Meter:
    """Rates between two looks at the source and ring counters."""

    def __init__(self, src, producer):
        self.src, self.producer = src, producer
        self.t0 = self.t_last = time.monotonic()
        self.last = src.stats()
        self.pps = self.bps = 0.0

    def sample(self) -> dict:
        """Fresh counters; updates pps/bps over the time since the previous sample."""
        st = self.src.stats()
        now = time.monotonic()
        dt = now - self.t_last
        if dt > 0:
            self.pps = (st["packets"] - self.last["packets"]) / dt
            self.bps = 8 * (st["bytes"] - self.last["bytes"]) / dt
        self.last, self.t_last = st, now
        return st

    def elapsed(self) -> float:
        """Seconds since the capture started."""
        return time.monotonic() - self.t0


def _rate(value: float, unit: str) -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def status_line(iface: str, ring: str, st: dict, meter: Meter) -> Text:
    """The live one-liner: totals, rates, drops."""
    return Text(f"{iface} -> {ring}: {st['published']} pkts  {_rate(meter.pps, 'pps')}  {_rate(meter.bps, 'b/s')}  "
                f"kernel drops {st['kernel_drops']}  ring drops {st['ring_drops']}  {meter.elapsed():.1f} s")


def capture_loop(src, producer, count: int | None, duration: float | None, stop: "StopOnSignal", tick) -> None:
    """Receive until count packets were published, duration passed, a signal came or a replay ended."""
    start = time.monotonic()
    published = 0
    next_tick = start + STATUS_INTERVAL_S
    while not stop:
        now = time.monotonic()
        if (duration and now - start >= duration) or (count and published >= count):
            break
        slice_s = RUN_SLICE_S if not duration else max(0.001, min(RUN_SLICE_S, duration - (now - start)))
        n = src.run(producer, max_packets=(count - published) if count else 0, duration=slice_s)
        if n < 0:
            break
        published += n
        if time.monotonic() >= next_tick:
            tick()
            next_tick += STATUS_INTERVAL_S


def summary(iface: str, ring: str, kind: str, st: dict, seconds: float, producer) -> dict:
    """Final numbers of a capture, as data."""
    out = {"interface": iface, "ring": ring, "source": kind, "seconds": round(seconds, 3)}
    out.update(st)
    out["ring_dropped_full"] = producer.dropped
    out["pps"] = round(st["packets"] / seconds, 1) if seconds > 0 else 0.0
    return out


def print_summary(s: dict) -> None:
    """Human summary on stdout."""
    click.echo(f"captured {s['packets']} packets ({human_bytes(s['bytes'])}) on {s['interface']} in "
               f"{s['seconds']:.1f} s ({_rate(s['pps'], 'pps')}) with {s['source']}")
    click.echo(f"  published {s['published']} into ring {s['ring']}, ring drops {s['ring_drops']}, "
               f"kernel drops {s['kernel_drops']} (freezes {s['kernel_freezes']}), truncated {s['truncated']}, "
               f"hardware timestamps {s['hw_timestamps']}")


@click.command()
@click.argument("iface")
@click.option("--ring", "ring_name", required=True, help="Ring to write into (e.g. eth0.q0).")
@click.option("--source", "kind", default="afpacket", show_default=True,
              help="Capture backend: " + ", ".join(k for k in sources._MODULES if k != "pcap") + "."
                   + ("" if "efvi" in sources.backends_built() else
                      " (efvi: not in this build, it needs Onload's etherfabric headers and libciul at build time)"))
@click.option("--queue", type=click.IntRange(0, 65535), default=None,
              help="NIC receive queue (AF_XDP binds to it; AF_PACKET stores it as the descriptor port).")
@click.option("-c", "--count", type=click.IntRange(min=1), default=None,
              help="Stop after N packets were written into the ring.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop after this many seconds.")
@click.option("--bpf", default=None, metavar="EXPR", help="tcpdump filter: capture only matching packets.")
@click.option("--fanout", type=click.Choice(FANOUT_CHOICES), default=None,
              help="Share the interface with other captures in one fanout group (AF_PACKET).")
@click.option("--fanout-group", type=click.IntRange(0, 65535), default=None, metavar="ID",
              help="Fanout group id (all members use the same; default derived from IFACE).")
@click.option("--create/--no-create", default=True, show_default=True, help="Create the ring if it is missing.")
@click.option("--ndesc", type=SizeType(), default="65536", show_default=True, help="New ring: descriptors.")
@click.option("--arena", type=SizeType(), default="64M", show_default=True, help="New ring: packet arena size.")
@click.option("--snaplen", type=click.IntRange(1, 65535), default=65535, show_default=True,
              help="New ring: longest packet stored.")
@click.option("--full", "full_policy", type=click.Choice(list(ringlib.FULL_POLICIES)), default="block",
              show_default=True, help="New ring: hold the capture (block) or drop new packets when full.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Backend option, repeatable (afpacket: block_size=4M, block_count=64, fanout_flags=defrag, "
                   "promisc=no, hw_timestamps=yes; afxdp: xdp_mode, bind_mode, busy_poll...; snf: num_rings, "
                   "app_id...; efvi: rss_vis, filters, wait=poll|interrupt, jumbo=reassemble|truncate...).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No live status line.")
def capture(iface, ring_name, kind, queue, count, duration, bpf, fanout, fanout_group, create, ndesc, arena,
            snaplen, full_policy, options, as_json, quiet):
    """Capture what IFACE receives into ring NAME until Ctrl-C, --count or --duration."""
    try:
        _capture(iface, ring_name, kind, queue, count, duration, bpf, fanout, fanout_group, create, ndesc, arena,
                 snaplen, full_policy, parse_options(options), as_json, quiet)
    except errors.CapfanError as e:
        click.echo(f"capfan: error: {e}", err=True)
        sys.exit(2)


def _backend_options(queue, bpf, fanout, fanout_group, options: dict) -> dict:
    """Keyword arguments for the backend: the dedicated flags plus -o pairs (which win)."""
    kw = {}
    if queue is not None:
        kw["queue"] = queue
    if bpf is not None:
        kw["bpf"] = bpf
    if fanout is not None:
        kw["fanout"] = fanout
    if fanout_group is not None:
        kw["fanout_group"] = fanout_group
    kw.update(options)
    return kw


def _capture(iface, ring_name, kind, queue, count, duration, bpf, fanout, fanout_group, create, ndesc, arena,
             snaplen, full_policy, options, as_json, quiet):
    err = Console(stderr=True, highlight=False)
    kw = _backend_options(queue, bpf, fanout, fanout_group, options)
    try:
        port = int(kw.get("queue", kw.get("port", 0)) or 0)
    except ValueError:
        port = 0  # the backend rejects the value with a proper message
    ringlib.ring_path(ring_name)  # bad ring names fail before anything is opened
    # kernel offloads do not touch what kernel-bypass backends receive
    for w in ([] if kind in KERNEL_BYPASS else interface_warnings(iface, kw)):
        click.echo(f"capfan: warning: {w}", err=True)
    stop = StopOnSignal().install()
    src = producer = None
    try:
        src = open_capture_source(kind, iface, kw)
        if ensure_ring(ring_name, create, source_linktype(src, port), ndesc, arena, snaplen, full_policy):
            click.echo(f"created ring {ring_name} at {ringlib.ring_path(ring_name)}", err=True)
        producer = ringlib.Producer(ring_name)
        src.prepare(producer)
        describe = src.describe() if hasattr(src, "describe") else f"{kind} on {iface}"
        click.echo(f"capturing: {describe} -> ring {ring_name} (Ctrl-C to stop)", err=True)
        sys.stderr.flush()  # tests and supervisors wait for this line
        meter = Meter(src, producer)
        _run_with_status(src, producer, count, duration, stop, meter, iface, ring_name, err, quiet)
        st = meter.sample()
        result = summary(iface, ring_name, kind, st, meter.elapsed(), producer)
    finally:
        stop.restore()
        if producer is not None:
            producer.close()
        if src is not None:
            src.close()
    if as_json:
        click.echo(json.dumps(result))
    else:
        print_summary(result)


def _run_with_status(src, producer, count, duration, stop, meter, iface, ring_name, err: Console, quiet) -> None:
    """capture_loop with a live status line on an interactive terminal."""
    if quiet or not err.is_terminal:
        capture_loop(src, producer, count, duration, stop, meter.sample)
        return
    with Live(status_line(iface, ring_name, meter.sample(), meter), console=err, auto_refresh=False) as live:
        def tick():
            live.update(status_line(iface, ring_name, meter.sample(), meter), refresh=True)
        capture_loop(src, producer, count, duration, stop, tick)
        tick()


if __name__ == "__main__":  # `python -m capfan.capturecli` until the command is registered in cli.py
    capture()  # pylint: disable=no-value-for-parameter

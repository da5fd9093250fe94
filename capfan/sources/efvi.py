"""Solarflare/AMD ef_vi capture (`--source efvi`): the ring's arena is registered as the NIC's packet
memory, so frames land in the ring by DMA and every consumer reads them in place.

The C layer (capfan/_core/src_efvi.c) is compiled only when Onload's etherfabric headers and
libciul are found at build time; without them selecting efvi fails here with what to install.
Like AF_XDP, the VI is opened lazily in `prepare(producer)` (it needs the ring's arena).
Options also accept the text form of `capfan capture -o key=value`.
"""
from __future__ import annotations

from capfan import errors
from capfan._capfan_core import ffi, lib
from capfan.sources import STAT_FIELDS, Source, backends_built, raise_last, register
from capfan.sources.options import parse_bool, parse_choice, parse_int

LINKTYPE_ETHERNET = 1
MAX_VIS = 32
WAIT_MODES = {"poll": 0, "interrupt": 1}
JUMBO_MODES = {"reassemble": 1, "truncate": 0}
FILTER_WORDS = ("sniff", "sniff-promisc", "all-unicast", "all-multicast")
# EF_EVENT_RX_DISCARD_* reasons, in the order of capfan_efvi_counters.discards
DISCARD_REASONS = ("csum_bad", "mcast_mismatch", "crc_bad", "trunc", "rights", "ev_error", "other", "inner_csum_bad")
COUNTERS = ("no_desc_trunc", "resets", "jumbo", "jumbo_reassembled", "jumbo_no_room", "rx_multi", "hwts_unsynced",
            "reposted", "held_back", "primes", "wakeups")
NOT_BUILT = ("this capfan was built without ef_vi (the build found no Onload etherfabric headers): install "
             "Onload's development files (etherfabric/vi.h, pd.h, memreg.h and libciul), set "
             "CAPFAN_ONLOAD_PREFIX=DIR when they are not under /usr, then rebuild capfan (pip install -e . or "
             "python setup.py build_ext --inplace); the build prints 'capfan build: compiled ... src_efvi.c'")


def built() -> bool:
    """True if this build of the C core has the ef_vi layer."""
    return "efvi" in backends_built()


def emulated() -> bool:
    """True if the ef_vi layer was compiled against capfan's test emulation (test builds only)."""
    return bool(lib.capfan_efvi_emulated())


def parse_filters(value) -> str:
    """Comma-separated ef_vi filters from a string or a list, each checked for its form."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        parts = item.split(":")
        if item not in FILTER_WORDS and not (parts[0] in ("udp", "tcp") and len(parts) in (3, 5)):
            raise errors.SourceError(f"efvi option filters: {item!r} is not a filter; use {', '.join(FILTER_WORDS)}, "
                                     "udp|tcp:HOST:PORT or udp|tcp:HOST:PORT:RHOST:RPORT")
        out.append(item)
    if not out:
        raise errors.SourceError("efvi option filters is empty; e.g. sniff-promisc (the default)")
    return ",".join(out)


@register
class EfviSource(Source):
    """Capture what an ef_vi filter steers to a VI (or a VI set) of a Solarflare/AMD interface.

    ifname: the interface; rss_vis: 0 = one VI, N = a VI set of N VIs spreading flows (VI i
    publishes as port + i); filters: sniff-promisc (default), sniff, all-unicast, all-multicast,
    udp|tcp:HOST:PORT[:RHOST:RPORT], comma separated; rxq_size/evq_size: RX descriptors and events
    per VI (-1 = driver default); hw_timestamps: precise NIC timestamps; merge: RX_MULTI events;
    wait: poll (short naps when idle) or interrupt (ef_vi_prime + sleep on the driver fd after
    spin_us idle microseconds); jumbo: reassemble frames longer than a 2 KiB buffer into
    jumbo_bytes of the arena (default: an eighth, at most 16 MiB) or truncate them to the first
    buffer; port: descriptor port (default: queue)."""

    kind = "efvi"

    def __init__(self, ifname: str, queue=0, rss_vis=0, filters="sniff-promisc", rxq_size=-1, evq_size=-1,
                 hw_timestamps=True, merge=False, wait="poll", spin_us=50, jumbo="reassemble", jumbo_bytes=0,
                 port=None):
        super().__init__()
        if not built():
            raise errors.SourceNotSupported(NOT_BUILT)
        if not ifname:
            raise errors.SourceError("efvi needs an interface name (ifname)")
        self.ifname = str(ifname)
        q = parse_int("efvi", "queue", queue, 0, 0xFFFF)
        if q != 0:
            raise errors.SourceError(f"efvi option queue={queue!r}: an ef_vi capture is not bound to a NIC queue; "
                                     "one capture takes what its filters match (use rss_vis=N to spread it over "
                                     "N VIs)")
        self.options = {
            "rss_vis": parse_int("efvi", "rss_vis", rss_vis, 0, MAX_VIS),
            "filters": parse_filters(filters),
            "rxq_size": parse_int("efvi", "rxq_size", rxq_size, -1, 1 << 16),
            "evq_size": parse_int("efvi", "evq_size", evq_size, -1, 1 << 20),
            "hw_timestamps": parse_bool("efvi", "hw_timestamps", hw_timestamps),
            "merge": parse_bool("efvi", "merge", merge),
            "wait": parse_choice("efvi", "wait", wait, WAIT_MODES),
            "spin_us": parse_int("efvi", "spin_us", spin_us, 0, 10_000_000),
            "jumbo": parse_choice("efvi", "jumbo", jumbo, JUMBO_MODES),
            "jumbo_bytes": parse_int("efvi", "jumbo_bytes", jumbo_bytes, 0, 1 << 40, size=True),
            "port": q if port is None else parse_int("efvi", "port", port, 0, 0xFFFF),
        }
        if self.options["port"] + max(1, self.options["rss_vis"]) > 256:
            raise errors.SourceError(f"efvi option port={port!r}: port + rss_vis must stay below 256 (ring ports)")
        self._producer = None

    def _open(self, producer) -> None:
        o = self.options
        self._keep = [ffi.new("char[]", self.ifname.encode()), ffi.new("char[]", o["filters"].encode())]
        copts = ffi.new("capfan_efvi_opts *", {
            "ifname": self._keep[0], "rss_vis": o["rss_vis"], "rxq_size": o["rxq_size"], "evq_size": o["evq_size"],
            "hw_timestamps": int(o["hw_timestamps"]), "merge": int(o["merge"]), "filters": self._keep[1],
            "port": o["port"], "wait": o["wait"], "jumbo": o["jumbo"], "jumbo_bytes": o["jumbo_bytes"],
            "spin_us": o["spin_us"]})
        s = lib.capfan_efvi_open(copts, producer._p)
        if s == ffi.NULL:
            raise_last()
        self._s = s
        self._producer = producer  # the NIC writes into this producer's arena: keep it mapped

    def prepare(self, producer) -> None:
        """Open the VI(s) over this producer's arena (once) and switch it to external placement."""
        if self._s is None:
            self._open(producer)
        elif producer is not self._producer:
            raise errors.SourceError(f"this efvi source captures into ring {self._producer.name!r}; "
                                     "open another source for another ring")
        super().prepare(producer)

    def linktype(self, port: int = 0) -> int:
        """Always Ethernet."""
        return LINKTYPE_ETHERNET

    def counters(self) -> dict:
        """ef_vi's own counters: discards by reason (discard_*), jumbo, resets, interrupts..."""
        if self._s is None:
            return {**{f"discard_{r}": 0 for r in DISCARD_REASONS}, **{k: 0 for k in COUNTERS}}
        c = ffi.new("capfan_efvi_counters *")
        if lib.capfan_efvi_counters_get(self._s, c) != 0:
            raise_last()
        out = {f"discard_{r}": c.discards[i] for i, r in enumerate(DISCARD_REASONS)}
        out.update({k: getattr(c, k) for k in COUNTERS})
        return out

    def stats(self) -> dict:
        """The common counters (malformed = discarded frames, nic_drops = no-descriptor truncations)
        plus counters(): discards per reason, jumbo frames, resets, primes/wakeups."""
        base = super().stats() if self._s is not None else {k: 0 for k in STAT_FIELDS}
        base.update(self.counters())
        return base

    def describe(self) -> str:
        """One line: interface, VIs, filters, wait and jumbo modes (and a test-emulation marker)."""
        o = self.options
        vis = f"VI set of {o['rss_vis']} (ports {o['port']}-{o['port'] + o['rss_vis'] - 1})" if o["rss_vis"] else "1 VI"
        wait = next(k for k, v in WAIT_MODES.items() if v == o["wait"])
        jumbo = next(k for k, v in JUMBO_MODES.items() if v == o["jumbo"])
        text = f"efvi on {self.ifname}: {vis}, filters {o['filters']}, wait {wait}, jumbo {jumbo}"
        if emulated():
            text += " [capfan TEST EMULATION of ef_vi: not a NIC]"
        return text

    def close(self) -> None:
        """Free the VIs, filters and the packet-memory registration."""
        super().close()
        self._producer = None

    def __repr__(self):
        return f"EfviSource({self.describe()})"

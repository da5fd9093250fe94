"""Myricom/CSPi SNF capture: one capfan source reads one SNF ring of a port.

libsnf is loaded at run time by the C core (src_snf.c): from `lib`, else $CAPFAN_SNF_LIB, else
/opt/snf/lib/libsnf.so. capfan speaks SNF API 8 and refuses a library that speaks another.
The port is opened with `num_rings` rings (SNF spreads packets over them by a flow hash) and
`data_ring_size` bytes of data ring; run one source per ring (`queue` = ring id), in one
process or several. With `app_id` capfan is one SNF application among others on the port:
each distinct application id receives all traffic.
"""
from __future__ import annotations

import os

from capfan import errors
from capfan._capfan_core import ffi, lib
from capfan.sources import Source, raise_last, register
from capfan.sources.options import parse_bool as _parse_bool, parse_int as _parse_int

DEFAULT_LIB = "/opt/snf/lib/libsnf.so"
API_VERSION = 0x0008
MAX_RINGS = 1024
_OPTIONS = ("board", "ifname", "queue", "num_rings", "data_ring_size", "app_id", "lib", "flags", "batch", "port")


def parse_int(name: str, value, lo: int, hi: int, size: bool = False) -> int:
    """An snf integer/size option within [lo, hi]."""
    return _parse_int("snf", name, value, lo, hi, size)


def library_path(lib_path: str | None = None) -> str:
    """The libsnf the backend would load: the option, else $CAPFAN_SNF_LIB, else the vendor's."""
    return os.fspath(lib_path) if lib_path else (os.environ.get("CAPFAN_SNF_LIB") or DEFAULT_LIB)


@register
class SnfSource(Source):
    """Capture one ring of a Myricom/CSPi SNF port.

    board: SNF port number (or an interface name such as "snf0", looked up by the library);
    ifname: the same as a name; queue: ring id read by this source (0..num_rings-1);
    num_rings: rings the port is opened with (0 = library default, SNF_NUM_RINGS);
    data_ring_size: bytes of data ring, >= 1M (0 = library default); app_id: SNF application
    id (each id gets all traffic; None = none); lib: path of libsnf.so; flags: raw SNF open
    flags (default: process-shared rings when num_rings > 1); batch: borrow packets in batches
    when the library can (recv_many), else one at a time; port: descriptor port (default queue).
    """

    kind = "snf"

    def __init__(self, board=None, *, ifname: str | None = None, queue=0, num_rings=1, data_ring_size=0,
                 app_id=None, lib: str | None = None, flags=None, batch=True, port=None, **unknown):
        super().__init__()
        if unknown:
            raise errors.SourceError(f"unknown snf option(s) {', '.join(sorted(unknown))}; valid: {', '.join(_OPTIONS)}")
        self.options = self._validate(board, ifname, queue, num_rings, data_ring_size, app_id, lib, flags, batch,
                                      port)
        self._open()

    @staticmethod
    def _validate(board, ifname, queue, num_rings, data_ring_size, app_id, lib_path, flags, batch, port) -> dict:
        if board is not None and ifname is not None:
            raise errors.SourceError("snf: give the port either as board (number) or as ifname, not both")
        portnum = 0
        if isinstance(board, str) and not board.strip().lstrip("-").isdigit():
            ifname, board = board.strip(), None
        elif isinstance(ifname, str) and ifname.strip().isdigit():  # `capfan capture -i 1`: port 1
            ifname, board = None, ifname.strip()
        if board is not None:
            portnum = parse_int("board", board, 0, 2**32 - 1)
        if ifname is not None and (not isinstance(ifname, str) or not ifname):
            raise errors.SourceError(f"snf option ifname={ifname!r}: expected an SNF interface name like snf0")
        rings = parse_int("num_rings", num_rings, 0, MAX_RINGS)
        q = parse_int("queue", queue, 0, MAX_RINGS - 1)
        if rings and q >= rings:
            raise errors.SourceError(f"snf option queue={queue!r}: the port has {rings} ring(s), ids 0..{rings - 1}")
        if not rings and q:
            raise errors.SourceError("snf option queue needs num_rings (the ring count the port is opened with)")
        size = parse_int("data_ring_size", data_ring_size, 0, 1 << 40, size=True)
        if 0 < size < 1 << 20:
            raise errors.SourceError(f"snf option data_ring_size={data_ring_size!r}: must be at least 1M "
                                     "(or 0 for the library default)")
        aid = -1 if app_id is None or app_id == "" else parse_int("app_id", app_id, 0, 2**31 - 1)
        fl = -1 if flags is None else parse_int("flags", flags, 0, 0xFFFF)
        p = q if port is None else parse_int("port", port, 0, 0xFFFF)
        if lib_path is not None and not isinstance(lib_path, (str, os.PathLike)):
            raise errors.SourceError(f"snf option lib={lib_path!r}: expected the path of libsnf.so")
        return {"board": portnum, "ifname": ifname, "queue": q, "num_rings": rings, "data_ring_size": size,
                "app_id": aid, "lib": library_path(lib_path), "flags": fl,
                "batch": _parse_bool("snf", "batch", batch), "port": p}

    def _open(self) -> None:
        o = self.options
        if "/" in o["lib"] and not os.path.exists(o["lib"]):
            raise errors.SourceNotSupported(
                f"SNF library {o['lib']} not found: install Myricom/CSPi SNF or set CAPFAN_SNF_LIB "
                "(or the snf option lib) to the path of libsnf.so")
        self._keep = [ffi.new("char[]", o["lib"].encode())]
        ifname = ffi.NULL
        if o["ifname"]:
            ifname = ffi.new("char[]", o["ifname"].encode())
            self._keep.append(ifname)
        opts = ffi.new("capfan_snf_opts *", {
            "lib_path": self._keep[0], "ifname": ifname, "portnum": o["board"], "num_rings": o["num_rings"],
            "queue": o["queue"], "dataring_size": o["data_ring_size"], "app_id": o["app_id"], "flags": o["flags"],
            "batch": int(o["batch"]), "port": o["port"]})
        s = lib.capfan_snf_open(opts)
        if s == ffi.NULL:
            raise_last()
        self._s = s

    @property
    def port(self) -> int:
        """Port value written into every descriptor."""
        return self.options["port"]

    @property
    def batched(self) -> bool:
        """True when packets are borrowed in batches (snf_ring_recv_many), False for one at a time."""
        return bool(lib.capfan_snf_batched(self._s))

    def describe(self) -> str:
        """One line: port, ring, ring count, data ring, application id, receive path, library."""
        o = self.options
        where = o["ifname"] or f"port {o['board']}"
        rings = o["num_rings"] or "default"
        text = f"snf on {where}: ring {o['queue']} of {rings}"
        text += f", data ring {o['data_ring_size'] >> 20} MiB" if o["data_ring_size"] else ", default data ring"
        if o["app_id"] >= 0:
            text += f", application id {o['app_id']}"
        text += ", batched (recv_many)" if self._s is not None and self.batched else ", one packet per recv"
        return text + f", {o['lib']}"

    def __repr__(self):
        return f"SnfSource({self.describe()})"

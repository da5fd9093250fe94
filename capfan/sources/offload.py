"""NIC offload state (GRO, LRO, TSO, GSO, ...) read with the SIOCETHTOOL ioctl, no ethtool binary.

Receive offloads that merge frames (GRO, LRO, hardware GRO) make a capture show super-frames the
wire never carried; `offload_warnings()` says which ones are on and how to turn them off.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct

from capfan import errors

SIOCETHTOOL = 0x8946
IFNAMSIZ = 16
IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union

# ethtool commands (uapi linux/ethtool.h)
ETHTOOL_GRXCSUM, ETHTOOL_GTXCSUM, ETHTOOL_GSG = 0x14, 0x16, 0x18
ETHTOOL_GSTRINGS, ETHTOOL_GTSO, ETHTOOL_GGSO = 0x1B, 0x1E, 0x23
ETHTOOL_GFLAGS, ETHTOOL_GGRO, ETHTOOL_GSSET_INFO = 0x25, 0x2B, 0x37
ETHTOOL_GFEATURES, ETHTOOL_GET_TS_INFO = 0x3A, 0x41
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
ETH_FLAG_TXVLAN, ETH_FLAG_RXVLAN, ETH_FLAG_LRO = 1 << 7, 1 << 8, 1 << 15
SOF_TIMESTAMPING_RX_HARDWARE, SOF_TIMESTAMPING_RAW_HARDWARE = 1 << 2, 1 << 6

# offload_state() key -> legacy ethtool "get" command (value: u32 boolean)
_VALUE_CMDS = {"gro": ETHTOOL_GGRO, "tso": ETHTOOL_GTSO, "gso": ETHTOOL_GGSO, "sg": ETHTOOL_GSG,
               "rx_checksum": ETHTOOL_GRXCSUM, "tx_checksum": ETHTOOL_GTXCSUM}
_FLAG_BITS = {"lro": ETH_FLAG_LRO, "rxvlan": ETH_FLAG_RXVLAN, "txvlan": ETH_FLAG_TXVLAN}
# offload_state() key -> feature name in the ethtool feature string set (as `ethtool -k` shows it)
_FEATURE_NAMES = {"gro_hw": "rx-gro-hw", "gro_list": "rx-gro-list"}

# offloads that change what a capture sees: key -> (what it is, ethtool -K keyword, feature name)
_MERGING = {"gro": ("GRO", "gro", "rx-gro"), "lro": ("LRO", "lro", "rx-lro"),
            "gro_hw": ("hardware GRO", "rx-gro-hw", "rx-gro-hw"),
            "gro_list": ("GRO fraglist", "rx-gro-list", "rx-gro-list")}


def _ioctl(sock: socket.socket, ifname: str, buf) -> int:
    """SIOCETHTOOL on ifname with `buf` (a ctypes buffer) as ifr_data; returns 0 or the errno."""
    name = ifname.encode()
    if not name or len(name) >= IFNAMSIZ:
        raise errors.SourceError(f"bad interface name {ifname!r} (1 to {IFNAMSIZ - 1} characters)")
    ifr = struct.pack(f"{IFNAMSIZ}sP", name, ctypes.addressof(buf)).ljust(IFREQ_SIZE, b"\0")
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise errors.SourceError(f"no network interface named {ifname!r} in this network namespace "
                                     "(see: ip link)") from None
        return e.errno
    return 0


def _get_value(sock, ifname: str, cmd: int) -> int | None:
    """struct ethtool_value query; None when the driver does not support it."""
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, 0), 8)
    if _ioctl(sock, ifname, buf):
        return None
    return struct.unpack("II", buf.raw)[1]


def _feature_strings(sock, ifname: str) -> list[str]:
    """Names of the device features (the rows of `ethtool -k`), in bit order."""
    info = ctypes.create_string_buffer(struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0), 24)
    if _ioctl(sock, ifname, info):
        return []
    count = struct.unpack_from("I", info.raw, 16)[0]
    strings = ctypes.create_string_buffer(struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count),
                                          12 + count * ETH_GSTRING_LEN)
    if _ioctl(sock, ifname, strings):
        return []
    raw = strings.raw[12:]
    return [raw[i * ETH_GSTRING_LEN:(i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
            for i in range(count)]


def _feature_table(ifname: str) -> dict[str, tuple[bool, bool]]:
    """Named device features -> (active, changeable), from ETHTOOL_GFEATURES."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        names = _feature_strings(sock, ifname)
        if not names:
            return {}
        blocks = (len(names) + 31) // 32
        buf = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GFEATURES, blocks), 8 + 16 * blocks)
        if _ioctl(sock, ifname, buf):
            return {}
        out = {}
        for i, name in enumerate(names):
            # block: available (changeable), requested, active, never_changed
            available, _requested, active, _never = struct.unpack_from("IIII", buf.raw, 8 + 16 * (i // 32))
            if name:
                out[name] = (bool(active >> (i % 32) & 1), bool(available >> (i % 32) & 1))
        return out


def features(ifname: str) -> dict[str, bool]:
    """Every named device feature and whether it is active, like `ethtool -k IFNAME`."""
    return {name: active for name, (active, _) in _feature_table(ifname).items()}


def offload_state(ifname: str) -> dict[str, bool | None]:
    """gro, lro, tso, gso, sg, rx/tx checksum, rx/tx VLAN, hardware GRO, GRO fraglist of an
    interface: True/False, or None where the driver does not report it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        state = {key: (None if v is None else bool(v))
                 for key, v in ((k, _get_value(sock, ifname, cmd)) for k, cmd in _VALUE_CMDS.items())}
        flags = _get_value(sock, ifname, ETHTOOL_GFLAGS)
        for key, bit in _FLAG_BITS.items():
            state[key] = None if flags is None else bool(flags & bit)
    feats = _feature_table(ifname)
    for key, name in _FEATURE_NAMES.items():
        state[key] = feats[name][0] if name in feats else None
    return state


def offload_warnings(ifname: str) -> list[str]:
    """One line per receive offload that makes captured frames differ from the wire."""
    state = offload_state(ifname)
    feats = _feature_table(ifname)
    out = []
    for key, (label, word, feature) in _MERGING.items():
        if not state.get(key):
            continue
        msg = f"{label} is on for {ifname}: captured frames are merged by the kernel and won't match the wire; "
        if feature in feats and not feats[feature][1]:
            msg += "the driver does not let it be turned off (fixed): capture on another interface or a mirror port"
        else:
            msg += f"turn it off: ethtool -K {ifname} {word} off"
        out.append(msg)
    return out


def hw_timestamping(ifname: str) -> bool:
    """True if the driver can put hardware receive timestamps on packets (ETHTOOL_GET_TS_INFO)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        buf = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GET_TS_INFO), 44)
        if _ioctl(sock, ifname, buf):
            return False
        so_timestamping = struct.unpack_from("I", buf.raw, 4)[0]
    need = SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE
    return so_timestamping & need == need

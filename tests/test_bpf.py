"""BPF filters in tcpdump syntax (capfan/_core/bpf.c): verdicts equal tcpdump's on real captures,
bad expressions give libpcap's message, and the AF_PACKET backend builds without libpcap."""
import os
import struct
import subprocess
import tempfile

import pytest

from capfan._capfan_core import ffi, lib
from tests.frames import ipv4, tcp6, udp4

from tests.conftest import PCAPS as _PCAPS

PCAPS = str(_PCAPS)
CORE = os.path.join(os.path.dirname(__file__), "..", "capfan", "_core")
EINVAL, ENOTSUP = 7, 11


def read_pcap(path):
    """(linktype, [(frame, wirelen)]) of a classic pcap file."""
    with open(path, "rb") as f:
        data = f.read()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off, out = 24, []
    while off + 16 <= len(data):
        _s, _f, incl, orig = struct.unpack(endian + "IIII", data[off:off + 16])
        out.append((data[off + 16:off + 16 + incl], orig))
        off += 16 + incl
    return linktype, out


class Filter:
    """The C filter through cffi, freed with the object."""

    def __init__(self, expr, linktype=1, snaplen=0):
        f = lib.capfan_bpf_compile(expr.encode(), linktype, snaplen)
        if f == ffi.NULL:
            raise ValueError(ffi.string(lib.capfan_last_error()).decode())
        self.f = ffi.gc(f, lib.capfan_bpf_free)

    def match(self, pkt, wirelen=None):
        return lib.capfan_bpf_match(self.f, pkt, len(pkt), wirelen or len(pkt))


def tcpdump_keeps(path, expr):
    """Frames of a pcap that `tcpdump -r` keeps with expr."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.pcap")
        r = subprocess.run(["tcpdump", "-r", path, "-w", out, expr], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return [f for f, _ in read_pcap(out)[1]]


CASES = [
    ("ssh.pcap", "tcp port 22 and greater 200"),
    ("ssh.pcap", "tcp[tcpflags] & tcp-push != 0"),
    ("dns_tcp.pcap", "tcp and src port 53"),
    ("dns_tcp.pcap", "tcp[tcpflags] & tcp-syn != 0"),
    ("tftp.pcap", "udp and src host 192.168.1.2"),
    ("vxlan.pcap", "udp port 4789 and len > 100"),
    ("geneve.pcap", "udp port 6081 and greater 200"),
    ("isakmp4500.pcap", "udp port 4500 and not icmp"),
    ("ldp-common-session.pcap", "vlan 202 and udp port 646"),
    ("rpvstp-trunk-native-vid5.pcap", "vlan"),
    ("rpvstp-trunk-native-vid5.pcap", "stp or (vlan and stp)"),
]


@pytest.mark.parametrize("name,expr", CASES)
def test_verdicts_equal_tcpdump(name, expr):
    """Per packet, capfan_bpf_match agrees with tcpdump -r on the same file and filter."""
    path = os.path.join(PCAPS, name)
    linktype, pkts = read_pcap(path)
    f = Filter(expr, linktype)
    kept = [p for p, wl in pkts if f.match(p, wl)]
    assert kept == tcpdump_keeps(path, expr)
    assert 0 < len(kept) < len(pkts), "a case should keep some but not all packets"


def test_generated_frames():
    """VLAN, IPv6 and port filters on frames built by the tests."""
    v4, v6, tagged = udp4("10.0.0.1", "10.0.0.2", 1234, 53), tcp6("2001:db8::1", "2001:db8::2", 80, 4000), \
        udp4("10.0.0.1", "10.0.0.2", 1234, 53, vlan=42)
    assert [Filter("udp port 53").match(p) for p in (v4, v6, tagged)] == [1, 0, 0]
    assert [Filter("vlan 42 and udp port 53").match(p) for p in (v4, v6, tagged)] == [0, 0, 1]
    assert [Filter("ip6 and tcp src port 80").match(p) for p in (v4, v6, tagged)] == [0, 1, 0]
    assert Filter("").match(v4) == 1  # empty expression accepts everything, like tcpdump


def test_wire_length_is_what_len_sees():
    """`greater`/`len` test the wire length, not the captured bytes."""
    pkt = udp4("10.0.0.1", "10.0.0.2", 1, 2)
    f = Filter("greater 1000")
    assert f.match(pkt) == 0 and f.match(pkt, wirelen=1500) == 1


def test_raw_ip_link_type():
    """LINKTYPE_RAW (101) frames start with the IP header."""
    pkt = ipv4("10.0.0.1", "10.0.0.2", 17, 5, 53)
    assert Filter("udp port 53", linktype=101).match(pkt) == 1
    assert Filter("tcp", linktype=101).match(pkt) == 0


@pytest.mark.parametrize("expr", ["udp and", "port 99999", "host"])
def test_bad_filter_message(expr):
    """A bad expression fails with EINVAL and a message quoting it and libpcap's reason."""
    assert lib.capfan_bpf_compile(expr.encode(), 1, 0) == ffi.NULL
    assert lib.capfan_last_error_code() == EINVAL
    msg = ffi.string(lib.capfan_last_error()).decode()
    assert msg.startswith(f"bad BPF filter '{expr}': ") and len(msg) > len(expr) + 20


NO_PCAP_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "bpf.h"
#include "source.h"
int main(void) {
    capfan_bpf *f = capfan_bpf_compile("udp", 1, 0);
    printf("compile=%s code=%d msg=%s\n", f ? "ok" : "null", capfan_last_error_code(), capfan_last_error());
    capfan_afpacket_opts o = {.ifname = "lo", .fanout_mode = -1, .bpf = "udp"};
    capfan_source *s = capfan_afpacket_open(&o);
    printf("open=%s code=%d msg=%s\n", s ? "ok" : "null", capfan_last_error_code(), capfan_last_error());
    printf("backends=%s\n", capfan_source_backends());
    return 0;
}
"""


def test_afpacket_builds_without_libpcap(tmp_path):
    """Without libpcap (no CAPFAN_HAVE_LIBPCAP, no bpf.c) the AF_PACKET backend still builds;
    a filter then fails with ENOTSUP and says what to install."""
    main = tmp_path / "main.c"
    main.write_text(NO_PCAP_MAIN)
    exe = tmp_path / "nopcap"
    srcs = [os.path.join(CORE, s) for s in ("ring.c", "parse.c", "source.c", "src_afpacket.c")]
    r = subprocess.run(["cc", "-std=c11", "-O1", "-Wall", "-Werror", "-Wno-unused-function", "-D_GNU_SOURCE",
                        "-DCAPFAN_HAVE_AFPACKET=1", f"-I{CORE}", str(main), *srcs, "-o", str(exe), "-lpthread"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    assert f"compile=null code={ENOTSUP} msg=BPF filter 'udp' needs libpcap" in out
    if os.geteuid() == 0:  # the socket comes first; without root the message is the CAP_NET_RAW one
        assert f"open=null code={ENOTSUP} msg=BPF filter 'udp' needs libpcap" in out
    assert "backends= afpacket" in out

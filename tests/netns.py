"""Test hosts as network namespaces: a veth pair between a capture namespace and a peer
namespace that sends traffic. Everything is deleted afterwards, also on failure."""
import os
import subprocess
import uuid

import pytest


def sh(*args, check=True, **kw):
    """Run a command, raising with its stderr on failure."""
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class VethPair:
    """cap_ns:cap_if <-veth-> peer_ns:peer_if, addresses 10.77.0.1 (cap) / 10.77.0.2 (peer)."""

    def __init__(self, tag=None):
        t = tag or uuid.uuid4().hex[:6]
        self.cap_ns, self.peer_ns = f"cfcap-{t}", f"cfpeer-{t}"
        self.cap_if, self.peer_if = f"cfc{t}", f"cfp{t}"
        self.cap_ip, self.peer_ip = "10.77.0.1", "10.77.0.2"

    def up(self, cap_queues=1, peer_queues=1):
        """Create both namespaces and the veth pair between them (numrx/numtx queues)."""
        sh("ip", "netns", "add", self.cap_ns)
        sh("ip", "netns", "add", self.peer_ns)
        sh("ip", "link", "add", self.cap_if, "numrxqueues", str(cap_queues), "numtxqueues", str(cap_queues),
           "type", "veth", "peer", "name", self.peer_if,
           "numrxqueues", str(peer_queues), "numtxqueues", str(peer_queues))
        sh("ip", "link", "set", self.cap_if, "netns", self.cap_ns)
        sh("ip", "link", "set", self.peer_if, "netns", self.peer_ns)
        for ns, ifc, ip in ((self.cap_ns, self.cap_if, self.cap_ip), (self.peer_ns, self.peer_if, self.peer_ip)):
            self.run(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifc)
            self.run(ns, "ip", "link", "set", ifc, "up")
            self.run(ns, "ip", "link", "set", "lo", "up")
        return self

    def run(self, ns, *args, check=True, **kw):
        """Run a command inside a namespace."""
        return sh("ip", "netns", "exec", ns, *args, check=check, **kw)

    def popen(self, ns, *args, **kw):
        """Start a command inside a namespace."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)

    def send_pcap(self, path, rate_pps=None, loops=1):
        """Replay a pcap out of the peer end (tcpreplay): frames arrive on cap_if."""
        args = ["tcpreplay", "-q", f"--intf1={self.peer_if}", f"--loop={loops}"]
        args += [f"--pps={rate_pps}"] if rate_pps else ["--topspeed"]
        return self.run(self.peer_ns, *args, path)

    def quiet(self):
        """Turn IPv6 off on both ends (no ND/MLD frames): only what the test sends crosses the
        pair. Returns self."""
        for ns, ifc in ((self.cap_ns, self.cap_if), (self.peer_ns, self.peer_if)):
            for key in ("all", "default", ifc):
                self.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        return self

    def down(self):
        """Delete both namespaces (which removes the veth pair and any XDP program on it)."""
        for ns in (self.cap_ns, self.peer_ns):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def veth():
    """A fresh VethPair, torn down after the test even when it fails."""
    if os.geteuid() != 0:
        pytest.fail("capture tests need root (CI runs as root): network namespaces and veth")
    v = VethPair().up()
    try:
        yield v
    finally:
        v.down()

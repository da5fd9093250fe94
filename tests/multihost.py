"""Test hosts for the multi-host tests: one network namespace per sensor and one for the
collector, each sensor joined to the collector by its own veth pair (10.79.<i>.1 on the sensor,
10.79.<i>.2 on the collector). Everything is deleted afterwards, also on failure."""
import os
import subprocess
import uuid

import pytest

from tests.netns import sh


class Lab:
    """Namespaces `collector` and `sensor1..N`; `ip(i)` is the collector's address for sensor i."""

    def __init__(self, sensors=2, tag=None):
        t = tag or uuid.uuid4().hex[:6]
        self.tag = t
        self.collector = f"cfcol-{t}"
        self.sensors = [f"cfsen{i}-{t}" for i in range(1, sensors + 1)]

    def up(self):
        """Create the namespaces and links (loopback up everywhere)."""
        try:
            for ns in (self.collector, *self.sensors):
                sh("ip", "netns", "add", ns)
                self.run(ns, "ip", "link", "set", "lo", "up")
            for i, ns in enumerate(self.sensors, 1):
                a, b = f"cfs{i}{self.tag}", f"cfc{i}{self.tag}"
                sh("ip", "link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", self.collector)
                self.run(ns, "ip", "addr", "add", f"10.79.{i}.1/24", "dev", a)
                self.run(self.collector, "ip", "addr", "add", f"10.79.{i}.2/24", "dev", b)
                self.run(ns, "ip", "link", "set", a, "up")
                self.run(self.collector, "ip", "link", "set", b, "up")
        except Exception:
            self.down()
            raise
        return self

    def ip(self, i):
        """The collector's address as sensor i (1-based) reaches it."""
        return f"10.79.{i}.2"

    def run(self, ns, *args, check=True, **kw):
        """Run a command inside a namespace."""
        return sh("ip", "netns", "exec", ns, *args, check=check, **kw)

    def popen(self, ns, *args, **kw):
        """Start a command inside a namespace."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)

    def down(self):
        """Delete every namespace (and with them the links)."""
        for ns in (self.collector, *self.sensors):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def lab():
    """Two sensors and a collector, torn down after the test."""
    if os.geteuid() != 0:
        pytest.fail("multi-host tests need root (CI runs as root): network namespaces and veth")
    lab = Lab().up()
    try:
        yield lab
    finally:
        lab.down()

"""Two network namespaces joined by a veth pair, for `capfan bench capture`.

A capture namespace holds one end (cap_if), a generator namespace the other (gen_if): traffic
sent out of gen_if arrives on cap_if and nowhere else, so the bench never touches the host's
own interfaces. IPv6 is off in both namespaces before the veth exists (no neighbour discovery
or MLD frames) and no address is configured (no ARP), so only the generator's frames cross.

Names are unique per instance; `down()` deletes both namespaces (which destroys the veth and
any XDP program on it) and is safe to call twice, also after a partial `up()`. Use it as a
context manager: the pair is deleted on exceptions and on Ctrl-C too.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid

IFNAMSIZ = 15  # longest interface name Linux accepts


def sh(*args, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a command (no shell); raise RuntimeError with its stderr when check and it fails."""
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM (they are delivered when the block ends), so a second Ctrl-C
    cannot cut a clean-up short."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class VethPair:
    """cap_ns:cap_if <-veth-> gen_ns:gen_if, both namespaces private to this instance."""

    def __init__(self, tag: str | None = None):
        t = tag or uuid.uuid4().hex[:8]
        self.tag = t
        self.cap_ns, self.gen_ns = f"capfan-bench-cap-{t}", f"capfan-bench-gen-{t}"
        self.cap_if, self.gen_if = f"cfbc{t}"[:IFNAMSIZ], f"cfbg{t}"[:IFNAMSIZ]

    def up(self) -> "VethPair":
        """Create both namespaces and the veth pair (links up, IPv6 off); undone on failure."""
        try:
            for ns in (self.cap_ns, self.gen_ns):
                sh("ip", "netns", "add", ns)
                self._ipv6_off(ns, ("all", "default"))
            # both ends are created directly inside their namespaces: nothing ever exists in the
            # host namespace, so an interrupted set-up cannot leave an interface behind there
            sh("ip", "link", "add", self.cap_if, "netns", self.cap_ns, "type", "veth",
               "peer", "name", self.gen_if, "netns", self.gen_ns)
            for ns, ifc in ((self.cap_ns, self.cap_if), (self.gen_ns, self.gen_if)):
                self._ipv6_off(ns, (ifc,))
                sh("ip", "-n", ns, "link", "set", ifc, "up")
        except BaseException:
            self.down()
            raise
        return self

    def _ipv6_off(self, ns: str, keys) -> None:
        """Disable IPv6 (a kernel without IPv6 has nothing to disable: ignored)."""
        args = [f"net.ipv6.conf.{k}.disable_ipv6=1" for k in keys]
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", *args, check=False)

    def cmd(self, ns: str, *args) -> list[str]:
        """argv running a command inside a namespace."""
        return ["ip", "netns", "exec", ns, *args]

    def popen(self, ns: str, *args, **kw) -> subprocess.Popen:
        """Start a command inside a namespace, in its own session: a Ctrl-C at the terminal
        reaches only the bench, which then stops its children itself (by pid)."""
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(self.cmd(ns, *args), **kw)

    def counters(self, ns: str, ifname: str) -> dict[str, int]:
        """Interface counters (rx/tx packets and drops) as the kernel reports them."""
        out = sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname).stdout
        st = json.loads(out)[0]["stats64"]
        return {"rx_packets": st["rx"]["packets"], "rx_dropped": st["rx"]["dropped"],
                "tx_packets": st["tx"]["packets"], "tx_dropped": st["tx"]["dropped"]}

    def xdp_attached(self) -> bool:
        """True if an XDP program is attached to the capture end."""
        out = sh("ip", "-n", self.cap_ns, "-d", "link", "show", "dev", self.cap_if, check=False).stdout
        return "prog/xdp" in out

    def exists(self) -> bool:
        """True while either namespace still exists."""
        names = sh("ip", "netns", "list", check=False).stdout.split()
        return self.cap_ns in names or self.gen_ns in names

    def down(self) -> None:
        """Delete both namespaces (and with them the veth and any XDP program); a missing one
        is fine. Processes still inside would keep a namespace alive: stop them first."""
        with signals_held():
            for ns in (self.cap_ns, self.gen_ns):
                sh("ip", "netns", "del", ns, check=False)

    def __enter__(self) -> "VethPair":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def is_root() -> bool:
    """True when this process may create namespaces and attach XDP programs."""
    return os.geteuid() == 0

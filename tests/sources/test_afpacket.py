"""AF_PACKET capture end to end: `capfan capture` runs inside a capture namespace on one end of a
veth pair, known traffic is replayed from the peer namespace, and the ring must hold exactly the
frames that were sent (byte for byte), with drops counted where they happen."""
import collections
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from capfan import ring as ringlib
from tests.conftest import wait_for
from tests.frames import ether, ipv4, udp4
from tests.netns import veth  # noqa: F401 - fixture
from tests.pcapfile import read_pcap, write_pcap

pytestmark = pytest.mark.privileged

from tests.conftest import PCAPS as _PCAPS

PCAPS = str(_PCAPS)
SAMPLES = ["dns_tcp.pcap", "tftp.pcap", "vxlan.pcap", "ssh.pcap", "geneve.pcap"]
CAPFAN = [os.environ.get("CAPFAN_BIN", "capfan")]
READY_TIMEOUT = 20.0


# ------------------------------------------------------------------ pcap files

def tcpdump_filter(frames, expr, tmp):
    """The frames tcpdump keeps with filter expr (the oracle for --bpf)."""
    src, dst = os.path.join(tmp, "in.pcap"), os.path.join(tmp, "out.pcap")
    write_pcap(src, frames)
    r = subprocess.run(["tcpdump", "-r", src, "-w", dst, expr], capture_output=True, text=True)
    assert r.returncode == 0, f"tcpdump failed: {r.stderr}"
    return read_pcap(dst)


def digests(frames):
    """Multiset of content hashes (readable diffs on failure)."""
    return collections.Counter(hashlib.sha256(f).hexdigest()[:16] for f in frames)


def sample_frames():
    """Frames of the sample pcaps, in replay order."""
    out = []
    for name in SAMPLES:
        out += read_pcap(os.path.join(PCAPS, name))
    return out


def numbered_udp(n, flows=1, size=18):
    """n distinct Ethernet/IPv4/UDP frames over `flows` flows, both directions alternating."""
    out = []
    for i in range(n):
        f = i % flows
        a, b = f"10.1.{f // 250}.{f % 250 + 1}", f"10.2.{f // 250}.{f % 250 + 1}"
        payload = struct.pack("!I", i).ljust(size, b".")
        out.append(udp4(a, b, 1000 + f, 53, payload) if (i // flows) % 2 == 0 else udp4(b, a, 53, 1000 + f, payload))
    return out


# ------------------------------------------------------------------ capture processes

@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="capfan-afp-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def quiet(veth):  # noqa: F811
    """The veth pair without IPv6 (no ND/MLD chatter): only what the test sends crosses it."""
    for tool in ("tcpreplay", "tcpdump", "ethtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed by the capture tests (apt-get install {tool})")
    veth.quiet()
    return veth


class Capture:
    """`capfan capture` running in the capture namespace; stop() returns its JSON summary."""

    def __init__(self, v, ring, *args):
        self.ring = ring
        self.err = []
        cmd = [*CAPFAN, "capture", v.cap_if, "--ring", ring, "--json", "-q", *args]
        self.proc = v.popen(v.cap_ns, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def stderr(self):
        return "\n".join(self.err)

    def wait_ready(self):
        """Block until the source is open (the 'capturing:' line); fail with stderr if it died."""
        ok = wait_for(lambda: any(l.startswith("capturing:") for l in self.err) or self.proc.poll() is not None,
                      timeout=READY_TIMEOUT)
        assert ok and self.proc.poll() is None, f"capture did not start:\n{self.stderr()}"
        return self

    def stop(self):
        """SIGINT, wait, parse the summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"capture did not stop on SIGINT:\n{self.stderr()}")
        out = self.proc.stdout.read()
        time.sleep(0.05)  # let the stderr reader finish
        assert self.proc.returncode == 0, f"capture failed ({self.proc.returncode}):\n{self.stderr()}\n{out}"
        return json.loads(out.strip().splitlines()[-1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def captures(ring_dir):
    """Factory starting captures; any still running at the end are killed."""
    started = []

    def start(v, ring, *args, ready=True):
        c = Capture(v, ring, *args)
        started.append(c)
        return c.wait_ready() if ready else c

    yield start
    for c in started:
        c.kill()


def send(v, frames, tmp, name="send.pcap"):
    """Replay frames out of the peer end (they arrive on the capture end)."""
    path = os.path.join(tmp, name)
    write_pcap(path, frames)
    r = v.send_pcap(path)
    assert f"Successful packets:        {len(frames)}" in r.stdout, r.stdout + r.stderr


def published(ring):
    """Packets the ring has seen: published + dropped because it was full."""
    with ringlib.Ring(ring) as r:
        st = r.stats()
    return st["head"] + st["dropped_full"]


def settle(ring, n, timeout=15.0, quiet_s=0.3):
    """Wait until ring has seen n packets, then a little longer to catch any extra."""
    assert wait_for(lambda: published(ring) >= n, timeout=timeout), \
        f"ring {ring} saw {published(ring)} of {n} packets"
    time.sleep(quiet_s)


def ring_contents(ring):
    """(frames, descriptors) of everything still in the ring, oldest first."""
    c = ringlib.Consumer(ring, "check", policy="reliable", start="oldest")
    frames, descs = [], []
    try:
        while (b := c.next(timeout=0)) is not None:
            d = b.desc
            for i in range(len(b)):
                frames.append(bytes(b.packet(i)))
                descs.append(d[i].copy())
    finally:
        c.close()
    return frames, descs


# ------------------------------------------------------------------ tests

def test_captures_exactly_the_received_frames(quiet, captures, tmp):
    """Every frame replayed from the peer lands in the ring once, byte for byte; frames the
    capture side itself sends (outgoing) are not captured."""
    v = quiet
    frames = sample_frames()
    t0 = time.time_ns()
    cap = captures(v, "exact")
    # outgoing traffic on the captured interface while the peer sends: must not show up
    own = os.path.join(tmp, "own.pcap")
    write_pcap(own, read_pcap(os.path.join(PCAPS, "isakmp4500.pcap")))
    v.run(v.cap_ns, "tcpreplay", "-q", f"--intf1={v.cap_if}", own)
    send(v, frames, tmp)
    settle("exact", len(frames))
    s = cap.stop()
    got, descs = ring_contents("exact")
    assert digests(got) == digests(frames)
    assert got == frames  # one queue, one socket: arrival order is send order
    assert s["packets"] == s["published"] == len(frames)
    assert s["bytes"] == sum(map(len, frames))
    assert s["kernel_drops"] == s["ring_drops"] == s["truncated"] == s["ring_dropped_full"] == 0
    assert all(int(d["caplen"]) == int(d["wirelen"]) == len(f) for d, f in zip(descs, got))
    ts = [int(d["ts_ns"]) for d in descs]
    assert ts == sorted(ts) and t0 <= ts[0] and ts[-1] <= time.time_ns()
    assert {int(d["port"]) for d in descs} == {0}
    with ringlib.Ring("exact") as r:
        assert r.linktype == 1 and r.port_linktype(0) == 1


def _qinq(outer, inner, l3):
    return (b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack("!HHHH", 0x88A8, outer, 0x8100, inner)
            + struct.pack("!H", 0x0800) + l3)


def vlan_frames():
    """Untagged, 802.1Q (VLAN 10, 20, 300, priority-tagged 0) and 802.1ad QinQ frames."""
    out = []
    for i in range(4):
        p = struct.pack("!I", i).ljust(20, b"v")
        out += [udp4("10.3.0.1", "10.3.0.2", 2000, 53, p), udp4("10.3.0.1", "10.3.0.2", 2001, 53, p, vlan=10),
                udp4("10.3.0.1", "10.3.0.2", 2002, 53, p, vlan=20), udp4("10.3.0.1", "10.3.0.2", 2003, 53, p, vlan=300),
                ether(ipv4("10.3.0.1", "10.3.0.2", 17, 2004, 53, p), vlan=0xA000),
                _qinq(100, 20, ipv4("10.3.0.1", "10.3.0.2", 17, 2005, 53, p))]
    return out


def test_vlan_tags_are_put_back(quiet, captures, tmp):
    """The kernel moves VLAN tags out of the frame; the ring must still hold the wire bytes
    (802.1Q, priority tags and 802.1ad outer tags included)."""
    v = quiet
    frames = vlan_frames()
    cap = captures(v, "vlan")
    send(v, frames, tmp)
    settle("vlan", len(frames))
    s = cap.stop()
    got, _ = ring_contents("vlan")
    assert got == frames
    assert s["bytes"] == sum(map(len, frames))


@pytest.mark.parametrize("where", ["kernel", "user"])
@pytest.mark.parametrize("expr", ["vlan 20", "vlan 300 and udp port 2003", "not vlan", "vlan and vlan 20"])
def test_bpf_on_vlan_frames_matches_tcpdump(quiet, captures, tmp, monkeypatch, expr, where):
    """A kernel filter sees VLAN tags out of band; capfan compiles for the live interface so the
    result equals tcpdump on the wire frames. The user-space fallback (used when libpcap cannot
    compile for the device) filters the rebuilt wire frame and must agree."""
    monkeypatch.setenv("CAPFAN_AFPACKET_USER_BPF", "1" if where == "user" else "0")
    v = quiet
    frames = vlan_frames()
    want = tcpdump_filter(frames, expr, tmp)
    assert 0 < len(want) < len(frames)
    cap = captures(v, "vbpf", "--bpf", expr)
    send(v, frames, tmp)
    settle("vbpf", len(want))
    s = cap.stop()
    got, _ = ring_contents("vbpf")
    assert got == want
    assert s["packets"] == len(want)


@pytest.mark.parametrize("where", ["kernel", "user"])
@pytest.mark.parametrize("expr", ["udp", "tcp port 22 and greater 200", "ip6 or udp port 4789"])
def test_bpf_keeps_what_tcpdump_keeps(quiet, captures, tmp, monkeypatch, expr, where):
    """--bpf keeps exactly the frames `tcpdump -r` keeps with the same expression."""
    monkeypatch.setenv("CAPFAN_AFPACKET_USER_BPF", "1" if where == "user" else "0")
    v = quiet
    frames = sample_frames()
    want = tcpdump_filter(frames, expr, tmp)
    assert 0 < len(want) < len(frames), f"filter {expr!r} should keep some but not all sample frames"
    cap = captures(v, "bpf", "--bpf", expr)
    send(v, frames, tmp)
    settle("bpf", len(want))
    s = cap.stop()
    got, _ = ring_contents("bpf")
    assert got == want
    assert s["packets"] == s["published"] == len(want)


def flow_key(frame):
    """Direction-independent (proto, endpoints) of an Ethernet/IPv4/UDP or TCP frame."""
    proto = frame[23]
    a, b = (frame[26:30], frame[34:36]), (frame[30:34], frame[36:38])
    return (proto, *sorted((a, b)))


def test_fanout_hash_splits_flows(quiet, captures, tmp):
    """Two captures in one hash fanout group: every packet in exactly one ring, both directions
    of a flow in the same ring, the union is everything sent."""
    v = quiet
    frames = numbered_udp(1200, flows=60)
    a = captures(v, "fa", "--fanout", "hash", "--fanout-group", "4242", "-o", "fanout_flags=defrag")
    b = captures(v, "fb", "--fanout", "hash", "--fanout-group", "4242", "-o", "fanout_flags=defrag")
    send(v, frames, tmp)
    assert wait_for(lambda: published("fa") + published("fb") >= len(frames), timeout=15)
    time.sleep(0.3)
    sa, sb = a.stop(), b.stop()
    ga, _ = ring_contents("fa")
    gb, _ = ring_contents("fb")
    assert digests(ga) + digests(gb) == digests(frames)
    assert sa["packets"] + sb["packets"] == len(frames)
    fa, fb = {flow_key(f) for f in ga}, {flow_key(f) for f in gb}
    assert fa and fb, "hash fanout put every flow on one socket"
    assert not fa & fb, f"flows split across members: {sorted(fa & fb)[:3]}"
    assert len(fa | fb) == 60


def test_fanout_group_mismatch_is_a_clear_error(quiet, captures):
    """Joining an existing group with another mode fails with a message naming the group."""
    v = quiet
    captures(v, "m1", "--fanout", "hash", "--fanout-group", "77")
    c = captures(v, "m2", "--fanout", "lb", "--fanout-group", "77", ready=False)
    c.proc.wait(timeout=20)
    time.sleep(0.05)
    assert c.proc.returncode == 2
    assert "fanout group 77" in c.stderr() and "another mode" in c.stderr()


def test_ring_full_drops_are_counted(quiet, captures, tmp):
    """Drop policy and a reliable consumer that never reads: the ring takes ndesc packets, every
    other one is a ring drop (sent - published), none is lost silently."""
    v = quiet
    ringlib.create("rdrop", ndesc=64, arena_bytes=4 << 20, full_policy="drop")
    holder = ringlib.Consumer("rdrop", "holder", policy="reliable", stall_budget_us=120_000_000, start="oldest")
    frames = numbered_udp(1000, flows=8)
    cap = captures(v, "rdrop", "--no-create")
    send(v, frames, tmp)
    settle("rdrop", len(frames))
    s = cap.stop()
    assert s["packets"] == len(frames)
    assert s["published"] == 64
    assert s["ring_drops"] == s["ring_dropped_full"] == len(frames) - s["published"]
    assert s["kernel_drops"] == 0
    got = []
    while (b := holder.next(timeout=0)) is not None:
        got += [bytes(p) for _, p in b]
    holder.close()
    assert got == frames[:64]


def test_kernel_drops_are_counted(quiet, captures, tmp):
    """A tiny TPACKET ring behind a stalled capture (a reliable consumer holds the capfan ring):
    the kernel drops, and kernel_drops equals sent - captured exactly."""
    v = quiet
    ringlib.create("kdrop", ndesc=64, arena_bytes=4 << 20, full_policy="block")
    slow = ringlib.Consumer("kdrop", "slow", policy="reliable", stall_budget_us=120_000_000, start="oldest")
    frames = numbered_udp(2000, flows=8)
    cap = captures(v, "kdrop", "--no-create", "-o", "block_size=4096", "-o", "block_count=2",
                   "-o", "block_timeout_ms=1")
    send(v, frames, tmp)
    got, idle_since = [], None
    while True:  # now drain, letting the capture go on
        b = slow.next(timeout=0.2)
        if b is None:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.0:
                break
            continue
        idle_since = None
        got += [bytes(p) for _, p in b]
    slow.close()
    s = cap.stop()
    assert s["kernel_drops"] > 0, s
    assert s["kernel_freezes"] >= 1
    assert s["packets"] + s["kernel_drops"] == len(frames), s
    assert s["published"] == s["packets"] == len(got)
    assert s["ring_drops"] == 0
    index = {f: i for i, f in enumerate(frames)}
    order = [index[f] for f in got]
    assert order == sorted(order), "captured frames are not an in-order subset of what was sent"


def test_hw_timestamps_fall_back_on_veth(quiet, captures, tmp):
    """veth cannot timestamp in hardware: asking for it warns and captures with software stamps."""
    v = quiet
    frames = numbered_udp(50)
    cap = captures(v, "hwts", "-o", "hw_timestamps=yes")
    assert "cannot timestamp received packets in hardware" in cap.stderr()
    send(v, frames, tmp)
    settle("hwts", len(frames))
    s = cap.stop()
    got, descs = ring_contents("hwts")
    assert got == frames
    assert s["hw_timestamps"] == 0 and not any(int(d["flags"]) & ringlib.F_HWTS for d in descs)
    now = time.time_ns()
    assert all(now - 60 * 10**9 < int(d["ts_ns"]) <= now for d in descs), "software timestamps expected"


def test_count_and_queue_port(quiet, captures, tmp):
    """--count stops the capture by itself; --queue is stored as the descriptor port."""
    v = quiet
    frames = numbered_udp(30)
    cap = captures(v, "cnt", "--count", "10", "--queue", "3")
    send(v, frames, tmp)
    cap.proc.wait(timeout=20)
    s = cap.stop()
    assert s["published"] == 10
    got, descs = ring_contents("cnt")
    assert got == frames[:10]
    assert {int(d["port"]) for d in descs} == {3}


def _fails(v, *args, pre=()):
    r = subprocess.run(["ip", "netns", "exec", v.cap_ns, *pre, *CAPFAN, "capture", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    lines = [l for l in r.stderr.splitlines() if l.startswith("capfan: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_errors_are_one_clear_line(quiet, ring_dir):
    """Unknown interface, bad filter, unknown option, bad option value, interface down,
    missing CAP_NET_RAW: exit 2 with one line saying what to do."""
    v = quiet
    assert "no network interface named 'nope0'" in _fails(v, "nope0", "--ring", "e")
    assert "bad BPF filter 'udp and'" in _fails(v, v.cap_if, "--ring", "e", "--bpf", "udp and")
    assert "unknown afpacket option(s) frobnicate" in _fails(v, v.cap_if, "--ring", "e", "-o", "frobnicate=1")
    assert "block_size" in _fails(v, v.cap_if, "--ring", "e", "-o", "block_size=5000")
    assert "no ring 'e'" in _fails(v, v.cap_if, "--ring", "e", "--no-create")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to test capture without CAP_NET_RAW")
    # root without CAP_NET_RAW: dropped from the bounding set, so exec does not grant it
    msg = _fails(v, v.cap_if, "--ring", "e", pre=("setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--"))
    assert f"AF_PACKET capture on {v.cap_if} needs CAP_NET_RAW" in msg
    v.run(v.cap_ns, "ip", "link", "set", v.cap_if, "down")
    assert f"interface {v.cap_if} is down" in _fails(v, v.cap_if, "--ring", "e")
    assert not os.listdir(ring_dir), "a failed capture must not leave a ring behind"

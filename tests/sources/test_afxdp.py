"""AF_XDP capture on a veth pair between network namespaces: the ring arena is the UMEM.

The capture runs in the capture namespace as a subprocess (CAPTURE_SCRIPT); traffic comes from
the peer namespace with tcpreplay; consumers in this process read the frames in place. IPv6 is
disabled in both namespaces first, so the kernel sends no neighbour discovery and the captured
set must equal the sent set exactly.
"""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from capfan import ring as R
from tests.conftest import ring_dir, wait_for  # noqa: F401  (ring_dir is a fixture)
from tests.frames import udp4
from tests.netns import veth  # noqa: F401  (fixture)
from tests.bpffs import bpffs, pins  # noqa: F401  (bpffs is a fixture)
from tests import pcapfile
from tests.pcapfile import read_pcap

pytestmark = pytest.mark.privileged

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import PCAPS as _PCAPS

PCAPS = str(_PCAPS)
SAMPLES = ["dns_tcp", "tftp", "ssh", "vxlan"]
FRAME = 2048
HEADROOM = 256  # XDP_PACKET_HEADROOM: copy mode puts the packet this far into its frame
SEND_PPS = 1000  # slow enough that veth itself never drops: every loss must show in XDP stats

CAPTURE_SCRIPT = r"""
import json, select, sys
from capfan import ring
from capfan.sources import open_source
name, opts = sys.argv[1], json.loads(sys.argv[2])
p = ring.Producer(name)
src = open_source("afxdp", **opts)
try:
    src.prepare(p)
except Exception as e:
    print("error " + json.dumps([type(e).__name__, str(e)]), flush=True)
    sys.exit(3)
print("ready " + json.dumps(src.stats()), flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    src.run(p, duration=0.05)
src.run(p, duration=0.05)
print("done " + json.dumps(src.stats()), flush=True)
src.close()
p.close()
"""


@pytest.fixture(autouse=True)
def tools(monkeypatch, tmp_path, bpffs):
    """Root, tcpreplay and the AF_XDP backend are required (a failure, never a skip); owner
    records go to a private CAPFAN_RUN_DIR, pins to a private bpffs (CAPFAN_BPF_DIR)."""
    if os.geteuid() != 0:
        pytest.fail("AF_XDP tests need root (CI runs as root)")
    for tool in ("tcpreplay", "ip", "setpriv"):
        if not shutil.which(tool):
            pytest.fail(f"AF_XDP tests need {tool} (apt-get install tcpreplay iproute2 util-linux)")
    from capfan.sources import backends_built
    if "afxdp" not in backends_built():
        pytest.fail("capfan was built without AF_XDP: apt-get install libxdp-dev libbpf-dev, then rebuild")
    monkeypatch.setenv("CAPFAN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYTHONPATH", REPO)


# ------------------------------------------------------------------ helpers

def write_pcap(path, frames):
    """Write Ethernet frames as a classic pcap (1 ms apart)."""
    pcapfile.write_pcap(path, frames, gap_us=1000)


def numbered(i, size=300):
    """UDP frame i: payload = index + sha256(index) + filler, so any frame can be checked alone."""
    head = struct.pack("!I", i) + hashlib.sha256(struct.pack("!I", i)).digest()
    payload = head + bytes((i + k) & 0xFF for k in range(size - 42 - len(head)))
    return udp4("10.9.0.1", "10.9.0.2", 1000 + i % 500, 2000, payload)


def frame_index(pkt):
    """Index of a numbered frame, or -1 if its bytes are not exactly numbered(index)."""
    pkt = bytes(pkt)
    if len(pkt) < 78:
        return -1
    i = struct.unpack("!I", pkt[42:46])[0]
    return i if pkt == numbered(i, len(pkt)) else -1


def sample_frames():
    """The frames of the sample pcaps, in send order."""
    return [f for name in SAMPLES for f in read_pcap(f"{PCAPS}/{name}.pcap")]


def quiet(v):
    """No IPv6 on either side: no ND/MLD frames the test did not send."""
    for ns in (v.cap_ns, v.peer_ns):
        v.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def xdp_prog(v, ifname=None):
    """`prog/xdp ...` line of `ip -d link show` for the capture interface, or None."""
    out = v.run(v.cap_ns, "ip", "-d", "link", "show", "dev", ifname or v.cap_if).stdout
    for line in out.splitlines():
        if "prog/xdp" in line:
            return line.strip()
    return None


def send(v, path, pps=SEND_PPS):
    """Replay a pcap from the peer namespace; returns frames sent (tcpreplay's count)."""
    out = v.send_pcap(path, rate_pps=pps).stdout
    sent = [int(line.split(":")[1]) for line in out.splitlines() if "Successful packets" in line]
    failed = [int(line.split(":")[1]) for line in out.splitlines() if "Failed packets" in line]
    assert failed == [0], out
    return sent[0]


class Capture:
    """An AF_XDP capture process in the capture namespace, writing into a ring."""

    def __init__(self, v, ring, expect_error=False, prefix=(), **opts):
        opts.setdefault("ifname", v.cap_if)
        self.proc = v.popen(v.cap_ns, *prefix, sys.executable, "-c", CAPTURE_SCRIPT, ring, json.dumps(opts),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        kind, _, rest = line.partition(" ")
        if kind == "error":
            self.proc.wait(10)
            self.error = json.loads(rest)
            self.start_stats = None
            assert expect_error, f"afxdp open failed: {self.error}"
            return
        assert kind == "ready", f"capture did not start: {line!r} {self.proc.stderr.read()}"
        self.error = None
        self.start_stats = json.loads(rest)

    def stop(self):
        """Ask the capture to finish; returns its final source stats."""
        out, err = self.proc.communicate("stop\n", timeout=30)
        assert self.proc.returncode == 0, err
        line = [ln for ln in out.splitlines() if ln.startswith("done ")][-1]
        return json.loads(line[5:])

    def kill9(self):
        """SIGKILL: nothing gets cleaned up by the process itself."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.proc.stdin.close()


def open_error(v, ring, **opts):
    """Open a capture that must fail; returns (exception class name, message)."""
    cap = Capture(v, ring, expect_error=True, **opts)
    if cap.error is None:
        cap.stop()
        pytest.fail(f"afxdp open with {opts} did not fail")
    return cap.error


def head_of(name):
    return R.Ring(name).stats()["head"]


def drain(consumer):
    """All (off, bytes) a consumer has pending, releasing as it goes."""
    out = []
    while (b := consumer.next(timeout=0)) is not None:
        offs = b.desc["off"].tolist()
        out += [(off, bytes(pkt)) for off, (_, pkt) in zip(offs, b)]
    return out


def records(run_dir):
    d = os.path.join(run_dir, "afxdp")
    return sorted(f for f in os.listdir(d) if f != "lock") if os.path.isdir(d) else []


def pinned(v, ifname=None):
    """The pins capfan keeps for the capture interface: [] or ["<key>/prog", "<key>/xsks_map"],
    key = <netns inode>-<ifindex> as in the owner record."""
    key = v.run(v.cap_ns, "sh", "-c", f"echo $(stat -L -c %i /proc/self/ns/net)-"
                f"$(cat /sys/class/net/{ifname or v.cap_if}/ifindex)").stdout.strip()
    got = pins(os.environ["CAPFAN_BPF_DIR"])
    assert all(p.startswith(key + "/") for p in got), f"pins of another interface: {got} (key {key})"
    return got


def xdp_prog_id(v, ifname=None):
    """Id of the capture interface's XDP program, or None."""
    line = xdp_prog(v, ifname)
    return int(line.split(" id ")[1].split()[0]) if line else None


# exactly what the agent's systemd unit grants for AF_XDP (tests/deploy checks the unit's set)
NO_SYS_ADMIN = ["setpriv", "--bounding-set=-all,+net_raw,+net_admin,+bpf,+ipc_lock,+sys_nice", "--inh-caps=-all",
                "--no-new-privs", "--"]


def cap_eff(pid):
    """Effective capability mask of a process."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("CapEff:")).split()[1], 16)


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("xdp_mode,mode_id", [("skb", 1), ("native", 2)])
def test_exact_packet_set_read_in_place(veth, ring_dir, xdp_mode, mode_id):
    """Every sample frame arrives once, byte for byte, in order; descriptor offsets are UMEM
    frame addresses; two consumers read identical bytes in place; copy mode on veth; the XDP
    program is there while capturing and gone after close."""
    quiet(veth)
    R.create("q0", ndesc=4096, arena_bytes=16 << 20)
    a = R.Consumer("q0", "a", policy="reliable")
    b = R.Consumer("q0", "b", policy="lossy")
    cap = Capture(veth, "q0", xdp_mode=xdp_mode, bind_mode="auto")
    assert cap.start_stats["xdp_mode"] == mode_id
    assert cap.start_stats["zerocopy"] == 0, "veth has no zero-copy AF_XDP: auto must fall back to copy"
    prog = xdp_prog(veth)
    assert prog and "name capfan_xsk" in prog
    assert len(records(os.environ["CAPFAN_RUN_DIR"])) == 1

    frames = sample_frames()
    assert sum(send(veth, f"{PCAPS}/{n}.pcap") for n in SAMPLES) == len(frames) == 82
    assert wait_for(lambda: head_of("q0") >= len(frames), timeout=10)
    st = cap.stop()

    got_a, got_b = drain(a), drain(b)
    assert [p for _, p in got_a] == frames                     # exact set, order, bytes
    assert got_a == got_b                                      # same offsets, same bytes
    assert st["packets"] == st["published"] == len(frames)
    assert st["bytes"] == sum(map(len, frames))
    assert st["kernel_drops"] == st["ring_drops"] == st["xdp_rx_ring_full"] == st["xdp_rx_invalid"] == 0
    assert st["xdp_mode"] == mode_id and st["zerocopy"] == 0
    nframes = (16 << 20) // FRAME
    offs = [off for off, _ in got_a]
    assert all(off % FRAME == HEADROOM and off // FRAME < nframes for off in offs)
    assert len(set(offs)) == len(offs)                         # one frame per packet, no copies
    assert xdp_prog(veth) is None, "the XDP program must be detached on close"
    assert records(os.environ["CAPFAN_RUN_DIR"]) == []


def test_stalled_reliable_consumer_keeps_its_frames(veth, ring_dir, tmp_path):
    """A small arena and a reliable consumer holding a batch: its frames are never handed back
    to the kernel (content checks stay valid), the kernel drops instead and says so in
    XDP_STATISTICS, accounting is exact, and capture recovers once the consumer moves on."""
    quiet(veth)
    nframes = 256
    R.create("small", ndesc=1024, arena_bytes=nframes * FRAME)
    slow = R.Consumer("small", "slow", policy="reliable", stall_budget_us=120_000_000)
    cap = Capture(veth, "small", rx_size=64, xdp_mode="native")

    first = tmp_path / "first.pcap"
    write_pcap(first, [numbered(i) for i in range(20)])
    assert send(veth, first) == 20
    assert wait_for(lambda: head_of("small") >= 20)
    held = slow.next(timeout=5)
    assert held is not None and len(held) == 20
    held_bytes = [bytes(p) for _, p in held]
    assert [frame_index(p) for p in held_bytes] == list(range(20))

    burst = tmp_path / "burst.pcap"
    write_pcap(burst, [numbered(i) for i in range(20, 1020)])
    assert send(veth, burst, pps=5000) == 1000
    time.sleep(0.5)
    # frames of the unreleased batch were not reused: same bytes, still intact
    assert [bytes(p) for _, p in held] == held_bytes
    assert held.torn() == 0
    held.release()
    rest = [p for _, p in drain(slow)]  # catch up: releases every frame it held

    after = tmp_path / "after.pcap"
    write_pcap(after, [numbered(i) for i in range(5000, 5050)])
    sent_after = send(veth, after)
    n_before = len(rest)
    assert wait_for(lambda: head_of("small") >= 20 + (n_before) + sent_after, timeout=10)
    st = cap.stop()
    rest += [p for _, p in drain(slow)]

    idx = [frame_index(p) for p in rest]
    assert -1 not in idx, "a consumer read a frame the kernel had overwritten"
    burst_idx = [i for i in idx if i < 5000]
    assert burst_idx == sorted(burst_idx) and len(set(burst_idx)) == len(burst_idx)
    assert idx[-sent_after:] == list(range(5000, 5050)), "capture must recover after the release"
    assert 0 < len(burst_idx) < 1000, "the stalled consumer should have forced drops"
    # exact accounting: every frame sent was published or counted as dropped by the kernel
    assert st["ring_drops"] == 0
    assert st["packets"] == st["published"] == 20 + len(burst_idx) + sent_after
    assert st["packets"] + st["kernel_drops"] == 20 + 1000 + sent_after
    assert st["xdp_fill_empty"] > 0
    assert slow.stats()["dropped"] == 0
    assert xdp_prog(veth) is None


def test_kill9_then_next_open_cleans_up_and_binds(veth, ring_dir):
    """A capture killed with SIGKILL leaves its XDP program behind; the next open (even in
    another XDP mode, which used to fail with EBUSY) removes it, binds and captures; closing
    leaves nothing."""
    quiet(veth)
    R.create("k", ndesc=4096, arena_bytes=16 << 20)
    cap = Capture(veth, "k", xdp_mode="native")
    frames = read_pcap(f"{PCAPS}/tftp.pcap")
    send(veth, f"{PCAPS}/tftp.pcap")
    assert wait_for(lambda: head_of("k") >= len(frames))
    cap.kill9()
    stale = xdp_prog(veth)
    assert stale and "capfan_xsk" in stale, "SIGKILL cannot detach: the program must still be there"
    assert len(records(os.environ["CAPFAN_RUN_DIR"])) == 1
    assert len(pinned(veth)) == 2, "the pins outlive the process: they identify its program"

    c = R.Consumer("k", "after", policy="reliable")
    cap2 = Capture(veth, "k", xdp_mode="skb")
    assert cap2.error is None
    assert cap2.start_stats["xdp_mode"] == 1
    new = xdp_prog(veth)
    assert new and "capfan_xsk" in new and new != stale
    send(veth, f"{PCAPS}/tftp.pcap")
    assert wait_for(lambda: head_of("k") >= 2 * len(frames))
    st = cap2.stop()
    assert [p for _, p in drain(c)] == frames
    assert st["published"] == len(frames) and st["kernel_drops"] == 0
    # the dead producer's packets were still in the ring: their frames were not reused
    assert [p[3] for p in R.Ring("k").recent(2 * len(frames))] == frames + frames
    assert xdp_prog(veth) is None
    assert records(os.environ["CAPFAN_RUN_DIR"]) == []
    assert pinned(veth) == []


CLEANUP = "from capfan.sources.afxdp import cleanup; import sys; print(cleanup(sys.argv[1]))"


def test_cleanup_removes_only_stale_capfan_programs(veth, ring_dir):
    """cleanup() leaves a live capture's program alone, removes a killed one's, and never
    touches another tool's XDP program (libxdp's xsk_def_prog here), which open() reports."""
    quiet(veth)
    R.create("c", ndesc=1024, arena_bytes=16 << 20)

    def cleanup():
        return int(veth.run(veth.cap_ns, sys.executable, "-c", CLEANUP, veth.cap_if, cwd=REPO).stdout)

    assert cleanup() == 0
    cap = Capture(veth, "c")
    assert cleanup() == 0 and xdp_prog(veth) is not None   # live owner: untouched
    assert len(pinned(veth)) == 2
    cap.kill9()
    assert xdp_prog(veth) is not None and len(pinned(veth)) == 2
    assert cleanup() == 1
    assert xdp_prog(veth) is None and records(os.environ["CAPFAN_RUN_DIR"]) == []
    assert pinned(veth) == []
    assert cleanup() == 0

    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "xdpgeneric", "obj",
             "/usr/lib/x86_64-linux-gnu/bpf/xsk_def_xdp_prog_5.3.o", "sec", "xdp")
    assert "xsk_def_prog" in xdp_prog(veth)
    assert cleanup() == 0 and "xsk_def_prog" in xdp_prog(veth)
    kind, msg = open_error(veth, "c")
    assert kind == "SourceError"
    assert "not capfan's" in msg and "xsk_def_prog" in msg and "xdp off" in msg
    assert "xsk_def_prog" in xdp_prog(veth)                 # still there, still theirs
    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "xdpgeneric", "off")


def test_open_errors_are_clear_and_leave_nothing(veth, ring_dir):
    """Missing interface, missing queue, forced zero-copy on veth, an arena too small, and
    missing privileges each fail with a message that says what to do, and no XDP program or
    owner record stays behind."""
    quiet(veth)
    R.create("e", ndesc=1024, arena_bytes=16 << 20)
    R.create("tiny", ndesc=1024, arena_bytes=64 * FRAME)

    kind, msg = open_error(veth, "e", ifname="nosuchif0")
    assert kind == "SourceError" and "no network interface nosuchif0" in msg
    kind, msg = open_error(veth, "e", queue=5)
    assert kind == "SourceError" and "queue 5" in msg and veth.cap_if in msg and "1 receive queue" in msg
    kind, msg = open_error(veth, "e", bind_mode="zerocopy", xdp_mode="native")
    assert kind == "SourceNotSupported" and "zero-copy" in msg and "veth" in msg
    kind, msg = open_error(veth, "e", bind_mode="zerocopy", xdp_mode="skb")
    assert kind == "SourceNotSupported" and "native" in msg
    kind, msg = open_error(veth, "tiny", rx_size=64)
    assert kind == "SourceError" and "64 frames" in msg and "arena_bytes >=" in msg

    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "mtu", "3000")
    kind, msg = open_error(veth, "e")
    assert kind == "SourceError" and "MTU 3000" in msg and "frame_size=4096" in msg
    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "mtu", "1500")

    # a ring on a disk filesystem cannot be a UMEM (no long-term pins of file pages)
    disk = tempfile.mkdtemp(prefix=".afxdp-disk-", dir=REPO)
    try:
        fs = subprocess.run(["stat", "-f", "-c", "%T", disk], capture_output=True, text=True).stdout.strip()
        assert fs not in ("tmpfs", "hugetlbfs"), f"need a disk directory for this check, {disk} is {fs}"
        R.create(os.path.join(disk, "capfan.disk"), ndesc=1024, arena_bytes=16 << 20)
        kind, msg = open_error(veth, os.path.join(disk, "capfan.disk"))
        assert kind == "SourceError" and "tmpfs or hugetlbfs" in msg and "/dev/shm" in msg
    finally:
        shutil.rmtree(disk, ignore_errors=True)

    # root without capabilities (bounding set emptied before exec)
    r = veth.run(veth.cap_ns, "setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", sys.executable, "-c",
                 CAPTURE_SCRIPT, "e", json.dumps({"ifname": veth.cap_if}), input="", check=False,
                 cwd=REPO)
    assert r.stdout.startswith("error "), r.stdout + r.stderr
    kind, msg = json.loads(r.stdout[6:])
    assert kind == "CapturePermissionError" and "CAP_NET_RAW" in msg and "setcap" in msg

    assert xdp_prog(veth) is None
    assert records(os.environ["CAPFAN_RUN_DIR"]) == []
    assert pinned(veth) == []


def test_two_queues_share_one_program(ring_dir):
    """One capture process per queue of a 2-queue veth: both share capfan's program; the
    program stays while one owner lives and goes with the last; together they see every frame."""
    from tests.netns import VethPair
    v = VethPair().up(cap_queues=2, peer_queues=2)
    try:
        quiet(v)
        R.create("m0", ndesc=4096, arena_bytes=16 << 20)
        R.create("m1", ndesc=4096, arena_bytes=16 << 20)
        c0, c1 = R.Consumer("m0", "c"), R.Consumer("m1", "c")
        q0 = Capture(v, "m0", queue=0, xdp_mode="native")
        q1 = Capture(v, "m1", queue=1, xdp_mode="auto", port=1)
        assert q1.error is None and q1.start_stats["xdp_mode"] == 2
        assert len(pinned(v)) == 2                      # one program, one map, for both queues
        R.create("m2", ndesc=4096, arena_bytes=16 << 20)
        kind, msg = open_error(v, "m2", queue=0)
        assert kind == "SourceError" and "already captured by capfan process" in msg
        frames = sample_frames()
        sent = sum(send(v, f"{PCAPS}/{n}.pcap") for n in SAMPLES)
        assert wait_for(lambda: head_of("m0") + head_of("m1") >= sent, timeout=10)
        st1 = q1.stop()
        assert xdp_prog(v) is not None, "queue 0 still captures: the program must stay"
        assert len(pinned(v)) == 2
        st0 = q0.stop()
        assert xdp_prog(v) is None and pinned(v) == []
        got = [p for _, p in drain(c0)] + [p for _, p in drain(c1)]
        assert sorted(got) == sorted(frames)
        assert st0["published"] + st1["published"] == len(frames)
        assert st0["kernel_drops"] == st1["kernel_drops"] == 0
        assert R.Ring("m1").port_linktype(1) == 1
    finally:
        v.down()


def test_queues_join_and_recover_without_cap_sys_admin(ring_dir, tmp_path):
    """Under the agent unit's capabilities (no CAP_SYS_ADMIN: nothing can be opened by id) a
    second queue's capture joins the first one's program through the pinned XSKMAP and both
    receive their packets; after kill -9 of every capture the pinned program is recognised and
    replaced by the next open, with no `ip link set xdp off`; the last close removes the pins."""
    from tests.netns import VethPair
    v = VethPair().up(cap_queues=2, peer_queues=2)
    caps = []
    try:
        quiet(v)
        for name in ("u0", "u1"):
            R.create(name, ndesc=4096, arena_bytes=16 << 20)
        c0, c1 = R.Consumer("u0", "c"), R.Consumer("u1", "c")
        q0 = Capture(v, "u0", queue=0, xdp_mode="native", prefix=NO_SYS_ADMIN)  # veth: skb mode sees queue 0 only
        caps.append(q0)
        assert cap_eff(q0.proc.pid) >> 21 & 1 == 0, "the capture must run without CAP_SYS_ADMIN"
        assert len(pinned(v)) == 2
        q1 = Capture(v, "u1", queue=1, port=1, prefix=NO_SYS_ADMIN)
        caps.append(q1)
        assert q1.error is None and q1.start_stats["xdp_mode"] == 2
        frames = [numbered(i) for i in range(400)]  # 400 flows: veth's RX queue follows the flow hash
        write_pcap(tmp_path / "n.pcap", frames)
        assert send(v, tmp_path / "n.pcap", pps=4000) == len(frames)
        assert wait_for(lambda: head_of("u0") + head_of("u1") >= len(frames), timeout=10)
        got0, got1 = [p for _, p in drain(c0)], [p for _, p in drain(c1)]
        assert got0 and got1, f"both queues must receive packets ({len(got0)} + {len(got1)})"
        assert sorted(got0 + got1) == sorted(frames)

        first = xdp_prog_id(v)
        q0.kill9()
        q1.kill9()
        assert xdp_prog_id(v) == first and len(pinned(v)) == 2   # SIGKILL cleans nothing up
        q1 = Capture(v, "u1", queue=1, port=1, prefix=NO_SYS_ADMIN)
        caps.append(q1)
        assert q1.error is None
        again = xdp_prog_id(v)
        assert again and again != first, "the dead captures' program must have been replaced"
        q0 = Capture(v, "u0", queue=0, prefix=NO_SYS_ADMIN)  # joins the restarted one's program
        caps.append(q0)
        assert q0.error is None and xdp_prog_id(v) == again
        assert send(v, tmp_path / "n.pcap", pps=4000) == len(frames)
        assert wait_for(lambda: head_of("u0") + head_of("u1") >= 2 * len(frames), timeout=10)
        st1, st0 = q1.stop(), q0.stop()
        assert st0["published"] + st1["published"] == len(frames)
        assert sorted([p for _, p in drain(c0)] + [p for _, p in drain(c1)]) == sorted(frames)
        assert xdp_prog(v) is None and pinned(v) == []
        assert records(os.environ["CAPFAN_RUN_DIR"]) == []
    finally:
        for c in caps:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        v.down()


def test_stale_pins_are_replaced_or_removed(veth, ring_dir, tmp_path):
    """Pins whose program is no longer attached (removed by hand after kill -9) are replaced by
    the next open; pins of a namespace that is gone are removed by the next open elsewhere."""
    quiet(veth)
    R.create("s", ndesc=1024, arena_bytes=16 << 20)
    cap = Capture(veth, "s")
    cap.kill9()
    old = pinned(veth)
    assert len(old) == 2
    veth.run(veth.cap_ns, "ip", "link", "set", "dev", veth.cap_if, "xdpgeneric", "off")
    cap = Capture(veth, "s", prefix=NO_SYS_ADMIN)
    assert pinned(veth) == old and xdp_prog_id(veth) is not None
    cap.kill9()
    # without CAP_SYS_ADMIN only the pins can tell this leftover is capfan's: they must be the
    # new program's, or this open would find "an XDP program that is not capfan's"
    cap = Capture(veth, "s", prefix=NO_SYS_ADMIN)
    assert cap.error is None and pinned(veth) == old
    cap.kill9()

    from tests.netns import VethPair
    other = VethPair().up()
    try:
        quiet(other)
        R.create("s2", ndesc=1024, arena_bytes=16 << 20)
        veth.down()                               # the namespace (and its interface) is gone
        assert pins(os.environ["CAPFAN_BPF_DIR"]) == old
        cap2 = Capture(other, "s2")
        assert pinned(other) != [] and not set(old) & set(pins(os.environ["CAPFAN_BPF_DIR"]))
        cap2.stop()
        assert pins(os.environ["CAPFAN_BPF_DIR"]) == []
    finally:
        other.down()


def test_without_bpffs_falls_back_to_ids(ring_dir, tmp_path, monkeypatch):
    """CAPFAN_BPF_DIR not on bpffs: nothing is pinned, root captures as before (by id), and a
    second queue without CAP_SYS_ADMIN is refused with a message naming both ways out."""
    from tests.netns import VethPair
    plain = tmp_path / "notbpf"
    plain.mkdir()
    monkeypatch.setenv("CAPFAN_BPF_DIR", str(plain / "capfan"))
    v = VethPair().up(cap_queues=2, peer_queues=2)
    try:
        quiet(v)
        for name in ("f0", "f1", "f2"):
            R.create(name, ndesc=1024, arena_bytes=16 << 20)
        q0 = Capture(v, "f0", queue=0, xdp_mode="skb", prefix=NO_SYS_ADMIN)
        assert os.listdir(plain) == []
        kind, msg = open_error(v, "f1", queue=1, prefix=NO_SYS_ADMIN)
        assert kind == "CapturePermissionError", (kind, msg)
        assert "queue 1" in msg and "CAP_SYS_ADMIN" in msg and "not on a bpffs mount" in msg
        assert "mount -t bpf" in msg and "CAPFAN_BPF_DIR" in msg
        q1 = Capture(v, "f2", queue=1)                                  # root: by id
        assert q1.error is None
        q1.stop()
        q0.kill9()
        # the dead capture's owner record still names its program: recognised, replaced
        q0 = Capture(v, "f0", queue=0, xdp_mode="skb", prefix=NO_SYS_ADMIN)
        assert q0.error is None
        q0.stop()
        assert xdp_prog(v) is None and os.listdir(plain) == []
    finally:
        v.down()


def test_busy_poll_captures_everything(veth, ring_dir):
    """busy_poll (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET) still delivers the
    exact frame set."""
    quiet(veth)
    R.create("bp", ndesc=4096, arena_bytes=16 << 20)
    c = R.Consumer("bp", "c")
    cap = Capture(veth, "bp", busy_poll=True, busy_poll_us=50, busy_poll_budget=64)
    assert cap.error is None
    frames = read_pcap(f"{PCAPS}/ssh.pcap")
    send(veth, f"{PCAPS}/ssh.pcap")
    assert wait_for(lambda: head_of("bp") >= len(frames))
    st = cap.stop()
    assert [p for _, p in drain(c)] == frames
    assert st["kernel_drops"] == 0


@pytest.mark.parametrize("full", ["block", "drop"])
def test_full_descriptor_ring_backpressure_or_drop(veth, ring_dir, tmp_path, full):
    """Fewer descriptors than frames and a reliable consumer holding them: with the block
    policy the packets wait in the RX ring and the kernel counts what no longer fits
    (rx_ring_full); with drop the capture drops new packets itself (ring_drops, the ring's
    dropped_full) and the kernel drops nothing. Either way every frame is accounted for."""
    quiet(veth)
    ndesc = 64
    R.create("d", ndesc=ndesc, arena_bytes=256 * FRAME, full_policy=full)
    slow = R.Consumer("d", "slow", policy="reliable", stall_budget_us=120_000_000)
    cap = Capture(veth, "d", rx_size=64, xdp_mode="native")
    pcap = tmp_path / "b.pcap"
    write_pcap(pcap, [numbered(i) for i in range(505)])
    first = tmp_path / "f.pcap"
    write_pcap(first, [numbered(i) for i in range(100_000, 100_005)])
    send(veth, first)
    held = slow.next(timeout=5)
    assert held is not None and len(held) >= 1
    assert send(veth, pcap, pps=5000) == 505
    time.sleep(0.3)
    assert head_of("d") == ndesc, "the held consumer pins the descriptor ring"
    held.release()
    got, last, stable = [], -1, 0
    while stable < 5:  # read until the capture has nothing more to publish
        got += [p for _, p in drain(slow)]
        h = head_of("d")
        stable, last = (stable + 1, h) if h == last else (0, h)
        time.sleep(0.05)
    st = cap.stop()
    got += [p for _, p in drain(slow)]
    idx = [frame_index(p) for p in got]
    assert -1 not in idx and idx == sorted(idx)
    assert st["packets"] + st["kernel_drops"] == 510
    assert st["published"] == st["packets"] - st["ring_drops"] == len(got) + len(held)
    if full == "block":
        assert st["ring_drops"] == 0 and st["xdp_rx_ring_full"] > 0 and st["kernel_drops"] > 0
    else:
        assert st["kernel_drops"] == 0 and st["ring_drops"] > 0
        assert R.Ring("d").stats()["dropped_full"] == st["ring_drops"]


HOLDER = r"""
import sys, time
from capfan import ring
c = ring.Consumer(sys.argv[1], "holder", policy="reliable", stall_budget_us=int(sys.argv[2]))
b = c.next(timeout=10)
print(len(b), flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_reliable_holder_of_all_frames_is_dropped_or_demoted(veth, ring_dir, tmp_path, how):
    """When reclaim (not the descriptor ring) is what a reliable consumer blocks, the ring still
    applies liveness and stall budgets: a SIGKILLed holder stops holding at once, a stalled
    one is demoted after its budget, and capture carries on."""
    quiet(veth)
    R.create("h", ndesc=4096, arena_bytes=256 * FRAME)
    cap = Capture(veth, "h", rx_size=64, xdp_mode="native")
    budget = 300_000 if how == "stalled" else 600_000_000
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "h", str(budget)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    time.sleep(0.5)
    first = tmp_path / "first.pcap"
    write_pcap(first, [numbered(i) for i in range(5)])
    send(veth, first)
    assert int(holder.stdout.readline()) >= 1
    if how == "killed":
        holder.kill()
        holder.wait()
    burst = tmp_path / "burst.pcap"
    write_pcap(burst, [numbered(i) for i in range(5, 2005)])
    assert send(veth, burst, pps=2000) == 2000
    time.sleep(0.3)
    st = cap.stop()
    if how == "stalled":
        holder.kill()
        holder.wait()
    assert st["packets"] + st["kernel_drops"] == 2005
    ev = [e.kind for e in R.Ring("h").events()]
    if how == "killed":
        assert "dead" in ev
        assert st["published"] >= 2000
    else:
        assert "demoted" in ev
        assert st["published"] >= 2005 - 2000 * 0.3 - 300

"""Ring semantics: accounting, lossy/reliable policies, groups, liveness, producer restart."""
import grp
import logging
import multiprocessing as mp
import os
import signal
import struct
import threading
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capfan import errors
from capfan import ring as R
from capfan._capfan_core import ffi, lib
from tests.conftest import wait_for
from tests.frames import ipv4, tcp6, udp4

FORK = mp.get_context("fork")


def drain(c, timeout=0.0):
    """Read every available batch; returns the seqs delivered."""
    seqs = []
    while True:
        b = c.next(timeout=timeout)
        if b is None:
            return seqs
        seqs.extend(b.desc["seq"].tolist())
        b.release()


def accounted(s):
    """delivered + dropped + filtered of a consumer stats dict."""
    return s["delivered"] + s["dropped"] + s["filtered"]


def seq_packet(seq, size):
    """A packet carrying its seq and a CRC of a seq-derived body, to detect torn reads."""
    body = bytes(((seq * 7 + i) & 0xFF) for i in range(size - 12))
    return struct.pack("<QI", seq, zlib.crc32(body)) + body


def packet_ok(pkt):
    """True if a seq_packet is intact."""
    seq, crc = struct.unpack_from("<QI", pkt)
    return zlib.crc32(bytes(pkt[12:])) == crc


# ---------------------------------------------------------------- creation, permissions

def test_create_mode_0600_and_geometry(ring_dir):
    path = R.create("r0", ndesc=1024, arena_bytes=1 << 20)
    st_ = os.stat(path)
    assert st_.st_mode & 0o777 == 0o600
    with R.Ring("r0") as r:
        s = r.stats()
        assert (s["ndesc"], s["arena_bytes"], s["max_consumers"]) == (1024, 1 << 20, 256)
        assert s["head"] == 0 and s["producer_alive"] == 0
    with pytest.raises(errors.RingExists):
        R.create("r0", ndesc=1024, arena_bytes=1 << 20)


def test_create_group_readable(ring_dir):
    gid = os.getgid()
    path = R.create("rg", ndesc=1024, arena_bytes=1 << 20, mode=0o640, group=grp.getgrgid(gid).gr_name)
    st_ = os.stat(path)
    assert st_.st_mode & 0o777 == 0o640 and st_.st_gid == gid


@pytest.mark.parametrize("kw,msg", [
    ({"ndesc": 1000}, "power of two"),
    ({"arena_bytes": 1000}, "arena size"),
    ({"max_consumers": 10}, "max_consumers"),
    ({"full_policy": "sometimes"}, "full policy"),
    ({"linktype": "token-ring"}, "link type"),
])
def test_create_rejects_bad_geometry(ring_dir, kw, msg):
    args = {"ndesc": 1024, "arena_bytes": 1 << 20, **kw}
    with pytest.raises(errors.RingError, match=msg):
        R.create("bad", **args)
    assert not os.path.exists(R.ring_path("bad"))


def test_not_a_ring(ring_dir):
    with open(R.ring_path("junk"), "wb") as f:
        f.write(b"\0" * 10000)
    with pytest.raises(errors.RingFormatError, match="not a capfan ring"):
        R.Ring("junk")
    with pytest.raises(errors.RingNotFound, match="capfan ring create"):
        R.Consumer("nothing", "c")


# ---------------------------------------------------------------- basic fan-out

def test_every_consumer_reads_the_same_bytes_in_place(ring_dir):
    R.create("f", ndesc=1024, arena_bytes=1 << 20)
    with R.Producer("f") as p:
        cs = [R.Consumer("f", f"c{i}") for i in range(3)]
        pkts = [seq_packet(i, 60 + i % 200) for i in range(500)]
        assert p.publish(pkts) == 500
        for c in cs:
            got = []
            while (b := c.next(timeout=0)) is not None:
                got.extend(bytes(pk) for _, pk in b)
            assert got == pkts
        # zero copy: all consumers' batches point at the same shared arena offsets
        b0 = R.Consumer("f", "late", start="oldest").next(timeout=0)
        assert b0.desc["off"][1] == 64 and b0.data.readonly
        for c in cs:
            assert c.stats()["delivered"] == 500
            c.close()


def test_descriptor_fields(ring_dir):
    R.create("d", ndesc=1024, arena_bytes=1 << 20, snaplen=100)
    with R.Producer("d") as p, R.Consumer("d", "c") as c:
        big = udp4("10.0.0.1", "10.0.0.2", 1234, 53, b"z" * 300)
        p.publish([big, udp4("10.0.0.2", "10.0.0.1", 53, 1234)], ts_ns=[111, 222], port=7)
        d = c.next(timeout=0).desc
        assert d["seq"].tolist() == [0, 1]
        assert d["ts_ns"].tolist() == [111, 222]
        assert d["caplen"][0] == 100 and d["wirelen"][0] == len(big)
        assert d["flags"][0] & R.F_TRUNCATED and not d["flags"][1] & R.F_TRUNCATED
        assert d["flags"][0] & R.F_L4 and d["flags"][0] & R.F_L3
        assert d["port"].tolist() == [7, 7]
        assert d["hash"][0] == d["hash"][1] != 0  # symmetric flow hash


# ---------------------------------------------------------------- accounting invariant

@st.composite
def scenarios(draw, nconsumers):
    """Random interleavings of publish / take / release / detach+resume per consumer."""
    pols = draw(st.lists(st.sampled_from(["reliable", "lossy", "group"]), min_size=nconsumers, max_size=nconsumers))
    ops = draw(st.lists(st.tuples(st.sampled_from(["pub", "take", "release", "drain", "resume"]),
                                  st.integers(0, nconsumers - 1), st.integers(1, 300)),
                        min_size=1, max_size=60))
    return pols, ops


def run_accounting(ring_dir, nconsumers, scenario, tag):
    pols, ops = scenario
    name = f"acc{tag}"
    R.create(name, ndesc=256, arena_bytes=1 << 16, full_policy="drop", max_consumers=max(256, nconsumers))
    p = R.Producer(name)
    cs = []
    for i, pol in enumerate(pols):
        kw = {"policy": "lossy" if pol == "lossy" else "reliable", "stall_budget_us": 10_000_000}
        if pol == "group":
            kw.update(group="g", member=i % 3, group_size=3)
        cs.append([R.Consumer(name, f"c{i}", **kw), None, kw])
    seq = 0
    try:
        for op, i, n in ops:
            c = cs[i]
            if op == "pub":
                pkts = [udp4("10.0.0.1", f"10.1.{k % 7}.{k % 11}", 1000 + k, 53) for k in range(seq, seq + n)]
                seq += n
                p.publish(pkts)
            elif op == "take":
                c[1] = c[0].next(timeout=0, max_packets=n)
            elif op == "release" and c[1] is not None:
                c[1].release()
                c[1] = None
            elif op == "drain":
                drain(c[0])
                c[1] = None
            elif op == "resume":  # leave keeping the name, come back: counters carry on
                c[0].close(keep=True)
                c[0] = R.Consumer(name, f"c{i}", **c[2])
                c[1] = None
        head = p.ring.stats()["head"]
        assert head + p.dropped == seq  # every offered packet is published or counted dropped
        for c, _, kw in cs:
            drain(c)
            s = c.stats()
            assert s["cursor"] == head
            assert accounted(s) == head - s["attach_seq"], s
    finally:
        for c, _, _ in cs:
            c.close()
        p.close()
        R.remove(name)


@pytest.mark.parametrize("n", [1, 2, 8])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_accounting_invariant(ring_dir, n, data):
    run_accounting(ring_dir, n, data.draw(scenarios(n)), n)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_accounting_invariant_256_consumers(ring_dir, data):
    run_accounting(ring_dir, 256, data.draw(scenarios(256)), 256)


def test_no_free_slot(ring_dir):
    R.create("full", ndesc=256, arena_bytes=1 << 16)
    cs = [R.Consumer("full", f"c{i}", policy="lossy") for i in range(256)]
    with pytest.raises(errors.NoConsumerSlot, match="256 consumer slots"):
        R.Consumer("full", "one-too-many")
    cs[0].close()
    R.Consumer("full", "fits-now").close()
    for c in cs[1:]:
        c.close()


def test_duplicate_live_name_refused(ring_dir):
    R.create("dup", ndesc=256, arena_bytes=1 << 16)
    with R.Consumer("dup", "same"):
        with pytest.raises(errors.RingBusy, match="already attached"):
            R.Consumer("dup", "same")


# ---------------------------------------------------------------- lossy: lapped and torn

def _lossy_producer(ring, n, size, ready):
    p = R.Producer(ring)
    pkts = [seq_packet(s, size) for s in range(n)]  # built first: publish at C speed
    ready.wait(10)
    for start in range(0, n, 64):
        p.publish(pkts[start:start + 64])
    p.close()


def test_lossy_consumer_lapped_counts_drops_and_never_yields_torn(ring_dir):
    R.create("lossy", ndesc=256, arena_bytes=1 << 16)
    n, size = 60000, 200
    ready = FORK.Event()
    proc = FORK.Process(target=_lossy_producer, args=("lossy", n, size, ready))
    c_batch = R.Consumer("lossy", "batch", policy="lossy")
    c_iter = R.Consumer("lossy", "iter", policy="lossy")
    proc.start()
    ready.set()
    verified = bad = 0
    seen_iter = 0
    done = False
    while not done:
        done = not proc.is_alive()
        # batch API: read (copy) the bytes, then ask which were overwritten meanwhile
        b = c_batch.next(timeout=0.05)
        if b is not None:
            time.sleep(0.0005)  # a slow reader, so the producer laps and tears
            copies = [bytes(b.packet(i)) for i in range(len(b))]
            torn = b.torn()
            for i, pkt in enumerate(copies):
                if i >= torn:
                    verified += 1
                    bad += not packet_ok(pkt)
            b.release()
        # per-packet iteration: only intact packets are ever yielded
        b = c_iter.next(timeout=0)
        if b is not None:
            for _, pkt in b:
                assert packet_ok(pkt)
                seen_iter += 1
            b.release()
    proc.join()
    drain(c_batch)
    drain(c_iter)
    head = R.Ring("lossy").stats()["head"]
    assert head == n
    for c in (c_batch, c_iter):
        s = c.stats()
        assert s["delivered"] + s["dropped"] == n, s  # exact accounting
        assert s["dropped"] > 0  # the producer did lap this slow reader
    assert bad == 0 and verified > 0
    assert c_batch.stats()["torn"] > 0  # tearing happened, and was caught
    c_batch.close()
    c_iter.close()


# ---------------------------------------------------------------- reliable: holds, then demoted

def test_reliable_holds_producer_then_is_demoted(ring_dir, caplog):
    R.create("rel", ndesc=256, arena_bytes=1 << 16)
    p = R.Producer("rel")
    c = R.Consumer("rel", "slowpoke", policy="reliable", stall_budget_us=300_000)
    done = threading.Event()
    t0 = time.monotonic()

    def produce():
        for s in range(0, 2000, 100):
            p.publish([seq_packet(k, 100) for k in range(s, s + 100)])
        done.set()

    th = threading.Thread(target=produce)
    th.start()
    # held: the producer fills the ring and waits for the reliable consumer
    assert wait_for(lambda: p.ring.stats()["head"] >= 256, 5)
    time.sleep(0.1)
    assert not done.is_set() and p.ring.stats()["head"] == 256 and c.stats()["policy"] == "reliable"
    # past the stall budget the producer demotes it and moves on
    with caplog.at_level(logging.WARNING, logger="capfan.ring"):
        assert done.wait(10)
        th.join()
        p.events.poll()
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 5
    s = c.stats()
    assert s["policy"] == "lossy" and s["demotions"] == 1 and c.demoted
    assert any(e.kind == "demoted" and e.name == "slowpoke" for e in p.ring.events())
    assert "demoted" in caplog.text and "slowpoke" in caplog.text
    drain(c)
    s = c.stats()
    assert accounted(s) == 2000 and s["dropped"] > 0
    c.close()
    p.close()


def test_reliable_consumer_loses_nothing_under_pressure(ring_dir):
    R.create("rel2", ndesc=256, arena_bytes=1 << 16)
    n = 20000
    go = FORK.Event()
    proc = FORK.Process(target=_lossy_producer, args=("rel2", n, 150, go))
    c = R.Consumer("rel2", "careful", policy="reliable", stall_budget_us=20_000_000)
    go.set()
    proc.start()
    got = []
    while len(got) < n:
        b = c.next(timeout=10)
        assert b is not None
        for _, pkt in b:
            assert packet_ok(pkt)
            got.append(struct.unpack_from("<Q", pkt)[0])
        b.release()
    proc.join()
    assert got == list(range(n))
    s = c.stats()
    assert s["dropped"] == 0 and s["delivered"] == n and s["demotions"] == 0
    c.close()


def test_full_drop_policy_counts_producer_drops(ring_dir):
    R.create("dropnew", ndesc=256, arena_bytes=1 << 16, full_policy="drop")
    with R.Producer("dropnew") as p, R.Consumer("dropnew", "c", stall_budget_us=10_000_000) as c:
        published = p.publish([seq_packet(k, 100) for k in range(1000)])
        assert published == 256 and p.dropped == 744
        assert len(drain(c)) == 256 and c.stats()["dropped"] == 0


# ---------------------------------------------------------------- kill -9 and resume

def _victim(ring, name, conn):
    c = R.Consumer(ring, name, policy="reliable", stall_budget_us=60_000_000)
    got = []
    while True:
        b = c.next(timeout=10)
        if b is None:
            continue
        seqs = b.desc["seq"].tolist()
        if len(got) + len(seqs) > 300:
            conn.send(("holding", got, seqs[0]))  # die while holding this batch unreleased
            time.sleep(60)
        got.extend(seqs)
        b.release()


def test_kill9_consumer_does_not_hold_producer_and_resumes_without_loss(ring_dir):
    R.create("k9", ndesc=1024, arena_bytes=1 << 20)
    p = R.Producer("k9")
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_victim, args=("k9", "victim", child))
    proc.start()
    assert wait_for(lambda: any(c["name"] == "victim" for c in p.ring.consumers()), 10)
    for s in range(0, 400, 50):
        p.publish([seq_packet(k, 80) for k in range(s, s + 50)])
    assert parent.poll(10)
    _, first_got, held_from = parent.recv()
    os.kill(proc.pid, signal.SIGKILL)  # mid-batch: the batch is never released
    proc.join()
    assert first_got == list(range(held_from))
    # the dead reliable consumer must not hold the producer: publish more than the ring holds
    t0 = time.monotonic()
    p.publish([seq_packet(k, 80) for k in range(400, 600)])
    assert time.monotonic() - t0 < 2.0
    # restart with the same name inside the window: resumes at the unreleased batch, 0 loss
    c = R.Consumer("k9", "victim", policy="reliable")
    got = drain(c)
    assert got == list(range(held_from, 600))
    s = c.stats()
    assert s["resumes"] == 1 and s["dropped"] == 0
    assert accounted(s) == 600 and s["delivered"] == 600
    assert any(e.kind == "resume" for e in p.ring.events())
    c.close()
    p.close()


def test_killed_reliable_consumer_stops_holding_a_full_ring(ring_dir):
    R.create("k9b", ndesc=256, arena_bytes=1 << 16)
    p = R.Producer("k9b")
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_victim, args=("k9b", "stuck", child))
    proc.start()
    assert wait_for(lambda: any(c["name"] == "stuck" for c in p.ring.consumers()), 10)
    p.publish([seq_packet(k, 80) for k in range(400)])
    assert parent.poll(10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    t0 = time.monotonic()
    p.publish([seq_packet(k, 80) for k in range(400, 3000)])  # far more than the ring holds
    assert time.monotonic() - t0 < 2.0  # stall budget is 60 s: release came from the death check
    slot = [c for c in p.ring.consumers() if c["name"] == "stuck"][0]
    assert slot["state"] == "dead"
    assert any(e.kind == "dead" for e in p.ring.events())
    # out of the window now: a restart counts what it missed as dropped, accounting stays exact
    c = R.Consumer("k9b", "stuck")
    drain(c)
    s = c.stats()
    assert accounted(s) == 3000 and s["dropped"] > 0
    c.close()
    p.close()


# ---------------------------------------------------------------- groups

def flows_both_ways(nflows):
    """(flow id, direction, frame) for UDP/IPv4 and TCP/IPv6 flows in both directions."""
    out = []
    for f in range(nflows):
        a, b = f"10.{f % 200}.{f // 200}.1", f"192.168.{f % 100}.{f % 250}"
        out.append((f, 0, udp4(a, b, 1024 + f, 53)))
        out.append((f, 1, udp4(b, a, 53, 1024 + f)))
        a6, b6 = f"2001:db8::{f:x}", f"2001:db8:1::{(f * 7) % 65535:x}"
        out.append((nflows + f, 0, tcp6(a6, b6, 40000 + f % 1000, 443)))
        out.append((nflows + f, 1, tcp6(b6, a6, 443, 40000 + f % 1000)))
    return out


def test_group_members_split_flows_exactly(ring_dir):
    R.create("grp", ndesc=4096, arena_bytes=4 << 20)
    k = 3
    with R.Producer("grp") as p:
        members = [R.Consumer("grp", f"ids{m}", group="ids", member=m, group_size=k) for m in range(k)]
        everyone = R.Consumer("grp", "flowmeter")
        pkts = flows_both_ways(500)
        assert p.publish([f for _, _, f in pkts]) == len(pkts)
        owner = {}
        counts = []
        for m, c in enumerate(members):
            seqs = drain(c)
            counts.append(len(seqs))
            for s in seqs:
                assert s not in owner  # exactly one member
                owner[s] = m
            st_ = c.stats()
            assert st_["delivered"] + st_["filtered"] == len(pkts) and st_["dropped"] == 0
        assert sorted(owner) == list(range(len(pkts)))
        flow_member = {}
        for seq, (flow, _, _) in enumerate(pkts):
            assert flow_member.setdefault(flow, owner[seq]) == owner[seq]  # both directions together
        assert min(counts) > len(pkts) / k / 2  # and the split is roughly even
        assert len(drain(everyone)) == len(pkts)  # other consumers still see everything
        for c in members + [everyone]:
            c.close()


def test_group_iteration_yields_only_own_packets(ring_dir):
    R.create("grp2", ndesc=1024, arena_bytes=1 << 20)
    with R.Producer("grp2") as p:
        m0 = R.Consumer("grp2", "m0", group="g", member=0, group_size=2)
        m1 = R.Consumer("grp2", "m1", group="g", member=1, group_size=2)
        pkts = [f for _, _, f in flows_both_ways(50)]
        p.publish(pkts)
        got = [bytes(x) for c in (m0, m1) for b in iter(lambda c=c: c.next(timeout=0), None) for _, x in b]
        assert sorted(got) == sorted(pkts)
        m0.close()
        m1.close()


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 65535), st.integers(0, 65535),
       st.sampled_from([6, 17, 132]))
def test_flow_hash_is_symmetric(a, b, sp, dp, proto):
    fwd = ipv4(str_ip(a), str_ip(b), proto, sp, dp)
    rev = ipv4(str_ip(b), str_ip(a), proto, dp, sp)
    assert hash_of(fwd) == hash_of(rev)


def test_fragments_hash_with_their_first_fragment():
    first = ipv4("10.0.0.1", "10.0.0.2", 17, 5000, 53, b"a" * 16, frag=0x2000, ident=9)
    later = ipv4("10.0.0.1", "10.0.0.2", 17, payload=b"b" * 16, frag=0x0002, ident=9)
    reply = ipv4("10.0.0.2", "10.0.0.1", 17, payload=b"c" * 16, frag=0x0002, ident=3)
    assert hash_of(first) == hash_of(later) == hash_of(reply)


def str_ip(v):
    return ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))


def hash_of(l3):
    flags = ffi.new("uint16_t *")
    return lib.capfan_flow_hash(l3, len(l3), 101, flags)


# ---------------------------------------------------------------- producer restart

def _short_producer(ring, start, n, kill_self):
    p = R.Producer(ring)
    p.publish([seq_packet(k, 90) for k in range(start, start + n)])
    if kill_self:
        os.kill(os.getpid(), signal.SIGKILL)  # crash without closing
    p.close()


def test_producer_restart_new_generation_and_consumers_continue(ring_dir):
    R.create("pr", ndesc=1024, arena_bytes=1 << 20)
    c = R.Consumer("pr", "c")
    lossy = R.Consumer("pr", "l", policy="lossy")
    for gen, (start, kill) in enumerate([(0, True), (300, False), (600, True)], start=1):
        proc = FORK.Process(target=_short_producer, args=("pr", start, 300, kill))
        proc.start()
        proc.join()
        got = drain(c)
        assert got == list(range(start, start + 300))
        assert c.producer_state() == (gen, False)
    assert drain(lossy) == list(range(900))
    assert c.producer_restarts >= 1 and c.generation == 3
    kinds = [e.kind for e in R.Ring("pr").events()]
    assert kinds.count("producer-restart") == 2
    for x in (c, lossy):
        s = x.stats()
        assert accounted(s) == 900 and s["dropped"] == 0
        x.close()


def test_second_live_producer_refused(ring_dir):
    R.create("two", ndesc=256, arena_bytes=1 << 16)
    with R.Producer("two"):
        parent, child = FORK.Pipe()

        def try_open(conn):
            try:
                R.Producer("two")
                conn.send("opened")
            except errors.RingBusy as e:
                conn.send(str(e))

        proc = FORK.Process(target=try_open, args=(child,))
        proc.start()
        proc.join()
        assert "already has a live producer" in parent.recv()


# ---------------------------------------------------------------- waiting

@pytest.mark.parametrize("spin_us", [0, 2000])
def test_sleeping_consumer_is_woken_by_publish(ring_dir, spin_us):
    R.create("w", ndesc=256, arena_bytes=1 << 16)
    p = R.Producer("w")
    c = R.Consumer("w", "sleepy", spin_us=spin_us)
    result = {}

    def wait():
        t = time.monotonic()
        b = c.next(timeout=20)
        result["n"] = len(b) if b else 0
        result["t"] = time.monotonic() - t
        b.release()

    th = threading.Thread(target=wait)
    th.start()
    assert wait_for(lambda: c.stats()["sleeping"], 5)  # on the futex, not spinning
    time.sleep(0.2)
    p.publish([seq_packet(0, 64)])
    th.join(5)
    assert result["n"] == 1 and 0.2 <= result["t"] < 5
    c.close()
    p.close()


# ---------------------------------------------------------------- C consumer with ring.h only

def test_c_consumer_needs_only_ring_h(ring_dir, tmp_path):
    core = os.path.join(os.path.dirname(R.__file__), "_core")
    exe = tmp_path / "cons"
    src = os.path.join(os.path.dirname(__file__), "c", "ring_consumer.c")
    import subprocess
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Werror", f"-I{core}", src,
                    os.path.join(core, "ring.c"), os.path.join(core, "parse.c"), "-o", str(exe), "-lpthread"],
                   check=True)
    R.create("cring", ndesc=1024, arena_bytes=1 << 20)
    p = R.Producer("cring")
    pkts = [seq_packet(k, 64 + k % 300) for k in range(5000)]
    proc = subprocess.Popen([str(exe), R.ring_path("cring"), "ccons", "5000"], stdout=subprocess.PIPE, text=True)
    assert wait_for(lambda: any(c["name"] == "ccons" for c in p.ring.consumers()), 10)
    for s in range(0, 5000, 500):
        p.publish(pkts[s:s + 500])
    out, _ = proc.communicate(timeout=30)
    n, total = map(int, out.split())
    assert n == 5000 and total == sum(len(x) for x in pkts)
    p.close()


def test_views_stay_valid_after_close_and_remove(ring_dir):
    R.create("v", ndesc=256, arena_bytes=1 << 16)
    p = R.Producer("v")
    c = R.Consumer("v", "c")
    p.publish([seq_packet(k, 100) for k in range(10)])
    b = c.next(timeout=0)
    desc, first = b.desc, b.packet(0)
    c.close()
    p.close()
    R.remove("v")
    del b, c, p
    # the mapping lives as long as a view of it does: reading it is safe, never a segfault
    assert desc["seq"].tolist() == list(range(10))
    assert packet_ok(bytes(first))


def test_wire_length_above_64k_and_port_linktypes(ring_dir):
    R.create("big", ndesc=256, arena_bytes=1 << 20, snaplen=9000)
    with R.Producer("big") as p, R.Consumer("big", "c") as c:
        p.set_linktype(3, 101)  # raw IP on port 3, the ring default (Ethernet) elsewhere
        assert p.ring.port_linktype(3) == 101 and p.ring.port_linktype(0) == 1
        raw = ipv4("10.0.0.1", "10.0.0.2", 17, 5, 6, b"q" * 100)
        p.publish([b"\0" * 9000, raw], wirelens=[80000, len(raw)], port=3)
        b = c.next(timeout=0)
        d = b.desc
        assert d["wirelen"][0] == 65535 and d["flags"][0] & R.F_WIRELEN_SAT and d["flags"][0] & R.F_TRUNCATED
        assert b.wirelens().tolist() == [80000, len(raw)]
        assert d["flags"][1] & R.F_L4  # parsed as raw IP thanks to the port's link type
        assert d["hash"][1] == hash_of(ipv4("10.0.0.2", "10.0.0.1", 17, 6, 5, b"q" * 100))


def test_external_placement_reclaims_only_released_frames(ring_dir):
    """The AF_XDP/ef_vi path: the backend owns fixed frames in the arena and reuses a frame only
    once reclaim() says its packet is below the tail."""
    R.create("ext", ndesc=64, arena_bytes=1 << 16)
    frame, nframes = 2048, 32
    with R.Producer("ext") as p, R.Consumer("ext", "c", stall_budget_us=10_000_000) as c:
        lib.capfan_producer_set_external(p._p, 1)
        free = list(range(nframes))
        in_ring = []  # (seq, frame) in publish order
        got = []
        for k in range(200):
            if not free:  # reclaim what the reliable consumer released
                tail = lib.capfan_producer_reclaim(p._p, lib.capfan_producer_head(p._p))
                while in_ring and in_ring[0][0] < tail:
                    free.append(in_ring.pop(0)[1])
            if not free:
                b = c.next(timeout=0)  # consumer catches up, then we try again
                got += [bytes(x) for _, x in b]
                b.release()
                tail = lib.capfan_producer_reclaim(p._p, lib.capfan_producer_head(p._p))
                while in_ring and in_ring[0][0] < tail:
                    free.append(in_ring.pop(0)[1])
            f = free.pop(0)
            pkt = seq_packet(k, 100 + k)
            p.ring._arena[f * frame:f * frame + len(pkt)] = pkt
            assert lib.capfan_producer_reserve_desc(p._p, 0) == 0
            seq = lib.capfan_producer_head(p._p)
            lib.capfan_producer_commit_at(p._p, f * frame, k, len(pkt), len(pkt), 0, 0)
            lib.capfan_producer_flush(p._p)
            in_ring.append((seq, f))
        got += [bytes(x) for b in iter(lambda: c.next(timeout=0), None) for _, x in b]
        assert got == [seq_packet(k, 100 + k) for k in range(200)]
        assert c.stats()["dropped"] == 0

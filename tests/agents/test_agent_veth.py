"""`capfan agent` capturing a veth pair inside a network namespace, traffic sent from the peer
namespace with tcpreplay: fan-out consumers see everything, a group splits it exactly, a killed
analyzer resumes without losing a packet, SIGTERM flushes flows and removes rings and XDP."""
import collections
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.agents.agentrun import AgentRun, consumers, flow_frames, replay_pcap, rings_left
from tests.agents.test_agent import flow_key, metered
from tests.conftest import ring_dir  # noqa: F401 - fixture
from tests.netns import veth  # noqa: F401 - fixture

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def quiet(veth):  # noqa: F811
    """The veth pair without IPv6 (no ND/MLD frames): only what the test sends crosses it."""
    if shutil.which("tcpreplay") is None:
        pytest.fail("the agent capture tests need tcpreplay (apt-get install tcpreplay)")
    veth.quiet()
    return veth


def send(v, path, pps):
    """tcpreplay a pcap out of the peer end; frames sent."""
    out = v.send_pcap(path, rate_pps=pps).stdout
    assert "Failed packets:          0" in out or "Failed packets: 0" in " ".join(out.split()), out
    return int([line for line in out.splitlines() if "Successful packets" in line][0].split(":")[1])


def xdp_prog(v):
    """The `prog/xdp` line of the capture interface, or None."""
    out = v.run(v.cap_ns, "ip", "-d", "link", "show", "dev", v.cap_if).stdout
    return next((line.strip() for line in out.splitlines() if "prog/xdp" in line), None)


def live_cfg(v, source="afpacket", **capture):
    """One live capture of the veth end -> flowmeter + stats (fan-out) + recorder group of 2."""
    return {
        "agent": {"drain_timeout": 20, "restart": {"backoff_initial": 0.2}},
        "capture": [{"interface": v.cap_if, "source": source, "name": "cap", **capture}],
        "analyzer": [
            {"analyzer": "flowmeter", "options": {"idle_timeout": 3600, "active_timeout": 0}},
            {"analyzer": "stats", "policy": "reliable", "options": {"interval": 3600}},
            {"name": "rec", "analyzer": "recorder", "group_size": 2, "policy": "reliable",
             "options": {"prefix": "{consumer}"}},
        ],
    }


def all_delivered(n):
    """Status predicate: n packets published and every consumer accounted for all of them."""
    def pred(s):
        q = s["queues"][0]
        return q["published"] == n and all(c["delivered"] + c["filtered"] + c["dropped"] == n
                                           for c in q["consumers"])
    return pred


def check_group_split(a, ring, frames, c):
    """The recorder group's members wrote disjoint shares that add up to the traffic, flows whole."""
    m0, m1 = c["rec-0"], c["rec-1"]
    assert m0["delivered"] + m1["delivered"] == len(frames) and m0["delivered"] and m1["delivered"]
    assert (m0["filtered"], m1["filtered"]) == (m1["delivered"], m0["delivered"])
    got0, got1 = a.recorded_frames(ring, "rec-0"), a.recorded_frames(ring, "rec-1")
    assert collections.Counter(got0) + collections.Counter(got1) == collections.Counter(frames)
    assert not {flow_key(f) for f in got0} & {flow_key(f) for f in got1}


def test_fanout_consumers_see_everything_and_group_splits_exactly(quiet, ring_dir, tmp_path):
    v = quiet
    frames = flow_frames(3000, flows=61)
    pcap = replay_pcap(tmp_path, frames)
    a = AgentRun(tmp_path, live_cfg(v), ring_dir, ns=v.cap_ns).start()
    try:
        st = a.wait_running()
        assert [q["ring"] for q in st["queues"]] == ["cap.q0"]
        assert send(v, pcap, pps=5000) == len(frames)
        st = a.wait_status(all_delivered(len(frames)), what="every packet delivered")
        q = st["queues"][0]
        assert (q["rx_packets"], q["kernel_drops"], q["ring_drops"]) == (len(frames), 0, 0)
        c = consumers(st)
        for name in ("flowmeter", "stats"):
            assert (c[name]["delivered"], c[name]["dropped"], c[name]["filtered"]) == (len(frames), 0, 0)
        assert a.stop() == 0
    finally:
        a.kill()
    check_group_split(a, "cap.q0", frames, consumers(a.status()))
    assert metered(a.records("cap.q0", "flowmeter", "flows")) == len(frames)
    assert sum(r["packets"] for r in a.records("cap.q0", "stats", "stats")) == len(frames)
    assert rings_left(ring_dir) == []


def test_kill9_analyzer_under_traffic_resumes_with_exact_accounting(quiet, ring_dir, tmp_path):
    v = quiet
    frames = flow_frames(6000, flows=40, seed=7)
    pcap = replay_pcap(tmp_path, frames)
    a = AgentRun(tmp_path, live_cfg(v), ring_dir, ns=v.cap_ns).start()
    try:
        st = a.wait_running()
        victim = a.worker(st, "flowmeter")["pid"]
        sender = subprocess.Popen(["ip", "netns", "exec", v.peer_ns, "tcpreplay", "-q", f"--intf1={v.peer_if}",
                                   "--pps=2000", pcap], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        a.wait_status(lambda s: consumers(s)["flowmeter"]["delivered"] > 1000, what="traffic flowing")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        st = a.wait_status(lambda s: a.worker(s, "flowmeter")["state"] == "running"
                           and a.worker(s, "flowmeter")["restarts"] == 1, what="flowmeter restarted")
        assert time.monotonic() - killed_at < 10
        out, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err
        st = a.wait_status(all_delivered(len(frames)), what="every packet accounted for")
        c = consumers(st)
        # the restarted flow meter resumed from its cursor: every packet delivered exactly once
        assert (c["flowmeter"]["delivered"], c["flowmeter"]["dropped"]) == (len(frames), 0)
        assert c["flowmeter"]["state"] == "active" and c["flowmeter"]["pid"] != victim
        # the other consumers were not disturbed
        assert (c["stats"]["delivered"], c["stats"]["dropped"]) == (len(frames), 0)
        assert all(a.worker(st, n)["restarts"] == 0 and a.worker(st, n)["pid"] for n in ("stats", "rec-0", "rec-1"))
        assert a.worker(st, kind="capture")["restarts"] == 0
        assert a.stop() == 0
    finally:
        a.kill()
    check_group_split(a, "cap.q0", frames, consumers(a.status()))


def test_sigterm_flushes_flows_and_removes_rings_and_xdp(quiet, ring_dir, tmp_path):
    v = quiet
    frames = flow_frames(2000, flows=29, seed=3)
    pcap = replay_pcap(tmp_path, frames)
    cfg = live_cfg(v, source="afxdp", options={"xdp_mode": "skb"})
    a = AgentRun(tmp_path, cfg, ring_dir, ns=v.cap_ns).start()
    try:
        a.wait_running()
        assert xdp_prog(v) is not None                       # the capture attached its program
        assert rings_left(ring_dir) == ["capfan.cap.q0"]
        assert send(v, pcap, pps=4000) == len(frames)
        a.wait_status(all_delivered(len(frames)), what="every packet delivered")
        assert a.stop(signal.SIGTERM) == 0
    finally:
        a.kill()
    flows = a.records("cap.q0", "flowmeter", "flows")      # open flows flushed by the flow meter's stop()
    assert len(flows) == 29 and metered(flows) == len(frames)
    assert xdp_prog(v) is None                              # program detached with the socket
    assert rings_left(ring_dir) == []                       # shared memory removed
    st = a.status()
    assert st["agent"]["state"] == "done" and all(w["pid"] is None for w in st["workers"])


def test_kill9_xdp_capture_worker_is_restarted_and_captures_again(quiet, ring_dir, tmp_path):
    v = quiet
    first, second = flow_frames(500, flows=5, seed=11), flow_frames(700, flows=7, seed=12)
    cfg = live_cfg(v, source="afxdp", options={"xdp_mode": "skb"})
    a = AgentRun(tmp_path, cfg, ring_dir, ns=v.cap_ns).start()
    try:
        st = a.wait_running()
        send(v, replay_pcap(tmp_path, first, name="a.pcap"), pps=4000)
        a.wait_status(all_delivered(len(first)), what="first batch delivered")
        victim = a.worker(st, kind="capture")["pid"]
        os.kill(victim, signal.SIGKILL)
        st = a.wait_status(lambda s: a.worker(s, kind="capture")["restarts"] == 1
                           and a.worker(s, kind="capture")["state"] == "running", what="capture restarted")
        assert a.worker(st, kind="capture")["last_exit"] == "killed by SIGKILL"
        assert xdp_prog(v) is not None
        send(v, replay_pcap(tmp_path, second, name="b.pcap"), pps=4000)
        total = len(first) + len(second)
        st = a.wait_status(all_delivered(total), what="second batch delivered")
        c = consumers(st)
        # the ring survived its producer: consumers just carried on, nothing lost either side
        assert (c["flowmeter"]["delivered"], c["stats"]["delivered"]) == (total, total)
        assert st["queues"][0]["rx_packets"] == total      # counters stay cumulative across the restart
        assert a.stop() == 0
    finally:
        a.kill()
    assert xdp_prog(v) is None and rings_left(ring_dir) == []


def test_every_queue_of_the_nic_gets_a_ring_and_flows_stay_whole(ring_dir, tmp_path):
    from tests.netns import VethPair
    v = VethPair().up(cap_queues=2)
    try:
        v.quiet()
        frames = flow_frames(2000, flows=80, seed=5)
        cfg = {"capture": [{"interface": v.cap_if, "source": "afpacket", "name": "cap", "queues": "all"}],
               "analyzer": [{"analyzer": "flowmeter", "options": {"idle_timeout": 3600, "active_timeout": 0}}]}
        a = AgentRun(tmp_path, cfg, ring_dir, ns=v.cap_ns).start()
        try:
            st = a.wait_running()
            # two receive queues -> two AF_PACKET sockets in one hash fanout group, one ring each
            assert [q["ring"] for q in st["queues"]] == ["cap.q0", "cap.q1"]
            assert len([w for w in st["workers"] if w["kind"] == "analyzer"]) == 2
            send(v, replay_pcap(tmp_path, frames), pps=5000)
            st = a.wait_status(lambda s: sum(q["published"] for q in s["queues"]) == len(frames)
                               and all(c["lag"] == 0 for q in s["queues"] for c in q["consumers"]),
                               what="all frames in the rings and read")
            assert all(q["published"] > 0 for q in st["queues"])   # the kernel spread the flows
            assert a.stop() == 0
        finally:
            a.kill()
        per_ring = [a.records(r, "flowmeter", "flows") for r in ("cap.q0", "cap.q1")]
        assert sum(metered(r) for r in per_ring) == len(frames)
        keys = [{tuple(sorted([(f["sourceIPAddress"], f["sourceTransportPort"]),
                               (f["destinationIPAddress"], f["destinationTransportPort"])])) for f in r}
                for r in per_ring]
        assert len(keys[0]) + len(keys[1]) == 80 and not keys[0] & keys[1]   # no flow split across rings
    finally:
        v.down()

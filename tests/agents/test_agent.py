"""`capfan agent` on pcap replays (no privileges needed): start-up order, fan-out and groups,
supervision (kill -9, restart with backoff, giving up), graceful shutdown and its clean-up."""
import collections
import json
import os
import signal
import time

import pytest

from tests.agents.agentrun import AgentRun, consumers, flow_frames, replay_pcap, rings_left
from tests.conftest import ring_dir, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
FLOWS = "flows"


def flow_key(frame: bytes):
    """Direction-free 5-tuple of a test UDP frame."""
    ip = frame[14:34]
    a, b = (ip[12:16], frame[34:36]), (ip[16:20], frame[36:38])
    return tuple(sorted((a, b)))


def metered(recs) -> int:
    """Packets counted by flow records (both directions)."""
    return sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in recs)


def fanout_cfg(pcap, **agent):
    """pcap replay -> flowmeter + stats (fan-out) + a reliable recorder group of 2."""
    return {
        "agent": {"drain_timeout": 20, **agent},
        "capture": [{"source": "pcap", "file": pcap, "name": "rp", "options": {"speed": "max"}}],
        "analyzer": [
            {"analyzer": "flowmeter", "options": {"idle_timeout": 3600, "active_timeout": 0}},
            {"analyzer": "stats", "policy": "reliable", "spin_us": 50, "options": {"interval": 3600}},
            {"name": "rec", "analyzer": "recorder", "group_size": 2, "policy": "reliable",
             "options": {"prefix": "{consumer}"}},
        ],
    }


def test_replay_fanout_and_group_split_exactly(tmp_path, ring_dir):
    frames = flow_frames(3000, flows=97)
    pcap = replay_pcap(tmp_path, frames)
    a = AgentRun(tmp_path, fanout_cfg(pcap, exit_when_done=True), ring_dir).start()
    assert a.wait(60) == 0, a.log()
    st = a.status()
    assert st["agent"]["state"] == "done"
    q = st["queues"][0]
    assert q["published"] == q["rx_packets"] == len(frames)
    c = consumers(st)
    # every fan-out consumer saw every packet; the group members split them with nothing lost
    for name in ("flowmeter", "stats"):
        assert (c[name]["delivered"], c[name]["dropped"], c[name]["filtered"]) == (len(frames), 0, 0), c[name]
    assert (c["stats"]["spin_us"], c["flowmeter"]["spin_us"]) == (50, 0)   # each consumer's own wait policy
    assert {c[n]["policy"] for n in c} == {"reliable"}
    m0, m1 = c["rec-0"], c["rec-1"]
    assert m0["delivered"] + m1["delivered"] == len(frames)
    assert m0["filtered"] == m1["delivered"] and m1["filtered"] == m0["delivered"]
    assert m0["delivered"] > 0 and m1["delivered"] > 0
    # what each member wrote: disjoint, together exactly the replay, each flow on one member only
    got0, got1 = a.recorded_frames("rp.q0", "rec-0"), a.recorded_frames("rp.q0", "rec-1")
    assert len(got0) == m0["delivered"] and len(got1) == m1["delivered"]
    assert collections.Counter(got0) + collections.Counter(got1) == collections.Counter(frames)
    assert not {flow_key(f) for f in got0} & {flow_key(f) for f in got1}
    # the flow meter flushed at the end of the replay: its records cover every packet
    flows = a.records("rp.q0", "flowmeter", FLOWS)
    assert metered(flows) == len(frames) and len(flows) == 97
    assert sum(r["packets"] for r in a.records("rp.q0", "stats", "stats")) == len(frames)
    # nothing left behind: rings, worker state files
    assert rings_left(ring_dir) == []
    assert os.listdir(os.path.join(a.run_dir, "agents", "t", "workers")) == []


def test_kill9_analyzer_is_restarted_and_resumes_exactly(tmp_path, ring_dir):
    frames = flow_frames(4000, flows=50)
    pcap = replay_pcap(tmp_path, frames, gap_us=1000)   # 4 s at speed 1x
    cfg = fanout_cfg(pcap)
    cfg["capture"][0]["options"] = {"speed": "1x"}
    cfg["agent"]["restart"] = {"backoff_initial": 0.2}
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    try:
        st = a.wait_running()
        victim = a.worker(st, "flowmeter")
        a.wait_status(lambda s: consumers(s)["flowmeter"]["delivered"] > 300, what="traffic flowing")
        os.kill(victim["pid"], signal.SIGKILL)
        st = a.wait_status(lambda s: a.worker(s, "flowmeter")["restarts"] == 1
                           and a.worker(s, "flowmeter")["state"] == "running", what="flowmeter restarted")
        w = a.worker(st, "flowmeter")
        assert w["pid"] != victim["pid"] and w["last_exit"] == "killed by SIGKILL"
        assert "analyzer flowmeter on rp.q0 died (killed by SIGKILL); restarting in 0.2 s" in a.log()
        # the replay ends; every consumer catches up
        st = a.wait_status(lambda s: s["queues"][0]["published"] == len(frames)
                           and all(c["delivered"] + c["filtered"] + c["dropped"] == len(frames)
                                   for c in consumers(s).values()), timeout=30, what="all delivered")
        c = consumers(st)
        # resumed from its cursor inside the window: not one packet lost or repeated
        assert (c["flowmeter"]["delivered"], c["flowmeter"]["dropped"]) == (len(frames), 0)
        # the others never noticed
        assert (c["stats"]["delivered"], c["stats"]["dropped"]) == (len(frames), 0)
        assert c["rec-0"]["delivered"] + c["rec-1"]["delivered"] == len(frames)
        assert all(a.worker(st, n)["restarts"] == 0 for n in ("stats", "rec-0", "rec-1"))
        assert a.stop() == 0
    finally:
        a.kill()
    assert rings_left(ring_dir) == []


def test_crashing_analyzer_is_given_up_loudly_and_others_continue(tmp_path, ring_dir):
    frames = flow_frames(3000, flows=10)
    pcap = replay_pcap(tmp_path, frames, gap_us=1000)   # 3 s at 1x
    cfg = {
        "agent": {"restart": {"backoff_initial": 0.05, "backoff_max": 0.1, "max_failures": 3, "window": 60}},
        "capture": [{"source": "pcap", "file": pcap, "name": "rp", "options": {"speed": "1x"}}],
        "analyzer": [
            {"name": "buggy", "analyzer": "tests.analyzers.plugins:Recording", "options": {"fail_after": 1}},
            {"analyzer": "stats", "policy": "reliable"},
        ],
    }
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    try:
        a.wait_running()
        st = a.wait_status(lambda s: a.worker(s, "buggy")["state"] == "failed", what="buggy given up")
        w = a.worker(st, "buggy")
        assert w["restarts"] == 2 and w["pid"] is None
        assert w["last_exit"].startswith("exit status 2: AnalyzerFailed: analyzer")
        assert "giving up on analyzer buggy on rp.q0: it failed 3 times within 60 s" in a.log()
        assert "plugin bug on purpose" in a.log()     # the plugin's traceback reaches the agent's log
        st = a.wait_status(lambda s: consumers(s)["stats"]["delivered"] == len(frames), what="stats complete")
        assert a.worker(st, "stats")["restarts"] == 0 and a.worker(st, "stats")["state"] == "running"
        assert a.proc.poll() is None          # one failed analyzer does not take the agent down
        assert a.stop() == 0
    finally:
        a.kill()


def test_worker_that_cannot_start_stops_the_agent_with_its_message(tmp_path, ring_dir):
    pcap = replay_pcap(tmp_path, flow_frames(10))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = {"capture": [{"source": "pcap", "file": pcap, "name": "rp"}],
           "analyzer": [{"analyzer": "recorder", "options": {"dir": str(blocker / "sub")}}]}
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    assert a.wait(30) == 2
    err = a.log().strip().splitlines()[-1]
    assert err == (f"capfan: error: analyzer recorder on rp.q0 failed to start (analyzer[0]): config key "
                   f"'analyzer[0].options.dir': cannot create {blocker / 'sub'}: Not a directory"), err
    assert rings_left(ring_dir) == []


def test_sigterm_drains_flushes_and_cleans_up(tmp_path, ring_dir):
    frames = flow_frames(2000, flows=33)
    pcap = replay_pcap(tmp_path, frames)
    a = AgentRun(tmp_path, fanout_cfg(pcap), ring_dir).start()
    try:
        a.wait_running()
        st = a.wait_status(lambda s: a.worker(s, kind="capture")["state"] == "done", what="replay done")
        assert st["queues"][0]["published"] == len(frames)
        assert a.proc.poll() is None      # without exit_when_done the agent keeps running
        assert a.stop(signal.SIGTERM) == 0
    finally:
        a.kill()
    # the flow meter's open flows (idle timeout 1 h) were flushed by its stop()
    flows = a.records("rp.q0", "flowmeter", FLOWS)
    assert len(flows) == 33 and metered(flows) == len(frames)
    assert all(f["flowEndReasonName"] == "forced" for f in flows)
    st = a.status()
    assert st["agent"]["state"] == "done"
    assert all(w["state"] in ("stopped", "done") and w["pid"] is None for w in st["workers"])
    assert rings_left(ring_dir) == []


def test_status_top_and_metrics_describe_the_running_agent(tmp_path, ring_dir):
    from prometheus_client.parser import text_string_to_metric_families
    import subprocess
    import sys
    import urllib.request

    frames = flow_frames(1500, flows=20)
    pcap = replay_pcap(tmp_path, frames)
    cfg = fanout_cfg(pcap)
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    try:
        a.wait_running()
        st = a.wait_status(lambda s: a.worker(s, kind="capture")["state"] == "done"
                           and all(c["lag"] == 0 for c in consumers(s).values()), what="replayed and read")
        assert st["queues"][0]["published"] == len(frames)
        # Prometheus: the same numbers as the snapshot, parseable by the reference parser
        with urllib.request.urlopen(f"http://{st['agent']['metrics']}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        q = {"ring": "rp.q0", "capture": "rp", "interface": "", "source": "pcap", "queue": "0"}
        assert samples[("capfan_queue_rx_packets_total", tuple(sorted(q.items())))] == len(frames)
        lab = {"ring": "rp.q0", "consumer": "rec-1", "analyzer": "recorder", "group": "rec", "member": "1",
               "policy": "reliable"}
        rec1 = consumers(a.status())["rec-1"]
        assert samples[("capfan_consumer_delivered_packets_total", tuple(sorted(lab.items())))] == rec1["delivered"]
        assert samples[("capfan_consumer_filtered_packets_total", tuple(sorted(lab.items())))] == rec1["filtered"]
        ups = {k[1]: v for k, v in samples.items() if k[0] == "capfan_worker_up"}
        assert len(ups) == 5 and sum(ups.values()) == 4     # the finished replay is no longer up
        # capfan status / top read the same snapshot
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        out = subprocess.run([sys.executable, "-m", "capfan", "status", "-c", a.path], capture_output=True,
                             text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "agent t " in out.stdout and "state running" in out.stdout
        for name in ("flowmeter", "stats", "rec-0", "rec-1", "capture-rp.q0"):
            assert name in out.stdout
        row = next(line for line in out.stdout.splitlines() if " rp.q0 " in line and " pcap " in line)
        assert f" {len(frames)} " in row
        js = subprocess.run([sys.executable, "-m", "capfan", "status", "-c", a.path, "--json"], capture_output=True,
                            text=True, env=env, timeout=30)
        assert json.loads(js.stdout)["queues"][0]["published"] == len(frames)
        top = subprocess.run([sys.executable, "-m", "capfan", "top", "-c", a.path, "--count", "2", "--interval",
                              "0.2"], capture_output=True, text=True, env=env, timeout=30)
        assert top.returncode == 0 and top.stdout.count("agent t  pid ") == 2, top.stderr
        assert a.stop() == 0
    finally:
        a.kill()
    # after the agent: status says so and exits 1
    out = subprocess.run([sys.executable, "-m", "capfan", "status", "-c", a.path], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 1 and "agent t " in out.stdout.splitlines()[0]


@pytest.mark.parametrize("how", ["stop_timeout", "second_signal"])
def test_a_worker_that_will_not_stop_is_killed_and_rings_still_go(tmp_path, ring_dir, how):
    pcap = replay_pcap(tmp_path, flow_frames(100))
    cfg = {"agent": {"stop_timeout": 1.5 if how == "stop_timeout" else 60},
           "capture": [{"source": "pcap", "file": pcap, "name": "rp"}],
           "analyzer": [{"name": "slow", "analyzer": "tests.analyzers.plugins:Recording",
                         "options": {"stop_sleep": 120}}]}
    a = AgentRun(tmp_path, cfg, ring_dir).start()
    try:
        a.wait_running()
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        if how == "second_signal":
            time.sleep(1.0)
            a.proc.send_signal(signal.SIGINT)
        assert a.wait(30) == 0
        assert time.monotonic() - t0 < 10
    finally:
        a.kill()
    why = "it did not stop within 1.5 s (agent.stop_timeout)" if how == "stop_timeout" else "a second signal came"
    assert f"warning: killing analyzer slow on rp.q0: {why}" in a.log()
    assert rings_left(ring_dir) == []
    assert a.worker(a.status(), "slow")["state"] == "stopped"

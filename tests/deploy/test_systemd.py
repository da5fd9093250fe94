"""deploy/systemd units: the agent gets exactly the capabilities capture needs and the collector
none; both run as the unprivileged capfan user with systemd's sandboxing; systemd itself accepts
the files (`systemd-analyze verify`, with ExecStart pointed at this checkout's capfan)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from capfan.agents import config as agent_config
from tests.conftest import ring_dir  # noqa: F401 - fixture
from tests.netns import veth  # noqa: F401 - fixture
from tests.bpffs import bpffs  # noqa: F401 - fixture

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
# capability numbers (include/uapi/linux/capability.h) of the ones a unit may name here
CAP_BITS = {12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW", 14: "CAP_IPC_LOCK", 21: "CAP_SYS_ADMIN", 23: "CAP_SYS_NICE",
            39: "CAP_BPF"}
AGENT_CAPS = {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF", "CAP_IPC_LOCK", "CAP_SYS_NICE"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (systemd allows a key several times;
    an empty assignment resets the list, as systemd does)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"{path.name}:{n}: {line!r}"
        key, value = (s.strip() for s in line.split("=", 1))
        vals = section.setdefault(key, [])
        if value == "":
            vals.clear()
            vals.append("")
        else:
            vals.append(value)
    return out


def one(unit, key, section="Service") -> str:
    """The value of a key set once."""
    vals = unit[section].get(key)
    assert vals is not None and len(vals) == 1, (key, vals)
    return vals[0]


def words(unit, key, section="Service") -> set[str]:
    """Space-separated items over every assignment of a key."""
    return {w for v in unit[section].get(key, []) for w in v.split()}


@pytest.fixture(scope="module")
def agent():
    return parse_unit(UNITS / "capfan-agent.service")


@pytest.fixture(scope="module")
def collect():
    return parse_unit(UNITS / "capfan-collect.service")


def test_agent_gets_exactly_the_capture_capabilities(agent):
    assert words(agent, "CapabilityBoundingSet") == AGENT_CAPS
    assert words(agent, "AmbientCapabilities") == AGENT_CAPS
    assert one(agent, "LimitMEMLOCK") == "infinity"
    # what the agent's own privilege check asks for (agents/config.py) is inside the set
    needed = {agent_config.CAP_NAMES[alts[0]] for src in agent_config.LIVE_SOURCES
              for alts in agent_config.needed_caps(src)}
    assert needed <= AGENT_CAPS


def test_collector_gets_no_capability(collect):
    assert collect["Service"]["CapabilityBoundingSet"] == [""]
    assert collect["Service"].get("AmbientCapabilities", [""]) == [""]
    assert "LimitMEMLOCK" not in collect["Service"]


@pytest.mark.parametrize("name", ["capfan-agent.service", "capfan-collect.service"])
def test_units_run_unprivileged_and_sandboxed(name):
    u = parse_unit(UNITS / name)
    role, config = ("agent", "agent") if "agent" in name else ("collect", "collector")
    assert one(u, "User") == "capfan" and one(u, "Group") == "capfan"
    assert one(u, "ExecStart") == f"/usr/local/bin/capfan {role} -c /etc/capfan/{config}.toml"
    assert one(u, "StateDirectory") == "capfan"
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                      "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
                      "LockPersonality": "yes", "SystemCallArchitectures": "native"}.items():
        assert one(u, key) == want, key
    assert "@system-service" in words(u, "SystemCallFilter")
    assert one(u, "WantedBy", "Install") == "multi-user.target"


def test_agent_sandbox_leaves_what_capture_uses(agent):
    assert words(agent, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
                                                       "AF_PACKET", "AF_XDP"}
    assert "bpf" in words(agent, "SystemCallFilter")          # loading the XDP program
    assert "/dev/shm" in words(agent, "ReadWritePaths")       # the rings
    # AF_XDP pins (the C core's default CAPFAN_BPF_DIR): writable, and created for the capfan user
    # by root before the sandboxed start; "-": a host without bpffs still starts (by-id fallback)
    assert "-/sys/fs/bpf/capfan" in words(agent, "ReadWritePaths")
    assert one(agent, "ExecStartPre") == "-+/usr/bin/install -d -m 0700 -o capfan -g capfan /sys/fs/bpf/capfan"
    assert "PrivateDevices" not in agent["Service"] and "RemoveIPC" not in agent["Service"]
    # the run and state directories are the config defaults (agents/config.py)
    assert one(agent, "RuntimeDirectory") == "capfan"
    assert one(agent, "Environment") == "CAPFAN_RUN_DIR=/run/capfan"
    assert agent_config.AGENT["out"].default.startswith("/var/lib/capfan/")
    assert agent_config.EXPORT["spool_dir"].default.startswith("/var/lib/capfan/")


def test_collector_sandbox_has_no_raw_sockets(collect):
    assert words(collect, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one(collect, "PrivateDevices") == "yes"


def verify(tmp_path, name, text):
    """`systemd-analyze verify` of a unit text saved as tmp/name: (returncode, output)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd)")
    p = tmp_path / name
    p.write_text(text)
    r = subprocess.run([exe, "verify", "--man=no", str(p)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    return r.returncode, (r.stdout + r.stderr).strip()


@pytest.mark.parametrize("name", ["capfan-agent.service", "capfan-collect.service"])
def test_systemd_analyze_verify_accepts_the_units_without_a_warning(tmp_path, name):
    capfan = shutil.which("capfan")
    assert capfan, "capfan is not on PATH"
    text = (UNITS / name).read_text().replace("/usr/local/bin/capfan", capfan)
    rc, out = verify(tmp_path, name, text)
    assert rc == 0 and name not in out, out
    # the check is live: a misspelt setting is reported
    rc, out = verify(tmp_path, name, re.sub(r"^ProtectHome=yes$", "ProtectHome=sometimes", text, flags=re.M))
    assert "protect home" in out.lower(), out


# ---------------------------------------------------------------- the agent's set, for real

def unit_privileges(caps: set[str], memlock: str) -> list[str]:
    """prlimit + setpriv in front of a command: the unit's memlock limit and exactly `caps` (a
    bounding set of those, nothing inheritable), no_new_privs. uid 0 keeps file access out of the
    way (this host's interpreter may be out of an unprivileged user's reach); what the process
    may do beyond file access is only those capabilities."""
    limit = "unlimited" if memlock == "infinity" else memlock
    bounding = ",".join(["-all", *(f"+{c.lower().removeprefix('cap_')}" for c in sorted(caps))])
    prlimit = ["prlimit", f"--memlock={limit}:{limit}"]
    # raising a hard limit needs CAP_SYS_RESOURCE, which some container sandboxes withhold from
    # root; then the inherited limit stays (CAP_IPC_LOCK exempts the agent from it anyway)
    if subprocess.run([*prlimit, "true"], capture_output=True).returncode != 0:
        prlimit = []
    return [*prlimit, "setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs"]


@pytest.mark.privileged
@pytest.mark.slow
def test_agent_captures_af_xdp_with_exactly_the_unit_capabilities(agent, ring_dir, tmp_path, veth):
    from tests.agents.agentrun import AgentRun, flow_frames, replay_pcap, rings_left
    from tests.agents.test_agent_veth import all_delivered, send, xdp_prog

    class UnitAgent(AgentRun):
        """The agent started the way the unit starts it (limits and capabilities)."""

        def __init__(self, *a, prefix, **kw):
            super().__init__(*a, **kw)
            self.prefix = prefix

        def start(self, *args):
            cmd = ["ip", "netns", "exec", self.ns, *self.prefix, shutil.which("capfan"), "agent", "-c", self.path]
            self._err = open(self.errpath, "w")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                         env={**os.environ, "CAPFAN_RING_DIR": ring_dir})
            return self

    veth.quiet()  # only our frames on the wire
    caps = words(agent, "AmbientCapabilities")

    def cfg():
        return {"agent": {"drain_timeout": 20}, "metrics": {"enabled": False},
                "capture": [{"interface": veth.cap_if, "source": "afxdp", "name": "cap",
                             "options": {"xdp_mode": "skb"}}],
                "analyzer": [{"analyzer": "stats", "policy": "reliable", "options": {"interval": 3600}}]}

    frames = flow_frames(1500, flows=17, seed=5)
    os.makedirs(tmp_path / "ok")
    a = UnitAgent(tmp_path / "ok", cfg(), ring_dir, ns=veth.cap_ns, name="unit",
                  prefix=unit_privileges(caps, one(agent, "LimitMEMLOCK")))
    try:
        st = a.start().wait_running()
        pid = a.worker(st, kind="capture")["pid"]
        with open(f"/proc/{pid}/status") as f:
            eff = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
        assert {CAP_BITS.get(i, i) for i in range(64) if eff >> i & 1} == caps   # these, nothing else
        assert xdp_prog(veth) is not None
        assert send(veth, replay_pcap(tmp_path, frames), pps=4000) == len(frames)
        a.wait_status(all_delivered(len(frames)), what="every packet delivered")
        assert a.stop() == 0, a.log()
    finally:
        a.kill()
    assert xdp_prog(veth) is None and rings_left(ring_dir) == []     # detached without CAP_SYS_ADMIN
    # so the unit's restart finds the interface free again
    os.makedirs(tmp_path / "again")
    a = UnitAgent(tmp_path / "again", cfg(), ring_dir, ns=veth.cap_ns, name="again",
                  prefix=unit_privileges(caps, one(agent, "LimitMEMLOCK")))
    try:
        a.start().wait_running()
        assert xdp_prog(veth) is not None
        assert a.stop() == 0, a.log()
    finally:
        a.kill()
    assert xdp_prog(veth) is None
    # the set is not larger than needed: without CAP_BPF the agent refuses, naming it
    os.makedirs(tmp_path / "nobpf")
    b = UnitAgent(tmp_path / "nobpf", cfg(), ring_dir, ns=veth.cap_ns, name="nobpf",
                  prefix=unit_privileges(caps - {"CAP_BPF"}, "infinity"))
    try:
        assert b.start().wait(60) != 0
    finally:
        b.kill()
    assert "CAP_BPF" in b.log() and "AmbientCapabilities=" in b.log(), b.log()


@pytest.mark.privileged
@pytest.mark.slow
def test_af_xdp_queues_and_kill9_recovery_under_the_unit_capabilities(agent, ring_dir, tmp_path, bpffs):
    """With exactly the unit's capabilities (no CAP_SYS_ADMIN) two capture processes of two
    queues of one interface share capfan's pinned XDP program and both receive their packets;
    after kill -9 of both, a restart replaces the leftover program with no `ip link set xdp
    off`; the last close leaves no program and no pin."""
    from capfan import ring as R
    from tests.agents.agentrun import flow_frames, replay_pcap
    from tests.agents.test_agent_veth import send, xdp_prog
    from tests.bpffs import pins
    from tests.conftest import wait_for
    from tests.netns import VethPair

    v = VethPair().up(cap_queues=2, peer_queues=2)
    prefix = unit_privileges(words(agent, "AmbientCapabilities"), one(agent, "LimitMEMLOCK"))
    env = {**os.environ, "CAPFAN_RING_DIR": ring_dir, "CAPFAN_RUN_DIR": str(tmp_path / "run")}
    procs = []

    def capture(queue):
        """A `capfan capture` of one queue, started the way the unit starts the agent; returns once
        its socket is in the XSKMAP (it prints "capturing:"), failing with its output otherwise."""
        cmd = ["ip", "netns", "exec", v.cap_ns, *prefix, shutil.which("capfan"), "capture", v.cap_if,
               "--ring", f"mq.q{queue}", "--source", "afxdp", "--queue", str(queue), "-o", "xdp_mode=native",
               "--ndesc", "4096", "--arena", "32M", "--duration", "120", "-q"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        seen = []
        while not any(line.startswith("capturing:") for line in seen):
            line = p.stderr.readline()
            assert line, f"queue {queue} capture did not start: {''.join(seen)}{p.communicate()}"
            seen.append(line)
        return p

    def heads():
        return [R.Ring(f"mq.q{q}").stats()["head"] for q in (0, 1)]

    try:
        v.quiet()  # only our frames on the wire
        frames = flow_frames(600, flows=64, seed=9)
        path = replay_pcap(tmp_path, frames)
        progs = []
        for round_ in range(2):
            q0 = capture(0)
            progs.append(xdp_prog(v))
            assert progs[-1] is not None and progs[-1] not in progs[:-1]   # round 2: the leftover replaced
            first_pins = pins(bpffs)
            assert len(first_pins) == 2, first_pins                     # prog + xsks_map
            q1 = capture(1)
            assert pins(bpffs) == first_pins
            before = heads()
            assert send(v, path, pps=4000) == len(frames)
            assert wait_for(lambda: sum(heads()) - sum(before) >= len(frames), 15, 0.05), heads()
            got = [h - b for h, b in zip(heads(), before)]
            assert got[0] > 0 and got[1] > 0 and sum(got) == len(frames), got   # both queues, every packet
            if round_ == 0:                                       # crash both: nothing cleans up
                for p in (q1, q0):
                    p.kill()
                    p.communicate(timeout=30)
                assert xdp_prog(v) is not None and pins(bpffs) == first_pins
        for p in (q1, q0):                                        # the restarted pair stops cleanly
            p.send_signal(2)
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0 and "Traceback" not in err, err
        assert xdp_prog(v) is None and pins(bpffs) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        v.down()


@pytest.mark.privileged
@pytest.mark.slow
def test_af_xdp_second_queue_without_bpffs_names_what_is_missing(agent, ring_dir, tmp_path, monkeypatch):
    """Where /sys/fs/bpf (the unit's pin directory) is no bpffs, as inside `ip netns exec`, the
    unit's capabilities cannot open the first queue's program by id: the second queue's capture
    stops with a message naming the pin directory, how to mount bpffs and CAP_SYS_ADMIN."""
    from tests.agents.test_agent_veth import xdp_prog
    from tests.conftest import wait_for
    from tests.netns import VethPair

    monkeypatch.delenv("CAPFAN_BPF_DIR", raising=False)            # the default the unit relies on
    v = VethPair().up(cap_queues=2, peer_queues=2)
    prefix = unit_privileges(words(agent, "AmbientCapabilities"), one(agent, "LimitMEMLOCK"))
    env = {**os.environ, "CAPFAN_RING_DIR": ring_dir, "CAPFAN_RUN_DIR": str(tmp_path / "run")}

    def capture(queue):
        return ["ip", "netns", "exec", v.cap_ns, *prefix, shutil.which("capfan"), "capture", v.cap_if,
                "--ring", f"mq.q{queue}", "--source", "afxdp", "--queue", str(queue), "-o", "xdp_mode=skb",
                "--ndesc", "4096", "--arena", "32M", "--duration", "60", "-q"]

    first = subprocess.Popen(capture(0), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_for(lambda: xdp_prog(v) is not None or first.poll() is not None, 30, 0.05)
        assert first.poll() is None, first.communicate()
        second = subprocess.run(capture(1), capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode != 0
        err = " ".join(second.stderr.split())
        assert "queue 1" in err and "CAP_SYS_ADMIN" in err, err
        assert "/sys/fs/bpf/capfan is not on a bpffs mount" in err and "mount -t bpf" in err, err
        assert "Traceback" not in second.stderr
        first.send_signal(2)
        first.communicate(timeout=30)
        assert xdp_prog(v) is None                     # the first capture still cleaned up after itself
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        v.down()

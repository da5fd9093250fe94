"""`capfan tune` and `capfan doctor` for real: a veth pair with 4 queues in a test-created network
namespace (deliberately mis-tuned), global sysctls in the host namespace (restored afterwards),
huge pages for rings on a hugetlbfs mount the test makes (pool size restored)."""
import json
import os
import subprocess
import sys

import pytest

from tests.netns import VethPair, sh

pytestmark = pytest.mark.privileged

SYSCTLS = ("net.core.busy_poll", "net.core.busy_read", "net.core.netdev_max_backlog", "net.core.bpf_jit_enable")
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def capfan(*args, ns=None, env=None, prefix=()):
    """Run `python -m capfan ARGS` (inside network namespace ns); the CompletedProcess."""
    cmd = [*(("ip", "netns", "exec", ns) if ns else ()), *prefix, sys.executable, "-m", "capfan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture
def veth4():
    """A 4-queue veth pair with GRO, TSO and GSO on, removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("tune tests need root (CI runs as root): network namespaces and veth")
    v = VethPair()
    try:
        v.up(cap_queues=4, peer_queues=4)
        v.run(v.cap_ns, "ethtool", "-K", v.cap_if, "gro", "on", "tso", "on", "gso", "on")
        yield v
    finally:
        v.down()


def iface_state(v):
    """What tune may change on the capture interface: channels, offloads, NAPI settings."""
    napi = [v.run(v.cap_ns, "cat", f"/sys/class/net/{v.cap_if}/{n}").stdout
            for n in ("napi_defer_hard_irqs", "gro_flush_timeout")]
    return (v.run(v.cap_ns, "ethtool", "-l", v.cap_if).stdout, v.run(v.cap_ns, "ethtool", "-k", v.cap_if).stdout,
            napi)


def rx_channels(v):
    out = v.run(v.cap_ns, "ethtool", "-l", v.cap_if).stdout
    return int(out.split("Current hardware settings:")[1].split("RX:")[1].split()[0])


def feature(v, name):
    for line in v.run(v.cap_ns, "ethtool", "-k", v.cap_if).stdout.splitlines():
        if line.strip().startswith(name + ":"):
            return line.split(":")[1].split()[0]
    raise AssertionError(f"{name} not in ethtool -k")


def by_item(actions, scope):
    return {a["item"]: a for a in actions if a["scope"] == scope}


def test_dry_run_prints_commands_and_changes_nothing(veth4):
    v = veth4
    before = iface_state(v)
    r = capfan("tune", v.cap_if, "--queues", "2", ns=v.cap_ns)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout
    for cmd in (f"ethtool -L {v.cap_if} rx 2 tx 2", f"ethtool -K {v.cap_if} gro off",
                f"ethtool -K {v.cap_if} tso off", f"ethtool -K {v.cap_if} gso off"):
        assert cmd in r.stdout
    assert "not supported by driver veth" in r.stdout          # no RSS key / table on veth
    assert "veth is a virtual device" in r.stdout              # no IRQs
    assert iface_state(v) == before
    j = json.loads(capfan("tune", v.cap_if, "--queues", "2", "--json", ns=v.cap_ns).stdout)
    acts = by_item(j["actions"], v.cap_if)
    assert j["apply"] is False
    assert (acts["queues"]["status"], acts["queues"]["current"], acts["queues"]["wanted"]) == ("change", "4", "2")
    assert acts["queues"]["commands"][0]["argv"] == ["ethtool", "-L", v.cap_if, "rx", "2", "tx", "2"]
    assert acts["gro"]["status"] == "change" and acts["lro"]["status"] == "ok"
    assert acts["rss key"]["status"] == acts["rss table"]["status"] == acts["irq affinity"]["status"] == "unsupported"
    assert iface_state(v) == before


def test_apply_sets_what_veth_supports(veth4):
    v = veth4
    r = capfan("tune", v.cap_if, "--queues", "2", "--apply", ns=v.cap_ns)
    assert r.returncode == 0, r.stdout + r.stderr
    assert rx_channels(v) == 2
    assert (feature(v, "generic-receive-offload"), feature(v, "tcp-segmentation-offload"),
            feature(v, "generic-segmentation-offload")) == ("off", "off", "off")
    assert "0 failed" in r.stdout and "not supported by driver veth" in r.stdout
    # a second dry run has nothing left to change on the interface
    j = json.loads(capfan("tune", v.cap_if, "--queues", "2", "--json", ns=v.cap_ns).stdout)
    assert [a["item"] for a in j["actions"] if a["status"] == "change" and a["scope"] == v.cap_if] == []
    # more queues than the veth was created with: reported, not attempted
    r = capfan("tune", v.cap_if, "--queues", "6", "--apply", ns=v.cap_ns)
    assert r.returncode == 0 and "at most 4 receive queues" in r.stdout and rx_channels(v) == 2


def test_apply_failure_exits_nonzero_naming_it(veth4):
    v = veth4
    # without CAP_NET_ADMIN every ethtool change is refused by the kernel
    r = capfan("tune", v.cap_if, "--queues", "2", "--apply", ns=v.cap_ns,
               prefix=("setpriv", "--bounding-set=-net_admin"))
    assert r.returncode == 1
    for item in ("queues", "gro", "tso", "gso"):
        assert f"could not set {v.cap_if} {item}: ethtool" in r.stderr
    assert "Operation not permitted" in r.stderr
    assert rx_channels(v) == 4 and feature(v, "generic-receive-offload") == "on"
    j = capfan("tune", v.cap_if, "--queues", "2", "--apply", "--json", ns=v.cap_ns,
               prefix=("setpriv", "--bounding-set=-net_admin"))
    assert j.returncode == 1 and "failed:" in j.stderr
    assert {f["item"] for f in json.loads(j.stdout)["failed"]} == {"queues", "gro", "tso", "gso"}


def test_unknown_interface_is_a_clear_error(veth4):
    r = capfan("tune", "nosuchif0", ns=veth4.cap_ns)
    assert r.returncode == 2
    assert "no network interface 'nosuchif0'" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def sysctls_restored():
    """The global sysctls tune sets, put back to their values after the test."""
    saved = {n: open("/proc/sys/" + n.replace(".", "/")).read() for n in SYSCTLS}
    try:
        yield saved
    finally:
        for n, value in saved.items():
            with open("/proc/sys/" + n.replace(".", "/"), "w") as f:
                f.write(value)


def test_host_sysctls_apply(sysctls_restored):
    for n in ("net.core.busy_poll", "net.core.busy_read"):
        with open("/proc/sys/" + n.replace(".", "/"), "w") as f:
            f.write("0\n")
    dry = capfan("tune", "--json", env={"CAPFAN_RING_DIR": "/dev/shm"})
    acts = by_item(json.loads(dry.stdout)["actions"], "host")
    assert acts["net.core.busy_poll"]["status"] == "change" and acts["net.core.busy_poll"]["current"] == "0"
    assert acts["net.core.busy_poll"]["commands"][0]["text"] == "sysctl -w net.core.busy_poll=50"
    assert open("/proc/sys/net/core/busy_poll").read().strip() == "0"
    doc = capfan("doctor")
    assert doc.returncode == 1 and "net.core.busy_poll" in doc.stdout and "sysctl -w net.core.busy_read=50" in doc.stdout
    r = capfan("tune", "--apply")
    assert r.returncode == 0, r.stdout + r.stderr
    for n in SYSCTLS:
        assert int(open("/proc/sys/" + n.replace(".", "/")).read()) >= {
            "net.core.busy_poll": 50, "net.core.busy_read": 50, "net.core.netdev_max_backlog": 10000,
            "net.core.bpf_jit_enable": 1}[n]
    doc = capfan("doctor", "--json")
    findings = by_item(json.loads(doc.stdout)["findings"], "host")
    assert all(findings[n]["status"] == "ok" for n in SYSCTLS)


@pytest.fixture
def hugetlbfs(tmp_path):
    """A hugetlbfs mount for rings; unmounted, and the huge page pool put back, afterwards."""
    mnt = tmp_path / "huge"
    mnt.mkdir()
    saved = open(NR_HUGEPAGES).read()
    sh("mount", "-t", "hugetlbfs", "none", str(mnt))
    try:
        yield mnt
    finally:
        for f in mnt.iterdir():
            f.unlink()
        sh("umount", str(mnt), check=False)
        with open(NR_HUGEPAGES, "w") as f:
            f.write(saved)


def agent_toml(path, v, ring_dir):
    path.write_text(f"""
[agent]
ring_dir = "{ring_dir}"
run_dir = "{path.parent / 'run'}"
[metrics]
enabled = false
[[capture]]
interface = "{v.cap_if}"
source = "afxdp"
queues = [0, 1]
options = {{ busy_poll = true }}
[capture.ring]
ndesc = 64
arena = "1M"
snaplen = 2048
[[analyzer]]
analyzer = "stats"
""")
    return str(path)


def test_doctor_then_tune_from_config(veth4, hugetlbfs, tmp_path):
    v = veth4
    with open(NR_HUGEPAGES, "w") as f:
        f.write("0\n")
    cfg = agent_toml(tmp_path / "agent.toml", v, hugetlbfs)
    doc = capfan("doctor", "-c", cfg, ns=v.cap_ns)
    assert doc.returncode == 1, doc.stdout + doc.stderr
    for fix in (f"ethtool -L {v.cap_if} rx 2 tx 2", f"ethtool -K {v.cap_if} gro off",
                f"echo 2 > /sys/class/net/{v.cap_if}/napi_defer_hard_irqs", "sysctl -w vm.nr_hugepages=6"):
        assert fix in doc.stdout
    off = {(a["scope"], a["item"]) for a in json.loads(capfan("doctor", "-c", cfg, "--json", ns=v.cap_ns).stdout)
           ["findings"] if a["status"] in ("change", "manual")}
    assert off == {(v.cap_if, i) for i in ("queues", "gro", "tso", "gso", "napi_defer_hard_irqs",
                                           "gro_flush_timeout")} | {("host", "hugepages")}

    r = capfan("tune", "-c", cfg, "--apply", ns=v.cap_ns)
    assert r.returncode == 0, r.stdout + r.stderr
    assert rx_channels(v) == 2 and feature(v, "generic-receive-offload") == "off"
    assert v.run(v.cap_ns, "cat", f"/sys/class/net/{v.cap_if}/gro_flush_timeout").stdout.strip() == "200000"
    assert int(open(NR_HUGEPAGES).read()) >= 6
    doc = capfan("doctor", "-c", cfg, ns=v.cap_ns)
    assert doc.returncode == 0, doc.stdout
    assert "0 thing(s) off" in doc.stdout and "not supported by driver veth" in doc.stdout
    # the pages tune reserved hold the configured rings
    make = ("from capfan import ring\n"
            "for q in (0, 1): ring.create(f'{q}', ndesc=64, arena_bytes=1 << 20, snaplen=2048)\n"
            "print(ring.Ring('0').stats()['hugepages'])")
    out = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, CAPFAN_RING_DIR=str(hugetlbfs)))
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr

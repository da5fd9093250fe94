"""capfan.agents.placement: CPU lists from config, NUMA/isolation/IRQ facts read from fake sysfs and
procfs trees shaped like real sensor boxes, and the placement rules with their warnings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from capfan.agents import placement
from capfan.agents.placement import (
    PinRequest,
    available_cpus,
    format_cpu_list,
    isolated_cpus,
    nic_numa_node,
    node_cpus,
    parse_cpu_list,
    place,
    queue_irqs,
)
from capfan.errors import ConfigError

NCPUS = 8  # CPU columns of the fake /proc/interrupts


class Box:
    """A fake sensor box: sysfs and procfs trees under tmp_path, filled in piece by piece."""

    def __init__(self, root: Path):
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.sys.mkdir()
        self.proc.mkdir()
        self.irq_lines: list[str] = []
        self.isolated("")  # a kernel that reports isolation, with nothing isolated

    def write(self, rel_root: Path, rel: str, text: str) -> None:
        path = rel_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def nic(self, iface: str, node: int | None = None, device: str | None = None,
            msi: tuple[int, ...] | None = None) -> None:
        """A NIC whose device link points at a PCI (or virtio) device directory."""
        dev = self.sys / "devices/pci0000:3a" / (device or f"dev-{iface}")
        dev.mkdir(parents=True)
        link = self.sys / "class/net" / iface / "device"
        link.parent.mkdir(parents=True)
        os.symlink(os.path.relpath(dev, link.parent), link)
        if node is not None:
            self.write(dev, "numa_node", str(node))
        if msi is not None:
            (dev / "msi_irqs").mkdir()
            for irq in msi:
                self.write(dev / "msi_irqs", str(irq), "msix")

    def veth(self, iface: str) -> None:
        """A virtual interface: no device link, so no NUMA node and no IRQs."""
        self.write(self.sys / "class/net" / iface, "address", "02:00:00:00:00:01")

    def node(self, n: int, cpulist: str) -> None:
        self.write(self.sys, f"devices/system/node/node{n}/cpulist", cpulist)

    def isolated(self, cpulist: str) -> None:
        self.write(self.sys, "devices/system/cpu/isolated", cpulist)

    def nohz_full(self, text: str) -> None:
        self.write(self.sys, "devices/system/cpu/nohz_full", text)

    def cgroup(self, path: str, partition: str | None = None, effective: str | None = None) -> None:
        """A cgroup v2 directory (the root gets cgroup.controllers, as on a v2 host)."""
        root = self.sys / "fs/cgroup"
        self.write(root, "cgroup.controllers", "cpuset cpu io memory pids")
        d = root / path
        d.mkdir(parents=True, exist_ok=True)
        self.write(d, "cgroup.controllers", "cpuset cpu")
        if partition is not None:
            self.write(d, "cpuset.cpus.partition", partition)
        if effective is not None:
            self.write(d, "cpuset.cpus.effective", effective)

    def irq(self, irq: int, name: str, effective: str | None = None, smp: str = "0-7",
            chip: str = "IR-PCI-MSI") -> None:
        """One /proc/interrupts row with per-CPU counts, and its /proc/irq/N affinity files."""
        counts = "".join(f"{(irq * 7919 + c * 104729) % 999983:>11}" for c in range(NCPUS))
        self.irq_lines.append(f"{irq:>4}:{counts}  {chip} {irq * 524288}-edge      {name}")
        self.write(self.proc, f"irq/{irq}/smp_affinity_list", smp)
        if effective is not None:
            self.write(self.proc, f"irq/{irq}/effective_affinity_list", effective)
        self.flush()

    def flush(self) -> None:
        header = " " * 5 + "".join(f"{'CPU' + str(c):>11}" for c in range(NCPUS))
        def row(label, counts, rest):
            return f"{label:>4}:" + "".join(f"{c:>11}" for c in counts) + "   " + rest
        fixed = [row("0", [44] + [0] * 7, "IO-APIC   2-edge      timer"),
                 row("8", [0] * 5 + [1, 0, 0], "IO-APIC   8-edge      rtc0")]
        tail = [row("NMI", [0] * 8, "Non-maskable interrupts"),
                row("LOC", [848598, 874381] * 4, "Local timer interrupts")]
        self.write(self.proc, "interrupts", "\n".join([header, *fixed, *self.irq_lines, *tail]))

    def place(self, requests, allowed=None):
        return place(requests, allowed=set(range(NCPUS)) if allowed is None else allowed,
                     sysfs=str(self.sys), proc=str(self.proc))

    def queue_irqs(self, iface, queue):
        return queue_irqs(iface, queue, sysfs=str(self.sys), proc=str(self.proc))


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path)


def capture(iface, queue, want="auto"):
    return PinRequest(key="capture[0].cpus", label=f"capture {iface}.q{queue}", want=want,
                      iface=iface, queue=queue, live=True)


def analyzer(n, want="auto", iface="eth0"):
    return PinRequest(key=f"analyzer[{n}].cpus", label=f"analyzer a{n} on {iface}.q0", want=want,
                      iface=iface, queue=0, live=False)


# ------------------------------------------------------------------------------ config values

@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), (" AUTO ", "auto"), ("none", None), ("None", None), (None, None),
    (3, [3]), (0, [0]), ("3", [3]), ("2-5,8", [2, 3, 4, 5, 8]), (" 2 - 3 , 8 ", [2, 3, 8]),
    ([2, 3, "6-7"], [2, 3, 6, 7]), ((4,), [4]), ("5,1", [5, 1]), ([9, "0-1"], [9, 0, 1]),
    ("7-7", [7]), (["2-3,5"], [2, 3, 5]),
])
def test_parse_cpu_list_forms(value, expected):
    assert parse_cpu_list(value, "capture[0].cpus") == expected


@pytest.mark.parametrize("value, problem", [
    ("4-2", "runs backwards; write 2-4"), ("x", "'x'"), ("", "empty"), ("   ", "empty"),
    (-1, "start at 0"), ("-1", "'-1'"), ("2-", "'2-'"), ("2,,3", "''"), ("2,", "''"),
    (True, "True"), (False, "False"), ([], "empty"), ([True], "True"), ([2, "auto"], "'auto'"),
    ([2, 2], "CPU 2 is listed twice"), ("2-4,3", "CPU 3 is listed twice"), (3.0, "3.0"),
    ({"cpu": 1}, "not a CPU number"), ([[1]], "[1]"), ("1e3", "'1e3'"), ("0x2", "'0x2'"),
    ("\u0663", "not a CPU number"), (8192, "beyond"), ("0-100000000", "beyond"), ("0-7:2", "'0-7:2'"),
])
def test_parse_cpu_list_errors_name_the_key_and_the_accepted_forms(value, problem):
    with pytest.raises(ConfigError) as err:
        parse_cpu_list(value, "analyzer[1].cpus")
    message = str(err.value)
    assert err.value.key == "analyzer[1].cpus"
    assert message.startswith("config key 'analyzer[1].cpus': ")
    assert problem in message
    assert '"auto"' in message and '"2-5,8"' in message and '"none"' in message


@pytest.mark.parametrize("cpus, text", [
    ({0, 1, 2, 5}, "0-2,5"), (set(), ""), ([3], "3"), ([1, 2], "1-2"), ([7, 5, 6, 9, 0], "0,5-7,9"),
    ([4, 4, 5], "4-5"), (range(64), "0-63"), ([1, 3, 5], "1,3,5"),
])
def test_format_cpu_list(cpus, text):
    assert format_cpu_list(cpus) == text
    if text:
        assert parse_cpu_list(text, "k") == sorted(set(cpus))


# ------------------------------------------------------------------------------ NUMA, isolation

def test_nic_numa_node_and_node_cpus(box):
    box.nic("ens1f0", node=1, device="0000:3b:00.0")
    box.nic("eth0", node=-1)
    box.nic("eth1")
    box.nic("eth2", node=0, device="0000:00:03.0")
    (box.sys / "devices/pci0000:3a/0000:00:03.0/numa_node").write_text("garbage\n")
    box.veth("veth0")
    box.node(0, "0-3,8-11")
    box.node(1, "4-7,12-15")
    s = str(box.sys)
    assert nic_numa_node("ens1f0", s) == 1
    assert nic_numa_node("eth0", s) is None   # -1: the platform does not say
    assert nic_numa_node("eth1", s) is None   # no numa_node file
    assert nic_numa_node("eth2", s) is None   # unreadable value
    assert nic_numa_node("veth0", s) is None
    assert nic_numa_node("nosuch", s) is None
    assert nic_numa_node("../../..", s) is None
    assert node_cpus(1, s) == {4, 5, 6, 7, 12, 13, 14, 15}
    assert node_cpus(0, s) == {0, 1, 2, 3, 8, 9, 10, 11}
    assert node_cpus(2, s) == set()
    assert node_cpus(-1, s) == set()


def test_isolated_cpus_from_isolcpus_nohz_full_and_cgroup_partitions(box):
    s, p = str(box.sys), str(box.proc)
    assert isolated_cpus(s, p) == set()
    box.nohz_full("(null)")  # built with NO_HZ_FULL, booted without nohz_full=
    assert isolated_cpus(s, p) == set()
    box.isolated("2-3")
    assert isolated_cpus(s, p) == {2, 3}
    box.nohz_full("4")
    assert isolated_cpus(s, p) == {2, 3, 4}
    box.cgroup("system.slice", partition="member", effective="0-1")
    box.cgroup("rt", partition="isolated", effective="6")                        # level 1
    box.cgroup("capfan.slice/sensor", partition="isolated", effective="10-11")   # level 2
    box.cgroup("bad", partition="isolated invalid (Cpu list in cpuset.cpus not exclusive)",
               effective="12")
    box.cgroup("root-like", partition="root", effective="13")
    box.cgroup("a/b/deep", partition="isolated", effective="14")                 # level 3: not scanned
    assert isolated_cpus(s, p) == {2, 3, 4, 6, 10, 11}


def test_cgroup_partitions_need_a_cgroup2_root(box):
    d = box.sys / "fs/cgroup/cpuset/rt"  # a v1 hierarchy has no partitions
    d.mkdir(parents=True)
    (d / "cpuset.cpus.partition").write_text("isolated\n")
    (d / "cpuset.cpus.effective").write_text("5\n")
    assert isolated_cpus(str(box.sys), str(box.proc)) == set()


def test_available_cpus_adds_isolated_cpus_the_cpuset_allows(box, monkeypatch):
    # isolcpus= takes 2-3 out of every process's affinity; the agent may still pin workers there
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    box.write(box.sys, "devices/system/cpu/online", "0-3")
    s, p = str(box.sys), str(box.proc)
    assert available_cpus(s, p) == {0, 1}
    box.isolated("2-3,9")  # 9 is not online
    assert available_cpus(s, p) == {0, 1, 2, 3}
    cpus, _ = place([capture("eth0", 0, want=3)], sysfs=s, proc=p)
    assert cpus == [3]
    # a cgroup v2 cpuset narrower than the machine: the nearest ancestor with the file decides
    box.write(box.proc, "self/cgroup", "0::/capfan.slice/agent.service")
    box.cgroup("capfan.slice", effective="0-2")
    box.cgroup("capfan.slice/agent.service")
    assert available_cpus(s, p) == {0, 1, 2}
    with pytest.raises(ConfigError, match="CPU 3 .* not available"):
        place([capture("eth0", 0, want=3)], sysfs=s, proc=p)
    # cgroup v1 cpuset
    box.write(box.proc, "self/cgroup", "3:cpuset:/sensor\n1:cpu:/\n0::/")
    box.write(box.sys, "fs/cgroup/cpuset/sensor/cpuset.effective_cpus", "0-1,3")
    assert available_cpus(s, p) == {0, 1, 3}


# ------------------------------------------------------------------------------ queue IRQs

# (driver, interface, device link name, vector name of queue q); q=1 and q=11 must never mix
STYLES = [
    ("ixgbe", "eth0", "0000:3b:00.0", "eth0-TxRx-{q}"),
    ("mlx5", "ens1f0np0", "0000:3b:00.0", "mlx5_comp{q}@pci:0000:3b:00.0"),
    ("i40e", "ens1f0", "0000:3b:00.0", "i40e-ens1f0-TxRx-{q}"),
    ("igb", "ens1f0", "0000:3b:00.0", "ens1f0-rx-{q}"),
    ("sfc", "eth0", "0000:3b:00.0", "eth0-{q}"),
    ("bnx2x", "ens1f0", "0000:3b:00.0", "ens1f0-fp-{q}"),
    ("virtio", "eth0", "virtio2", "virtio2-input.{q}"),
]


def nic_with_queues(box, iface, device, style, queues=range(13), base=120, msi=True):
    """A NIC with one vector per queue (IRQ base+q, effective affinity CPU q % 8), a misc vector,
    and a second port whose vectors must never count as this NIC's."""
    vectors = (base - 1, *(base + q for q in queues))
    box.nic(iface, node=0, device=device, msi=vectors if msi else None)
    # the control vector has no queue number: "eth0" (ixgbe), "mlx5_async@pci:...", "virtio2-config"
    misc = (f"mlx5_async@pci:{device}" if "@" in style
            else f"{device}-config" if device.startswith("virtio") else iface)
    box.irq(base - 1, misc, effective="0")
    for q in queues:
        box.irq(base + q, style.format(q=q), effective=str(q % NCPUS))
    # the neighbouring port: same queue numbers, other interface name / PCI function
    other = {"0000:3b:00.0": "0000:3b:00.1", "virtio2": "virtio3"}[device]
    other_if = iface[:-1] + "1" if iface.endswith("0") else iface + "x"
    other_style = style.replace(device, other).replace(iface, other_if)
    box.nic(other_if, node=0, device=other, msi=tuple(base + 100 + q for q in queues))
    for q in queues:
        box.irq(base + 100 + q, other_style.format(q=q), effective=str(q % NCPUS))


@pytest.mark.parametrize("driver, iface, device, style", STYLES, ids=[s[0] for s in STYLES])
def test_queue_irqs_per_driver_style(box, driver, iface, device, style):
    nic_with_queues(box, iface, device, style)
    assert box.queue_irqs(iface, 1) == [(121, style.format(q=1), {1})]
    assert box.queue_irqs(iface, 11) == [(131, style.format(q=11), {3})]
    assert box.queue_irqs(iface, 0) == [(120, style.format(q=0), {0})]
    assert box.queue_irqs(iface, 13) == []


@pytest.mark.parametrize("driver, iface, device, style", STYLES, ids=[s[0] for s in STYLES])
def test_queue_irqs_by_name_alone_without_msi_irqs(box, driver, iface, device, style):
    # virtio keeps msi_irqs on the parent PCI device, and old kernels have none: names decide
    nic_with_queues(box, iface, device, style, msi=False)
    assert box.queue_irqs(iface, 1) == [(121, style.format(q=1), {1})]


def test_queue_irqs_ignores_tx_only_vectors_and_other_nics(box):
    box.nic("eth1", node=0, device="0000:3b:00.0")  # no msi_irqs: only names decide
    box.nic("eth10", node=0, device="0000:3c:00.0", msi=(140,))
    box.nic("veth1", node=0, device="0000:3d:00.0", msi=(141,))
    box.irq(130, "eth1-rx-1", effective="2")
    box.irq(131, "eth1-tx-1", effective="3")      # transmit completions only
    box.irq(132, "eth1-TxRx-x1", effective="4")   # not a queue suffix this module knows
    box.irq(133, "eth1", effective="5")           # single-vector NIC: no queue number, no guess
    box.irq(140, "eth10-rx-1", effective="6")     # "eth1" is not "eth10"
    box.irq(141, "veth1-rx-1", effective="7")     # nor "veth1"
    assert box.queue_irqs("eth1", 1) == [(130, "eth1-rx-1", {2})]
    assert box.queue_irqs("eth1", 0) == []


def test_queue_irqs_msi_irqs_filter_and_affinity_fallback(box):
    box.nic("eth0", device="0000:3b:00.0", msi=(120, 121))
    box.irq(120, "eth0-TxRx-0", effective=None, smp="2-3")   # no effective_affinity_list
    box.irq(121, "eth0-TxRx-1", effective="", smp="5")       # empty effective: not started yet
    box.irq(122, "eth0-TxRx-2", effective="6")               # not this device's MSI vector
    (box.proc / "irq/122").mkdir(exist_ok=True)
    assert box.queue_irqs("eth0", 0) == [(120, "eth0-TxRx-0", {2, 3})]
    assert box.queue_irqs("eth0", 1) == [(121, "eth0-TxRx-1", {5})]
    assert box.queue_irqs("eth0", 2) == []


def test_queue_irqs_shared_line_and_unknown_affinity(box):
    box.nic("eth0", device="0000:3b:00.0")
    box.irq(125, "eth0-rx-0, eth0-tx-0", effective="1")
    box.irq(126, "eth0-TxRx-1", effective="1")
    for name in ("smp_affinity_list", "effective_affinity_list"):
        (box.proc / "irq/126" / name).unlink()
    assert box.queue_irqs("eth0", 0) == [(125, "eth0-rx-0", {1})]
    assert box.queue_irqs("eth0", 1) == [(126, "eth0-TxRx-1", set())]


def test_queue_irqs_veth_and_missing_files(box, tmp_path):
    box.veth("veth0")
    box.irq(150, "veth0-1", effective="1")
    assert box.queue_irqs("veth0", 1) == []
    assert box.queue_irqs("nosuch", 0) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert queue_irqs("eth0", 0, sysfs=str(empty), proc=str(empty)) == []


# ------------------------------------------------------------------------------ placement

def test_auto_places_captures_on_the_nic_node_first_and_keeps_request_order(box):
    box.nic("eth0", node=1, device="0000:3b:00.0")
    box.node(0, "0-3")
    box.node(1, "4-7")
    requests = [analyzer(0), capture("eth0", 0), capture("eth0", 1), analyzer(1), capture("eth0", 2)]
    cpus, _ = box.place(requests)
    assert cpus == [7, 4, 5, 1, 6]  # captures 4-6, the analyzers after them: 7, then node 0


def test_auto_avoids_cpu_0_while_another_is_free(box):
    box.nic("eth0", node=0, device="0000:3b:00.0")
    box.node(0, "0-3")
    box.node(1, "4-7")
    cpus, warnings = box.place([capture("eth0", q) for q in range(4)] + [analyzer(0)],
                               allowed={0, 1, 2, 3, 4})
    assert cpus == [1, 2, 3, 4, 0]  # CPU 0 only when nothing else is free, even off-node ones
    assert not any("share" in w for w in warnings)


def test_auto_without_numa_information_and_none_requests(box):
    requests = [PinRequest("replay.cpus", "capture replay", "auto"),
                PinRequest("analyzer[0].cpus", "analyzer a0", None),
                PinRequest("analyzer[1].cpus", "analyzer a1", "auto")]
    cpus, warnings = box.place(requests, allowed={0, 2, 3})
    assert cpus == [2, None, 3]
    assert warnings == []  # nothing live: no isolation or IRQ advice


def test_auto_prefers_isolated_cores(box):
    box.nic("eth0", node=0, device="0000:3b:00.0")
    box.node(0, "0-7")
    box.isolated("4-5")
    cpus, warnings = box.place([capture("eth0", 0), capture("eth0", 1), analyzer(0)])
    assert cpus == [4, 5, 1]
    assert not any("isolated" in w for w in warnings)


def test_explicit_cpus_first_and_autos_around_them(box):
    box.nic("eth0", node=0, device="0000:3b:00.0")
    box.node(0, "0-3")
    cpus, warnings = box.place([capture("eth0", 0), capture("eth0", 1, want=1), analyzer(0, want=2)])
    assert cpus == [3, 1, 2]
    assert not any("compete" in w for w in warnings)


def test_explicit_cpu_not_allowed_raises_with_the_key_and_the_fix(box):
    with pytest.raises(ConfigError) as err:
        box.place([capture("eth0", 0), analyzer(1, want=9)], allowed={0, 1, 2, 3, 6})
    message = str(err.value)
    assert err.value.key == "analyzer[1].cpus"
    assert message.startswith("config key 'analyzer[1].cpus': "
                              "CPU 9 (analyzer a1 on eth0.q0) is not available")
    assert "offline, absent, or outside its cpuset/affinity" in message
    assert "available: 0-3,6" in message and '"auto"' in message


@pytest.mark.parametrize("want", ["2", 2.0, True, [2]])
def test_explicit_want_must_be_a_cpu_number(box, want):
    with pytest.raises(ConfigError, match=r"config key 'capture\[0\].cpus'"):
        box.place([capture("eth0", 0, want=want)])


def test_two_explicit_requests_on_one_cpu_warn_naming_both(box):
    cpus, warnings = box.place([capture("eth0", 0, want=3), analyzer(0, want=3), analyzer(1, want=4)])
    assert cpus == [3, 3, 4]
    compete = [w for w in warnings if "compete" in w]
    assert compete == [("capture eth0.q0 and analyzer a0 on eth0.q0 are both pinned to CPU 3 and "
                        'will compete for it; give each its own CPU or use "auto"')]
    _, warnings = box.place([capture("eth0", 0, want=3), analyzer(0, want=3), analyzer(1, want=3)])
    assert [w for w in warnings if "compete" in w] == [
        ("capture eth0.q0, analyzer a0 on eth0.q0 and analyzer a1 on eth0.q0 are all pinned to "
         'CPU 3 and will compete for it; give each its own CPU or use "auto"')]
    assert not any("share" in w for w in warnings)


def test_overcommit_reuses_least_used_cores_with_one_summary_warning(box):
    requests = [capture("eth0", 0), capture("eth0", 1)] + [analyzer(n) for n in range(4)]
    cpus, warnings = box.place(requests, allowed={0, 1, 2})
    assert cpus == [1, 2, 0, 0, 1, 2]
    share = [w for w in warnings if "share" in w]
    assert len(share) == 1
    assert share[0].startswith("6 workers share 3 cores (0-2)")
    assert "fewer analyzers or capture queues" in share[0] and "more cores" in share[0]


def test_overcommit_counts_explicit_pins(box):
    cpus, warnings = box.place([analyzer(0, want=1), analyzer(1), analyzer(2), analyzer(3)],
                               allowed={1, 2})
    # 2 is free; then both have one worker and the lower number goes first; then 2 has fewer
    assert cpus == [1, 2, 1, 2]
    assert sum("share" in w for w in warnings) == 1


def test_isolation_warning_aggregates_non_isolated_live_pins(box):
    cpus, warnings = box.place([capture("eth0", 0, want=2), capture("eth0", 1, want=3),
                                capture("eth0", 2, want=5), analyzer(0, want=6)])
    assert cpus == [2, 3, 5, 6]
    isolation = [w for w in warnings if "not isolated" in w]
    assert len(isolation) == 1
    assert isolation[0].startswith("cores 2-3,5 are not isolated")   # the analyzer's 6 is not live
    assert "isolcpus=2-3,5 nohz_full=2-3,5" in isolation[0]
    assert 'cgroup v2 cpuset partition set to "isolated"' in isolation[0]


@pytest.mark.parametrize("how", ["isolcpus", "nohz_full", "cgroup"])
def test_no_isolation_warning_for_isolated_cores(box, how):
    if how == "isolcpus":
        box.isolated("2-3")
    elif how == "nohz_full":
        box.nohz_full("2-3")
    else:
        box.cgroup("capfan.slice", partition="member", effective="0-7")
        box.cgroup("capfan.slice/workers", partition="isolated", effective="2-3")
    _, warnings = box.place([capture("eth0", 0, want=2), capture("eth0", 1, want=3)])
    assert not any("isolated" in w for w in warnings)
    _, warnings = box.place([capture("eth0", 0, want=2), capture("eth0", 1, want=4)])
    assert next(w for w in warnings if "not isolated" in w).startswith("core 4 is not isolated")


@pytest.mark.parametrize("driver, iface, device, style", STYLES, ids=[s[0] for s in STYLES])
def test_irq_warning_for_the_queue_irq_on_the_pinned_core(box, driver, iface, device, style):
    nic_with_queues(box, iface, device, style)  # queue q's vector runs on CPU q % 8
    box.isolated("0-7")
    cpus, warnings = box.place([capture(iface, 1, want=1), capture(iface, 11, want=2)])
    assert cpus == [1, 2]
    # queue 1 shares CPU 1 with IRQ 121; queue 11's vector (IRQ 131) is on CPU 3, and queue 1's
    # neighbour on CPU 3 must not count for it (nor the other port's same-numbered queues)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"capture {iface}.q1 on CPU 1 shares the core with IRQ 121 "
                                  f"({style.format(q=1)}) of {iface} queue 1")
    assert "echo 0 > /proc/irq/121/smp_affinity_list" in warnings[0]  # a core no worker uses
    assert "capfan tune" in warnings[0]


def test_irq_warning_not_for_the_neighbouring_queue(box):
    nic_with_queues(box, "eth0", "0000:3b:00.0", "eth0-TxRx-{q}")
    box.isolated("0-7")
    # CPU 3 runs queue 11's vector (and queue 3's): queue 1 pinned there is fine
    _, warnings = box.place([capture("eth0", 1, want=3), capture("eth0", 11, want=4)])
    assert warnings == []
    # not live (an analyzer reading the ring): never an IRQ warning
    _, warnings = box.place([analyzer(0, want=0)])
    assert warnings == []


def test_irq_warning_suggests_a_free_housekeeping_core_on_the_nic_node(box):
    box.nic("eth0", node=1, device="0000:3b:00.0", msi=(120,))
    box.node(1, "4-7")
    box.isolated("5-7")
    box.irq(120, "eth0-TxRx-0", effective="5")
    cpus, warnings = box.place([capture("eth0", 0)])
    assert cpus == [5]
    assert len(warnings) == 1
    assert "IRQ 120 (eth0-TxRx-0)" in warnings[0]
    assert "echo 4 > /proc/irq/120/smp_affinity_list" in warnings[0]


def test_missing_files_degrade_quietly(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    requests = [capture("eth0", 0), capture("veth0", 1, want=3), analyzer(0), analyzer(1, want=None)]
    cpus, warnings = place(requests, allowed={0, 1, 2, 3}, sysfs=str(empty), proc=str(empty))
    assert cpus == [1, 3, 2, None]
    assert warnings == []
    assert nic_numa_node("eth0", str(empty)) is None
    assert node_cpus(0, str(empty)) == set()
    assert isolated_cpus(str(empty), str(empty)) == set()
    cpus, warnings = place(requests, allowed={0, 1, 2, 3}, sysfs=str(tmp_path / "absent"),
                           proc=str(tmp_path / "absent"))
    assert cpus == [1, 3, 2, None] and warnings == []


def test_veth_capture_gets_isolation_advice_but_no_irq_advice(box):
    box.veth("veth0")
    box.irq(150, "veth0-0", effective="1")
    _, warnings = box.place([capture("veth0", 0, want=1)])
    assert len(warnings) == 1 and warnings[0].startswith("core 1 is not isolated")


# ------------------------------------------------------------------------------ this machine

def test_place_on_this_machine():
    affinity = os.sched_getaffinity(0)
    ifaces = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
    iface = ifaces[0] if ifaces else "lo"
    requests = [capture(iface, 0), analyzer(0, iface=iface)]
    cpus, warnings = place(requests, allowed=affinity)
    assert all(c in affinity for c in cpus)
    assert len(set(cpus)) == min(2, len(affinity))
    assert all(isinstance(w, str) and "\n" not in w for w in warnings)
    # the default adds only isolated CPUs to the affinity
    cpus, _ = place(requests)
    assert set(cpus) <= affinity | isolated_cpus()
    assert affinity <= available_cpus() <= affinity | isolated_cpus()
    for name in ifaces:
        for irq, irq_name, on in queue_irqs(name, 0):
            assert isinstance(irq, int) and irq_name and isinstance(on, set)
    assert placement.format_cpu_list(affinity)

"""capfan.hosttune planning from captured `ethtool` / /proc text (multi-queue NICs this machine
does not have), ring sizing against real rings, and tuneplan.apply() with real commands."""
import os

import pytest

from capfan import hosttune as T
from capfan import ring as ringlib
from capfan import tuneplan
from tests.bpffs import bpffs  # noqa: F401 - fixture
from tests.conftest import ring_dir  # noqa: F401 - fixture

IXGBE_L = """Channel parameters for eth0:
Pre-set maximums:
RX:		n/a
TX:		n/a
Other:		1
Combined:	63
Current hardware settings:
RX:		n/a
TX:		n/a
Other:		1
Combined:	8
"""

VETH_L = """Channel parameters for cfc1:
Pre-set maximums:
RX:		4
TX:		4
Other:		n/a
Combined:	n/a
Current hardware settings:
RX:		1
TX:		1
Other:		n/a
Combined:	n/a
"""

KEY_40 = ("3c:1f:8a:29:7e:33:d1:94:0b:5c:66:e2:71:a8:f0:12:4d:9e:b3:07:"
          "c5:58:2a:e9:16:7b:d0:43:8f:31:aa:6c:05:b7:e4:92:1d:70:c8:5f")

IXGBE_X = f"""RX flow hash indirection table for eth0 with 8 RX ring(s):
    0:      0     1     2     3     4     5     6     7
    8:      0     1     2     3     4     5     6     7
   16:      0     1     2     3     4     5     6     7
   24:      0     1     2     3     4     5     6     7
RSS hash key:
{KEY_40}
RSS hash function:
    toeplitz: on
    xor: off
    crc32: off
"""

SYM_X = """RX flow hash indirection table for eth0 with 2 RX ring(s):
    0:      0     1     0     1
    4:      0     1     0     1
RSS hash key:
""" + ":".join(["6d:5a"] * 20) + """
RSS hash function:
    toeplitz: on
    xor: off
    crc32: off
RSS input transformation:
    symmetric-xor: off
"""

FEATURES_K = """Features for eth0:
rx-checksumming: on
tx-checksumming: on
	tx-checksum-ipv4: on
scatter-gather: on
tcp-segmentation-offload: on
	tx-tcp-segmentation: on
generic-segmentation-offload: on
generic-receive-offload: on
large-receive-offload: off [fixed]
rx-vlan-offload: on
rx-gro-hw: on [fixed]
rx-gro-list: off
"""

INTERRUPTS = """            CPU0       CPU1       CPU2       CPU3
   0:         35          0          0          0   IO-APIC   2-edge      timer
  24:          0          0          0          0  PCI-MSI 524288-edge      eth0
  25:     123456          0          0          0  PCI-MSI 524289-edge      eth0-TxRx-0
  26:          0     654321          0          0  PCI-MSI 524290-edge      eth0-TxRx-1
  27:          0          0        999          0  PCI-MSI 524291-edge      eth0-TxRx-2
  28:          0          0          0        555  PCI-MSI 524292-edge      eth0-TxRx-3
  29:          0          0          0          0  PCI-MSI 524293-edge      eth10-TxRx-0
  30:          0          0          0          0  PCI-MSI 524294-edge      eth0-tx-4
  40:         10          0          0          0  PCI-MSI 1572864-edge      mlx5_async0@pci:0000:3b:00.0
  41:       1000          0          0          0  PCI-MSI 1572865-edge      mlx5_comp0@pci:0000:3b:00.0
  42:          0       1000          0          0  PCI-MSI 1572866-edge      mlx5_comp1@pci:0000:3b:00.0
  50:          5          0          0          0  PCI-MSI 9000-edge      virtio2-input.0, virtio2-output.0
 NMI:          0          0          0          0   Non-maskable interrupts
 LOC:     100000     100000     100000     100000   Local timer interrupts
"""


def state(**kw):
    """An eth0 with the captured ixgbe text unless overridden."""
    st = T.IfaceState(name="eth0", driver="ixgbe", channels=T.parse_channels(IXGBE_L),
                      rss=T.parse_rss(IXGBE_X), features=T.parse_features(FEATURES_K), has_device=True)
    for k, v in kw.items():
        setattr(st, k, v)
    return st


def by_item(actions):
    return {a.item: a for a in actions}


# ------------------------------------------------------------------------------ parsers

def test_parse_channels_combined_and_rx_tx():
    ch = T.parse_channels(IXGBE_L)
    assert ch.maximum == {"rx": None, "tx": None, "other": 1, "combined": 63}
    assert ch.current["combined"] == 8
    assert T.IfaceState("eth0", channels=ch).rx_queue_count() == 8
    veth = T.parse_channels(VETH_L)
    assert (veth.maximum["rx"], veth.current["rx"], veth.current["combined"]) == (4, 1, None)
    assert T.parse_channels("netlink error: Operation not supported") is None


def test_parse_rss_table_key_functions():
    rss = T.parse_rss(IXGBE_X)
    assert rss.table == list(range(8)) * 4
    assert rss.key.hex(":") == KEY_40 and len(rss.key) == 40
    assert rss.functions == {"toeplitz": True, "xor": False, "crc32": False}
    sym = T.parse_rss(SYM_X)
    assert sym.key == T.symmetric_key(40) and sym.table == [0, 1] * 4
    assert T.parse_rss("Cannot get RX ring count: Operation not supported") is None


def test_parse_features_and_driver():
    f = T.parse_features(FEATURES_K)
    assert f["generic-receive-offload"] == (True, False)
    assert f["large-receive-offload"] == (False, True)
    assert f["rx-gro-hw"] == (True, True)
    assert f["tx-tcp-segmentation"] == (True, False)   # indented sub-features too
    assert T.parse_driver("driver: ixgbe\nversion: 5.1.0-k\nbus-info: 0000:01:00.0\n") == "ixgbe"
    assert T.parse_driver("") is None


def test_parse_interrupts_and_queue_irqs():
    names = T.parse_interrupts(INTERRUPTS)
    assert names[25] == ["eth0-TxRx-0"] and names[50] == ["virtio2-input.0", "virtio2-output.0"]
    assert 0 in names and "NMI" not in str(list(names))
    aff = {25: {0}, 26: {1}, 27: {2}, 28: {3}}
    irqs = T.queue_irqs(names, ["eth0"], None, aff)
    # the link IRQ (24), eth10's vector and the tx-only vector are not receive queues of eth0
    assert [(i.irq, i.queue, i.cpus) for i in irqs] == [(25, 0, {0}), (26, 1, {1}), (27, 2, {2}), (28, 3, {3})]
    # msi_irqs of the device limits the search
    assert [i.irq for i in T.queue_irqs(names, ["eth0"], {26, 27}, aff)] == [26, 27]
    # mlx5 names its vectors by PCI address; the async vector serves no queue
    mlx = T.queue_irqs(names, ["ens1f0", "0000:3b:00.0"], None, {})
    assert [(i.irq, i.queue) for i in mlx] == [(41, 0), (42, 1)]
    virtio = T.queue_irqs(names, ["ens3", "virtio2"], None, {})
    assert [(i.irq, i.queue, i.name) for i in virtio] == [(50, 0, "virtio2-input.0")]


# ------------------------------------------------------------------------------ planning

def test_queues_combined_driver():
    a = T.plan_queues(state(), 4)
    assert (a.status, a.current, a.wanted) == (T.CHANGE, "8", "4")
    assert a.commands[0].argv == ["ethtool", "-L", "eth0", "combined", "4"]
    assert T.plan_queues(state(), 8).status == T.OK
    too_many = T.plan_queues(state(), 64)
    assert too_many.status == T.MANUAL and "at most 63" in too_many.note
    assert T.plan_queues(state(), None).status == T.INFO


def test_queues_rx_tx_driver_and_unsupported():
    st = state(driver="veth", channels=T.parse_channels(VETH_L))
    assert T.plan_queues(st, 3).commands[0].text == "ethtool -L eth0 rx 3 tx 3"
    none = T.plan_queues(state(driver="veth", channels=None, channels_error="ethtool -l: Operation not supported"),
                         2)
    assert none.status == T.UNSUPPORTED and "not supported by driver veth" in none.note
    assert "Operation not supported" in none.note


def test_rss_key_made_symmetric():
    a = T.plan_rss_key(state())
    assert a.status == T.CHANGE
    argv = a.commands[0].argv
    assert argv[:4] == ["ethtool", "-X", "eth0", "hkey"] and len(argv) == 5
    key = argv[4].split(":")
    assert len(key) == 40 and key[:4] == ["6d", "5a", "6d", "5a"] and set(key) == {"6d", "5a"}
    assert T.plan_rss_key(state(rss=T.parse_rss(SYM_X))).status == T.OK


def test_rss_key_hash_function():
    xor = T.parse_rss(SYM_X)
    xor.functions = {"toeplitz": False, "xor": True, "crc32": False}
    a = T.plan_rss_key(state(rss=xor))
    assert a.status == T.CHANGE and a.commands[0].argv[-2:] == ["hfunc", "toeplitz"]
    crc = T.parse_rss(IXGBE_X)
    crc.functions = {"crc32": True}
    a = T.plan_rss_key(state(driver="foo", rss=crc))
    assert a.status == T.UNSUPPORTED and "crc32" in a.note and a.commands == []
    a = T.plan_rss_key(state(driver="veth", rss=None, rss_error="ethtool -x: Operation not supported"))
    assert a.status == T.UNSUPPORTED and "not supported by driver veth" in a.note


def test_rss_table_and_order_when_shrinking():
    want = T.IfacePlanInput(queues=4)
    acts = T.plan_iface(state(has_device=False), want)
    items = [a.item for a in acts]
    # the table must stop naming queues 4-7 before they go away
    assert items.index("rss table") < items.index("queues")
    table = by_item(acts)["rss table"]
    assert (table.current, table.wanted) == ("queues 0-7", "queues 0-3")
    assert table.commands[0].argv == ["ethtool", "-X", "eth0", "equal", "4"]
    grow = [a.item for a in T.plan_iface(state(has_device=False, rss=T.parse_rss(SYM_X)),
                                         T.IfacePlanInput(queues=8))]
    assert grow.index("queues") < grow.index("rss table")
    # an uneven spread over the right queues is evened out
    uneven = T.parse_rss(SYM_X)
    uneven.table = [0, 0, 0, 1]
    assert T.plan_rss_table(state(rss=uneven), 2).status == T.CHANGE
    assert T.plan_rss_table(state(rss=T.parse_rss(SYM_X)), 2).status == T.OK


def test_offloads():
    acts = by_item(T.plan_offloads(state()))
    assert acts["gro"].status == T.CHANGE and acts["gro"].commands[0].text == "ethtool -K eth0 gro off"
    assert acts["tso"].status == T.CHANGE and acts["gso"].status == T.CHANGE
    assert acts["lro"].status == T.OK                      # off [fixed]
    assert acts["rx-gro-hw"].status == T.UNSUPPORTED       # on [fixed]
    assert "does not let it be turned off" in acts["rx-gro-hw"].note
    assert acts["rx-gro-list"].status == T.OK
    missing = by_item(T.plan_offloads(state(features={})))
    assert all(a.status == T.UNSUPPORTED for a in missing.values())


def test_irq_affinity_follows_the_agent_pinning():
    names = T.parse_interrupts(INTERRUPTS)
    st = state(irqs=T.queue_irqs(names, ["eth0"], None, {25: {0}, 26: {1}, 27: {2}, 28: {0, 1, 2, 3}}))
    # capture workers of queues 0 and 1 on CPUs 2 and 3, an analyzer on 4; NIC on node 0 (CPUs 0-3)
    want = T.IfacePlanInput(queue_cpus={0: 2, 1: 3}, worker_cpus={2, 3, 4}, allowed=set(range(8)),
                            local={0, 1, 2, 3})
    acts = by_item(T.plan_irqs(st, want))
    # each captured queue's IRQ goes to its own free core on the NIC's node (CPU 0 last)
    assert (acts["irq 25"].current, acts["irq 25"].wanted, acts["irq 25"].status) == ("0", "1", T.CHANGE)
    assert acts["irq 25"].commands[0].text == "echo 1 > /proc/irq/25/smp_affinity_list"
    assert acts["irq 25"].commands[0].path == "/proc/irq/25/smp_affinity_list"
    assert (acts["irq 26"].wanted, acts["irq 26"].status) == ("0", T.CHANGE)
    # queues the agent does not capture are left alone
    assert acts["irq 27"].status == acts["irq 28"].status == T.INFO
    # already right: nothing to do
    st.irqs[0].cpus, st.irqs[1].cpus = {1}, {0}
    acts = by_item(T.plan_irqs(st, want))
    assert acts["irq 25"].status == acts["irq 26"].status == T.OK


def test_irq_targets_avoid_isolated_and_fall_back():
    want = T.IfacePlanInput(queue_cpus={0: 1, 1: 2}, worker_cpus={1, 2}, allowed={0, 1, 2, 3}, isolated={3})
    assert T.irq_targets([0, 1], want) == {0: 0, 1: 0}
    # every core runs a worker: each IRQ stays with its own queue's capture
    full = T.IfacePlanInput(queue_cpus={0: 0, 1: 1}, worker_cpus={0, 1}, allowed={0, 1})
    assert T.irq_targets([0, 1], full) == {0: 0, 1: 1}


def test_irqs_without_device_or_config():
    virt = T.plan_irqs(state(driver="veth", has_device=False), T.IfacePlanInput())
    assert [a.status for a in virt] == [T.UNSUPPORTED] and "veth is a virtual device" in virt[0].note
    names = T.parse_interrupts(INTERRUPTS)
    st = state(irqs=T.queue_irqs(names, ["eth0"], None, {25: {0}}))
    info = T.plan_irqs(st, T.IfacePlanInput())
    assert {a.status for a in info} == {T.INFO} and "--config" in info[0].note


def test_napi_busy_poll():
    acts = by_item(T.plan_napi(state(napi={"napi_defer_hard_irqs": 0, "gro_flush_timeout": 200000})))
    assert acts["napi_defer_hard_irqs"].status == T.CHANGE
    assert acts["napi_defer_hard_irqs"].commands[0].path == "/sys/class/net/eth0/napi_defer_hard_irqs"
    assert acts["gro_flush_timeout"].status == T.OK
    assert T.plan_napi(state(napi={}))[0].status == T.UNSUPPORTED
    assert "napi_defer_hard_irqs" not in by_item(T.plan_iface(state(), T.IfacePlanInput()))
    assert "napi_defer_hard_irqs" in by_item(T.plan_iface(state(), T.IfacePlanInput(afxdp_busy_poll=True)))


def test_sysctls():
    acts = by_item(T.plan_sysctls({"net.core.busy_poll": 0, "net.core.busy_read": 100,
                                   "net.core.netdev_max_backlog": None, "net.core.bpf_jit_enable": 1}))
    bp = acts["net.core.busy_poll"]
    assert (bp.status, bp.current, bp.wanted) == (T.CHANGE, "0", ">= 50")
    assert bp.commands[0].text == "sysctl -w net.core.busy_poll=50"
    assert bp.commands[0].path == "/proc/sys/net/core/busy_poll"
    assert acts["net.core.busy_read"].status == T.OK          # more than asked is kept
    assert acts["net.core.netdev_max_backlog"].status == T.UNSUPPORTED
    assert acts["net.core.bpf_jit_enable"].status == T.OK


def test_ring_file_bytes_matches_real_rings(ring_dir):  # noqa: F811
    for i, (ndesc, arena) in enumerate([(64, 1 << 16), (1 << 16, 64 << 20), (4096, 3 << 20)]):
        path = ringlib.create(f"size{i}", ndesc=ndesc, arena_bytes=arena)
        with ringlib.Ring(f"size{i}") as r:
            assert r.stats()["file_bytes"] == T.ring_file_bytes(ndesc, arena) == os.stat(path).st_size


def test_hugepages():
    mb2 = 2 << 20
    # ndesc 64 + 1 MiB arena: control+slots, descriptors, arena each take one 2 MiB page
    assert T.hugepages_needed([(64, 1 << 20)] * 2, mb2) == 6
    assert T.hugepages_needed([(65536, 64 << 20)], mb2) == 1 + 1 + 32
    tmpfs = T.plan_hugepages(T.HugePages("/dev/shm", hugetlbfs=False), [(64, 1 << 20)])
    assert tmpfs.status == T.INFO and "hugetlbfs" in tmpfs.note
    hp = T.HugePages("/mnt/huge", hugetlbfs=True, total=10, free=2)
    a = T.plan_hugepages(hp, [(64, 1 << 20)] * 2)
    assert (a.status, a.wanted) == (T.CHANGE, ">= 14")
    assert a.commands[0].text == "sysctl -w vm.nr_hugepages=14"
    assert a.commands[0].path == "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    # rings that exist already hold their pages
    hp.held = 6
    assert T.plan_hugepages(hp, [(64, 1 << 20)] * 2).status == T.OK
    # 1 GiB pages: the per-size pool, not vm.nr_hugepages; each ring region starts on its own page
    g = T.plan_hugepages(T.HugePages("/mnt/huge1g", hugetlbfs=True, page_bytes=1 << 30), [(65536, 64 << 20)])
    assert g.commands[0].text == "echo 3 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"


def test_kernel_caps_memlock():
    assert T.plan_kernel("5.3.0-1-amd64", afxdp=True, busy_poll=False).status == T.MANUAL
    assert T.plan_kernel("5.10.0", afxdp=True, busy_poll=False).status == T.OK
    assert T.plan_kernel("5.10.0", afxdp=True, busy_poll=True).status == T.MANUAL
    assert T.plan_kernel("4.19", afxdp=False, busy_poll=False).status == T.INFO
    names = {12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW", 21: "CAP_SYS_ADMIN", 39: "CAP_BPF"}
    need = {"afxdp": [(13,), (12,), (39, 21)]}
    a = T.plan_capabilities((1 << 12) | (1 << 13), need, names)
    assert a.status == T.MANUAL and "lacks CAP_BPF" in a.note and "AmbientCapabilities" in a.note
    assert T.plan_capabilities((1 << 12) | (1 << 13) | (1 << 21), need, names).status == T.OK
    m = T.plan_memlock(8 << 20, False, 64 << 20)
    assert m.status == T.MANUAL and "LimitMEMLOCK=infinity" in m.note
    assert T.plan_memlock(8 << 20, True, 64 << 20).status == T.OK
    assert T.plan_memlock(None, False, 64 << 20).status == T.OK
    assert T.plan_memlock(8 << 20, False, 0).status == T.INFO


# ------------------------------------------------------------------------------ apply()

def test_apply_runs_verifies_and_names_failures(tmp_path):
    target = tmp_path / "value"
    target.write_text("0\n")

    def plan():
        # a file-backed setting, one command that fails, one that "succeeds" without effect
        cur = target.read_text().strip()
        a = T.Action("host", "value", T.OK if cur == "7" else T.CHANGE, current=cur, wanted="7",
                     commands=[T.Command(f"echo 7 > {target}", path=str(target), value="7")])
        b = T.Action("host", "broken", T.CHANGE, commands=[T.Command("false", argv=["false"])])
        c = T.Action("host", "stubborn", T.CHANGE, current="1", commands=[T.Command("true", argv=["true"])])
        return [a, b, c]

    out = tuneplan.apply(plan)
    assert target.read_text() == "7\n"
    assert [a.item for a in out.applied] == ["value"]
    failed = {a.item: err for a, err in out.failed}
    assert set(failed) == {"broken", "stubborn"}
    assert failed["broken"].startswith("false: exit status 1")
    assert "still 1" in failed["stubborn"]


def test_target_rejects_bad_queue_args():
    with pytest.raises(Exception, match="needs an interface"):
        tuneplan.target([], None, queues=2)


def test_target_from_agent_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("""
[agent]
ring_dir = "/dev/shm"
[[capture]]
interface = "eth9"
queues = [0, 1]
cpus = [1, 0]
[capture.ring]
ndesc = 4096
arena = "8M"
[[capture]]
name = "lo"
interface = "lo"
source = "afxdp"
options = { busy_poll = true }
""")
    tg = tuneplan.target([], str(cfg))
    assert tg.ifaces == ["eth9", "lo"]
    eth9, lo = tg.wants["eth9"], tg.wants["lo"]
    # the queue count the queue list needs, and each queue's capture CPU from the agent's placement
    assert (eth9.queues, eth9.queue_cpus, eth9.afxdp_busy_poll) == (2, {0: 1, 1: 0}, False)
    # queues = "all": the queues the interface has now (lo: one)
    assert lo.queues == 1 and lo.afxdp_busy_poll and set(lo.queue_cpus) == {0}
    assert tg.rings == [(4096, 8 << 20), (4096, 8 << 20), (65536, 64 << 20)]
    assert tg.ring_files == ["/dev/shm/capfan.eth9.q0", "/dev/shm/capfan.eth9.q1", "/dev/shm/capfan.lo.q0"]
    assert tg.sources == {"afpacket", "afxdp"} and tg.afxdp_arena == 64 << 20 and tg.afxdp_busy_poll
    # --queues overrides the config for the named interface
    assert tuneplan.target(["eth9"], str(cfg), queues=4).wants["eth9"].queues == 4


def test_queues_without_receive_channels():
    st = state(channels=T.parse_channels(VETH_L.replace("RX:\t\t1", "RX:\t\tn/a")))
    a = T.plan_queues(st, 2)
    assert a.status == T.UNSUPPORTED and "no receive channels" in a.note


def test_hostprobe_readers_on_a_fake_tree(tmp_path):
    from capfan import hostprobe as P
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mounts").write_text("tmpfs /dev/shm tmpfs rw 0 0\nnone /srv/huge hugetlbfs rw,pagesize=2M 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nHugepagesize:       2048 kB\n")
    pool = sysfs / "kernel/mm/hugepages/hugepages-2048kB"
    pool.mkdir(parents=True)
    for name, v in (("nr_hugepages", 20), ("free_hugepages", 12), ("resv_hugepages", 2)):
        (pool / name).write_text(f"{v}\n")
    hp = P.observe_hugepages("/srv/huge/rings", [], sysfs=str(sysfs), proc=str(proc))
    assert (hp.hugetlbfs, hp.total, hp.free, hp.page_bytes) == (True, 20, 10, 2 << 20)
    assert not P.observe_hugepages("/dev/shm", [], sysfs=str(sysfs), proc=str(proc)).hugetlbfs
    (proc / "sys/net/core").mkdir(parents=True)
    (proc / "sys/net/core/busy_poll").write_text("25\n")
    assert P.read_sysctls(["net.core.busy_poll", "net.core.busy_read"], proc=str(proc)) == {
        "net.core.busy_poll": 25, "net.core.busy_read": None}
    assert not P.irqbalance_running(str(proc))
    (proc / "812").mkdir()
    (proc / "812/comm").write_text("irqbalance\n")
    assert P.irqbalance_running(str(proc))


def test_bpffs_is_needed_only_for_several_afxdp_queues_without_sys_admin():
    assert T.plan_bpffs("/sys/fs/bpf/capfan", "bpf", afxdp_multiqueue=True, sys_admin=False).status == T.OK
    a = T.plan_bpffs("/sys/fs/bpf/capfan", "sysfs", afxdp_multiqueue=True, sys_admin=False)
    assert a.status == T.MANUAL and a.commands[0].argv == ["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]
    assert "CAPFAN_BPF_DIR" in a.note and "sysfs" in a.current
    assert T.plan_bpffs("/x", None, afxdp_multiqueue=True, sys_admin=True).status == T.INFO
    assert T.plan_bpffs("/x", "tmpfs", afxdp_multiqueue=False, sys_admin=False).status == T.INFO


def test_mount_fstype_takes_the_longest_mount_point(tmp_path):
    from capfan import hostprobe as P
    mounts = tmp_path / "mounts"
    mounts.write_text("sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n/dev/x / ext4 rw 0 0\n"
                      "tmpfs /sys/fs/bpfx tmpfs rw 0 0\n")
    assert P.mount_fstype("/sys/fs/bpf/capfan", str(mounts)) == "bpf"
    assert P.mount_fstype("/sys/fs/bpf", str(mounts)) == "bpf"
    assert P.mount_fstype("/sys/fs/bpfx/capfan", str(mounts)) == "tmpfs"
    assert P.mount_fstype("/sys/kernel", str(mounts)) == "sysfs"
    assert P.mount_fstype("/home", str(mounts)) == "ext4"
    assert P.mount_fstype("/home", str(tmp_path / "missing")) is None


@pytest.mark.privileged
def test_doctor_sees_a_real_bpffs(bpffs):
    from capfan import hostprobe as P
    assert P.mount_fstype(str(bpffs)) == "bpf"
    assert P.mount_fstype(str(bpffs.parent.parent)) != "bpf"

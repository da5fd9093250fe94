"""The whole tuning plan of a host: what the agent config (if any) asks for, observed against the
host, planned by capfan.hosttune; and `apply()`, which runs the plan and verifies the result."""
from __future__ import annotations

import dataclasses
import os

from capfan import hostprobe as P
from capfan import hosttune as T
from capfan.errors import ConfigError, TuneError

#: ring geometry of a capture without config (the agent's [capture.ring] defaults)
DEFAULT_NDESC = 65536
DEFAULT_ARENA = 64 << 20


@dataclasses.dataclass
class Target:
    """What tune aims at: interfaces, and per interface what the agent wants of it."""

    ifaces: list[str]
    wants: dict[str, T.IfacePlanInput]
    rings: list[tuple[int, int]]               # (ndesc, arena bytes) of every ring
    ring_dir: str
    ring_files: list[str]
    sources: set[str]                          # capture backends of the config
    afxdp_arena: int = 0                       # bytes of AF_XDP arenas (UMEM, memlock)
    afxdp_busy_poll: bool = False
    afxdp_multiqueue: bool = False             # some interface has several AF_XDP queues
    config: str | None = None


def load_agent_config(path: str):
    """The agent config as the agent would expand it on this host, without refusing what tune
    is there to fix (too few queues) or what doctor reports itself (privileges, directories)."""
    from capfan import config as C  # noqa: PLC0415
    from capfan.agents import config as agentconfig  # noqa: PLC0415
    raw = C.load_file(path)
    # queues = "all" means the queues the NIC has now, as the agent reads it at start
    for t in raw.get("capture", []) if isinstance(raw.get("capture"), list) else []:
        iface = t.get("interface") if isinstance(t, dict) else None
        if isinstance(iface, str) and t.get("queues", "all") == "all" and t.get("source", "afpacket") != "pcap":
            n = agentconfig.nic_rx_queues(iface) if "/" not in iface else None
            if n:
                t["queues"] = list(range(n))
    return agentconfig.build(raw, path=path, base=os.path.dirname(os.path.abspath(path)), check_host=False)


def target(ifaces: list[str], config: str | None = None, queues: int | None = None) -> Target:
    """The plan inputs for `ifaces` (every live interface of the config when empty)."""
    from capfan import ring as ringlib  # noqa: PLC0415
    from capfan.agents import placement  # noqa: PLC0415

    if queues is not None and queues < 1:
        raise TuneError(f"--queues must be at least 1, not {queues}")
    cfg = load_agent_config(config) if config else None
    # kernel-bypass captures (snf, efvi) do not read the kernel's RX queues: nothing to tune for them
    live = [w for w in (cfg.captures if cfg else []) if w.live and w.source not in ("snf", "efvi")]
    if not ifaces:
        ifaces = list(dict.fromkeys(w.interface for w in live))
    if queues is not None and not ifaces:
        raise TuneError("--queues needs an interface: capfan tune IFACE --queues N")
    cpus: dict[int, int | None] = {}
    if cfg:
        workers = [*cfg.captures, *cfg.analyzers, *([cfg.exporter] if cfg.exporter else [])]
        reqs = [placement.PinRequest(key=f"{w.key}.cpus", label=w.label, want=w.cpu_want, iface=w.interface,
                                     queue=(w.queue if getattr(w, "live", False) else None),
                                     live=bool(getattr(w, "live", False))) for w in workers]
        placed, _warnings = placement.place(reqs)
        cpus = {id(w): c for w, c in zip(workers, placed)}
    allowed = placement.available_cpus()
    isolated = placement.isolated_cpus()
    wants = {}
    for iface in ifaces:
        mine = [w for w in live if w.interface == iface]
        want = T.IfacePlanInput(allowed=allowed, isolated=isolated,
                                local=placement.node_cpus(placement.nic_numa_node(iface)),
                                worker_cpus={c for c in cpus.values() if c is not None},
                                source=f"config {config}" if config else "")
        if mine:
            want.queues = max(w.queue for w in mine) + 1
            want.queue_cpus = {w.queue: cpus[id(w)] for w in mine if cpus.get(id(w)) is not None}
            want.afxdp_busy_poll = any(w.source == "afxdp" and w.options.get("busy_poll") for w in mine)
        if queues is not None:
            want.queues = queues
        wants[iface] = want
    if cfg:
        ring_dir = cfg.ring_dir
        rings = [(w.geometry["ndesc"], w.geometry["arena"]) for w in cfg.captures]
        ring_files = [os.path.join(ring_dir, ringlib.RING_PREFIX + w.ring) for w in cfg.captures]
    else:
        ring_dir = ringlib.ring_dir()
        rings = [(DEFAULT_NDESC, DEFAULT_ARENA)] * sum(wants[i].queues or 1 for i in ifaces)
        ring_files = []
    afxdp = [w for w in live if w.source == "afxdp"]
    return Target(ifaces=ifaces, wants=wants, rings=rings, ring_dir=ring_dir, ring_files=ring_files,
                  sources={w.source for w in (cfg.captures if cfg else [])},
                  afxdp_arena=sum(w.geometry["arena"] for w in afxdp),
                  afxdp_busy_poll=any(w.options.get("busy_poll") for w in afxdp),
                  afxdp_multiqueue=any(sum(1 for v in afxdp if v.interface == w.interface) > 1 for w in afxdp),
                  config=config)


def tune_plan(tg: Target) -> list[T.Action]:
    """What `capfan tune` sets: per interface, then host-wide (sysctls, huge pages)."""
    out = []
    for iface in tg.ifaces:
        out += T.plan_iface(P.observe_iface(iface), tg.wants[iface])
    out += T.plan_sysctls(P.read_sysctls(T.SYSCTLS))
    out.append(T.plan_hugepages(P.observe_hugepages(tg.ring_dir, tg.ring_files), tg.rings))
    if any(a.item.startswith("irq ") and a.status in (T.OK, T.CHANGE) for a in out) and P.irqbalance_running():
        out.append(T.Action("host", "irqbalance", T.MANUAL, current="running", wanted="stopped", note=(
            "irqbalance moves the pinned IRQs back; stop it or ban the capture IRQs from it"),
            commands=[T.Command("systemctl disable --now irqbalance",
                                argv=["systemctl", "disable", "--now", "irqbalance"])]))
    return out


def doctor_plan(tg: Target) -> list[T.Action]:
    """`capfan doctor`: the tune plan plus what tune cannot change (privileges, kernel, libraries)."""
    from capfan.agents import config as agentconfig  # noqa: PLC0415
    from capfan.sources import backends_built  # noqa: PLC0415
    from capfan.sources.snf import library_path  # noqa: PLC0415

    out = tune_plan(tg)
    caps = agentconfig.effective_caps()
    needed = {s: agentconfig.needed_caps(s) for s in sorted(tg.sources) if agentconfig.needed_caps(s)}
    out.append(T.plan_capabilities(caps, needed, agentconfig.CAP_NAMES))
    out.append(T.plan_memlock(P.memlock_limit(), bool(caps >> agentconfig.CAP_IPC_LOCK & 1), tg.afxdp_arena))
    out.append(T.plan_kernel(P.kernel_release(), "afxdp" in tg.sources, tg.afxdp_busy_poll))
    pin_dir = os.environ.get("CAPFAN_BPF_DIR") or "/sys/fs/bpf/capfan"
    out.append(T.plan_bpffs(pin_dir, P.mount_fstype(pin_dir), tg.afxdp_multiqueue,
                            bool(caps >> agentconfig.CAP_SYS_ADMIN & 1)))
    built = backends_built()
    lx = T.Action("host", "libxdp", T.OK, current="AF_XDP backend built" if "afxdp" in built else "not built")
    if "afxdp" not in built:
        lx.status = T.MANUAL if "afxdp" in tg.sources else T.INFO
        lx.note = ("the AF_XDP backend was built without libxdp/libbpf: install them (apt install libxdp-dev "
                   "libbpf-dev) and rebuild capfan (python setup.py build_ext --inplace, or reinstall)")
    out.append(lx)
    snf = library_path()
    out.append(T.Action("host", "libsnf", T.INFO, current=snf if os.path.exists(snf) else "not found",
                        note="only for `capfan capture --source snf` (Myricom/CSPi SNF; $CAPFAN_SNF_LIB)"))
    return out


@dataclasses.dataclass
class Outcome:
    """Result of apply(): what was set, what failed (with why), and the plan afterwards."""

    applied: list[T.Action]
    failed: list[tuple[T.Action, str]]
    after: list[T.Action]


def apply(make_plan, rounds: int = 2) -> Outcome:
    """Run every `change` action, re-plan (a new queue count brings new IRQs and RSS tables) and
    run what is still off, then verify: whatever is still off afterwards has failed."""
    errors: dict[tuple[str, str], str] = {}
    applied: dict[tuple[str, str], T.Action] = {}
    for _ in range(rounds):
        todo = [a for a in make_plan() if a.status == T.CHANGE]
        if not todo:
            break
        for a in todo:
            for cmd in a.commands:
                err = P.run_command(cmd)
                if err:
                    errors[a.key] = err
                    break
            else:
                errors.pop(a.key, None)
                applied[a.key] = a
    after = make_plan()
    failed = []
    for a in after:
        if a.status == T.CHANGE:
            applied.pop(a.key, None)
            failed.append((a, errors.get(a.key) or f"{'; '.join(c.text for c in a.commands)} ran, yet "
                                                    f"{a.item} is still {a.current}"))
    return Outcome(applied=list(applied.values()), failed=failed, after=after)


def check_config_path(path: str | None) -> str | None:
    """The config to use: the one given, else the default agent config when it exists."""
    from capfan.agents.config import DEFAULT_CONFIG  # noqa: PLC0415
    if path:
        if not os.path.exists(path):
            raise ConfigError(None, f"no config file {path!r}")
        return path
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None

"""Host tuning for capture, as pure planning: observed state in, a list of actions out.

`capfan tune` and `capfan doctor` observe the host (capfan/hostprobe.py runs ethtool and reads
sysfs/procfs into the dataclasses below) and call the plan_* functions here, which decide for
each setting its current value, the wanted value and the exact command that gets there. Nothing
here touches the host, so every decision is tested from captured `ethtool` / `/proc` text.

An action's status says what to do about it:
  ok          already as wanted
  change      `capfan tune --apply` runs the command
  manual      off, but not something tune changes (libraries, capabilities, irqbalance)
  unsupported the driver/kernel/namespace has no such setting; reported, never an error
  info        nothing to want (no config to plan from); shown for the record
"""
from __future__ import annotations

import dataclasses
import re

OK, CHANGE, MANUAL, UNSUPPORTED, INFO = "ok", "change", "manual", "unsupported", "info"
#: statuses doctor counts as "something is off"
OFF = (CHANGE, MANUAL)

#: the 0x6d5a key repeated makes Toeplitz RSS symmetric: a->b and b->a hash alike (Woo & Park)
SYMMETRIC_KEY_WORD = (0x6D, 0x5A)

#: receive offloads that merge frames and send offloads that leave the host's own super-frames
#: in the capture: (ethtool -K keyword, name in `ethtool -k` output, what it does)
OFFLOADS = (
    ("gro", "generic-receive-offload", "merges received frames into super-frames"),
    ("lro", "large-receive-offload", "the NIC merges received frames"),
    ("rx-gro-hw", "rx-gro-hw", "the NIC merges received frames (hardware GRO)"),
    ("rx-gro-list", "rx-gro-list", "merges received frames into frag lists"),
    ("tso", "tcp-segmentation-offload", "the host's own TCP leaves as super-frames"),
    ("gso", "generic-segmentation-offload", "the host's own traffic leaves as super-frames"),
)

#: sysctl -> (wanted minimum, why); a larger current value is kept
SYSCTLS = {
    "net.core.busy_poll": (50, "microseconds poll()/select() busy-poll the NIC queue before sleeping"),
    "net.core.busy_read": (50, "microseconds a socket read busy-polls the NIC queue before sleeping"),
    "net.core.netdev_max_backlog": (10000, "packets queued per CPU before the kernel drops (AF_PACKET "
                                           "on drivers without NAPI, veth, RPS)"),
    "net.core.bpf_jit_enable": (1, "BPF filters and the AF_XDP program run JIT-compiled"),
}

#: per-interface sysfs settings for AF_XDP preferred busy polling (kernel napi docs)
NAPI_BUSY_POLL = {"napi_defer_hard_irqs": 2, "gro_flush_timeout": 200000}

# ring file layout (capfan/_core/ring.c): control page, consumer slots, descriptors, arena,
# each region aligned to the page size of the filesystem the ring lives on
RING_CTL_BYTES = 8192
RING_SLOT_BYTES = 256
RING_DESC_BYTES = 32
RING_MIN_CONSUMERS = 256

#: AF_XDP needs need_wakeup (Linux 5.4); the busy_poll option SO_PREFER_BUSY_POLL (5.11)
AFXDP_MIN_KERNEL = (5, 4)
AFXDP_BUSY_POLL_KERNEL = (5, 11)


@dataclasses.dataclass
class Command:
    """One step that changes a setting: a program to run (argv) or a value written to a file."""

    text: str                          # what a user would type; shown verbatim
    argv: list[str] | None = None
    path: str | None = None            # write `value` here instead of running argv
    value: str | None = None

    def to_json(self) -> dict:
        """The command as JSON (its text plus how it is carried out)."""
        out = {"text": self.text}
        if self.argv is not None:
            out["argv"] = self.argv
        else:
            out.update(path=self.path, value=self.value)
        return out


@dataclasses.dataclass
class Action:
    """One setting: where (an interface or "host"), current -> wanted, and the fix."""

    scope: str
    item: str
    status: str
    current: str = ""
    wanted: str = ""
    commands: list[Command] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the setting across re-plans (scope, item)."""
        return self.scope, self.item

    def to_json(self) -> dict:
        """The action as JSON."""
        return {"scope": self.scope, "item": self.item, "status": self.status, "current": self.current,
                "wanted": self.wanted, "commands": [c.to_json() for c in self.commands], "note": self.note}


# ------------------------------------------------------------------------------ observed state

@dataclasses.dataclass
class Channels:
    """`ethtool -l`: pre-set maximums and current counts (None = n/a)."""

    maximum: dict[str, int | None]
    current: dict[str, int | None]


@dataclasses.dataclass
class Rss:
    """`ethtool -x`: indirection table, hash key, hash functions (name -> on)."""

    table: list[int]
    key: bytes | None
    functions: dict[str, bool]


@dataclasses.dataclass
class Irq:
    """One interrupt vector of a NIC receive queue and the CPUs it may be delivered to."""

    irq: int
    name: str
    queue: int
    cpus: set[int]


@dataclasses.dataclass
class IfaceState:
    """What was observed about one interface; None fields: the driver does not support it
    (the matching *_error says what the tool answered)."""

    name: str
    driver: str | None = None
    channels: Channels | None = None
    channels_error: str = ""
    rss: Rss | None = None
    rss_error: str = ""
    features: dict[str, tuple[bool, bool]] = dataclasses.field(default_factory=dict)  # name -> (on, fixed)
    has_device: bool = False           # a bus device (PCI, virtio) with interrupts of its own
    irqs: list[Irq] = dataclasses.field(default_factory=list)
    napi: dict[str, int | None] = dataclasses.field(default_factory=dict)  # sysfs name -> value

    @property
    def driver_name(self) -> str:
        """The driver for messages ("veth"), or "this driver"."""
        return f"driver {self.driver}" if self.driver else "this driver"

    def rx_queue_count(self) -> int | None:
        """Current receive queues per `ethtool -l` (combined + rx-only)."""
        if self.channels is None:
            return None
        cur = self.channels.current
        n = (cur.get("combined") or 0) + (cur.get("rx") or 0)
        return n or None


@dataclasses.dataclass
class IfacePlanInput:
    """What the agent wants of one interface: queue count, CPU of each queue's capture worker,
    whether an AF_XDP capture busy-polls it, and the CPU facts IRQ placement needs."""

    queues: int | None = None                  # wanted receive queues; None = leave as is
    queue_cpus: dict[int, int] = dataclasses.field(default_factory=dict)  # queue -> capture worker CPU
    worker_cpus: set[int] = dataclasses.field(default_factory=set)        # every pinned worker's CPU
    allowed: set[int] = dataclasses.field(default_factory=set)
    local: set[int] = dataclasses.field(default_factory=set)              # CPUs on the NIC's node
    isolated: set[int] = dataclasses.field(default_factory=set)
    afxdp_busy_poll: bool = False
    source: str = ""                           # "config FILE" or "" for messages


@dataclasses.dataclass
class HugePages:
    """The hugetlbfs side of ring_dir: page size, pool counters, pages held by existing rings."""

    ring_dir: str
    hugetlbfs: bool
    page_bytes: int = 2 << 20
    default_page_bytes: int = 2 << 20
    total: int = 0
    free: int = 0
    held: int = 0                              # pages the configured rings already occupy


# ------------------------------------------------------------------------------ parsers

def parse_channels(text: str) -> Channels | None:
    """`ethtool -l` output -> Channels; None when the text has no channel sections."""
    sections: list[dict[str, int | None]] = []
    for line in text.splitlines():
        s = line.strip()
        if s.endswith(":") and ("maximums" in s.lower() or "current" in s.lower()):
            sections.append({})
            continue
        m = re.fullmatch(r"(RX|TX|Other|Combined):\s*(\S+)", s, re.IGNORECASE)
        if m and sections:
            v = m.group(2)
            sections[-1][m.group(1).lower()] = int(v) if v.isdigit() else None
    if len(sections) < 2:
        return None
    return Channels(maximum=sections[0], current=sections[1])


_HEX_KEY_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2})*$")


def parse_rss(text: str) -> Rss | None:
    """`ethtool -x` output -> Rss; None when there is no indirection table or key."""
    table: list[int] = []
    key = None
    functions: dict[str, bool] = {}
    section = None
    for line in text.splitlines():
        s = line.strip()
        low = s.lower()
        if low.startswith("rx flow hash indirection table"):
            section = "table"
            continue
        if low.startswith("rss hash key"):
            section = "key"
            continue
        if low.startswith("rss hash function"):
            section = "func"
            continue
        if low.startswith("rss input transformation"):
            section = None
            continue
        if section == "table":
            m = re.fullmatch(r"\d+:\s*([\d\s]*)", s)
            if m:
                table += [int(x) for x in m.group(1).split()]
                continue
            section = None
        elif section == "key":
            if _HEX_KEY_RE.match(s):
                key = (key or b"") + bytes(int(x, 16) for x in s.split(":"))
                continue
            section = None
        elif section == "func":
            m = re.fullmatch(r"([\w-]+):\s*(on|off)", s)
            if m:
                functions[m.group(1).lower()] = m.group(2) == "on"
                continue
            section = None
    if not table and key is None:
        return None
    return Rss(table=table, key=key, functions=functions)


def parse_features(text: str) -> dict[str, tuple[bool, bool]]:
    """`ethtool -k` output -> feature name -> (on, fixed)."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*([\w-]+):\s*(on|off)(.*)", line)
        if m:
            out[m.group(1)] = (m.group(2) == "on", "[fixed]" in m.group(3))
    return out


def parse_driver(text: str) -> str | None:
    """The driver name from `ethtool -i` output."""
    m = re.search(r"^driver:\s*(\S+)", text, re.MULTILINE)
    return m.group(1) if m else None


def parse_interrupts(text: str) -> dict[int, list[str]]:
    """/proc/interrupts text -> IRQ number -> action names (a shared IRQ lists several)."""
    from capfan.agents.placement import parse_interrupts as parse  # noqa: PLC0415 - one parser for both
    return parse(text)


def queue_irqs(names: dict[int, list[str]], tokens: list[str], msi: set[int] | None,
               affinity: dict[int, set[int]]) -> list[Irq]:
    """The receive-queue vectors of a device among `names` (tokens: interface name, PCI address,
    virtio device), each with its queue number; msi limits the search to the device's vectors."""
    from capfan.agents.placement import irq_queue  # noqa: PLC0415 - the agent's own naming rules
    out = []
    for irq, actions in sorted(names.items()):
        if msi is not None and irq not in msi:
            continue
        for name in actions:
            queue = irq_queue(name, tokens)
            if queue is not None:
                out.append(Irq(irq=irq, name=name, queue=queue, cpus=set(affinity.get(irq, set()))))
                break
    return out


# ------------------------------------------------------------------------------ planning: interface

def plan_iface(st: IfaceState, want: IfacePlanInput) -> list[Action]:
    """Every per-interface action: queues, RSS table and key, offloads, IRQs, AF_XDP busy-poll."""
    queues = plan_queues(st, want.queues)
    n = want.queues or st.rx_queue_count()
    table = plan_rss_table(st, n)
    shrinking = queues.status == table.status == CHANGE and want.queues is not None and want.queues < (st.rx_queue_count() or 0)
    # a table that names queues about to go away must change first; a growing one after
    out = [table, queues] if shrinking else [queues, table]
    out.append(plan_rss_key(st))
    out += plan_offloads(st)
    out += plan_irqs(st, want)
    if want.afxdp_busy_poll:
        out += plan_napi(st)
    return out


def plan_queues(st: IfaceState, wanted: int | None) -> Action:
    """Receive queue count (`ethtool -L`)."""
    a = Action(st.name, "queues", OK)
    ch = st.channels
    if ch is None:
        a.status = UNSUPPORTED
        a.note = f"queue count not settable: not supported by {st.driver_name}" + _why(st.channels_error)
        return a
    have = st.rx_queue_count()
    if have is None:
        a.status = UNSUPPORTED
        a.note = f"{st.driver_name} reports no receive channels (ethtool -l)"
        return a
    a.current = str(have)
    if wanted is None:
        a.status, a.wanted = INFO, str(have)
        a.note = "no queue count asked for (--queues N or a config with a queue list)"
        return a
    a.wanted = str(wanted)
    combined_max = ch.maximum.get("combined") or 0
    rx_max = ch.maximum.get("rx") or 0
    top = combined_max or rx_max
    if wanted > top:
        a.status = MANUAL
        a.note = (f"{st.name} has at most {top} receive queues ({st.driver_name}): capture fewer queues "
                  "(--queues, or the config's queue list)")
        return a
    if have == wanted:
        return a
    a.status = CHANGE
    if combined_max:
        argv = ["ethtool", "-L", st.name, "combined", str(wanted)]
        if ch.current.get("rx"):
            argv += ["rx", "0"]   # separate rx-only channels would add queues of their own
    else:
        tx_max = ch.maximum.get("tx") or 0
        argv = ["ethtool", "-L", st.name, "rx", str(wanted)]
        if tx_max:
            argv += ["tx", str(min(wanted, tx_max))]
    a.commands = [Command(" ".join(argv), argv=argv)]
    return a


def plan_rss_table(st: IfaceState, n: int | None) -> Action:
    """RSS indirection table spread evenly over queues 0..n-1 (`ethtool -X equal`)."""
    a = Action(st.name, "rss table", OK)
    if st.rss is None or not st.rss.table:
        a.status = UNSUPPORTED
        a.note = f"no RSS indirection table: not supported by {st.driver_name}" + _why(st.rss_error)
        return a
    used = sorted(set(st.rss.table))
    a.current = f"queues {_span(used)}"
    if not n:
        a.status, a.wanted = INFO, a.current
        return a
    a.wanted = f"queues {_span(range(n))}"
    if used == list(range(n)) and _even(st.rss.table):
        return a
    if used == list(range(n)):
        a.current += " (uneven)"
    a.status = CHANGE
    argv = ["ethtool", "-X", st.name, "equal", str(n)]
    a.commands = [Command(" ".join(argv), argv=argv)]
    return a


def symmetric_key(length: int) -> bytes:
    """The 6d:5a... RSS key of `length` bytes."""
    return bytes(SYMMETRIC_KEY_WORD[i % 2] for i in range(length))


def format_key(key: bytes) -> str:
    """Bytes as ethtool writes a key: 6d:5a:..."""
    return ":".join(f"{b:02x}" for b in key)


def plan_rss_key(st: IfaceState) -> Action:
    """Symmetric Toeplitz RSS key so both directions of a flow reach one queue (`ethtool -X hkey`)."""
    a = Action(st.name, "rss key", OK)
    rss = st.rss
    if rss is None or not rss.key:
        a.status = UNSUPPORTED
        a.note = f"RSS hash key not readable/settable: not supported by {st.driver_name}" + _why(st.rss_error)
        return a
    want = symmetric_key(len(rss.key))
    a.current = _short_key(rss.key)
    a.wanted = _short_key(want) + " (symmetric)"
    funcs = rss.functions
    toeplitz_on = funcs.get("toeplitz", True) if funcs else True
    if funcs and "toeplitz" not in funcs:
        a.status = UNSUPPORTED
        active = ", ".join(k for k, on in funcs.items() if on) or "unknown"
        a.note = (f"{st.driver_name} hashes with {active}, not Toeplitz: a 6d:5a key would not make it "
                  "symmetric")
        return a
    if rss.key == want and toeplitz_on:
        return a
    if not toeplitz_on:
        a.current += f" (hash {', '.join(k for k, on in funcs.items() if on) or 'unknown'})"
        a.wanted += " toeplitz"
    a.status = CHANGE
    argv = ["ethtool", "-X", st.name, "hkey", format_key(want)]
    if not toeplitz_on:
        argv += ["hfunc", "toeplitz"]
    a.commands = [Command(" ".join(argv), argv=argv)]
    return a


def plan_offloads(st: IfaceState) -> list[Action]:
    """GRO/LRO/hardware GRO/GRO-list/TSO/GSO off (`ethtool -K`)."""
    out = []
    for word, name, what in OFFLOADS:
        a = Action(st.name, word, OK, wanted="off")
        if name not in st.features:
            a.status = UNSUPPORTED
            a.note = f"not reported by {st.driver_name}"
            out.append(a)
            continue
        on, fixed = st.features[name]
        a.current = "on" if on else "off"
        if on and fixed:
            a.status = UNSUPPORTED
            a.note = f"on and fixed: {st.driver_name} does not let it be turned off ({what})"
        elif on:
            a.status = CHANGE
            a.note = what
            argv = ["ethtool", "-K", st.name, word, "off"]
            a.commands = [Command(" ".join(argv), argv=argv)]
        out.append(a)
    return out


def irq_targets(queues: list[int], want: IfacePlanInput) -> dict[int, int]:
    """CPU for each queue's IRQ: a core running no worker and not isolated, on the NIC's node
    first, spread one queue per core (the agent's placement warns when a capture shares its core
    with its queue's IRQ); a worker's own core only when no other is left."""
    allowed = want.allowed or set(want.worker_cpus) | set(want.queue_cpus.values())
    pools = [allowed - want.worker_cpus - want.isolated, allowed - want.worker_cpus, allowed - want.isolated]
    pool = next((p for p in pools if p), set())
    order = sorted(pool, key=lambda c: (c not in want.local, c == 0, c))
    if not order:
        return {}
    if pool is pools[2]:
        # every core runs a worker: keep each IRQ with the worker of its own queue, not another's
        return {q: want.queue_cpus.get(q, order[i % len(order)]) for i, q in enumerate(sorted(queues))}
    return {q: order[i % len(order)] for i, q in enumerate(sorted(queues))}


def plan_irqs(st: IfaceState, want: IfacePlanInput) -> list[Action]:
    """Affinity of each receive-queue IRQ (/proc/irq/N/smp_affinity_list)."""
    if not st.has_device:
        return [Action(st.name, "irq affinity", UNSUPPORTED,
                       note=f"no interrupts of its own: {st.driver_name} is a virtual device")]
    if not st.irqs:
        return [Action(st.name, "irq affinity", UNSUPPORTED,
                       note=f"no receive-queue IRQs of {st.name} found in /proc/interrupts ({st.driver_name})")]
    captured = sorted(want.queue_cpus)
    if not captured:
        return [Action(st.name, f"irq {i.irq}", INFO, current=_cpulist(i.cpus), wanted=_cpulist(i.cpus),
                       note=f"{i.name} (queue {i.queue}); no agent config: the IRQ is left where it is "
                            "(pass --config to pin)") for i in st.irqs]
    targets = irq_targets(captured, want)
    out = []
    for i in st.irqs:
        a = Action(st.name, f"irq {i.irq}", OK, current=_cpulist(i.cpus))
        if i.queue not in targets:
            a.status, a.wanted = INFO, a.current
            a.note = f"{i.name}: queue {i.queue} is not captured by the agent"
            out.append(a)
            continue
        cpu = targets[i.queue]
        a.wanted = str(cpu)
        a.note = f"{i.name} (queue {i.queue}, capture on CPU {want.queue_cpus[i.queue]})"
        if i.cpus != {cpu}:
            a.status = CHANGE
            path = f"/proc/irq/{i.irq}/smp_affinity_list"
            a.commands = [Command(f"echo {cpu} > {path}", path=path, value=str(cpu))]
        out.append(a)
    return out


def plan_napi(st: IfaceState) -> list[Action]:
    """napi_defer_hard_irqs / gro_flush_timeout for AF_XDP preferred busy polling."""
    out = []
    for name, value in NAPI_BUSY_POLL.items():
        a = Action(st.name, name, OK, wanted=str(value), note="AF_XDP busy_poll: interrupts stay off while "
                                                              "the capture loop polls")
        cur = st.napi.get(name)
        if cur is None:
            a.status = UNSUPPORTED
            a.note = f"/sys/class/net/{st.name}/{name} missing (kernel before 5.11?)"
        else:
            a.current = str(cur)
            if cur != value:
                a.status = CHANGE
                path = f"/sys/class/net/{st.name}/{name}"
                a.commands = [Command(f"echo {value} > {path}", path=path, value=str(value))]
        out.append(a)
    return out


# ------------------------------------------------------------------------------ planning: host

def plan_sysctls(values: dict[str, int | None], wanted: dict | None = None) -> list[Action]:
    """Busy-poll and backlog sysctls, raised to at least the wanted value."""
    out = []
    for name, (minimum, why) in (wanted or SYSCTLS).items():
        a = Action("host", name, OK, wanted=f">= {minimum}", note=why)
        cur = values.get(name)
        if cur is None:
            a.status = UNSUPPORTED
            a.note = ("not visible here: a global sysctl this network namespace does not show (run "
                      "capfan tune in the host's namespace) or a kernel without it")
        else:
            a.current = str(cur)
            if cur < minimum:
                a.status = CHANGE
                path = "/proc/sys/" + name.replace(".", "/")
                a.commands = [Command(f"sysctl -w {name}={minimum}", path=path, value=str(minimum))]
        out.append(a)
    return out


def ring_file_bytes(ndesc: int, arena: int, page: int = 4096, max_consumers: int = RING_MIN_CONSUMERS) -> int:
    """Size of a ring file on a filesystem with `page`-byte pages (mirrors capfan_ring_create)."""
    def up(v):
        return (v + page - 1) // page * page
    desc_off = up(RING_CTL_BYTES + max_consumers * RING_SLOT_BYTES)
    arena_off = up(desc_off + ndesc * RING_DESC_BYTES)
    return up(arena_off + arena)


def hugepages_needed(rings: list[tuple[int, int]], page_bytes: int) -> int:
    """Huge pages the rings (ndesc, arena bytes) occupy on a hugetlbfs mount of that page size."""
    return sum(ring_file_bytes(nd, ar, page_bytes) // page_bytes for nd, ar in rings)


def plan_hugepages(hp: HugePages, rings: list[tuple[int, int]]) -> Action:
    """Enough huge pages for the rings when ring_dir is a hugetlbfs mount."""
    if not hp.hugetlbfs:
        return Action("host", "hugepages", INFO, note=(
            f"rings live in {hp.ring_dir} (not hugetlbfs: normal pages, no reservation needed); to put the "
            "ring arenas on huge pages mount hugetlbfs (mount -t hugetlbfs none /mnt/capfan-huge) and set "
            "agent.ring_dir to it"))
    need = hugepages_needed(rings, hp.page_bytes)
    size = f"{hp.page_bytes >> 10}kB"
    a = Action("host", "hugepages", OK, current=f"{hp.total} ({hp.free} free, {hp.held} held by the rings)",
               note=f"{len(rings)} ring(s) in {hp.ring_dir} need {need} x {size} pages")
    missing = need - hp.held - hp.free
    wanted = hp.total + max(missing, 0)
    a.wanted = f">= {wanted}"
    if missing <= 0:
        return a
    a.status = CHANGE
    path = f"/sys/kernel/mm/hugepages/hugepages-{size}/nr_hugepages"
    if hp.page_bytes == hp.default_page_bytes:
        text = f"sysctl -w vm.nr_hugepages={wanted}"
    else:
        text = f"echo {wanted} > {path}"
    a.commands = [Command(text, path=path, value=str(wanted))]
    return a


def plan_kernel(release: str, afxdp: bool, busy_poll: bool) -> Action:
    """Kernel new enough for the AF_XDP captures in the config."""
    a = Action("host", "kernel", OK, current=release)
    m = re.match(r"(\d+)\.(\d+)", release)
    have = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not afxdp:
        a.status, a.note = INFO, "no AF_XDP capture configured"
        return a
    need = AFXDP_BUSY_POLL_KERNEL if busy_poll else AFXDP_MIN_KERNEL
    a.wanted = f">= {need[0]}.{need[1]}"
    if have < need:
        a.status = MANUAL
        a.note = (f"AF_XDP{' with busy_poll' if busy_poll else ''} needs Linux {need[0]}.{need[1]} or later: "
                  "upgrade the kernel, or capture with source = \"afpacket\"")
    return a


def plan_bpffs(pin_dir: str, fstype: str | None, afxdp_multiqueue: bool, sys_admin: bool) -> Action:
    """bpffs under capfan's pin directory: how AF_XDP queues after the first join the XDP program
    without CAP_SYS_ADMIN (and how a capture after kill -9 recognises its leftover program)."""
    a = Action("host", "bpffs", OK, current=f"{pin_dir} on {fstype or 'no mount'}", wanted="bpf")
    if fstype == "bpf":
        return a
    if not afxdp_multiqueue or sys_admin:
        a.status = INFO
        a.note = ("not needed now (only AF_XDP on several queues of one interface without CAP_SYS_ADMIN "
                  "needs it)")
        return a
    a.status = MANUAL
    a.note = ("AF_XDP captures of a second queue join the first one's XDP program through pins in bpffs; "
              "without CAP_SYS_ADMIN they fail: mount bpffs (or set CAPFAN_BPF_DIR to a directory on one)")
    a.commands = [Command("mount -t bpf bpf /sys/fs/bpf", argv=["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])]
    return a


def plan_capabilities(have: int, needed: dict[str, list[tuple[int, ...]]], names: dict[int, str]) -> Action:
    """The capabilities the configured backends need, against `have` (a CapEff mask)."""
    a = Action("host", "capabilities", OK)
    want = sorted({alts[0] for need in needed.values() for alts in need})
    a.wanted = " ".join(names[c] for c in want) or "none"
    a.current = " ".join(names[c] for c in sorted(names) if have >> c & 1) or "none"
    missing = sorted({alts[0] for need in needed.values() for alts in need
                      if not any(have >> c & 1 for c in alts)})
    if missing:
        a.status = MANUAL
        grant = " ".join(names[c] for c in want)
        a.note = (f"this process lacks {' '.join(names[c] for c in missing)} that "
                  f"{', '.join(sorted(needed))} capture needs: run the agent as root or grant them "
                  f"(systemd: AmbientCapabilities={grant})")
    return a


def plan_memlock(limit: int | None, has_ipc_lock: bool, afxdp_arena_bytes: int) -> Action:
    """RLIMIT_MEMLOCK large enough to register the AF_XDP arenas as UMEM (or CAP_IPC_LOCK)."""
    a = Action("host", "memlock", OK, current="unlimited" if limit is None else _bytes(limit))
    if not afxdp_arena_bytes:
        a.status, a.note = INFO, "no AF_XDP capture configured (UMEM pinning needs no memlock)"
        return a
    a.wanted = f">= {_bytes(afxdp_arena_bytes)} or CAP_IPC_LOCK"
    if has_ipc_lock or limit is None or limit >= afxdp_arena_bytes:
        return a
    a.status = MANUAL
    a.note = ("AF_XDP pins its ring arenas (UMEM) against RLIMIT_MEMLOCK: raise it (ulimit -l unlimited; "
              "systemd: LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK")
    return a


# ------------------------------------------------------------------------------ small formatters

def _why(error: str) -> str:
    return f" ({error})" if error else ""


def _short_key(key: bytes) -> str:
    head = format_key(key[:4])
    return f"{head}:... ({len(key)} bytes)" if len(key) > 4 else head


def _span(queues) -> str:
    from capfan.agents.placement import format_cpu_list  # noqa: PLC0415
    return format_cpu_list(queues) or "none"


def _cpulist(cpus: set[int]) -> str:
    return _span(cpus) if cpus else "unknown"


def _even(table: list[int]) -> bool:
    """Whether each queue in the table gets the same number of entries (within one)."""
    counts = [table.count(q) for q in set(table)]
    return max(counts) - min(counts) <= 1


def _bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"

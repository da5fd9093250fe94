"""CPU placement for the agent's workers: pin each to a CPU set in config or picked near its NIC.

A capture worker that shares its core with other tasks, with another worker, or with the
interrupts of the queue it reads falls behind under load and drops packets, so `place()` also
says (as warnings) what the box is missing: isolated cores, IRQs moved off the pinned cores.
Everything is read from sysfs and procfs. Where a file is missing (containers, veth, loopback)
the answer is "unknown" and nothing is said about it: no crash, no guess.
"""
from __future__ import annotations

import dataclasses
import os
import re

from capfan.errors import ConfigError

#: the kernel's largest NR_CPUS; a bigger number is a typo, and it bounds what a range may expand to
MAX_CPUS = 8192

CPU_LIST_FORMS = ('"auto", "none", a CPU number (3), a kernel-style CPU list ("2-5,8"), '
                  'or a list of numbers and ranges ([2, 3, "6-7"])')

_RANGE_RE = re.compile(r"([0-9]+)(?:\s*-\s*([0-9]+))?")

# How drivers name the MSI-X vector of receive queue q (the last field of /proc/interrupts):
#   mlx5: "mlx5_comp3@pci:0000:3b:00.0" (names the PCI address, not the interface)
_COMP_RE = re.compile(r"(?:^|_)comp([0-9]+)@")
#   virtio_net: "virtio2-input.3" (names the virtio device the interface's device link points to)
_VIRTIO_RE = re.compile(r"-input\.([0-9]+)$")
#   ixgbe/i40e/ice/bnxt "eth0-TxRx-3", "i40e-ens1f0-TxRx-3", separate vectors "ens1f0-rx-3",
#   bnx2x/qede "ens1f0-fp-3", sfc "eth0-3"
_SUFFIX_RE = re.compile(r"(?:-(?P<kind>[A-Za-z]+))?-(?P<q>[0-9]+)$")
#: vector kinds that serve a receive queue; "tx" vectors only complete transmits
_RX_KINDS = ("", "txrx", "rx", "fp")


@dataclasses.dataclass
class PinRequest:
    """One worker process to pin: what it is, which CPU config asked for, and the queue it reads."""
    key: str                 # config key for messages, e.g. "capture[0].cpus"
    label: str               # human label, e.g. "capture eth0.q0"
    want: int | str | None   # an explicit CPU number, "auto", or None (do not pin)
    iface: str | None = None  # NIC whose NUMA node / IRQs matter (None: pcap replay)
    queue: int | None = None  # NIC receive queue (IRQ check), None if not queue-bound
    live: bool = False       # bound to a live NIC queue: isolation and IRQ warnings apply


# ------------------------------------------------------------------------------ config values

def parse_cpu_list(value, key: str) -> list[int] | str | None:
    """CPUs from config: "auto" / "none" / "2-5,8" / 3 / [2, 3, "6-7"] -> list, "auto" or None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
        return "auto" if value.strip().lower() == "auto" else None
    if isinstance(value, (list, tuple)):
        if not value:
            raise _cpu_error(key, "the list is empty")
        items = value
    else:
        items = [value]
    cpus: list[int] = []
    for item in items:
        # bool is an int subclass: `cpus = true` must not mean CPU 1
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise _cpu_error(key, f"{item!r} is not a CPU number or range")
        for cpu in ([_cpu_number(item, key)] if isinstance(item, int) else _parse_text(item, key)):
            # order is kept (the n-th CPU goes to the n-th worker), so a repeat is a typo, not a set
            if cpu in cpus:
                raise _cpu_error(key, f"CPU {cpu} is listed twice")
            cpus.append(cpu)
    return cpus


def _parse_text(text: str, key: str) -> list[int]:
    """CPUs of one "2-5,8" string, in the order written."""
    if not text.strip():
        raise _cpu_error(key, "the CPU list is empty")
    cpus: list[int] = []
    for part in text.split(","):
        m = _RANGE_RE.fullmatch(part.strip())
        if not m:
            raise _cpu_error(key, f"{part.strip()!r} in {text!r} is not a CPU number or range")
        lo = _cpu_number(int(m.group(1)), key)
        hi = lo if m.group(2) is None else _cpu_number(int(m.group(2)), key)
        if hi < lo:
            raise _cpu_error(key, f"the range {lo}-{hi} runs backwards; write {hi}-{lo}")
        cpus.extend(range(lo, hi + 1))
    return cpus


def _cpu_number(n: int, key: str) -> int:
    """n if it can be a CPU number."""
    if n < 0:
        raise _cpu_error(key, f"CPU numbers start at 0, got {n}")
    if n >= MAX_CPUS:
        raise _cpu_error(key, f"CPU {n} is beyond the largest CPU number Linux supports "
                              f"({MAX_CPUS - 1})")
    return n


def _cpu_error(key: str, problem: str) -> ConfigError:
    """A ConfigError for a bad CPU list that also shows what is accepted."""
    return ConfigError(key, f"{problem}; expected {CPU_LIST_FORMS}")


def format_cpu_list(cpus) -> str:
    """{0,1,2,5} -> "0-2,5" (kernel cpulist style)."""
    nums = sorted(set(cpus))
    parts = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


# ------------------------------------------------------------------------------ what the box has

def nic_numa_node(iface: str, sysfs: str = "/sys") -> int | None:
    """NUMA node of a NIC (/sys/class/net/IF/device/numa_node), None when unknown or -1."""
    if not _is_iface_name(iface):
        return None
    try:
        node = int(_read(os.path.join(sysfs, "class/net", iface, "device/numa_node")))
    except (TypeError, ValueError):
        return None
    return node if node >= 0 else None


def node_cpus(node: int, sysfs: str = "/sys") -> set[int]:
    """CPUs of a NUMA node (/sys/devices/system/node/nodeN/cpulist); empty if unknown."""
    if node is None or node < 0:
        return set()
    return kernel_cpus(_read(os.path.join(sysfs, f"devices/system/node/node{int(node)}/cpulist")))


def isolated_cpus(sysfs: str = "/sys", proc: str = "/proc") -> set[int]:
    """CPUs kept free of general load: isolcpus, nohz_full, "isolated" cgroup v2 cpuset partitions."""
    return _isolation(sysfs)[0]


def _isolation(sysfs: str) -> tuple[set[int], bool]:
    """(isolated CPUs, whether the kernel told us): without the isolcpus file we cannot say."""
    cpu_dir = os.path.join(sysfs, "devices/system/cpu")
    isolcpus = _read(os.path.join(cpu_dir, "isolated"))
    # nohz_full reads "(null)" on kernels built with it but booted without it: no CPUs
    cpus = kernel_cpus(isolcpus) | kernel_cpus(_read(os.path.join(cpu_dir, "nohz_full")))
    cpus |= _isolated_partitions(os.path.join(sysfs, "fs/cgroup"))
    return cpus, isolcpus is not None


def _isolated_partitions(root: str) -> set[int]:
    """CPUs of cgroup v2 cpuset partitions of type "isolated", one or two levels below root."""
    # v1 and hybrid hosts have no partitions; this also keeps the scan off their many hierarchies
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return set()
    cpus: set[int] = set()
    level = [root]
    for _depth in range(2):
        below = []
        for parent in level:
            for cgroup in _subdirs(parent):
                # exactly "isolated": "isolated invalid (reason)" is a partition the kernel refused
                if _read(os.path.join(cgroup, "cpuset.cpus.partition")) == "isolated":
                    cpus |= kernel_cpus(_read(os.path.join(cgroup, "cpuset.cpus.effective")))
                below.append(cgroup)
        level = below
    return cpus


def available_cpus(sysfs: str = "/sys", proc: str = "/proc") -> set[int]:
    """CPUs the agent may pin workers to: its affinity plus the isolated CPUs its cpuset allows."""
    # isolcpus= takes its CPUs out of every process's default affinity, yet pinning a worker there
    # is the whole point of isolating them; only the cpuset actually forbids a CPU
    cpus = set(os.sched_getaffinity(0))
    extra = isolated_cpus(sysfs, proc) - cpus
    if extra:
        limit = _own_cpuset(sysfs, proc)
        if limit is None:
            limit = kernel_cpus(_read(os.path.join(sysfs, "devices/system/cpu/online")))
        cpus |= extra & limit
    return cpus


def _own_cpuset(sysfs: str, proc: str) -> set[int] | None:
    """The effective CPUs of this process's cpuset cgroup (v2 or v1), None when unknown."""
    text = _read(os.path.join(proc, "self/cgroup"))
    for line in (text or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3 or ".." in fields[2].split("/"):
            continue  # a cgroup outside our namespace shows as "/../..": not reachable in sysfs
        hid, controllers, path = fields
        path = path.strip("/")
        if hid == "0" and controllers == "":
            # v2: the file exists only where the cpuset controller is enabled; the nearest
            # ancestor that has it decides
            base = os.path.join(sysfs, "fs/cgroup")
            while True:
                cpus = _read(os.path.join(base, path, "cpuset.cpus.effective"))
                if cpus is not None:
                    return kernel_cpus(cpus)
                if not path:
                    break
                path = os.path.dirname(path)
        elif "cpuset" in controllers.split(","):
            cpus = _read(os.path.join(sysfs, "fs/cgroup/cpuset", path, "cpuset.effective_cpus"))
            if cpus is not None:
                return kernel_cpus(cpus)
    return None


def queue_irqs(iface: str, queue: int, sysfs: str = "/sys",
               proc: str = "/proc") -> list[tuple[int, str, set[int]]]:
    """(irq, name, cpus it may run on) for the IRQs serving one receive queue of a NIC."""
    return _queue_irqs(iface, queue, sysfs, proc, _interrupt_names(proc))


def _queue_irqs(iface, queue, sysfs, proc, names: dict[int, list[str]]):
    """queue_irqs() over an already read /proc/interrupts."""
    if not _is_iface_name(iface) or queue is None or queue < 0:
        return []
    device = os.path.join(sysfs, "class/net", iface, "device")
    if not os.path.isdir(device):
        return []  # veth, loopback, bridges, VLANs: no device, no interrupts of their own
    tokens = [iface]
    if os.path.islink(device):
        # the PCI address (mlx5 names its vectors by it) or the virtio device name
        tokens.append(os.path.basename(os.readlink(device)))
    msi = msi_irqs(os.path.join(device, "msi_irqs"))
    found = []
    for irq, actions in sorted(names.items()):
        if msi is not None and irq not in msi:
            continue
        for name in actions:
            if _serves_queue(name, tokens, queue):
                found.append((irq, name, _irq_affinity(proc, irq)))
                break
    return found


def _serves_queue(name: str, tokens: list[str], queue: int) -> bool:
    """Whether an IRQ action name is the vector of `queue` of the device known by `tokens`."""
    # the whole trailing number is compared, so queue 1 never matches "eth0-TxRx-11"
    return irq_queue(name, tokens) == queue


def irq_queue(name: str, tokens: list[str]) -> int | None:
    """The receive queue an IRQ action name serves on the device known by `tokens` (interface
    name, PCI address, virtio device); None when it is not such a vector."""
    if not any(_mentions(name, token) for token in tokens):
        return None
    m = _COMP_RE.search(name) or _VIRTIO_RE.search(name)
    if m:
        return int(m.group(1))
    m = _SUFFIX_RE.search(name)
    if m and (m.group("kind") or "").lower() in _RX_KINDS:
        return int(m.group("q"))
    return None


def _mentions(name: str, token: str) -> bool:
    """Whether token appears in name as a whole word ("eth1" is not in "eth10-TxRx-0")."""
    word = rf"(?<![0-9A-Za-z]){re.escape(token)}(?![0-9A-Za-z])"
    return bool(token) and re.search(word, name) is not None


def msi_irqs(path: str) -> set[int] | None:
    """IRQ numbers listed in a device's msi_irqs directory, None without one."""
    try:
        return {int(n) for n in os.listdir(path) if n.isdigit()}
    except OSError:
        return None


def _interrupt_names(proc: str) -> dict[int, list[str]]:
    """IRQ number -> action names from /proc/interrupts."""
    return parse_interrupts(_read(os.path.join(proc, "interrupts")) or "")


def parse_interrupts(text: str) -> dict[int, list[str]]:
    """/proc/interrupts text -> IRQ number -> action names (last column; a shared IRQ lists several)."""
    names: dict[int, list[str]] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 3 or not parts[0].endswith(":") or not parts[0][:-1].isdigit():
            continue  # the CPU header, NMI/LOC/... rows
        actions = [parts[-1]]
        i = len(parts) - 2
        while i > 0 and parts[i].endswith(","):  # "eth0-rx-0, eth0-tx-0" on a shared line
            actions.insert(0, parts[i][:-1])
            i -= 1
        names[int(parts[0][:-1])] = actions
    return names


def _irq_affinity(proc: str, irq: int) -> set[int]:
    """CPUs an IRQ is delivered to: the effective affinity where the kernel reports it, else the
    configured one; empty when unknown."""
    for name in ("effective_affinity_list", "smp_affinity_list"):
        cpus = kernel_cpus(_read(os.path.join(proc, "irq", str(irq), name)))
        if cpus:
            return cpus
    return set()


# ------------------------------------------------------------------------------ placement

def place(requests: list[PinRequest], allowed: set[int] | None = None,
          sysfs: str = "/sys", proc: str = "/proc") -> tuple[list[int | None], list[str]]:
    """CPUs for the requests (same order; None = not pinned) and warnings (one line each)."""
    allowed = set(available_cpus(sysfs, proc) if allowed is None else allowed)
    cpus: list[int | None] = [None] * len(requests)
    users: dict[int, list[str]] = {}  # cpu -> labels of the workers on it
    warnings: list[str] = []

    for i, req in enumerate(requests):
        if req.want is None or req.want == "auto":
            continue
        if isinstance(req.want, bool) or not isinstance(req.want, int):
            raise ConfigError(req.key, f"{req.want!r} is not a CPU for {req.label}; "
                                       'expected a CPU number, "auto" or none')
        if req.want not in allowed:
            raise ConfigError(req.key, (
                f"CPU {req.want} ({req.label}) is not available to the agent (offline, absent, "
                f"or outside its cpuset/affinity); available: {format_cpu_list(allowed) or 'none'}; "
                'pick one of those or use "auto"'))
        cpus[i] = req.want
        users.setdefault(req.want, []).append(req.label)
    for cpu, labels in sorted(users.items()):
        if len(labels) > 1:
            both = "both" if len(labels) == 2 else "all"
            warnings.append(f"{_and(labels)} are {both} pinned to CPU {cpu} and will compete for "
                            'it; give each its own CPU or use "auto"')

    isolated, isolation_known = _isolation(sysfs)
    near: dict[str | None, set[int]] = {}
    shared = False
    # captures first so the NIC's queues get the cores on its node; results keep request order
    autos = sorted((i for i, r in enumerate(requests) if r.want == "auto"),
                   key=lambda i: not requests[i].live)
    for i in autos:
        req = requests[i]
        if req.iface not in near:
            near[req.iface] = (node_cpus(nic_numa_node(req.iface, sysfs), sysfs)
                               if req.iface else set())
        local = near[req.iface]
        free = allowed - users.keys()
        if free:
            # CPU 0 last: housekeeping, timers and most IRQs land there
            cpu = min(free, key=lambda c: (c == 0, c not in local, c not in isolated, c))
        elif allowed:
            cpu = min(allowed, key=lambda c: (len(users[c]), c))
            shared = True
        else:
            continue
        cpus[i] = cpu
        users.setdefault(cpu, []).append(req.label)
    if shared:
        pinned = sum(c is not None for c in cpus)
        warnings.append(
            f"{pinned} workers share {len(users)} cores ({format_cpu_list(users)}), so some take "
            "turns on a core and fall behind under load; configure fewer analyzers or capture "
            "queues, or give the agent more cores")

    live = [(req, cpu) for req, cpu in zip(requests, cpus) if req.live and cpu is not None]
    loose = {cpu for _req, cpu in live} - isolated
    if loose and isolation_known:
        cores = format_cpu_list(loose)
        warnings.append(
            f"{_cores(loose)} {cores} {'is' if len(loose) == 1 else 'are'} not isolated: the "
            "scheduler runs other tasks there too, which delays the capture loops and drops "
            f"packets under load; isolate {'it' if len(loose) == 1 else 'them'} on the kernel "
            f"command line (isolcpus={cores} nohz_full={cores}, added to any list already there) "
            'or in a cgroup v2 cpuset partition set to "isolated"')

    names = _interrupt_names(proc) if any(r.iface and r.queue is not None for r, _ in live) else {}
    for req, cpu in live:
        if not req.iface or req.queue is None:
            continue
        hits = [(irq, name) for irq, name, on in _queue_irqs(req.iface, req.queue, sysfs, proc, names)
                if cpu in on]
        if not hits:
            continue
        target = _irq_target(cpu, near.get(req.iface) or set(), allowed, set(users), isolated)
        moves = "; ".join(f"echo {target} > /proc/irq/{irq}/smp_affinity_list" for irq, _ in hits)
        irqs = _and([f"IRQ {irq} ({name})" for irq, name in hits])
        warnings.append(
            f"{req.label} on CPU {cpu} shares the core with {irqs} of {req.iface} queue "
            f"{req.queue}: the queue's interrupt and softirq work competes with the capture loop; "
            f"move the IRQ to another core (`{moves}`, and keep irqbalance from moving it back), "
            "or let `capfan tune -c CONFIG --apply` do it")
    return cpus, warnings


def _irq_target(cpu: int, local: set[int], allowed: set[int], used: set[int],
                isolated: set[int]) -> str:
    """A CPU to suggest for an IRQ: on the NIC's node, not running a worker, not isolated."""
    options = (local | allowed) - {cpu}
    if not options:
        return "CPU"
    return str(min(options, key=lambda c: (c in used, c in isolated, c not in local, c)))


# ------------------------------------------------------------------------------ small readers

def _read(path: str) -> str | None:
    """A sysfs/procfs file's text, stripped; None when it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):  # ValueError: UnicodeDecodeError
        return None


def kernel_cpus(text: str | None) -> set[int]:
    """CPUs of a kernel cpulist ("0-3,8"); empty for "", "(null)", None or anything malformed."""
    cpus: set[int] = set()
    for part in (text or "").split(","):
        m = _RANGE_RE.fullmatch(part.strip())
        if not m:
            continue
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        cpus.update(range(lo, min(hi, MAX_CPUS - 1) + 1))
    return cpus


def _subdirs(path: str) -> list[str]:
    """Subdirectories of path (not following links); empty when unreadable."""
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _is_iface_name(iface) -> bool:
    """Whether iface can be a network interface name (and so a safe path component)."""
    return isinstance(iface, str) and iface not in ("", ".", "..") and "/" not in iface


def _and(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _cores(cpus: set[int]) -> str:
    """"core" or "cores"."""
    return "core" if len(cpus) == 1 else "cores"

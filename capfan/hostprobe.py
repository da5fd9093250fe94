"""Reading the host's capture settings (ethtool, sysfs, procfs) into capfan.hosttune's state,
and carrying out the commands of a tuning plan."""
from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess

from capfan import hosttune as T
from capfan.errors import TuneError

ETHTOOL_TIMEOUT_S = 10


def _read(path: str) -> str | None:
    """A sysfs/procfs file's text, stripped; None when it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _int(text: str | None) -> int | None:
    """The first number in text; None when there is none."""
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def ethtool(*args: str) -> tuple[bool, str]:
    """Run ethtool; (succeeded, stdout or the first line of its complaint)."""
    exe = shutil.which("ethtool") or next((p for p in ("/usr/sbin/ethtool", "/sbin/ethtool")
                                          if os.path.exists(p)), None)
    if exe is None:
        raise TuneError("ethtool is not installed: install it (apt install ethtool) and run again")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=ETHTOOL_TIMEOUT_S)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        return False, (lines[0].strip() if lines else f"ethtool exited with {r.returncode}")
    return True, r.stdout


def observe_iface(name: str, sysfs: str = "/sys", proc: str = "/proc") -> T.IfaceState:
    """Everything tune plans from for one interface."""
    from capfan.agents.placement import kernel_cpus, msi_irqs  # noqa: PLC0415
    base = os.path.join(sysfs, "class/net", name)
    if not name or "/" in name or not os.path.isdir(base):
        have = sorted(os.listdir(os.path.join(sysfs, "class/net"))) if os.path.isdir(
            os.path.join(sysfs, "class/net")) else []
        raise TuneError(f"no network interface {name!r} in this network namespace (have: "
                        f"{', '.join(have) or 'none'}); check the name with `ip link`")
    st = T.IfaceState(name=name)
    ok, out = ethtool("-i", name)
    st.driver = T.parse_driver(out) if ok else None
    device = os.path.join(base, "device")
    if not st.driver and os.path.islink(os.path.join(device, "driver")):
        st.driver = os.path.basename(os.readlink(os.path.join(device, "driver")))
    ok, out = ethtool("-l", name)
    st.channels = T.parse_channels(out) if ok else None
    st.channels_error = "" if ok else f"ethtool -l: {out}"
    ok, out = ethtool("-x", name)
    st.rss = T.parse_rss(out) if ok else None
    st.rss_error = "" if ok else f"ethtool -x: {out}"
    ok, out = ethtool("-k", name)
    st.features = T.parse_features(out) if ok else {}
    st.has_device = os.path.isdir(device)
    if st.has_device:
        tokens = [name]
        if os.path.islink(device):
            tokens.append(os.path.basename(os.readlink(device)))
        names = T.parse_interrupts(_read(os.path.join(proc, "interrupts")) or "")
        affinity = {irq: kernel_cpus(_read(os.path.join(proc, "irq", str(irq), "smp_affinity_list")))
                    for irq in names}
        st.irqs = T.queue_irqs(names, tokens, msi_irqs(os.path.join(device, "msi_irqs")), affinity)
    st.napi = {k: _int(_read(os.path.join(base, k))) for k in T.NAPI_BUSY_POLL}
    return st


def read_sysctls(names, proc: str = "/proc") -> dict[str, int | None]:
    """Current values of sysctls (None: not present in this kernel / network namespace)."""
    return {n: _int(_read(os.path.join(proc, "sys", *n.split(".")))) for n in names}


def _mount_of(path: str, proc: str = "/proc") -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding path."""
    real = os.path.realpath(path)
    best = ("/", "")
    for line in (_read(os.path.join(proc, "self/mounts")) or "").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def observe_hugepages(ring_dir: str, ring_files: list[str], sysfs: str = "/sys",
                      proc: str = "/proc") -> T.HugePages:
    """The hugetlbfs facts for ring_dir; ring_files: the configured rings' paths (may exist)."""
    _point, fstype = _mount_of(ring_dir, proc)
    hp = T.HugePages(ring_dir=ring_dir, hugetlbfs=fstype == "hugetlbfs")
    meminfo = _read(os.path.join(proc, "meminfo")) or ""
    for line in meminfo.splitlines():
        if line.startswith("Hugepagesize:"):
            hp.default_page_bytes = int(line.split()[1]) << 10
    hp.page_bytes = hp.default_page_bytes
    if not hp.hugetlbfs:
        return hp
    try:
        hp.page_bytes = os.statvfs(ring_dir).f_bsize
    except OSError:
        pass
    d = os.path.join(sysfs, f"kernel/mm/hugepages/hugepages-{hp.page_bytes >> 10}kB")
    hp.total = _int(_read(os.path.join(d, "nr_hugepages"))) or 0
    # reserved pages are promised to mappings already: not free for new rings
    hp.free = max(0, (_int(_read(os.path.join(d, "free_hugepages"))) or 0)
                  - (_int(_read(os.path.join(d, "resv_hugepages"))) or 0))
    for f in ring_files:
        try:
            hp.held += os.stat(f).st_size // hp.page_bytes
        except OSError:
            pass
    return hp


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes; None = unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def mount_fstype(path: str, mounts: str = "/proc/self/mounts") -> str | None:
    """File system type of the mount holding `path` (the longest mount point above it)."""
    path = os.path.abspath(path)
    best, fstype = "", None
    try:
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mp = parts[1].replace("\\040", " ")
                inside = path == mp or path.startswith(mp.rstrip("/") + "/")
                if inside and len(mp) >= len(best):
                    best, fstype = mp, parts[2]
    except OSError:
        return None
    return fstype


def kernel_release() -> str:
    """uname -r."""
    return platform.release()


def irqbalance_running(proc: str = "/proc") -> bool:
    """Whether an irqbalance daemon runs (it would move pinned IRQs back)."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return False
    return any(_read(os.path.join(proc, p, "comm")) == "irqbalance" for p in pids)


def run_command(cmd: T.Command) -> str | None:
    """Carry out one command; None on success, else what went wrong (one line)."""
    if cmd.argv is not None:
        exe = shutil.which(cmd.argv[0]) or cmd.argv[0]
        try:
            r = subprocess.run([exe, *cmd.argv[1:]], capture_output=True, text=True, timeout=ETHTOOL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{cmd.text}: {e}"
        if r.returncode != 0:
            lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
            return f"{cmd.text}: {'; '.join(lines[:2]) if lines else f'exit status {r.returncode}'}"
        return None
    try:
        with open(cmd.path, "w", encoding="ascii") as f:
            f.write(cmd.value + "\n")
    except OSError as e:
        return f"{cmd.text}: {e.strerror or e}"
    return None

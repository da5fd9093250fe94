"""The agent's TOML config (`capfan agent -c sensor.toml`): schema, checks against this host
(interfaces, queues, files, privileges) and expansion into one spec per worker process.

Every problem is a ConfigError naming the key (`capture[0].queues`) and the fix.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import socket

from capfan import config as C
from capfan.errors import CapfanError, ConfigError

SOURCES = ("afpacket", "afxdp", "pcap")
LIVE_SOURCES = ("afpacket", "afxdp")
FANOUT_MODES = ("hash", "qm", "lb", "cpu", "rollover", "random")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
DEFAULT_CONFIG = "/etc/capfan/agent.toml"

# Linux capability numbers (include/uapi/linux/capability.h)
CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_SYS_ADMIN, CAP_BPF = 12, 13, 14, 21, 39
CAP_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW", CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
             CAP_BPF: "CAP_BPF", CAP_IPC_LOCK: "CAP_IPC_LOCK"}


def _name(value, key):
    if not _NAME_RE.match(value):
        raise ConfigError(key, f"{value!r} is not a usable name: 1-64 letters, digits, '_', '.', '@' or '-'")
    return value


def _ifname(value, key):
    # the kernel's dev_valid_name(): "." or ".." would also pass the /sys/class/net/NAME check
    if not value or len(value) > 15 or value in (".", "..") or any(c in "/:" or c.isspace() for c in value):
        raise ConfigError(key, f"{value!r} is not an interface name (1-15 characters, not '.' or '..', no "
                               "'/', ':' or spaces); check the name with `ip link`")
    return value


def _ndesc(value, key):
    n = C.size(value, key)
    if n & (n - 1) or not 64 <= n <= 1 << 28:
        raise ConfigError(key, f"must be a power of two from 64 to {1 << 28} (e.g. 65536 or '64K'), "
                               f"not {value!r}")
    return n


def _snaplen(value, key):
    if not 0 <= value <= 65535:
        raise ConfigError(key, f"must be 1 to 65535 bytes (0 = the ring's default), not {value!r}")
    return value


def _cpus(value, key):
    if not isinstance(value, (str, int, list)) or isinstance(value, bool):
        raise ConfigError(key, f"expected \"auto\", \"none\", a CPU number, a list or a range like \"2-5\", "
                               f"got {value!r}")
    from capfan.agents.placement import parse_cpu_list  # noqa: PLC0415
    return parse_cpu_list(value, key)


def _queues(value, key):
    if value == "all":
        return "all"
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(q, int) and not isinstance(q, bool) and 0 <= q < 65536
                                                 for q in value):
        if len(set(value)) != len(value):
            raise ConfigError(key, f"lists a queue twice: {value}")
        return list(value)
    raise ConfigError(key, f"expected \"all\" or a list of receive queue numbers like [0, 1], got {value!r}")


RESTART = {
    "backoff_initial": C.Field((int, float), 0.5, "seconds before the first restart of a crashed worker", C.positive),
    "backoff_max": C.Field((int, float), 30.0, "longest wait between restarts (the wait doubles)", C.positive),
    "max_failures": C.Field(int, 5, "give up on a worker after this many crashes ...", C.positive),
    "window": C.Field((int, float), 300.0, "... within this many seconds", C.positive),
}

AGENT = {
    "name": C.Field(str, None, "agent name (status file, metrics, later the host id); default: host name", _name),
    "run_dir": C.Field(str, None, "status and worker state; default $CAPFAN_RUN_DIR or /run/capfan"),
    "ring_dir": C.Field(str, None, "where rings live; default $CAPFAN_RING_DIR or /dev/shm (hugetlbfs works)"),
    "out": C.Field(str, "/var/lib/capfan/records", "records directory (one sub-directory per analyzer)"),
    "exit_when_done": C.Field(bool, False, "exit once every replay ended and the analyzers drained"),
    "drain_timeout": C.Field((int, float), 10.0, "seconds analyzers get to read the rest at shutdown",
                             C.non_negative),
    "stop_timeout": C.Field((int, float), 10.0, "seconds a worker gets after SIGTERM before SIGKILL", C.positive),
    "start_timeout": C.Field((int, float), 30.0, "seconds a worker gets to become ready", C.positive),
    "status_interval": C.Field((int, float), 1.0, "seconds between status snapshots", C.positive),
    "restart": C.Table(RESTART),
}

METRICS = {
    "enabled": C.Field(bool, True, "serve Prometheus /metrics and /status over HTTP"),
    "listen": C.Field(str, "127.0.0.1:9477", "address; loopback by default (the numbers describe your network)"),
}

RING = {
    "ndesc": C.Field((int, str), 65536, "descriptors (a power of two)", _ndesc),
    "arena": C.Field((int, str), "64M", "packet arena bytes", C.size),
    "snaplen": C.Field(int, 65535, "longest packet stored", _snaplen),
    "full": C.Field(str, "block", "when full: block (hold the capture) or drop (drop new packets)",
                    C.one_of("block", "drop")),
}

CAPTURE = {
    "name": C.Field(str, None, "ring prefix: rings are NAME.qQUEUE; default interface name or file stem", _name),
    "source": C.Field(str, "afpacket", "capture backend", C.one_of(*SOURCES)),
    "interface": C.Field(str, None, "network interface (afpacket, afxdp)", _ifname),
    "file": C.Field(str, None, "capture file (pcap source)"),
    "queues": C.Field((str, int, list), "all", "\"all\" or receive queue numbers", _queues),
    "cpus": C.Field((str, int, list), "auto", "\"auto\", \"none\" or one CPU per queue", _cpus),
    "bpf": C.Field(str, None, "capture filter (tcpdump syntax)"),
    "fanout": C.Field(str, "hash", "afpacket with several queues: how the kernel splits packets",
                      C.one_of(*FANOUT_MODES)),
    "ring": C.Table(RING),
    "options": C.Field(dict, dict, "backend options (see `capfan capture -h`)"),
}

ANALYZER = {
    "name": C.Field(str, None, "instance name = consumer name (default: the analyzer's name)", _name),
    "analyzer": C.Field(str, C.REQUIRED, "installed analyzer (capfan analyze --list) or module:Class"),
    "captures": C.Field(list, None, "capture names to run on (default: all)"),
    "policy": C.Field(str, None, "reliable or lossy (default: the analyzer's own)", C.one_of("reliable", "lossy")),
    "group_size": C.Field(int, 1, "members of a load-balanced group per queue (1 = no group)", None),
    "spin_us": C.Field(int, 0, "busy-poll before sleeping (0 = adaptive); spinning costs a core", None),
    "stall_budget_us": C.Field(int, 1_000_000, "a reliable consumer this far behind is demoted", C.positive),
    "start": C.Field(str, "head", "first start: new packets (head) or the oldest kept", C.one_of("head", "oldest")),
    "tick": C.Field((int, float), 1.0, "seconds between on_tick calls", C.positive),
    "cpus": C.Field((str, int, list), "auto", "\"auto\", \"none\" or one CPU per process", _cpus),
    "options": C.Field(dict, dict, "the analyzer's options (capfan analyze --list)"),
}

EXPORT = {
    "collectors": C.Field(list, list, "collector endpoints [\"tcp://HOST:PORT\", ...] or tables "
                                      "{ endpoint = ..., server_key = ... }; empty: records stay in agent.out"),
    "security": C.Field(str, "curve", "curve (authenticated + encrypted) or plain (explicit opt-out)",
                        C.one_of("curve", "plain")),
    "key": C.Field(str, None, "this agent's key pair file (`capfan keys gen NAME` -> NAME.key_secret)"),
    "server_key": C.Field(str, None, "the collectors' public key file (NAME.key) or its Z85 text"),
    "spool_dir": C.Field(str, "/var/lib/capfan/spool", "unacknowledged batches, on disk (keep it persistent)"),
    "spool_max": C.Field((int, str), "1G", "spool size limit", C.size),
    "spool_policy": C.Field(str, "drop_oldest", "when the spool is full: drop_oldest or drop_new",
                            C.one_of("drop_oldest", "drop_new")),
    "window": C.Field(int, 64, "batches in flight per collector before waiting for acks", C.positive),
    "route": C.Field(str, "all", "all (every collector gets every batch) or flow-hash (each flow record goes to "
                                 "one collector by its canonical key hash; list collectors in the same order "
                                 "on every agent)", C.one_of("all", "flow-hash")),
    "health_interval": C.Field((int, float), 10.0, "seconds between health records (queue counters)",
                               C.positive),
    "drain_timeout": C.Field((int, float), 30.0, "seconds the exporter gets to deliver the spool at shutdown",
                             C.non_negative),
}

SCHEMA = {
    "agent": C.Table(AGENT),
    "metrics": C.Table(METRICS),
    "export": C.Table(EXPORT),
    "capture": C.Tables(CAPTURE, min_items=1),
    "analyzer": C.Tables(ANALYZER),
}


@dataclasses.dataclass
class CaptureWorker:
    """One capture process: one NIC queue (or replay) into one ring."""

    id: str
    key: str                 # config key of its [[capture]] table
    capture: str
    source: str
    interface: str | None
    file: str | None
    queue: int
    ring: str
    geometry: dict
    options: dict            # backend keyword arguments
    cpu_want: int | str | None
    cpu: int | None = None
    kind: str = "capture"

    @property
    def live(self) -> bool:
        """Bound to a NIC queue (not a replay)."""
        return self.source in LIVE_SOURCES

    @property
    def label(self) -> str:
        """For humans: capture eth0.q0."""
        return f"capture {self.ring}"


@dataclasses.dataclass
class AnalyzerWorker:
    """One analyzer process: one consumer of one ring."""

    id: str
    key: str
    instance: str
    analyzer: str
    ring: str
    consumer: str
    policy: str | None
    group: str | None
    member: int
    group_size: int
    spin_us: int
    stall_budget_us: int
    start: str
    tick: float
    options: dict
    out: str
    cpu_want: int | str | None
    interface: str | None = None
    queue: int | None = None
    cpu: int | None = None
    kind: str = "analyzer"

    @property
    def label(self) -> str:
        """For humans: analyzer flows on eth0.q0."""
        return f"analyzer {self.consumer} on {self.ring}"


@dataclasses.dataclass
class ExporterWorker:
    """The process that ships spooled record batches to the collectors."""

    spool_dir: str
    host: str
    collectors: list[dict]            # {"endpoint": ..., "server_key": Z85 or None}
    curve: dict | None                # {"public": Z85, "secret": Z85}; None = plain text
    spool_max: int
    spool_policy: str
    window: int
    health_interval: float
    drain_timeout: float
    route: str = "all"                # "all" or "flow-hash" (agents/routing.py)
    cpu_want: int | str | None = "auto"
    cpu: int | None = None
    id: str = "exporter"
    key: str = "export"
    kind: str = "exporter"
    ring: str = ""
    interface: str | None = None

    @property
    def label(self) -> str:
        """For humans."""
        return f"exporter to {', '.join(c['endpoint'] for c in self.collectors)}"


@dataclasses.dataclass
class AgentConfig:
    """A validated agent config, expanded into worker specs (CPUs are placed by the supervisor)."""

    path: str
    name: str
    run_dir: str
    ring_dir: str
    out: str
    exit_when_done: bool
    drain_timeout: float
    stop_timeout: float
    start_timeout: float
    status_interval: float
    restart: dict
    metrics: tuple[str, int] | None
    captures: list[CaptureWorker]
    analyzers: list[AnalyzerWorker]
    exporter: "ExporterWorker | None" = None

    @property
    def state_dir(self) -> str:
        """<run_dir>/agents/<name>: status.json and the workers' state files."""
        return os.path.join(self.run_dir, "agents", self.name)

    @property
    def rings(self) -> list[str]:
        """Every ring this agent owns."""
        return [w.ring for w in self.captures]

    @property
    def workers(self) -> list:
        """The exporter and the analyzers first (analyzers attach before capture starts, so they
        miss nothing), then the captures."""
        return [*([self.exporter] if self.exporter else []), *self.analyzers, *self.captures]


def load(path: str, sysfs: str = "/sys", check_host: bool = True) -> AgentConfig:
    """Read, validate and expand an agent config; check_host also checks interfaces, queues,
    files and privileges against this machine."""
    raw = C.load_file(path)
    base = os.path.dirname(os.path.abspath(path))
    return build(raw, path=path, base=base, sysfs=sysfs, check_host=check_host)


def build(raw: dict, path: str = "<config>", base: str = ".", sysfs: str = "/sys",
          check_host: bool = True) -> AgentConfig:
    """AgentConfig from already-parsed TOML (see load)."""
    cfg = C.validate(raw, SCHEMA)
    a = cfg["agent"]
    rel = C.path_relative_to(base)
    run_dir = rel(a["run_dir"] or os.environ.get("CAPFAN_RUN_DIR") or "/run/capfan", "agent.run_dir")
    ring_dir = rel(a["ring_dir"] or os.environ.get("CAPFAN_RING_DIR") or "/dev/shm", "agent.ring_dir")
    out = rel(a["out"], "agent.out")
    captures = _captures(cfg["capture"], rel, sysfs, check_host)
    analyzers = _analyzers(cfg["analyzer"], captures, out)
    metrics = None
    if cfg["metrics"]["enabled"]:
        from capfan.agents.metrics import parse_listen  # noqa: PLC0415
        metrics = parse_listen(cfg["metrics"]["listen"], "metrics.listen")
    if check_host:
        _check_dirs(run_dir, ring_dir, out)
        check_privileges(captures)
    r = a["restart"]
    if r["backoff_max"] < r["backoff_initial"]:
        raise ConfigError("agent.restart.backoff_max", f"must be at least backoff_initial ({r['backoff_initial']})")
    name = a["name"] or _hostname()
    exporter = _exporter(cfg["export"], name, rel)
    return AgentConfig(path=os.path.abspath(path) if path != "<config>" else path,
                       name=name, run_dir=run_dir, ring_dir=ring_dir, out=out, exporter=exporter,
                       exit_when_done=a["exit_when_done"], drain_timeout=a["drain_timeout"],
                       stop_timeout=a["stop_timeout"], start_timeout=a["start_timeout"],
                       status_interval=a["status_interval"], restart=dict(r), metrics=metrics,
                       captures=captures, analyzers=analyzers)


_ENDPOINT_RE = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}|ipc://\S+)$")


def _exporter(e: dict, host: str, rel) -> ExporterWorker | None:
    """The exporter spec from [export]; None when no collector is configured."""
    if not e["collectors"]:
        return None
    from capfan import keys  # noqa: PLC0415 - only when exporting

    default_server = _server_key(e["server_key"], "export.server_key", rel, keys)
    collectors = []
    for i, c in enumerate(e["collectors"]):
        key = f"export.collectors[{i}]"
        if isinstance(c, str):
            c = {"endpoint": c}
        if not isinstance(c, dict) or set(c) - {"endpoint", "server_key"} or "endpoint" not in c:
            raise ConfigError(key, "expected \"tcp://HOST:PORT\" or { endpoint = \"tcp://HOST:PORT\", "
                                   "server_key = \"collector.key\" }")
        if not isinstance(c["endpoint"], str) or not _ENDPOINT_RE.match(c["endpoint"]):
            raise ConfigError(key, f"{c['endpoint']!r} is not a ZeroMQ endpoint like \"tcp://10.0.0.5:5557\"")
        # libzmq's connect() takes port 0 or 99999 without a word and then never connects
        port = c["endpoint"].rpartition(":")[2] if c["endpoint"].startswith("tcp://") else None
        if port is not None and not 1 <= int(port) <= 65535:
            raise ConfigError(key, f"{c['endpoint']!r}: port {int(port)} is outside 1-65535")
        if e["route"] == "flow-hash" and any(c["endpoint"] == prev["endpoint"] for prev in collectors):
            raise ConfigError(key, f"{c['endpoint']!r} is listed twice; route = \"flow-hash\" sends each flow "
                                   "to one collector, so each must be listed once")
        server = _server_key(c.get("server_key"), f"{key}.server_key", rel, keys) or default_server
        if e["security"] == "curve" and not server:
            raise ConfigError("export.server_key", "security = \"curve\" needs the collector's public key: set "
                                                   "server_key = \"collector.key\" (from `capfan keys gen` on "
                                                   "the collector), or choose security = \"plain\" explicitly")
        collectors.append({"endpoint": c["endpoint"], "server_key": server if e["security"] == "curve" else None})
    curve = None
    if e["security"] == "curve":
        if not e["key"]:
            raise ConfigError("export.key", "security = \"curve\" needs this agent's key pair: run `capfan keys "
                                            "gen AGENT`, set key = \"AGENT.key_secret\" and list AGENT.key on the "
                                            "collector")
        try:
            pair = keys.load_keypair(rel(e["key"], "export.key"))
        except CapfanError as err:
            raise ConfigError("export.key", str(err)) from None
        curve = {"public": pair["public"], "secret": pair["secret"]}
    return ExporterWorker(spool_dir=os.path.join(rel(e["spool_dir"], "export.spool_dir"), host), host=host,
                          collectors=collectors, curve=curve, spool_max=e["spool_max"],
                          spool_policy=e["spool_policy"], window=e["window"],
                          health_interval=e["health_interval"], drain_timeout=e["drain_timeout"],
                          route=e["route"])


def _server_key(value, key: str, rel, keys) -> str | None:
    """A collector public key given as a key file or as 40-character Z85 text."""
    if not value:
        return None
    if len(value) == 40 and not os.path.exists(rel(value, key)):
        try:
            return keys.check_key(value, "the value")
        except CapfanError as err:
            raise ConfigError(key, str(err)) from None
    try:
        return keys.load_public(rel(value, key))
    except CapfanError as err:
        raise ConfigError(key, str(err)) from None


def _hostname() -> str:
    name = re.sub(r"[^A-Za-z0-9_.@-]", "-", socket.gethostname())[:64]
    return name or "capfan"


def _captures(tables: list[dict], rel, sysfs: str, check_host: bool) -> list[CaptureWorker]:
    out, names = [], {}
    for i, t in enumerate(tables):
        key = f"capture[{i}]"
        src = t["source"]
        if src == "pcap":
            if not t["file"]:
                raise ConfigError(f"{key}.file", "source = \"pcap\" replays a capture file: set file = \"PATH\"")
            if t["interface"]:
                raise ConfigError(f"{key}.interface", "a pcap replay reads `file`, not an interface; remove it")
            path = rel(t["file"], f"{key}.file")
            if check_host and not os.access(path, os.R_OK):
                why = "no such file" if not os.path.exists(path) else "not readable by this user"
                raise ConfigError(f"{key}.file", f"{path}: {why}")
            name = t["name"] or _stem(path)
            queues = [0] if t["queues"] == "all" else t["queues"]
            if queues != [0]:
                raise ConfigError(f"{key}.queues", "a replay has one queue: remove queues or set it to \"all\"")
            iface = None
            if t["bpf"]:
                raise ConfigError(f"{key}.bpf", "filters apply to live captures; filter the file first "
                                                "(tcpdump -r IN -w OUT EXPR) or filter in the analyzer")
        else:
            if t["file"]:
                raise ConfigError(f"{key}.file", f"file is for source = \"pcap\"; {src} captures `interface`")
            if not t["interface"]:
                raise ConfigError(f"{key}.interface", f"source = \"{src}\" needs interface = \"NAME\" (see `ip link`)")
            iface, path = t["interface"], None
            name = t["name"] or _name(iface, f"{key}.interface")
            queues = _host_queues(key, iface, t["queues"], sysfs, check_host)
        if name in names:
            raise ConfigError(f"{key}.name", f"{name!r} is already used by {names[name]}: give each capture "
                                             "its own name (rings are NAME.qQUEUE)")
        names[name] = key
        cpus = _per_instance(t["cpus"], len(queues), f"{key}.cpus", "queue")
        _check_option_names(src, t["options"], f"{key}.options")
        for q, cpu in zip(queues, cpus):
            ring = f"{name}.q{q}"
            opts = dict(t["options"])
            if src == "pcap":
                opts["path"] = path
            else:
                opts.setdefault("queue", q)
                if t["bpf"]:
                    opts["bpf"] = t["bpf"]
                if src == "afpacket" and len(queues) > 1:
                    opts.setdefault("fanout", t["fanout"])
            out.append(CaptureWorker(id=f"capture-{ring}", key=key, capture=name, source=src, interface=iface,
                                     file=path, queue=q, ring=ring, geometry=dict(t["ring"]), options=opts,
                                     cpu_want=cpu))
    return out


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".pcapng", ".pcap", ".cap", ".gz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", base)[:64] or "replay"


def _host_queues(key: str, iface: str, queues, sysfs: str, check_host: bool) -> list[int]:
    """The queue list for an interface, checked against what the NIC has."""
    dev = os.path.join(sysfs, "class", "net", iface)
    if check_host and not os.path.exists(dev):
        have = sorted(os.listdir(os.path.join(sysfs, "class", "net"))) if os.path.isdir(
            os.path.join(sysfs, "class", "net")) else []
        raise ConfigError(f"{key}.interface", f"no network interface {iface!r} in this network namespace "
                                              f"(have: {', '.join(have) or 'none'}); check the name with `ip link`")
    n = nic_rx_queues(iface, sysfs) if check_host else None
    if queues == "all":
        return list(range(n or 1))
    if n is not None:
        bad = [q for q in queues if q >= n]
        if bad:
            raise ConfigError(f"{key}.queues", f"{iface} has {_queue_count(n)}, so queue "
                                               f"{bad[0]} does not exist; use queues = \"all\" or raise the "
                                               f"count with `ethtool -L {iface} combined N`")
    return queues


def _queue_count(n: int) -> str:
    return "1 receive queue (0)" if n == 1 else f"{n} receive queues (0-{n - 1})"


def nic_rx_queues(iface: str, sysfs: str = "/sys") -> int | None:
    """Receive queues a NIC has (/sys/class/net/IF/queues/rx-*), None if unknown."""
    try:
        return sum(1 for e in os.listdir(os.path.join(sysfs, "class", "net", iface, "queues"))
                   if e.startswith("rx-")) or None
    except OSError:
        return None


def _per_instance(cpus, n: int, key: str, what: str) -> list:
    """One CPU wish per instance from a section's cpus (auto/None repeat; a list maps in order)."""
    if not isinstance(cpus, list):
        return [cpus] * n
    if len(cpus) < n:  # so n >= 2: an empty list is refused earlier
        plural = what + ("es" if what.endswith("s") else "s")
        raise ConfigError(key, f"lists {len(cpus)} CPU{'s' if len(cpus) > 1 else ''} for {n} {plural}; "
                               f"give one per {what} or use \"auto\"")
    return cpus[:n]


def _check_option_names(source: str, options: dict, key: str) -> None:
    """Backend options the backend does not take are named here, not when the worker starts."""
    from capfan import sources  # noqa: PLC0415
    cls = sources.source_class(source)
    params = inspect.signature(cls).parameters
    reserved = {"queue", "bpf"} if source != "pcap" else set()
    accepted = [n for n, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("ifname", "path", *reserved)]
    for k in options:
        if k in reserved:
            raise ConfigError(f"{key}.{k}", f"set {k} in the [[capture]] table itself, not in options")
        if k not in accepted:
            raise ConfigError(f"{key}.{k}", f"the {source} source has no option {k!r} "
                                            f"(options: {', '.join(accepted)})")


def _analyzers(tables: list[dict], captures: list[CaptureWorker], out: str) -> list[AnalyzerWorker]:
    from capfan.analyzers import load as load_analyzer, validate_options  # noqa: PLC0415
    by_capture: dict[str, list[CaptureWorker]] = {}
    for c in captures:
        by_capture.setdefault(c.capture, []).append(c)
    workers, names = [], {}
    for i, t in enumerate(tables):
        key = f"analyzer[{i}]"
        try:
            cls = load_analyzer(t["analyzer"])
        except ConfigError as e:
            raise ConfigError(f"{key}.analyzer", str(e).partition(": ")[2]) from None
        options = validate_options(t["analyzer"], getattr(cls, "options", {}), t["options"],
                                   prefix=f"{key}.options.")
        instance = t["name"] or _name(t["analyzer"].rpartition(":")[2], f"{key}.name")
        if instance in names:
            raise ConfigError(f"{key}.name", f"{instance!r} is already used by {names[instance]}: consumer "
                                             "names must be unique per ring; set name = \"...\"")
        names[instance] = key
        wanted = t["captures"] if t["captures"] is not None else list(by_capture)
        for c in wanted:
            if c not in by_capture:
                raise ConfigError(f"{key}.captures", f"no capture named {c!r} (captures: "
                                                     f"{', '.join(by_capture)})")
        k = t["group_size"]
        if not 1 <= k <= 256:
            raise ConfigError(f"{key}.group_size", f"must be 1 (no group) to 256, not {k}")
        if not 0 <= t["spin_us"] <= 1_000_000:
            raise ConfigError(f"{key}.spin_us", f"must be 0 to 1000000 microseconds, not {t['spin_us']}")
        queues = [q for c in wanted for q in by_capture[c]]
        cpus = _per_instance(t["cpus"], len(queues) * k, f"{key}.cpus", "process")
        n = 0
        for q in queues:
            for member in range(k):
                consumer = f"{instance}-{member}" if k > 1 else instance
                fields = {"ring": q.ring, "capture": q.capture, "queue": q.queue, "consumer": consumer,
                          "member": member, "instance": instance}
                workers.append(AnalyzerWorker(
                    id=f"analyzer-{q.ring}-{consumer}", key=key, instance=instance, analyzer=t["analyzer"],
                    ring=q.ring, consumer=consumer, policy=t["policy"], group=instance if k > 1 else None,
                    member=member, group_size=k if k > 1 else 0, spin_us=t["spin_us"],
                    stall_budget_us=t["stall_budget_us"], start=t["start"], tick=t["tick"],
                    options=_expand(t["options"], fields, f"{key}.options"), out=os.path.join(out, q.ring, consumer),
                    cpu_want=cpus[n], interface=q.interface, queue=q.queue if q.live else None))
                n += 1
        del options  # validated above; workers validate again from the raw values they get
    return workers


def _expand(options: dict, fields: dict, key: str) -> dict:
    """Analyzer options with {ring}, {capture}, {queue}, {consumer}, {member}, {instance} filled in,
    so one [[analyzer]] table can give each process its own file names."""
    out = {}
    for k, v in options.items():
        if isinstance(v, str) and "{" in v:
            try:
                v = v.format_map(fields)
            # "{ring.x}" / "{queue[0]}" raise AttributeError / TypeError
            except (KeyError, ValueError, IndexError, AttributeError, TypeError) as e:
                why = f"unknown placeholder {{{e.args[0]}}}" if isinstance(e, KeyError) else str(e)
                raise ConfigError(f"{key}.{k}", f"cannot fill in {v!r}: {why}; placeholders: "
                                                f"{', '.join('{' + f + '}' for f in fields)} "
                                                "(write {{ and }} for literal braces)") from None
        out[k] = v
    return out


def _check_dirs(run_dir: str, ring_dir: str, out: str) -> None:
    if not os.path.isdir(ring_dir):
        raise ConfigError("agent.ring_dir", f"{ring_dir} is not a directory (use /dev/shm or a hugetlbfs mount)")
    if not os.access(ring_dir, os.W_OK | os.X_OK):
        raise ConfigError("agent.ring_dir", f"cannot create rings in {ring_dir}: not writable by this user")
    _check_creatable(run_dir, "run_dir", "status")
    _check_creatable(out, "out", "records")


def _check_creatable(path: str, name: str, what: str) -> None:
    """agent.NAME is a directory this process can write, or one it can create."""
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    # a file in the way: root passes os.access() on it, and makedirs() would fail at startup
    if not os.path.isdir(probe):
        where = f"{path} is" if probe == path else f"cannot create {path}: {probe} is"
        raise ConfigError(f"agent.{name}", f"{where} a file, not a directory; set {name} to a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"agent.{name}", f"cannot write {what} under {path} ({probe} is not writable): "
                                           f"run as root, or set {name} to a directory you own")


def effective_caps() -> int:
    """This process's effective capability mask (/proc/self/status CapEff)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def needed_caps(source: str) -> list[tuple[int, ...]]:
    """Capabilities a backend needs, each entry a set of alternatives."""
    if source == "afpacket":
        return [(CAP_NET_RAW,)]
    if source == "afxdp":
        # loading the XDP program: CAP_BPF + CAP_NET_ADMIN (kernels before 5.8: CAP_SYS_ADMIN)
        return [(CAP_NET_RAW,), (CAP_NET_ADMIN,), (CAP_BPF, CAP_SYS_ADMIN)]
    return []


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_privileges(captures: list[CaptureWorker], caps: int | None = None) -> None:
    """ConfigError naming the capture whose backend needs a capability this process lacks."""
    have = effective_caps() if caps is None else caps
    for w in captures:
        needed = needed_caps(w.source)
        missing = [alts for alts in needed if not any(have >> c & 1 for c in alts)]
        if missing:
            lacks = _and([CAP_NAMES[alts[0]] for alts in missing])
            grant = " ".join(sorted(CAP_NAMES[alts[0]] for alts in needed))
            need = _and([CAP_NAMES[alts[0]] for alts in needed])
            if any(len(alts) > 1 for alts in needed):
                need += " (CAP_SYS_ADMIN instead of CAP_BPF before Linux 5.8)"
            raise ConfigError(f"{w.key}.source", f"capturing {w.interface} with {w.source} needs {need}; this "
                                                 f"process lacks {lacks}. Run the agent as root with its full "
                                                 f"capabilities, or grant them (systemd: AmbientCapabilities="
                                                 f"{grant}; docker: --cap-add for each)")

"""docker-compose.yml run without a container engine: one network namespace per service.

What compose would do, and what stands in for it here:
- network: every service gets a namespace with an `eth0` veth whose peer sits on one bridge (in a
  namespace of its own); /etc/netns/<ns>/hosts maps every service name to its address (`ip netns
  exec` bind-mounts it over /etc/hosts), so `tcp://collector:5557` and host "clickhouse" resolve.
- image: capfan from this checkout (PATH), with the Dockerfile's runtime ENV; `user:` through
  setpriv (uid/gid, no supplementary groups, `cap_drop: [ALL]` as an empty bounding set,
  `no-new-privileges`).
- volumes: a named volume is a directory under the work directory (owned by the image's user, as a
  fresh volume copies the image's capfan-owned directory), a bind mount is the host path; both are
  bind-mounted at the container path inside a private mount namespace of the service, and
  `shm_size` becomes a tmpfs on /dev/shm. A container path whose parent directories the host lacks
  (/etc/capfan) gets an empty mount-point directory on the host, removed again by down();
  everything beneath it lives in the work directory.
- the `clickhouse` service: Debian's clickhouse-server (tests/chserver.py) on port 9000 of its
  namespace, the mounted /docker-entrypoint-initdb.d/*.sql run once with clickhouse-client, as
  the image's entrypoint does on first start.
- depends_on conditions (service_started / service_healthy / service_completed_successfully) and
  healthchecks: the compose file's own checks, run inside the service's namespaces (nsenter, like
  `docker exec`).
Not reproduced: read_only root and `tmpfs: [/tmp]` (this checkout and its interpreter live under
/tmp: the process gets its own TMPDIR instead), published ports (reach the API inside the
collector's namespace), restart policies, resource limits.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.deploy.composefile import REPO, Compose, Service

SUBNET = "10.81.0"
BRIDGE_IF = "br0"
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def sh(*args, check=True, **kw):
    """Run a command, raising with its stderr on failure."""
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def image_env(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (PATH left to this host)."""
    stages = re.split(r"^FROM\s.*$", dockerfile.read_text(), flags=re.M)
    env = {}
    for line in re.sub(r"\\\n", " ", stages[-1]).splitlines():
        words = line.split()
        if words[:1] == ["ENV"]:
            for w in shlex.split(line)[1:]:
                k, _, v = w.partition("=")
                if k != "PATH":
                    env[k] = v
    return env


class ServiceProc:
    """A running service: its process (own process group) and log file."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path):
        self.name, self.proc, self.log_path = name, proc, log

    def log(self) -> str:
        """What it wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout=30.0) -> int | None:
        """SIGTERM (SIGKILL after timeout) to its process group; its exit status."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


class ComposeNet:
    """The compose topology on network namespaces under `workdir`; up(), run(), down()."""

    def __init__(self, compose: Compose, workdir: Path, tag: str | None = None, log_echo=None):
        self.compose = compose
        self.work = Path(workdir)
        self.tag = tag or uuid.uuid4().hex[:6]
        self.bridge_ns = f"cfbr-{self.tag}"
        self.services = compose.services
        self.ns = {name: f"cf{i}-{self.tag}" for i, name in enumerate(self.services)}
        self.ip = {name: f"{SUBNET}.{i + 2}" for i, name in enumerate(self.services)}
        self.volumes = {v: str(self.work / "volumes" / v) for v in compose.volumes}
        self.procs: dict[str, ServiceProc] = {}
        self.clickhouse = None
        self.env = image_env()
        self._made_on_host: list[Path] = []     # mount points the host lacked (removed by down)
        self._netns_dirs: list[Path] = []
        self._namespaces: list[str] = []
        self._user_ok: bool | None = None
        self.notes: list[str] = []              # where this run departs from the compose file

    # ------------------------------------------------------------ network

    def up(self) -> "ComposeNet":
        """Namespaces, veths on the bridge, hosts files, volume directories."""
        try:
            self._add_ns(self.bridge_ns)
            self._in(self.bridge_ns, "ip", "link", "add", BRIDGE_IF, "type", "bridge")
            self._in(self.bridge_ns, "ip", "link", "set", BRIDGE_IF, "up")
            for i, (name, ns) in enumerate(self.ns.items()):
                self._add_ns(ns)
                peer = f"cfv{i}{self.tag}"
                sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer,
                   "netns", self.bridge_ns)
                self._in(self.bridge_ns, "ip", "link", "set", peer, "master", BRIDGE_IF, "up")
                self._in(ns, "ip", "addr", "add", f"{self.ip[name]}/24", "dev", "eth0")
                self._in(ns, "ip", "link", "set", "eth0", "up")
                self._write_hosts(ns, name)
            for name, path in self.volumes.items():
                os.makedirs(path)
                if name != "clickhouse-data":      # a fresh volume copies the image's capfan-owned dir
                    self._chown_to_image_user(path)
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        self._in(ns, "ip", "link", "set", "lo", "up")

    def _in(self, ns, *args, **kw):
        return sh("ip", "netns", "exec", ns, *args, **kw)

    def _write_hosts(self, ns: str, name: str):
        d = Path("/etc/netns") / ns
        if not d.parent.exists():
            d.parent.mkdir()
            self._made_on_host.insert(0, d.parent)
        d.mkdir(exist_ok=False)
        self._netns_dirs.append(d)
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{self.ip[s]}\t{s}" for s in self.services]
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def _user(self) -> tuple[int, int] | None:
        users = {s.user for s in self.services.values() if s.user}
        if not users:
            return None
        uid, _, gid = sorted(users)[0].partition(":")
        return int(uid), int(gid or uid)

    def _chown_to_image_user(self, path: str):
        u = self._user()
        if u and self._image_user_can_run_capfan():
            os.chown(path, *u)

    # ------------------------------------------------------------ mounts and processes

    def _host_source(self, m) -> str:
        return m.source if m.kind == "bind" else self.volumes[m.source]

    def _anchor(self, target: str) -> Path | None:
        """The shallowest component of target the host lacks (None: the host has all of it)."""
        p = Path("/")
        for part in Path(target).parts[1:]:
            p = p / part
            if p in self._made_on_host or not os.path.lexists(p):
                return p
        return None

    def _mount_script(self, svc: Service) -> str:
        """Shell lines that build the service's file system view inside a private mount namespace."""
        own = self.work / "root" / svc.name
        lines = ["set -e", "mount --make-rprivate /"]
        anchors = []
        for m in sorted(svc.mounts, key=lambda m: m.target):
            a = self._anchor(m.target)
            if a is None or any(a == b or b in a.parents for b in anchors):
                continue
            anchors.append(a)
            is_file = a == Path(m.target) and os.path.isfile(self._host_source(m))
            if a not in self._made_on_host:
                a.touch() if is_file else a.mkdir()
                self._made_on_host.append(a)
            if a != Path(m.target):       # a private directory over it: what is made below stays ours
                priv = own / a.relative_to("/")
                priv.mkdir(parents=True, exist_ok=True)
                lines.append(f"mount --bind {shlex.quote(str(priv))} {shlex.quote(str(a))}")
        for m in sorted(svc.mounts, key=lambda m: m.target):
            src, t = self._host_source(m), shlex.quote(m.target)
            if os.path.isdir(src):
                lines.append(f"mkdir -p {t}")
            else:
                lines.append(f"mkdir -p {shlex.quote(os.path.dirname(m.target))}; [ -e {t} ] || : > {t}")
            lines.append(f"mount --bind {shlex.quote(src)} {t}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {t}")
        if svc.shm_size:
            lines.append(f"mount -t tmpfs -o size={svc.shm_size},mode=1777,nosuid,nodev tmpfs /dev/shm")
        return "\n".join(lines)

    def _image_user_can_run_capfan(self) -> bool:
        """Whether the compose file's uid can run this host's capfan (its interpreter may live
        under a directory only root can enter, e.g. /root/.pyenv)."""
        if self._user_ok is None:
            uid, gid = self._user()
            capfan = shutil.which("capfan") or "capfan"
            # with the services' own restrictions and from a shell, as the services start it: a
            # venv's python3 linking into /root/.pyenv ran when setpriv exec'd it directly but
            # not from a child process (seen here)
            r = sh("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", "--no-new-privs", "sh", "-c", f"exec {shlex.quote(capfan)} --help",
                   check=False,
                   env={"PATH": os.environ["PATH"], "HOME": "/"}, cwd="/")
            self._user_ok = r.returncode == 0
            if not self._user_ok:
                why = (r.stderr.strip().splitlines() or ["?"])[-1]
                self.notes.append(f"uid {uid} cannot run {capfan} here ({why}): the services run as uid 0 with "
                                  "no capability at all instead")
        return self._user_ok

    def _as_user(self, svc: Service) -> list[str]:
        """setpriv in front of a command: the service's user (or, when this host's capfan is out of
        that user's reach, uid 0 stripped of every capability), bounding set, no_new_privs."""
        if not svc.user:
            return []
        uid, _, gid = svc.user.partition(":")
        if not self._image_user_can_run_capfan():
            uid = gid = "0"
        out = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]
        if "ALL" in (svc.raw.get("cap_drop") or []):
            out += ["--inh-caps=-all", "--bounding-set=-all"]
        if any(o.replace("=", ":").startswith("no-new-privileges") for o in svc.raw.get("security_opt") or []):
            out.append("--no-new-privs")
        return out

    def _env(self, svc: Service) -> dict[str, str]:
        tmp = self.work / "tmp" / svc.name
        tmp.mkdir(parents=True, exist_ok=True)
        self._chown_to_image_user(str(tmp))
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOSTNAME": svc.name, "TMPDIR": str(tmp),
               "HOME": "/var/lib/capfan", **self.env, **svc.environment}
        return env

    def _argv(self, svc: Service, argv: list[str]) -> list[str]:
        env = [f"{k}={v}" for k, v in self._env(svc).items()]
        return [*self._as_user(svc), "env", "-i", *env, *argv]

    def start(self, name: str) -> ServiceProc:
        """Start a service's command in its namespace (clickhouse: the test server)."""
        svc = self.services[name]
        if name == "clickhouse":
            return self._start_clickhouse(svc)
        script = self._mount_script(svc) + '\nexec "$@"'
        cmd = ["ip", "netns", "exec", self.ns[name], "sh", "-c", script, "sh", *self._argv(svc, svc.argv)]
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd="/")
        self.procs[name] = ServiceProc(name, proc, log)
        return self.procs[name]

    def _start_clickhouse(self, svc: Service) -> ServiceProc:
        from tests.chserver import ClickHouseServer
        data = svc.mount_at("/var/lib/clickhouse")
        self.clickhouse = ClickHouseServer(Path(self._host_source(data)) / "server", tcp_port=9000,
                                           listen="0.0.0.0", netns=self.ns["clickhouse"]).start()
        # what the image's entrypoint does on an empty data directory
        for m in sorted(svc.mounts, key=lambda m: m.target):
            if m.target.startswith("/docker-entrypoint-initdb.d/") and m.target.endswith(".sql"):
                with open(self._host_source(m), "rb") as f:
                    r = subprocess.run(["ip", "netns", "exec", self.ns["clickhouse"], "clickhouse-client",
                                        "--multiquery"], stdin=f, capture_output=True, timeout=120)
                if r.returncode != 0:
                    raise RuntimeError(f"{m.target} failed on the clickhouse service: "
                                       f"{r.stderr.decode(errors='replace')[:2000]}")
        proc = ServiceProc("clickhouse", self.clickhouse.proc, self.clickhouse.workdir / "log" / "server.err.log")
        self.procs["clickhouse"] = proc
        return proc

    def exec(self, name: str, argv: list[str], timeout=60, **kw) -> subprocess.CompletedProcess:
        """Run a command inside a running service (its network and mount namespaces, its user),
        like `docker compose exec`."""
        svc, p = self.services[name], self.procs[name]
        if p.proc.poll() is not None:
            raise RuntimeError(f"{name} is not running (exit {p.proc.returncode}):\n{p.log()[-3000:]}")
        user = [] if name == "clickhouse" else self._argv(svc, argv)
        cmd = ["nsenter", f"--target={p.proc.pid}", "--mount", "--net", "--", *(user or argv)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", **kw)

    def healthy(self, name: str) -> bool:
        """The service's compose healthcheck passes now."""
        check = self.services[name].healthcheck
        if check is None:
            raise RuntimeError(f"{name} has no healthcheck")
        try:
            return self.exec(name, check, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait(self, name: str, condition: str, timeout=120.0):
        """Wait for a depends_on condition of a service."""
        p = self.procs[name]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition == "service_completed_successfully":
                if p.proc.poll() is not None:
                    if p.proc.returncode != 0:
                        raise RuntimeError(f"{name} exited with {p.proc.returncode}:\n{p.log()[-3000:]}")
                    return
            elif p.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.proc.returncode} before being {condition}:\n"
                                   f"{p.log()[-3000:]}")
            elif condition == "service_started" or self.healthy(name):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name}: not {condition} after {timeout}s:\n{p.log()[-3000:]}")

    def run(self, timeout=120.0) -> list[str]:
        """Start every service in dependency order, each once its dependencies meet their
        conditions (as `docker compose up`); the order used."""
        order = self.compose.start_order()
        for name in order:
            for dep, cond in self.services[name].depends_on.items():
                self.wait(dep, cond, timeout)
            self.start(name)
        return order

    # ------------------------------------------------------------ teardown

    def down(self):
        """Stop every process, delete namespaces, hosts files and the mount points made on the host."""
        for name, p in reversed(list(self.procs.items())):
            if name != "clickhouse":
                p.stop()
        if self.clickhouse is not None:
            self.clickhouse.stop()
            self.clickhouse = None
        for ns in reversed(self._namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        for d in self._netns_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._netns_dirs.clear()
        for p in reversed(self._made_on_host):
            try:
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()          # only if still empty: nothing of ours was written there
                elif p.stat().st_size == 0:
                    p.unlink()
            except OSError:
                pass
        self._made_on_host.clear()

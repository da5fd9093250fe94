"""Real ClickHouse servers for tests: Debian's clickhouse-server (18.16) started as a child process
with a generated minimal config, on free loopback ports (or inside a network namespace).

    srv = ClickHouseServer(tmp_path / "ch").start()
    srv.client().execute("SELECT 1")
    srv.stop()

clusters={"capfan2": [("127.0.0.1", p1), ("127.0.0.1", p2)]} writes a remote_servers section
(one shard per (host, port), one replica each) so Distributed tables can span several servers.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from xml.sax.saxutils import escape

SERVER_BINARIES = ("/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server")
USERS_CONFIG = "/etc/clickhouse-server/users.xml"


def server_binary():
    """Path of the installed clickhouse-server, or None."""
    for p in SERVER_BINARIES:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("clickhouse-server")


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host != "0.0.0.0" else "127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_ports(n):
    """n distinct free ports (several servers started in one test must not collide)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def remote_servers_xml(clusters):
    """The <remote_servers> section: each (host, port) is one shard with one replica."""
    out = ["  <remote_servers>"]
    for name, shards in (clusters or {}).items():
        out.append(f"    <{name}>")
        for host, port in shards:
            out.append("      <shard><replica>"
                       f"<host>{escape(str(host))}</host><port>{int(port)}</port>"
                       "</replica></shard>")
        out.append(f"    </{name}>")
    out.append("  </remote_servers>")
    return "\n".join(out)


class ClickHouseServer:
    """One clickhouse-server process with its data under workdir; stop() kills it and removes the data."""

    def __init__(self, workdir, tcp_port=None, listen="127.0.0.1", netns=None, clusters=None):
        self.workdir = Path(workdir)
        self.listen = listen
        self.netns = netns
        self.clusters = clusters
        ports = reserve_ports(2)
        self.port = int(tcp_port) if tcp_port else ports[0]
        self.http_port = ports[1] if ports[1] != self.port else free_port()
        self.proc = None

    @property
    def host(self):
        """Address clients connect to."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen

    def config_xml(self):
        """The generated server config (only what 18.16 needs to run without /etc/clickhouse-server/config.xml)."""
        d = self.workdir
        return f"""<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{d}/log/server.log</log>
    <errorlog>{d}/log/server.err.log</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <listen_host>{escape(self.listen)}</listen_host>
  <tcp_port>{self.port}</tcp_port>
  <http_port>{self.http_port}</http_port>
  <max_concurrent_queries>100</max_concurrent_queries>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <mark_cache_size>67108864</mark_cache_size>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{USERS_CONFIG}</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
{remote_servers_xml(self.clusters)}
</yandex>
"""

    def start(self, timeout=30.0):
        """Write the config, start the server and wait until it answers SELECT 1."""
        binary = server_binary()
        if binary is None:
            raise RuntimeError("clickhouse-server is not installed (apt-get install clickhouse-server)")
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.xml"
        cfg.write_text(self.config_xml())
        cmd = [binary, f"--config-file={cfg}"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self._out = open(self.workdir / "log" / "stdout.log", "wb")
        # own process group: stop() can kill the server even when started via `ip netns exec`
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                self.query("SELECT 1")
                return self
            except Exception as e:  # noqa: BLE001 - not up yet; keep the last reason for the error
                last = e
                time.sleep(0.1)
        self.stop(remove=False)
        raise RuntimeError(f"clickhouse-server on port {self.port} did not answer in {timeout}s: {last}; "
                           f"{self._log_tail()}")

    def _log_tail(self, n=2000):
        """The end of the server's error log and stdout, for failure messages."""
        parts = []
        for name in ("server.err.log", "stdout.log"):
            p = self.workdir / "log" / name
            if p.exists():
                parts.append(p.read_bytes()[-n:].decode(errors="replace"))
        return " | ".join(parts)

    def client(self, **kw):
        """A clickhouse_driver.Client connected to this server (inside the netns when there is one)."""
        from clickhouse_driver import Client
        if self.netns:
            raise RuntimeError("a server in a network namespace is reached from inside it; use query()")
        return Client(host=self.host, port=self.port, connect_timeout=2, **kw)

    def query(self, sql):
        """Run one statement and return its rows (works also for servers inside a namespace)."""
        if not self.netns:
            c = self.client()
            try:
                return c.execute(sql)
            finally:
                c.disconnect()
        r = subprocess.run(["ip", "netns", "exec", self.netns, "clickhouse-client", "--host", self.host,
                            "--port", str(self.port), "--query", sql, "--format", "TabSeparated"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"clickhouse-client failed ({r.returncode}): {r.stderr.strip()[:500]}")
        return [tuple(line.split("\t")) for line in r.stdout.splitlines()]

    def stop(self, remove=True, graceful=None):
        """Stop the server (whole process group) and delete its data directory unless remove=False;
        graceful (default: when the data is kept) sends SIGTERM and waits, else SIGKILL."""
        if graceful is None:
            graceful = not remove
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    # its data goes with it: no need to wait for a clean shutdown (which waits for
                    # idle client and inter-server connections)
                    os.killpg(self.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            self._out.close()
            self.proc = None
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

"""Test harness: a real `capfan collect` process (optionally inside a network namespace) with a
config in a temporary directory, and a client of its HTTP API."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from tests.agents.agentrun import REPO, ChildRun, to_toml
from tests.conftest import wait_for


class CollectorRun(ChildRun):
    """`capfan collect -c CONFIG`; listen/api addresses as given (inside `ns` when set)."""

    def __init__(self, tmp, listen, api="127.0.0.1:0", ns=None, security=None, name="col", sections=None,
                 **collector):
        self.tmp = str(tmp)
        self.ns = ns
        self.name = name
        self.api_listen = api
        self.store = os.path.join(self.tmp, f"{name}.duckdb")
        cfg = {"collector": {"name": name, "listen": listen, "store": self.store, "status_interval": 1,
                             **collector},
               "security": security or {"mode": "plain"},
               "api": {"listen": api}, **(sections or {})}
        self.path = os.path.join(self.tmp, f"{name}.toml")
        with open(self.path, "w") as f:
            f.write(to_toml(cfg))
        self.errpath = os.path.join(self.tmp, f"{name}.stderr")
        self.proc = None
        self.api_url = None

    def start(self):
        """Start it and wait until its API answers; returns self."""
        env = dict(os.environ, PYTHONPATH=REPO)
        cmd = [sys.executable, "-m", "capfan", "collect", "-c", self.path]
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns, *cmd]
        self._log_from = os.path.getsize(self.errpath) if os.path.exists(self.errpath) else 0
        self._err = open(self.errpath, "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, env=env, text=True)
        self.api_url = wait_for(self._find_api, 60, 0.1)
        assert self.api_url, f"collector did not start (rc={self.proc.poll()}):\n{self.log()}"
        return self

    @property
    def endpoint(self) -> str:
        """The intake's bound endpoint, from the collector's banner (port 0 resolved)."""
        for line in self.log().splitlines():
            if "intake on tcp://" in line:
                return line[line.index("tcp://"):].split()[0]
        raise AssertionError(f"no intake line in:\n{self.log()}")

    def _find_api(self):
        if self.proc.poll() is not None:
            return "exited"
        for line in self.log().splitlines():
            if "http://" in line and "api" in line.lower():
                url = line[line.index("http://"):].split()[0].rstrip("/.,")
                return url
        return None

    def get(self, path: str):
        """GET an API path (inside the namespace when there is one); the decoded JSON."""
        url = self.api_url + path
        if self.ns:
            r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c",
                                "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=30)"
                                ".read().decode())", url], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{url}: {e.code} {e.read().decode()}") from None

    def kill(self):
        """Make sure it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

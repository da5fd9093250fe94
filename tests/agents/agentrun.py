"""Test harness: a real `capfan agent` process (optionally inside a network namespace) with a
config written into a temporary directory, plus readers for what it leaves behind."""
import json
import os
import random
import signal
import subprocess
import sys
import time

from tests.conftest import wait_for
from tests.frames import udp4
from tests.pcapfile import read_pcap, write_pcap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flow_frames(n, flows=64, seed=1, size=40):
    """n UDP frames over `flows` bidirectional flows (both directions present), varied sizes."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        f = i % flows
        a, b = f"10.1.{f // 250}.{f % 250 + 1}", f"10.2.{f // 250}.{f % 250 + 1}"
        sp, dp = 20000 + f, 53 + (f % 3)
        payload = bytes([i & 0xFF]) * (size + rnd.randrange(0, 200)) + i.to_bytes(4, "big")
        out.append(udp4(a, b, sp, dp, payload) if rnd.random() < 0.6 else udp4(b, a, dp, sp, payload))
    return out


def toml_value(v):
    """A Python value as TOML (enough for the configs the tests write)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(cfg: dict) -> str:
    """{'agent': {...}, 'capture': [{...}], 'analyzer': [...]} as TOML text."""
    lines = []
    for key, value in cfg.items():
        if isinstance(value, list):
            for t in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {toml_value(x)}" for k, x in t.items()]
        else:
            lines.append(f"[{key}]")
            lines += [f"{k} = {toml_value(x)}" for k, x in value.items()]
    return "\n".join(lines) + "\n"


class ChildRun:
    """A capfan command run as a child process, its stderr in `errpath`."""

    proc = None
    errpath = ""

    def log(self) -> str:
        """What it wrote on stderr so far (this run only)."""
        with open(self.errpath) as f:
            f.seek(getattr(self, "_log_from", 0))
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=60.0) -> int:
        """Signal it and wait; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._err.close()


class AgentRun(ChildRun):
    """`capfan agent -c CONFIG` as a child process; cfg gets run_dir/out/ring_dir filled in."""

    def __init__(self, tmp, cfg: dict, ring_dir: str, ns: str | None = None, name="t"):
        self.tmp = str(tmp)
        agent = cfg.setdefault("agent", {})
        agent.setdefault("name", name)
        agent.setdefault("run_dir", os.path.join(self.tmp, "run"))
        agent.setdefault("out", os.path.join(self.tmp, "out"))
        agent.setdefault("ring_dir", ring_dir)
        cfg.setdefault("metrics", {"listen": "127.0.0.1:0"})
        self.cfg = cfg
        self.name = agent["name"]
        self.run_dir, self.out, self.ring_dir = agent["run_dir"], agent["out"], ring_dir
        self.path = os.path.join(self.tmp, f"{self.name}.toml")
        with open(self.path, "w") as f:
            f.write(to_toml(cfg))
        self.errpath = os.path.join(self.tmp, f"{self.name}.stderr")
        self.ns = ns
        self.proc = None

    @property
    def status_path(self):
        """Where the agent writes status.json."""
        return os.path.join(self.run_dir, "agents", self.name, "status.json")

    def start(self, *args):
        """Start the agent (in its namespace) and return self."""
        env = dict(os.environ, PYTHONPATH=REPO)
        cmd = [sys.executable, "-m", "capfan", "agent", "-c", self.path, *args]
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns, *cmd]
        self._err = open(self.errpath, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, env=env, text=True)
        return self

    def status(self) -> dict | None:
        """The last status snapshot, or None."""
        try:
            with open(self.status_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_running(self, timeout=30.0) -> dict:
        """Wait until the agent reports every worker running (fails with the agent's log)."""
        def ready():
            if self.proc.poll() is not None:
                return "exited"
            s = self.status()
            if s and s["agent"]["state"] == "running" and all(w["state"] in ("running", "done")
                                                              for w in s["workers"]):
                return s
            return None
        s = wait_for(ready, timeout, 0.05)
        assert s and s != "exited", f"agent not running (rc={self.proc.poll()}):\n{self.log()}"
        return s

    def wait_status(self, pred, timeout=30.0, what="condition") -> dict:
        """Wait until pred(status) is true; the status it held for."""
        got = wait_for(lambda: (s := self.status()) is not None and pred(s) and s, timeout, 0.05)
        assert got, f"agent status never met {what}:\n{json.dumps(self.status(), indent=1)[:4000]}\n{self.log()}"
        return got

    def worker(self, status, consumer=None, kind="analyzer") -> dict:
        """One worker's row of a status snapshot."""
        rows = [w for w in status["workers"] if w["kind"] == kind and (consumer is None or w["consumer"] == consumer)]
        assert len(rows) == 1, rows
        return rows[0]

    def wait(self, timeout=60.0) -> int:
        """Wait for the agent to exit on its own; its exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"agent did not exit within {timeout} s:\n{self.log()}") from None
        finally:
            self._err.close()

    def kill(self):
        """Make sure the agent is gone (test clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def records(self, ring, consumer, stream) -> list[dict]:
        """Records an analyzer wrote (OUT/<ring>/<consumer>/<stream>.jsonl)."""
        path = os.path.join(self.out, ring, consumer, f"{stream}.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]

    def recorded_frames(self, ring, consumer) -> list[bytes]:
        """Frames a recorder analyzer wrote (every .pcap in its directory, in name order)."""
        d = os.path.join(self.out, ring, consumer)
        return [fr for n in sorted(os.listdir(d)) if n.endswith(".pcap") for fr in read_pcap(os.path.join(d, n))]


def consumers(status, ring=None) -> dict:
    """consumer name -> its row, for one ring (the first when not named)."""
    q = [q for q in status["queues"] if ring is None or q["ring"] == ring][0]
    return {c["consumer"]: c for c in q["consumers"]}


def replay_pcap(tmp, frames, gap_us=1000, name="traffic.pcap"):
    """Write frames as a pcap gap_us apart; its path."""
    path = os.path.join(str(tmp), name)
    write_pcap(path, frames, gap_us=gap_us)
    return path


def rings_left(ring_dir) -> list[str]:
    """Ring files still in the ring directory."""
    return sorted(n for n in os.listdir(ring_dir) if n.startswith("capfan."))


def now():
    """Monotonic seconds (for test timing)."""
    return time.monotonic()

"""`capfan status` and `capfan top` through click's CliRunner, on status.json files in private
run directories (no agent needed: the commands only read the snapshot)."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from rich.console import Console

from capfan import statuscli
from capfan.cli import main
from tests.agents.test_metrics import ODD_NAME, sample_snapshot


@pytest.fixture(autouse=True)
def no_env_run_dir(monkeypatch):
    """The developer's own $CAPFAN_RUN_DIR must not leak into the tests."""
    monkeypatch.delenv("CAPFAN_RUN_DIR", raising=False)


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_status(run_dir, name="sensor", pid=None, **agent) -> dict:
    """Write a sample snapshot for agent NAME (by default alive: this test's pid, fresh time)."""
    snap = sample_snapshot()
    snap["agent"].update({"name": name, "pid": os.getpid() if pid is None else pid, "time": time.time(), **agent})
    d = run_dir / "agents" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(json.dumps(snap, indent=1) + "\n")
    return snap


def cli(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def line_with(output: str, *needles: str) -> str:
    """The one output line holding all needles."""
    hits = [line for line in output.splitlines() if all(n in line for n in needles)]
    assert len(hits) == 1, (needles, output)
    return hits[0]


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("capfan: error: ") and "\n" not in err and "Traceback" not in result.output, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ status

def test_status_tables(tmp_path):
    write_status(tmp_path)
    r = cli("status", "--run-dir", tmp_path)
    assert r.exit_code == 0, r.output
    out = r.stdout
    header = out.splitlines()[0]
    assert header.startswith("agent sensor  ") and f"pid {os.getpid()}" in header
    assert "up 10.0 s" in header and "state running" in header and "http://127.0.0.1:9477/metrics" in header
    # queue: rates in human units, counters as they are, NIC drops of its interface, fill
    assert line_with(out, "eth0.q0", "afpacket/eth0").split() == [
        "eth0.q0", "afpacket/eth0", "1.50", "kpps", "2.50", "Mb/s", "1000", "3", "5", "7", "25.0%"]
    assert line_with(out, "eth0.q1", "afpacket/eth0").split()[-5:] == ["1100", "0", "0", "7", "0.0%"]
    # consumers, a group member shown as member/size, nulls as '-'
    assert line_with(out, " flows ").split() == [
        "eth0.q0", "flows", "flowmeter", "-", "reliable", "active", "990", "0", "0", "0", "10", "99", "pps"]
    assert line_with(out, "rec-1").split() == [
        "eth0.q0", "rec-1", "recorder", "rec", "1/2", "lossy", "active", "505", "4", "485", "1", "-", "-"]
    assert ODD_NAME in line_with(out, "stats ")
    # workers: the failed one without pid or memory, with its last exit
    assert line_with(out, "stats-eth0.q1").split() == [
        "stats-eth0.q1", "failed", "-", "-", "-", "-", "5", "exit", "status", "2"]
    assert line_with(out, "capture-eth0.q0").split() == [
        "capture-eth0.q0", "running", "789", "2", "12.5", "29.6", "MiB", "0", "-"]
    assert out.splitlines()[-1] == "warning: cores 2,3 are not isolated (add isolcpus=2,3 to the kernel command line)"


def test_status_json_round_trip(tmp_path):
    snap = write_status(tmp_path)
    r = cli("status", "--run-dir", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == snap


def test_status_of_a_dead_agent(tmp_path, dead_pid):
    write_status(tmp_path, pid=dead_pid, time=time.time() - 125)
    r = cli("status", "--run-dir", tmp_path)
    assert r.exit_code == 1, r.output
    first = r.stdout.splitlines()[0]
    assert first == f"agent sensor is not running (pid {dead_pid} gone; status from 2 min 5 s ago)"
    assert "eth0.q0" in r.stdout and "rec-1" in r.stdout    # the last status is still shown
    r = cli("status", "--run-dir", tmp_path, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["agent"]["pid"] == dead_pid    # stdout stays JSON
    assert "is not running" in r.stderr


def test_status_of_a_finished_agent(tmp_path, dead_pid):
    write_status(tmp_path, pid=dead_pid, state="done")
    r = cli("status", "--run-dir", tmp_path)
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0].startswith("agent sensor has finished (status from ")


def test_status_that_stopped_updating(tmp_path):
    write_status(tmp_path, time=time.time() - 60)
    r = cli("status", "--run-dir", tmp_path)
    assert r.exit_code == 0
    assert "old although the agent's process exists: it may be stuck" in r.stdout


def test_no_agent(tmp_path):
    r = cli("status", "--run-dir", tmp_path)
    assert_one_line_error(r, f"no capfan agent status under {tmp_path}", "--run-dir", "-c CONFIG")
    (tmp_path / "agents").mkdir()
    assert_one_line_error(cli("top", "--run-dir", tmp_path, "--count", 1), "no capfan agent status")


def test_several_agents(tmp_path):
    write_status(tmp_path, "alpha")
    write_status(tmp_path, "beta")
    assert_one_line_error(cli("status", "--run-dir", tmp_path), "several capfan agents", "alpha, beta", "--name")
    r = cli("status", "--run-dir", tmp_path, "--name", "beta")
    assert r.exit_code == 0 and r.stdout.startswith("agent beta ")


def test_run_dir_from_environment(tmp_path, monkeypatch):
    write_status(tmp_path, "envagent")
    monkeypatch.setenv("CAPFAN_RUN_DIR", str(tmp_path))
    r = cli("status")
    assert r.exit_code == 0 and r.stdout.startswith("agent envagent ")


def test_unknown_name(tmp_path):
    write_status(tmp_path)
    assert_one_line_error(cli("status", "--run-dir", tmp_path, "--name", "other"),
                          "no status of agent other at", str(tmp_path / "agents" / "other" / "status.json"))


def test_config_sets_run_dir_and_name(tmp_path):
    run = tmp_path / "run"
    write_status(run, "edge1")
    write_status(run, "edge2")
    config = tmp_path / "sensor.toml"
    config.write_text(f'[agent]\nname = "edge2"\nrun_dir = "{run}"\n\n[capture.eth0]\nsource = "afpacket"\n')
    r = cli("status", "-c", config)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("agent edge2 ")
    # --name and --run-dir win over the config
    assert cli("status", "-c", config, "--name", "edge1").stdout.startswith("agent edge1 ")
    assert_one_line_error(cli("status", "-c", config, "--run-dir", tmp_path / "elsewhere"), "no status of agent edge2")


def test_config_without_name_means_host_name(tmp_path):
    write_status(tmp_path, socket.gethostname())
    write_status(tmp_path, "another")
    config = tmp_path / "sensor.toml"
    config.write_text(f'[agent]\nrun_dir = "{tmp_path}"\n')
    r = cli("status", "--config", config)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"agent {socket.gethostname()} ")


@pytest.mark.parametrize("text,needle", [
    ("[agent\n", "is not valid TOML"),
    ("agent = 3\n", "config key 'agent'"),
    ("[agent]\nrun_dir = 5\n", "config key 'agent.run_dir'"),
])
def test_bad_config(tmp_path, text, needle):
    config = tmp_path / "sensor.toml"
    config.write_text(text)
    assert_one_line_error(cli("status", "-c", config), needle)
    assert_one_line_error(cli("status", "-c", tmp_path / "missing.toml"), "cannot read config")


def test_corrupt_status_file(tmp_path):
    d = tmp_path / "agents" / "sensor"
    d.mkdir(parents=True)
    (d / "status.json").write_text("{not json")
    assert_one_line_error(cli("status", "--run-dir", tmp_path), "is not a status snapshot")


# ------------------------------------------------------------------ top

def test_top_renders_count_times(tmp_path):
    write_status(tmp_path)
    r = cli("top", "--run-dir", tmp_path, "--count", 2, "--interval", 0.05)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("agent sensor  pid") == 2
    assert r.stdout.count("rec-1") == 2 and r.stdout.count("warning: cores 2,3") == 2


def test_top_keeps_going_when_the_status_goes_away(tmp_path, dead_pid):
    write_status(tmp_path, "sensor")
    (tmp_path / "agents" / "sensor" / "status.json").unlink()   # the agent cleaned up
    r = cli("top", "--run-dir", tmp_path, "--count", 2, "--interval", 0.01)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("no status of agent sensor") == 2 and "retrying every" in r.stdout
    write_status(tmp_path, pid=dead_pid)
    r = cli("top", "--run-dir", tmp_path, "--count", 1)
    assert r.exit_code == 0 and r.stdout.startswith("agent sensor is not running")


def test_top_live_on_a_terminal(tmp_path, monkeypatch):
    """On a terminal top redraws with rich Live; Ctrl-C ends it quietly with exit 0."""
    write_status(tmp_path)
    buf = io.StringIO()
    monkeypatch.setattr(statuscli, "_console", lambda: Console(file=buf, force_terminal=True, width=200))
    r = cli("top", "--run-dir", tmp_path, "--count", 3, "--interval", 0.01)
    assert r.exit_code == 0, r.output
    assert "rec-1" in buf.getvalue() and "\x1b[" in buf.getvalue()   # drawn with cursor control

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(statuscli.time, "sleep", interrupt)
    r = cli("top", "--run-dir", tmp_path)
    assert r.exit_code == 0 and r.output == ""


def test_duration():
    assert [statuscli.duration(s) for s in (0, 12.34, 754, 7500, 200000, None)] == [
        "0.0 s", "12.3 s", "12 min 34 s", "2 h 5 min", "2 d 7 h", "-"]

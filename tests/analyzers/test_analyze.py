"""`capfan analyze`: the analyzer runner as a real process on a real ring."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from capfan import ring as ringlib
from capfan.analyzers import Option, available, load, validate_options
from capfan.errors import ConfigError
from tests import frames as fr
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
CAPFAN = [sys.executable, "-c", "from capfan.cli import main; main()"]
PLUGIN = "tests.analyzers.plugins:Recording"


def run(*args, **kw):
    """Run `capfan ARGS` from the repository root (so tests.* plugins import)."""
    return subprocess.run(CAPFAN + [str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, **kw)


def popen(*args):
    return subprocess.Popen(CAPFAN + [str(a) for a in args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p, timeout=30):
    """(stdout, stderr) of a runner process that should exit by itself; on a hang, kill it and
    fail with what it printed and the ring's view of its consumers."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        pytest.fail(f"runner did not exit by itself: stdout={out!r} stderr={err!r} "
                    f"ring={ringlib.Ring('q0').stats()} consumers={ringlib.Ring('q0').consumers()}")


def udp_frames(n, flows=16):
    """n UDP frames over `flows` address pairs."""
    return [fr.udp4(f"10.0.{i % flows}.1", "10.9.0.2", 1000 + i % flows, 53, payload=b"q" * (20 + i % 7))
            for i in range(n)]


def consumer_names(name):
    return {c["name"]: c for c in ringlib.Ring(name).consumers()}


def wait_attached(name, consumer, proc):
    """Wait until `proc` has attached as `consumer` (fail with its stderr if it died)."""
    ok = wait_for(lambda: proc.poll() is not None
                  or consumer_names(name).get(consumer, {}).get("state") == "active")
    assert ok and proc.poll() is None, proc.communicate()


# ------------------------------------------------------------------ plugin API


def test_builtins_are_registered_as_entry_points():
    eps = available()
    for name in ("flowmeter", "recorder", "stats"):
        assert name in eps, eps
    assert load("stats").__name__ == "Stats"


def test_unknown_analyzer_lists_installed_ones():
    with pytest.raises(ConfigError) as e:
        load("no-such-analyzer")
    assert "stats" in str(e.value) and "capfan.analyzers" in str(e.value)


def test_options_are_typed_and_unknown_keys_named():
    opts = {"n": Option(int, 3), "on": Option(bool, False), "x": Option(float, 1.5)}
    assert validate_options("a", opts, {"n": "7", "on": "yes"}) == {"n": 7, "on": True, "x": 1.5}
    with pytest.raises(ConfigError, match="'bogus'") as e:
        validate_options("a", opts, {"bogus": "1"})
    assert e.value.key == "bogus"
    with pytest.raises(ConfigError) as e:
        validate_options("a", opts, {"n": "seven"})
    assert e.value.key == "n"
    with pytest.raises(ConfigError):
        validate_options("a", opts, {"on": "maybe"})


# ------------------------------------------------------------------ CLI errors


@pytest.mark.parametrize("args,needle", [
    (["--analyzer", "stats"], "--ring"),
    (["--ring", "r", "--analyzer", "nope"], "no analyzer named 'nope'"),
    (["--ring", "r", "--analyzer", "stats", "-o", "bogus=1"], "has no option 'bogus'"),
    (["--ring", "r", "--analyzer", "stats", "-o", "novalue"], "expected key=value"),
    (["--ring", "r", "--analyzer", "stats", "--cpu", "4096"], "CPU 4096 is not available"),
    (["--ring", "missing", "--analyzer", "stats"], "missing"),
])
def test_bad_invocations_give_one_line_errors(ring_dir, args, needle):
    ringlib.create("r", ndesc=256, arena_bytes=1 << 20)
    r = run("analyze", *args)
    assert r.returncode == 2, r
    err = r.stderr.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert needle in err, err


def test_list_shows_builtins_and_options():
    r = run("analyze", "--list")
    assert r.returncode == 0, r.stderr
    for needle in ("flowmeter", "recorder", "stats", "-o interval="):
        assert needle in r.stdout, r.stdout


# ------------------------------------------------------------------ running


def test_exit_on_eof_sees_every_packet_once_and_flushes(ring_dir, tmp_path):
    ringlib.create("q0", ndesc=1024, arena_bytes=4 << 20)
    log, out = tmp_path / "log.json", tmp_path / "out"
    p = popen("analyze", "--ring", "q0", "--analyzer", PLUGIN, "-o", f"log={log}", "--out", out,
              "--exit-on-eof", "--json", "--tick", "0.05")
    wait_attached("q0", "Recording", p)
    with ringlib.Producer("q0") as prod:
        for chunk in range(5):
            assert prod.publish(udp_frames(500)) == 500
    stdout, stderr = finish(p)
    assert p.returncode == 0, stderr
    s = json.loads(stdout)
    got = json.loads(log.read_text())
    assert got["packets"] == 2500 and s["delivered"] == 2500 and s["dropped"] == 0
    assert got["seqs"] == list(range(2500))  # once each, in order
    assert got["calls"]["start"] == 1 and got["calls"]["stop"] == 1 and got["calls"]["on_tick"] >= 1
    assert s["records"] == {"seen": 1}
    rec = [json.loads(x) for x in (out / "seen.jsonl").read_text().splitlines()]
    assert rec == [{"stream": "seen", "packets": 2500}]
    assert "Recording" not in consumer_names("q0")  # slot freed


def test_sigterm_flushes_and_frees_the_slot_and_pins(ring_dir, tmp_path):
    ringlib.create("q0", ndesc=1024, arena_bytes=4 << 20)
    log = tmp_path / "log.json"
    cpu = sorted(os.sched_getaffinity(0))[-1]
    p = popen("analyze", "--ring", "q0", "--analyzer", PLUGIN, "--name", "rec", "-o", f"log={log}",
              "--out", tmp_path / "o", "--cpu", cpu)
    wait_attached("q0", "rec", p)
    status = Path(f"/proc/{p.pid}/status").read_text()
    allowed = [ln for ln in status.splitlines() if ln.startswith("Cpus_allowed_list")][0]
    assert allowed.split()[-1] == str(cpu), allowed
    with ringlib.Producer("q0") as prod:
        prod.publish(udp_frames(300))
        assert wait_for(lambda: consumer_names("q0")["rec"]["cursor"] == 300)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    got = json.loads(log.read_text())
    assert got["packets"] == 300 and got["calls"]["stop"] == 1
    assert "300 packets delivered" in out
    assert "rec" not in consumer_names("q0")  # slot freed


def test_plugin_exception_is_reported_and_slot_kept_for_resume(ring_dir, tmp_path):
    ringlib.create("q0", ndesc=1024, arena_bytes=4 << 20)
    with ringlib.Producer("q0") as prod:
        prod.publish(udp_frames(100))
        r = run("analyze", "--ring", "q0", "--analyzer", PLUGIN, "--name", "bad", "--start", "oldest",
                "-o", "fail_after=1", "--out", tmp_path / "o", "--exit-on-eof")
        assert r.returncode == 2
        assert "plugin bug on purpose" in r.stderr and "restart resumes" in r.stderr
        # the traceback is the plugin's (for its author), the last line is capfan's one-liner
        assert r.stderr.strip().splitlines()[-1].startswith("capfan: error: analyzer")
        slot = consumer_names("q0")["bad"]
        assert slot["state"] == "detached" and slot["cursor"] > 0  # kept with its cursor
        # a fixed run with the same name resumes after the failed batch: nothing counted twice
        prod.publish(udp_frames(50))
    log = tmp_path / "log.json"
    r = run("analyze", "--ring", "q0", "--analyzer", PLUGIN, "--name", "bad", "-o", f"log={log}",
            "--out", tmp_path / "o", "--exit-on-eof", "--start", "oldest")
    assert r.returncode == 0, r.stderr
    seqs = json.loads(log.read_text())["seqs"]
    assert seqs and seqs[-1] == 149 and seqs == list(range(seqs[0], 150))


def test_group_members_split_flows_exactly(ring_dir, tmp_path):
    ringlib.create("q0", ndesc=4096, arena_bytes=8 << 20)
    procs, logs = [], []
    for m in range(2):
        logs.append(tmp_path / f"m{m}.json")
        procs.append(popen("analyze", "--ring", "q0", "--analyzer", PLUGIN, "--group", "g", "--member", m,
                           "--group-size", 2, "-o", f"log={logs[m]}", "--out", tmp_path / f"o{m}",
                           "--exit-on-eof"))
    for m, p in enumerate(procs):
        wait_attached("q0", f"Recording-g-{m}", p)
    with ringlib.Producer("q0") as prod:
        prod.publish(udp_frames(2000, flows=64))
    for p in procs:
        _, err = finish(p)
        assert p.returncode == 0, err
    seqs = [set(json.loads(lg.read_text())["seqs"]) for lg in logs]
    assert seqs[0] and seqs[1]
    assert not seqs[0] & seqs[1]
    assert seqs[0] | seqs[1] == set(range(2000))

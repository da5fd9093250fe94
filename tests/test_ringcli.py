"""`capfan ring create|ls|stat|dump|rm` through click's CliRunner, on rings in a private directory."""
from __future__ import annotations

import json
import os
import stat as statmod
import threading

import click
import pytest
from click.testing import CliRunner

from capfan import ring as R
from capfan import ringcli
from capfan.summary import summarize
from tests.conftest import wait_for
from tests.test_summary import PCAPS, read_capture

try:  # the whole `capfan` CLI, as users run it
    from capfan.cli import main as _CLI
    _PREFIX = ["ring"]
except ImportError:  # another CLI module is broken or missing: still test the group itself
    _CLI, _PREFIX = ringcli.ring, []


@pytest.fixture
def rings(tmp_path, monkeypatch):
    """A private ring directory (never /dev/shm), removed with the test's tmp_path."""
    d = tmp_path / "rings"
    d.mkdir()
    monkeypatch.setenv("CAPFAN_RING_DIR", str(d))
    return d


def cli(*args):
    """Run `capfan ring ARGS...`; returns click's Result (stdout / stderr separate)."""
    return CliRunner().invoke(_CLI, _PREFIX + [str(a) for a in args])


def assert_one_line_error(result, *needles):
    """Exit code != 0, a single `capfan: error:` line on stderr, no traceback anywhere."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit)
    err = result.stderr.strip()
    assert "Traceback" not in result.output and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def frames():
    """Real frames (ts_ns, wirelen, bytes) from sample captures: TCP, UDP, fragments, ICMP."""
    out = []
    for name in ("dns_tcp.pcap", "tftp.pcap", "afs.pcap"):
        linktype, pkts = read_capture(PCAPS / name)
        assert linktype == 1
        out += pkts[:20]
    return out


def publish(producer, frames):
    """Publish frames with their capture timestamps and wire lengths."""
    n = producer.publish([f[2] for f in frames], ts_ns=[f[0] for f in frames],
                         wirelens=[f[1] for f in frames])
    assert n == len(frames)


def summaries(frames, linktype=1):
    return [summarize(data, linktype, ts, wl) for ts, wl, data in frames]


# ------------------------------------------------------------------ help

def test_every_command_has_help():
    result = cli("--help")
    assert result.exit_code == 0 and "Shared-memory packet rings" in result.output
    assert set(ringcli.ring.commands) == {"create", "ls", "stat", "dump", "rm"}
    for name, cmd in ringcli.ring.commands.items():
        assert cmd.help, name
        result = cli(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, name
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{name} {param.name}"


# ------------------------------------------------------------------ create

def test_create_prints_path_and_geometry(rings):
    result = cli("create", "eth0.q0", "--ndesc", "1K", "--arena", "1M", "--max-consumers", 300,
                 "--linktype", "raw", "--snaplen", 2048, "--full", "drop", "--mode", "0640")
    assert result.exit_code == 0, result.output
    path = rings / "capfan.eth0.q0"
    assert str(path) in result.output
    for text in ("ndesc 1024", "arena 1.0 MiB", "linktype raw", "snaplen 2048", "when full: drop",
                 "mode 0640"):
        assert text in result.output
    assert statmod.S_IMODE(os.stat(path).st_mode) == 0o640
    with R.Ring("eth0.q0") as r:
        st = r.stats()
    assert (st["ndesc"], st["arena_bytes"], st["linktype"], st["snaplen"], st["full_policy"]) == \
        (1024, 1 << 20, 101, 2048, 1)
    assert st["max_consumers"] >= 300


def test_create_defaults(rings):
    result = cli("create", "d", "--arena", "4M")
    assert result.exit_code == 0, result.output
    with R.Ring("d") as r:
        st = r.stats()
    assert (st["ndesc"], st["linktype"], st["full_policy"]) == (65536, 1, 0)
    assert statmod.S_IMODE(os.stat(rings / "capfan.d").st_mode) == 0o600  # private by default


def test_create_errors(rings):
    assert cli("create", "x", "--ndesc", 1024, "--arena", "1M").exit_code == 0
    assert_one_line_error(cli("create", "x", "--ndesc", 1024, "--arena", "1M"), "exists")
    assert_one_line_error(cli("create", "bad name"), "bad ring name")
    assert_one_line_error(cli("create", "y", "--ndesc", 1000, "--arena", "1M"))  # not a power of two
    assert_one_line_error(cli("create", "z", "--arena", "1M", "--group", "no-such-group-xyz"), "group")
    for bad in (["--arena", "12X"], ["--mode", "999"], ["--linktype", "token-ring"],
                ["--full", "maybe"], ["--snaplen", "70000"]):
        result = cli("create", "w", *bad)
        assert result.exit_code == 2 and "Traceback" not in result.output, bad  # click usage error
    assert sorted(os.listdir(rings)) == ["capfan.x"]


# ------------------------------------------------------------------ ls

def test_ls_empty(rings):
    result = cli("ls")
    assert result.exit_code == 0
    assert "no rings in" in result.output and str(rings) in result.output


def test_ls_table(rings, frames):
    R.create("eth0.q0", ndesc=1024, arena_bytes=1 << 20)
    R.create("eth0.q1", ndesc=2048, arena_bytes=1 << 20)
    (rings / "capfan.junk").write_bytes(b"not a ring")
    with R.Producer("eth0.q0") as p, R.Consumer("eth0.q0", "flowmeter"):
        publish(p, frames[:7])
        result = cli("ls")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "eth0.q0" in line)
    assert f"{os.getpid()} (alive)" in row
    cells = row.replace("│", " ").split()
    assert "1024" in cells and "7" in cells  # ndesc, head
    assert any("eth0.q1" in line and "none" in line and "2048" in line for line in result.output.splitlines())
    assert "junk" in result.output and "unreadable" in result.output  # listed, not fatal


# ------------------------------------------------------------------ stat

def test_stat_json_counts_policies_and_lag(rings, frames):
    R.create("s", ndesc=1024, arena_bytes=1 << 20)
    n = 40
    pkts = (frames * 3)[:n]
    with R.Producer("s") as p, \
            R.Consumer("s", "flowmeter", policy="reliable") as fm, \
            R.Consumer("s", "recorder", policy="lossy"), \
            R.Consumer("s", "ids-0", policy="lossy", group="ids", member=0, group_size=2) as g0, \
            R.Consumer("s", "ids-1", policy="lossy", group="ids", member=1, group_size=2) as g1:
        publish(p, pkts)
        fm.next(timeout=0, max_packets=15).release()
        for g in (g0, g1):
            while (b := g.next(timeout=0)) is not None:
                b.release()
        result = cli("stat", "s", "--json")
        assert result.exit_code == 0, result.output
        snap = json.loads(result.stdout)

    ri = snap["ring"]
    assert snap["name"] == "s" and snap["path"].endswith("capfan.s")
    assert ri["head"] == n and ri["window"] == ri["head"] - ri["tail"]
    assert ri["producer_pid"] == os.getpid() and ri["producer_alive"] is True
    assert ri["nconsumers"] == 4 and ri["linktype_name"] == "ethernet"
    assert 0 < ri["arena_used_pct"] <= 100
    cons = {c["name"]: c for c in snap["consumers"]}
    assert set(cons) == {"flowmeter", "recorder", "ids-0", "ids-1"}
    assert {k: c["policy"] for k, c in cons.items()} == \
        {"flowmeter": "reliable", "recorder": "lossy", "ids-0": "lossy", "ids-1": "lossy"}
    assert cons["flowmeter"]["lag"] == n - 15 and cons["flowmeter"]["delivered"] == 15
    assert cons["recorder"]["lag"] == n and cons["recorder"]["delivered"] == 0
    for m in ("ids-0", "ids-1"):
        c = cons[m]
        assert c["lag"] == 0 and c["group"] == "ids" and c["group_size"] == 2
        assert c["delivered"] + c["dropped"] + c["filtered"] == n  # the accounting invariant
    assert cons["ids-0"]["delivered"] + cons["ids-1"]["delivered"] == n
    assert all(c["state"] == "active" and c["alive"] and c["pid"] == os.getpid() for c in cons.values())
    kinds = [(e["kind"], e["consumer"]) for e in snap["events"]]
    assert ("producer-start", "") in kinds
    assert {name for kind, name in kinds if kind == "attach"} == set(cons)  # full names, not 8 bytes


def test_stat_text(rings, frames):
    R.create("t", ndesc=1024, arena_bytes=1 << 20)
    with R.Producer("t") as p, R.Consumer("t", "flowmeter"), \
            R.Consumer("t", "ids-0", policy="lossy", group="ids", member=0, group_size=2):
        publish(p, frames[:5])
        result = cli("stat", "t")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("ring t", "head 5 (published)", f"producer pid {os.getpid()} alive yes generation 1",
                 "flowmeter", "reliable", "ids 0/2", "lag", "dropped_full 0", "attach", "producer-start"):
        assert text in out, text
    row = next(line for line in out.splitlines() if line.strip().startswith("flowmeter"))
    assert row.split()[:6] == ["flowmeter", "active", "yes", "reliable", "-", "5"]


def test_stat_watch_stops_on_ctrl_c(rings, monkeypatch):
    R.create("w", ndesc=1024, arena_bytes=1 << 20)
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ringcli.time, "sleep", sleep)
    result = cli("stat", "w", "--watch", 0.5)
    assert result.exit_code == 0 and "ring w" in result.output and calls == [0.5, 0.5]
    calls.clear()
    result = cli("stat", "w", "--watch", 0.5, "--json")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["name"] == "w" for line in lines)


# ------------------------------------------------------------------ dump

def test_dump_recent_matches_summarize(rings, frames):
    R.create("d", ndesc=1024, arena_bytes=1 << 20)
    with R.Producer("d") as p:
        publish(p, frames)
        result = cli("dump", "d", "-c", 5)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == summaries(frames[-5:])
        result = cli("dump", "d")  # default: the last 20
        assert result.stdout.splitlines() == summaries(frames[-20:])
        assert R.Ring("d").consumers() == []  # recent packets are read without a consumer slot


def test_dump_hex(rings, frames):
    R.create("h", ndesc=1024, arena_bytes=1 << 20)
    ts, wl, data = frames[0]
    with R.Producer("h") as p:
        publish(p, [frames[0]])
        result = cli("dump", "h", "--hex")
    lines = result.stdout.splitlines()
    assert lines[0] == summarize(data, 1, ts, wl)
    assert len(lines) == 1 + (len(data) + 15) // 16
    assert lines[1] == "\t0x0000:  " + " ".join(data[:16].hex()[i:i + 4] for i in range(0, 32, 4))
    assert bytes.fromhex("".join(line.split(":", 1)[1].replace(" ", "") for line in lines[1:])) == data


def test_dump_empty_ring(rings):
    R.create("e", ndesc=1024, arena_bytes=1 << 20)
    result = cli("dump", "e")
    assert result.exit_code == 0 and result.stdout == "" and "holds no packets" in result.stderr


def _dump_consumers(name):
    return [c for c in R.Ring(name).consumers() if c["name"].startswith("dump-") and c["state"] == "active"]


def test_dump_follow_prints_new_packets_and_detaches(rings, frames):
    R.create("f", ndesc=1024, arena_bytes=1 << 20)
    with R.Producer("f") as p:
        publish(p, frames[:3])  # already in the ring: --follow starts at the head, not shown
        new = frames[3:11]

        def feed():
            assert wait_for(lambda: _dump_consumers("f"), timeout=20)
            publish(p, new[:4])
            publish(p, new[4:])

        t = threading.Thread(target=feed)
        t.start()
        result = cli("dump", "f", "--follow", "-c", len(new))
        t.join()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == summaries(new)
    assert f"{len(new)} packets shown, 0 dropped" in result.stderr
    assert _dump_consumers("f") == []
    detach = [e for e in R.Ring("f").events() if e.kind == "detach"]
    assert detach and detach[-1].name == f"dump-{os.getpid()}"[:8]


def test_dump_follow_uses_each_ports_link_type(rings, frames):
    R.create("pt", ndesc=1024, arena_bytes=1 << 20)
    ts, wl, data = frames[0]
    with R.Producer("pt") as p:
        p.set_linktype(3, 101)  # raw IP on port 3, Ethernet (the ring's) elsewhere

        def feed():
            assert wait_for(lambda: _dump_consumers("pt"), timeout=20)
            publish(p, [frames[0]])
            p.publish([data[14:]], ts_ns=[ts], wirelens=[wl - 14], port=3)

        t = threading.Thread(target=feed)
        t.start()
        result = cli("dump", "pt", "-f", "-c", 2)
        t.join()
    lines = result.stdout.splitlines()
    assert lines == [summarize(data, 1, ts, wl), summarize(data[14:], 101, ts, wl - 14)]
    assert lines[0][16:] == lines[1][16:]  # same packet, same summary


def test_dump_follow_shows_wire_lengths_above_64k(rings):
    R.create("big", ndesc=1024, arena_bytes=1 << 20)
    frame = b"\x01\x80\xc2\0\0\x0e" + b"\x02\0\0\0\0\x01" + b"\x88\xcc" + b"\0" * 46
    with R.Producer("big") as p:

        def feed():
            assert wait_for(lambda: _dump_consumers("big"), timeout=20)
            p.publish([frame], ts_ns=[0], wirelens=[70000])  # captured 60 of 70000 bytes

        t = threading.Thread(target=feed)
        t.start()
        result = cli("dump", "big", "-f", "-c", 1)
        t.join()
    assert result.stdout.splitlines() == [summarize(frame, 1, 0, 70000)]
    assert result.stdout.rstrip().endswith("ethertype 0x88cc, length 70000")


def test_dump_recent_uses_each_ports_link_type(rings, frames):
    R.create("rp", ndesc=1024, arena_bytes=1 << 20)
    ts, wl, data = frames[0]
    with R.Producer("rp") as p:
        p.set_linktype(3, 101)
        publish(p, [frames[0]])
        p.publish([data[14:]], ts_ns=[ts], wirelens=[70000], port=3)
        result = cli("dump", "rp")
    assert result.stdout.splitlines() == [summarize(data, 1, ts, wl), summarize(data[14:], 101, ts, 70000)]


def test_dump_follow_detaches_on_ctrl_c(rings, monkeypatch):
    R.create("k", ndesc=1024, arena_bytes=1 << 20)
    real_next = R.Consumer.next
    seen = []

    def next_then_interrupt(self, *a, **kw):
        seen.append(self.name)
        if len(seen) == 2:
            assert _dump_consumers("k")  # attached while it runs
            raise KeyboardInterrupt
        return real_next(self, *a, **kw)

    monkeypatch.setattr(R.Consumer, "next", next_then_interrupt)
    monkeypatch.setattr(ringcli, "FOLLOW_POLL_S", 0.01)
    result = cli("dump", "k", "--follow")
    assert result.exit_code == 0, result.output
    assert seen == [f"dump-{os.getpid()}"] * 2
    assert "0 packets shown" in result.stderr
    assert _dump_consumers("k") == []


# ------------------------------------------------------------------ rm

def test_rm(rings):
    for name in ("a", "b", "c"):
        R.create(name, ndesc=1024, arena_bytes=1 << 20)
    result = cli("rm", "a")
    assert result.exit_code == 0 and "removed ring a" in result.output
    result = cli("rm", "b", "c")
    assert result.exit_code == 0 and "removed ring b" in result.output and "removed ring c" in result.output
    assert os.listdir(rings) == []


def test_rm_refuses_live_ring_unless_forced(rings):
    R.create("live", ndesc=1024, arena_bytes=1 << 20)
    R.create("idle", ndesc=1024, arena_bytes=1 << 20)
    with R.Producer("live"):
        err = assert_one_line_error(cli("rm", "live"), f"producer pid {os.getpid()}", "--force")
        assert "live" in err
        # one busy ring among several: nothing is removed
        assert_one_line_error(cli("rm", "idle", "live"), "in use")
        assert sorted(os.listdir(rings)) == ["capfan.idle", "capfan.live"]
    with R.Consumer("live", "flowmeter"):  # producer gone, a live consumer still attached
        assert_one_line_error(cli("rm", "live"), "1 consumer (flowmeter)")
        result = cli("rm", "--force", "live")
        assert result.exit_code == 0 and "keep their mapping" in result.output
    assert os.listdir(rings) == ["capfan.idle"]
    with R.Consumer("idle", "gone"):
        pass  # detached consumers do not hold a ring
    assert cli("rm", "idle").exit_code == 0


def test_rm_non_ring_file_needs_force(rings):
    (rings / "capfan.junk").write_bytes(b"x" * 100)
    assert_one_line_error(cli("rm", "junk"), "not a capfan ring")
    assert cli("rm", "--force", "junk").exit_code == 0
    assert os.listdir(rings) == []


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("args", [["stat", "nope"], ["stat", "nope", "--json"], ["dump", "nope"],
                                  ["dump", "nope", "--follow"], ["rm", "nope"]])
def test_missing_ring_is_a_one_line_error(rings, args):
    assert_one_line_error(cli(*args), "no ring")


@pytest.mark.parametrize("args", [["stat", "bad name"], ["dump", "b@d!"], ["rm", "x y"],
                                  ["create", "über"]])
def test_bad_name_is_a_one_line_error(rings, args):
    assert_one_line_error(cli(*args), "bad ring name")


def test_rm_needs_a_name(rings):
    result = cli("rm")
    assert result.exit_code == 2 and "Traceback" not in result.output

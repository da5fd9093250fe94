"""The agent's [export] table: one test per error class, each through the real CLI.

`capfan agent -c FILE --check` must reject every bad [export] table with exit status 2 and ONE
line on stderr naming the key and the fix, never a traceback (helpers from test_agent_config).
The captures are pcap replays of the bundled sample, so no capability is needed. Key pairs come
from the real `capfan keys gen NAME --dir DIR`.
"""
import os
import subprocess
import sys

import pytest

from tests.agents.test_agent_config import REPO, check, config, error

SAMPLE = os.path.join(REPO, "capfan", "samples", "sample.pcap")
REPLAY = f'[[capture]]\nsource = "pcap"\nfile = "{SAMPLE}"\n'
ENDPOINT = "tcp://127.0.0.1:5557"
NEEDS_SERVER_KEY = ("config key 'export.server_key': security = \"curve\" needs the collector's public key: set "
                    "server_key = \"collector.key\" (from `capfan keys gen` on the collector), or choose "
                    "security = \"plain\" explicitly")
NEEDS_KEY = ("config key 'export.key': security = \"curve\" needs this agent's key pair: run `capfan keys gen "
             "AGENT`, set key = \"AGENT.key_secret\" and list AGENT.key on the collector")
COLLECTOR_FORMS = ('expected "tcp://HOST:PORT" or { endpoint = "tcp://HOST:PORT", server_key = "collector.key" }')


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """{"dir", "agent" (secret file), "agent_pub", "collector" (public file), "collector_z85"} made
    by `capfan keys gen`."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("agent", "collector"):
        r = subprocess.run([sys.executable, "-m", "capfan", "keys", "gen", name, "--dir", str(d)],
                           capture_output=True, text=True, timeout=60, check=False,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(
                               p for p in (REPO, os.environ.get("PYTHONPATH")) if p)})
        assert r.returncode == 0, r.stderr
    text = (d / "collector.key").read_text()
    z85 = text.split('public-key = "')[1][:40]
    return {"dir": d, "agent": d / "agent.key_secret", "agent_pub": d / "agent.key",
            "collector": d / "collector.key", "collector_z85": z85}


def export(tmp_path, body: str) -> str:
    """A valid agent config (pcap replay) with `body` as its [export] table."""
    if not os.path.exists(SAMPLE):
        pytest.skip(f"no {SAMPLE}")
    return config(tmp_path, body="[export]\n" + body + REPLAY)


def curve(keys, collectors=f'["{ENDPOINT}"]', key=None, server_key=None, extra="") -> str:
    """An [export] body for security = "curve" (the default) with the generated keys."""
    key = keys["agent"] if key is None else key
    server_key = keys["collector"] if server_key is None else server_key
    return f'collectors = {collectors}\nkey = "{key}"\nserver_key = "{server_key}"\n{extra}'


# ------------------------------------------------------------------------------ keys

def test_curve_without_key(tmp_path, keys):
    text = export(tmp_path, f'collectors = ["{ENDPOINT}"]\nserver_key = "{keys["collector"]}"\n')
    msg = error(tmp_path, text)
    assert msg == NEEDS_KEY
    assert "export.key" in msg and "capfan keys gen" in msg


def test_curve_without_server_key(tmp_path, keys):
    assert error(tmp_path, export(tmp_path, f'collectors = ["{ENDPOINT}"]\nkey = "{keys["agent"]}"\n')) \
        == NEEDS_SERVER_KEY


def test_curve_is_the_default_and_needs_both_keys(tmp_path):
    # no keys at all: the server key is asked for first
    assert error(tmp_path, export(tmp_path, f'collectors = ["{ENDPOINT}"]\n')) == NEEDS_SERVER_KEY


def test_key_file_missing(tmp_path, keys):
    missing = keys["dir"] / "nope.key_secret"
    assert error(tmp_path, export(tmp_path, curve(keys, key=missing))) == (
        f"config key 'export.key': key file {missing} does not exist (make one with `capfan keys gen NAME`)")


def test_key_file_relative_to_the_config(tmp_path, keys):
    assert error(tmp_path, export(tmp_path, curve(keys, key="keys/agent.key_secret"))) == (
        f"config key 'export.key': key file {tmp_path}/keys/agent.key_secret does not exist "
        "(make one with `capfan keys gen NAME`)")


def test_key_file_is_not_a_key_file(tmp_path, keys):
    junk = tmp_path / "junk.key_secret"
    junk.write_text("not a certificate\n")
    assert error(tmp_path, export(tmp_path, curve(keys, key=junk))) == (
        f"config key 'export.key': key file {junk} has no curve public-key; is it a ZeroMQ certificate?")


def test_key_file_malformed_line(tmp_path, keys):
    bad = tmp_path / "bad.key_secret"
    bad.write_text("curve\n    public-key\n")
    assert error(tmp_path, export(tmp_path, curve(keys, key=bad))) == (
        f"config key 'export.key': key file {bad}: malformed line 'public-key' (expected name = \"value\")")


def test_key_is_a_directory(tmp_path, keys):
    assert error(tmp_path, export(tmp_path, curve(keys, key=keys["dir"]))) == (
        f"config key 'export.key': cannot read key file {keys['dir']}: Is a directory")


def test_public_key_file_given_as_key(tmp_path, keys):
    pub = keys["agent_pub"]
    assert error(tmp_path, export(tmp_path, curve(keys, key=pub))) == (
        f"config key 'export.key': key file {pub} holds no secret-key (use {pub}_secret)")


def test_key_file_whose_secret_does_not_match(tmp_path, keys):
    text = keys["agent"].read_text()
    other = keys["collector"].read_text().split('public-key = "')[1][:40]
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_text(text.replace(text.split('public-key = "')[1][:40], other))
    assert error(tmp_path, export(tmp_path, curve(keys, key=mixed))) == (
        f"config key 'export.key': key file {mixed}: secret-key does not belong to public-key (file edited?)")


def test_server_key_z85_with_a_bad_character(tmp_path, keys):
    bad = keys["collector_z85"][:-1] + "~"   # 40 characters, '~' is not Z85
    assert error(tmp_path, export(tmp_path, curve(keys, server_key=bad))) == (
        "config key 'export.server_key': the value is not a CURVE key (40 Z85 characters, as "
        "`capfan keys gen` writes)")


def test_server_key_z85_that_overflows(tmp_path, keys):
    assert error(tmp_path, export(tmp_path, curve(keys, server_key="#" * 40))) == (
        "config key 'export.server_key': the value is not a valid Z85 CURVE key")


def test_server_key_too_short_is_taken_for_a_file(tmp_path, keys):
    short = keys["collector_z85"][:20]
    assert error(tmp_path, export(tmp_path, curve(keys, server_key=short))) == (
        f"config key 'export.server_key': key file {tmp_path / short} does not exist (make one with "
        "`capfan keys gen NAME`)")


def test_server_key_file_not_a_key_file(tmp_path, keys):
    junk = tmp_path / "junk.key"
    junk.write_text("# nothing\n")
    assert error(tmp_path, export(tmp_path, curve(keys, server_key=junk))) == (
        f"config key 'export.server_key': key file {junk} has no curve public-key; is it a ZeroMQ certificate?")


def test_per_collector_server_key_is_checked_with_its_own_key(tmp_path, keys):
    missing = tmp_path / "c2.key"
    collectors = f'[{{ endpoint = "{ENDPOINT}", server_key = "{missing}" }}]'
    assert error(tmp_path, export(tmp_path, curve(keys, collectors=collectors))) == (
        f"config key 'export.collectors[0].server_key': key file {missing} does not exist (make one with "
        "`capfan keys gen NAME`)")


# ------------------------------------------------------------------------------ collectors

@pytest.mark.parametrize("endpoint", ["10.0.0.1:5557", "tcp://host", "tcp://:5557", "udp://10.0.0.1:5557",
                                      "tcp://10.0.0.1:5557/x", "tcp://a b:1"])
def test_bad_endpoint_form(tmp_path, keys, endpoint):
    assert error(tmp_path, export(tmp_path, curve(keys, collectors=f'["{endpoint}"]'))) == (
        f"config key 'export.collectors[0]': {endpoint!r} is not a ZeroMQ endpoint like \"tcp://10.0.0.5:5557\"")


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_endpoint_port_out_of_range(tmp_path, keys, port):
    # libzmq's connect() accepts these and then never connects: --check must catch them
    endpoint = f"tcp://10.0.0.1:{port}"
    assert error(tmp_path, export(tmp_path, curve(keys, collectors=f'["{ENDPOINT}", "{endpoint}"]'))) == (
        f"config key 'export.collectors[1]': {endpoint!r}: port {port} is outside 1-65535")


@pytest.mark.parametrize("collectors", [
    f'[{{ endpoint = "{ENDPOINT}", serverkey = "collector.key" }}]',   # unknown key
    '[{ server_key = "collector.key" }]',                                # no endpoint
    '[5557]',                                                            # neither string nor table
])
def test_bad_collector_table(tmp_path, keys, collectors):
    assert error(tmp_path, export(tmp_path, curve(keys, collectors=collectors))) == (
        f"config key 'export.collectors[0]': {COLLECTOR_FORMS}")


def test_collectors_not_a_list(tmp_path, keys):
    assert error(tmp_path, export(tmp_path, curve(keys, collectors=f'"{ENDPOINT}"'))) == (
        f"config key 'export.collectors': expected a list, got '{ENDPOINT}'")


# ------------------------------------------------------------------------------ the other keys

@pytest.mark.parametrize("extra, message", [
    ('spool_max = "0"\n', "config key 'export.spool_max': must be above 0, not '0'"),
    ('spool_max = 0\n', "config key 'export.spool_max': must be above 0, not 0"),
    ('spool_max = "x"\n', "config key 'export.spool_max': expected a size like 65536, '64M' or '1G', got 'x'"),
    ('spool_policy = "drop"\n',
     "config key 'export.spool_policy': must be one of 'drop_oldest', 'drop_new', not 'drop'"),
    ('window = 0\n', "config key 'export.window': must be above 0, not 0"),
    ('window = 1.5\n', "config key 'export.window': expected an integer, got 1.5"),
    ('health_interval = 0\n', "config key 'export.health_interval': must be above 0, not 0"),
    ('security = "none"\n', "config key 'export.security': must be one of 'curve', 'plain', not 'none'"),
    ('windw = 8\n', ("config key 'export.windw': unknown key in [export]; did you mean 'window'? known keys: "
                     "collectors, drain_timeout, health_interval, key, route, security, server_key, spool_dir, "
                     "spool_max, spool_policy, window")),
    ('route = "hash"\n', "config key 'export.route': must be one of 'all', 'flow-hash', not 'hash'"),
    ('route = 2\n', "config key 'export.route': expected a string, got 2"),
])
def test_bad_value(tmp_path, keys, extra, message):
    assert error(tmp_path, export(tmp_path, curve(keys, extra=extra))) == message


# ------------------------------------------------------------------------------ valid configs

def plan(tmp_path, text) -> list[str]:
    r = check(tmp_path, text)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    return r.stdout.splitlines()


def test_valid_curve_config_passes(tmp_path, keys):
    lines = plan(tmp_path, export(tmp_path, curve(keys, extra='spool_max = "64M"\nwindow = 8\n')))
    assert lines[0].startswith("agent t: ") and any(ln.startswith("  capture  sample.q0 ") for ln in lines)


def test_valid_curve_config_with_z85_server_key_and_collector_tables(tmp_path, keys):
    collectors = (f'["{ENDPOINT}", {{ endpoint = "tcp://[::1]:5557", server_key = "{keys["collector"]}" }}, '
                  '"ipc:///run/capfan/c.sock"]')
    plan(tmp_path, export(tmp_path, curve(keys, collectors=collectors, server_key=keys["collector_z85"])))


def test_plain_needs_no_keys(tmp_path):
    lines = plan(tmp_path, export(tmp_path, f'collectors = ["{ENDPOINT}"]\nsecurity = "plain"\n'))
    exp = [ln for ln in lines if ln.startswith("export: ")]
    assert len(exp) == 1 and exp[0].startswith(f"export: to {ENDPOINT} (plain), spool "), lines


def test_no_collectors_means_no_exporter_and_no_keys(tmp_path):
    plan(tmp_path, export(tmp_path, "collectors = []\n"))


def test_flow_hash_route(tmp_path, keys):
    # one collector is fine (everything goes there); the plan says how flows are routed
    lines = plan(tmp_path, export(tmp_path, f'collectors = ["{ENDPOINT}"]\nsecurity = "plain"\nroute = "flow-hash"\n'))
    assert [ln for ln in lines if ln.startswith("export: ")][0].startswith(
        f"export: to {ENDPOINT} (plain, flows routed by flow hash), spool ")
    two = f'["{ENDPOINT}", "tcp://10.0.0.2:5557"]'
    lines = plan(tmp_path, export(tmp_path, curve(keys, collectors=two, extra='route = "flow-hash"\n')))
    assert any("flows routed by flow hash" in ln for ln in lines)
    # each flow goes to one collector: one listed twice is a mistake
    twice = f'["{ENDPOINT}", "tcp://10.0.0.2:5557", {{ endpoint = "{ENDPOINT}" }}]'
    assert error(tmp_path, export(tmp_path, curve(keys, collectors=twice, extra='route = "flow-hash"\n'))) == (
        f"config key 'export.collectors[2]': '{ENDPOINT}' is listed twice; route = \"flow-hash\" sends each flow "
        "to one collector, so each must be listed once")

"""Bad agent configs: one test per error class, each through the real CLI.

`capfan agent -c FILE --check` must reject every bad config with exit status 2 and ONE line on
stderr, `capfan: error: config key 'KEY': WHAT (and the fix)`, never a traceback. The messages are
asserted in full so that a change of wording is a deliberate one. Live-source configs use `lo`:
it exists in every network namespace and has exactly one receive queue.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capfan.agents import config as agentconfig
from capfan.agents.placement import available_cpus, format_cpu_list
from capfan.errors import ConfigError
from tests.conftest import PCAPS

REPO = str(Path(__file__).resolve().parents[2])
EXAMPLES = Path(REPO) / "agents" / "examples"
CPU_FORMS = ('expected "auto", "none", a CPU number (3), a kernel-style CPU list ("2-5,8"), '
             'or a list of numbers and ranges ([2, 3, "6-7"])')
PLACEHOLDERS = "{ring}, {capture}, {queue}, {consumer}, {member}, {instance}"
LO = '[[capture]]\ninterface = "lo"\n'
# root keeps its uid but loses the capture capabilities (bounding set: also for the exec'd python)
XDP_TAIL = ("Run the agent as root with its full capabilities, or grant them (systemd: "
            "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW; docker: --cap-add for each)")
DROP_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
             "--bounding-set=-net_raw,-net_admin,-bpf,-sys_admin"]


def config(tmp_path, body=LO, agent="", metrics="", top=""):
    """An agent config whose directories are all under tmp_path, then `body` (the captures and
    analyzers); `agent` and `metrics` go into those tables, `top` before any table."""
    return (f'{top}[agent]\nname = "t"\nrun_dir = "{tmp_path}/run"\nout = "{tmp_path}/out"\n'
            f'ring_dir = "{tmp_path}"\n{agent}[metrics]\nlisten = "127.0.0.1:0"\n{metrics}{body}')


def run_check(path, prefix=(), env=None, cwd=None):
    """`capfan agent -c PATH --check` with this repository first on the import path."""
    pythonpath = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([*prefix, sys.executable, "-m", "capfan", "agent", "-c", str(path), "--check"],
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **(env or {}), "PYTHONPATH": pythonpath})


def check(tmp_path, text, prefix=(), env=None):
    """run_check() on text written to tmp_path/agent.toml."""
    path = tmp_path / "agent.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return run_check(path, prefix, env, cwd=tmp_path)


def error(tmp_path, text, **kw) -> str:
    """The one-line error of a config that --check rejects, without the `capfan: error: ` prefix."""
    r = check(tmp_path, text, **kw)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("capfan: error: "), lines[0]
    return lines[0].removeprefix("capfan: error: ")


# ------------------------------------------------------------------------------ the file itself

def test_toml_syntax_error_names_file_line_and_column(tmp_path):
    text = config(tmp_path, '[[capture]]\ninterface = lo\n')
    line = text.splitlines().index("interface = lo") + 1
    assert error(tmp_path, text) == (f"config file {tmp_path}/agent.toml is not valid TOML: "
                                     f"Invalid value (at line {line}, column 13)")


def test_duplicate_key_is_a_toml_error(tmp_path):
    text = config(tmp_path, LO + 'interface = "lo"\n')
    line = len(text.splitlines())
    assert error(tmp_path, text) == (f"config file {tmp_path}/agent.toml is not valid TOML: "
                                     f"Cannot overwrite a value (at line {line}, column 17)")


def test_not_utf8_names_the_line(tmp_path):
    text = config(tmp_path).encode() + b"# caf\xe9\n"
    line = text.count(b"\n")
    assert error(tmp_path, text) == (f"config file {tmp_path}/agent.toml is not valid TOML: not UTF-8 "
                                     f"text (line {line}); save it as UTF-8")


def test_missing_config_file(tmp_path):
    r = run_check(tmp_path / "nope.toml")
    assert (r.returncode, r.stderr) == (2, f"capfan: error: no config file '{tmp_path}/nope.toml' (pass -c FILE; "
                                           "examples in agents/examples/)\n")


# ------------------------------------------------------------------------------ schema

@pytest.mark.parametrize("where,text,message", [
    ("top", 'verbose = 1\n',
     "config key 'verbose': unknown key in the top level; known keys: agent, analyzer, capture, export, metrics"),
    ("top", '[[captures]]\ninterface = "lo"\n',
     "config key 'captures': unknown key in the top level; did you mean 'capture'? known keys: agent, "
     "analyzer, capture, export, metrics"),
    ("agent", 'nmae = "x"\n',
     "config key 'agent.nmae': unknown key in [agent]; did you mean 'name'? known keys: drain_timeout, "
     "exit_when_done, name, out, restart, ring_dir, run_dir, start_timeout, status_interval, stop_timeout"),
    ("agent", '[agent.restart]\nbackof_max = 3\n',
     "config key 'agent.restart.backof_max': unknown key in [agent.restart]; did you mean 'backoff_max'? "
     "known keys: backoff_initial, backoff_max, max_failures, window"),
    ("agent", '[agent.restart]\nretries = 3\n',
     "config key 'agent.restart.retries': unknown key in [agent.restart]; known keys: backoff_initial, "
     "backoff_max, max_failures, window"),
    ("body", LO + 'queue = [0]\n',
     "config key 'capture[0].queue': unknown key in [capture[0]]; did you mean 'queues'? known keys: bpf, "
     "cpus, fanout, file, interface, name, options, queues, ring, source"),
    ("body", LO + 'ring = { ndsc = 4096 }\n',
     "config key 'capture[0].ring.ndsc': unknown key in [capture[0].ring]; did you mean 'ndesc'? known "
     "keys: arena, full, ndesc, snaplen"),
    ("body", LO + '[[analyzer]]\nanalyzer = "stats"\noption = { interval = 5 }\n',
     "config key 'analyzer[0].option': unknown key in [analyzer[0]]; did you mean 'options'? known keys: "
     "analyzer, captures, cpus, group_size, name, options, policy, spin_us, stall_budget_us, start, tick"),
    ("metrics", 'port = 9477\n',
     "config key 'metrics.port': unknown key in [metrics]; known keys: enabled, listen"),
])
def test_unknown_key(tmp_path, where, text, message):
    assert error(tmp_path, config(tmp_path, **{where: text})) == message


@pytest.mark.parametrize("kw,message", [
    ({"agent": '[agent.restart]\nmax_failures = "5"\n'},
     "config key 'agent.restart.max_failures': expected an integer, got '5'"),
    ({"agent": '[agent.restart]\nmax_failures = 2.5\n'},
     "config key 'agent.restart.max_failures': expected an integer, got 2.5"),
    ({"body": LO + '[[analyzer]]\nanalyzer = "stats"\ngroup_size = true\n'},
     "config key 'analyzer[0].group_size': expected an integer, got True"),
    ({"agent": 'exit_when_done = "yes"\n'},
     "config key 'agent.exit_when_done': expected true/false, got 'yes'"),
    ({"body": LO + 'cpus = true\n'},
     "config key 'capture[0].cpus': expected a string or an integer or a list, got True"),
    ({"top": 'agent = 5\n'},
     "config key 'agent': expected a table ([agent]), got int"),
    ({"body": '[capture]\ninterface = "lo"\n'},
     "config key 'capture': expected an array of tables ([[capture]])"),
    ({"body": LO + 'ring = "big"\n'},
     "config key 'capture[0].ring': expected a table ([capture[0].ring]), got str"),
])
def test_wrong_type(tmp_path, kw, message):
    # `agent = 5` beside an [agent] table would be a TOML error: that config has no [agent]
    text = kw["top"] + LO if "top" in kw else config(tmp_path, **kw)
    assert error(tmp_path, text) == message


@pytest.mark.parametrize("body,message", [
    (LO + 'source = "dpdk"\n',
     "config key 'capture[0].source': must be one of 'afpacket', 'afxdp', 'snf', 'efvi', 'pcap', not 'dpdk'"),
    (LO + 'fanout = "roundrobin"\n',
     "config key 'capture[0].fanout': must be one of 'hash', 'qm', 'lb', 'cpu', 'rollover', 'random', "
     "not 'roundrobin'"),
    (LO + 'ring = { full = "wait" }\n',
     "config key 'capture[0].ring.full': must be one of 'block', 'drop', not 'wait'"),
    (LO + '[[analyzer]]\nanalyzer = "stats"\npolicy = "best-effort"\n',
     "config key 'analyzer[0].policy': must be one of 'reliable', 'lossy', not 'best-effort'"),
])
def test_bad_choice(tmp_path, body, message):
    assert error(tmp_path, config(tmp_path, body)) == message


@pytest.mark.parametrize("kw,message", [
    ({"agent": '[agent.restart]\nwindow = 0\n'}, "config key 'agent.restart.window': must be above 0, not 0"),
    ({"agent": '[agent.restart]\nwindow = nan\n'}, "config key 'agent.restart.window': must be above 0, not nan"),
    ({"agent": 'drain_timeout = -1\n'}, "config key 'agent.drain_timeout': must be 0 or more, not -1"),
    ({"agent": '[agent.restart]\nbackoff_initial = 5\nbackoff_max = 2\n'},
     "config key 'agent.restart.backoff_max': must be at least backoff_initial (5)"),
    ({"body": LO + 'ring = { ndesc = 1000 }\n'},
     "config key 'capture[0].ring.ndesc': must be a power of two from 64 to 268435456 (e.g. 65536 or '64K'), "
     "not 1000"),
    ({"body": LO + 'ring = { arena = "64 MB!" }\n'},
     "config key 'capture[0].ring.arena': expected a size like 65536, '64M' or '1G', got '64 MB!'"),
    ({"body": LO + 'ring = { snaplen = -1 }\n'},
     "config key 'capture[0].ring.snaplen': must be 1 to 65535 bytes (0 = the ring's default), not -1"),
    ({"body": LO + 'queues = []\n'},
     "config key 'capture[0].queues': expected \"all\" or a list of receive queue numbers like [0, 1], got []"),
    ({"body": LO + 'queues = [0, 0]\n'}, "config key 'capture[0].queues': lists a queue twice: [0, 0]"),
    ({"body": LO + '[[analyzer]]\nanalyzer = "stats"\ngroup_size = 0\n'},
     "config key 'analyzer[0].group_size': must be 1 (no group) to 256, not 0"),
    ({"body": LO + '[[analyzer]]\nanalyzer = "stats"\nspin_us = -1\n'},
     "config key 'analyzer[0].spin_us': must be 0 to 1000000 microseconds, not -1"),
])
def test_bad_value(tmp_path, kw, message):
    assert error(tmp_path, config(tmp_path, **kw)) == message


def test_bad_agent_name(tmp_path):
    text = config(tmp_path).replace('name = "t"', 'name = "my agent"')
    assert error(tmp_path, text) == \
        "config key 'agent.name': 'my agent' is not a usable name: 1-64 letters, digits, '_', '.', '@' or '-'"


def test_missing_required_key(tmp_path):
    assert error(tmp_path, config(tmp_path, LO + '[[analyzer]]\nname = "x"\n')) == \
        "config key 'analyzer[0].analyzer': required key is missing"


def test_no_capture_table(tmp_path):
    assert error(tmp_path, config(tmp_path, body="")) == \
        "config key 'capture': at least 1 [[capture]] table(s) needed"


# ------------------------------------------------------------------------------ captures vs the host

@pytest.mark.parametrize("body,message", [
    ('[[capture]]\nsource = "pcap"\n',
     "config key 'capture[0].file': source = \"pcap\" replays a capture file: set file = \"PATH\""),
    ('[[capture]]\nsource = "pcap"\nfile = "x.pcap"\ninterface = "lo"\n',
     "config key 'capture[0].interface': a pcap replay reads `file`, not an interface; remove it"),
    ('[[capture]]\nsource = "afxdp"\n',
     "config key 'capture[0].interface': source = \"afxdp\" needs interface = \"NAME\" (see `ip link`)"),
    (LO + 'file = "x.pcap"\n',
     "config key 'capture[0].file': file is for source = \"pcap\"; afpacket captures `interface`"),
])
def test_source_needs_its_keys(tmp_path, body, message):
    assert error(tmp_path, config(tmp_path, body)) == message


def test_pcap_file_missing(tmp_path):
    # relative to the config file's directory, and the message shows the path it looked at
    assert error(tmp_path, config(tmp_path, '[[capture]]\nsource = "pcap"\nfile = "nope.pcap"\n')) == \
        f"config key 'capture[0].file': {tmp_path}/nope.pcap: no such file"


def test_pcap_replay_takes_no_queues_or_filter(tmp_path):
    pcap = tmp_path / "x.pcap"
    pcap.write_bytes(b"")
    replay = '[[capture]]\nsource = "pcap"\nfile = "x.pcap"\n'
    assert error(tmp_path, config(tmp_path, replay + 'queues = [1]\n')) == \
        "config key 'capture[0].queues': a replay has one queue: remove queues or set it to \"all\""
    assert error(tmp_path, config(tmp_path, replay + 'bpf = "udp"\n')) == \
        ("config key 'capture[0].bpf': filters apply to live captures; filter the file first "
         "(tcpdump -r IN -w OUT EXPR) or filter in the analyzer")


def test_interface_does_not_exist(tmp_path):
    have = ", ".join(sorted(os.listdir("/sys/class/net")))
    assert error(tmp_path, config(tmp_path, '[[capture]]\ninterface = "nope0"\n')) == \
        (f"config key 'capture[0].interface': no network interface 'nope0' in this network namespace "
         f"(have: {have}); check the name with `ip link`")


@pytest.mark.parametrize("name", [".", "..", "eth0:1", "a/b", "lo ", "abcdefghijklmnop"])
def test_interface_name_invalid(tmp_path, name):
    # "." and ".." used to pass: /sys/class/net/. exists
    assert error(tmp_path, config(tmp_path, f'[[capture]]\ninterface = "{name}"\n')) == \
        (f"config key 'capture[0].interface': {name!r} is not an interface name (1-15 characters, not '.' "
         "or '..', no '/', ':' or spaces); check the name with `ip link`")


def test_queue_beyond_the_nics_queues(tmp_path):
    assert error(tmp_path, config(tmp_path, LO + 'queues = [3]\n')) == \
        ("config key 'capture[0].queues': lo has 1 receive queue (0), so queue 3 does not exist; use "
         "queues = \"all\" or raise the count with `ethtool -L lo combined N`")


@pytest.mark.parametrize("cpus,problem", [
    ('"4-2"', "the range 4-2 runs backwards; write 2-4"),
    ('"x"', "'x' in 'x' is not a CPU number or range"),
    ('"1,,2"', "'' in '1,,2' is not a CPU number or range"),
    ('[1, "0-1"]', "CPU 1 is listed twice"),
    ('-1', "CPU numbers start at 0, got -1"),
    ('9000', "CPU 9000 is beyond the largest CPU number Linux supports (8191)"),
    ('[]', "the list is empty"),
    ('[1.5]', "1.5 is not a CPU number or range"),
])
def test_malformed_core_list(tmp_path, cpus, problem):
    assert error(tmp_path, config(tmp_path, LO + f'cpus = {cpus}\n')) == \
        f"config key 'capture[0].cpus': {problem}; {CPU_FORMS}"


def test_core_not_available(tmp_path):
    allowed = format_cpu_list(available_cpus())
    assert error(tmp_path, config(tmp_path, LO + 'cpus = [4095]\n')) == \
        ("config key 'capture[0].cpus': CPU 4095 (capture lo.q0) is not available to the agent (offline, "
         f"absent, or outside its cpuset/affinity); available: {allowed}; pick one of those or use \"auto\"")


def test_analyzer_core_not_available(tmp_path):
    allowed = format_cpu_list(available_cpus())
    body = LO + '[[analyzer]]\nanalyzer = "stats"\ncpus = 4095\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        ("config key 'analyzer[0].cpus': CPU 4095 (analyzer stats on lo.q0) is not available to the agent "
         f"(offline, absent, or outside its cpuset/affinity); available: {allowed}; pick one of those or use "
         "\"auto\"")


def test_fewer_cpus_than_processes(tmp_path):
    body = LO + '[[analyzer]]\nanalyzer = "stats"\ngroup_size = 2\ncpus = [0]\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        "config key 'analyzer[0].cpus': lists 1 CPU for 2 processes; give one per process or use \"auto\""


def test_fewer_cpus_than_queues():
    # lo has one queue, so the capture side is checked without the host (no NIC needed)
    raw = {"capture": [{"interface": "eth9", "queues": [0, 1, 2], "cpus": "2-3"}]}
    with pytest.raises(ConfigError) as e:
        agentconfig.build(raw, check_host=False)
    assert str(e.value) == "config key 'capture[0].cpus': lists 2 CPUs for 3 queues; give one per queue or use \"auto\""


def test_duplicate_capture_names(tmp_path):
    assert error(tmp_path, config(tmp_path, LO + LO)) == \
        ("config key 'capture[1].name': 'lo' is already used by capture[0]: give each capture its own name "
         "(rings are NAME.qQUEUE)")


def test_unknown_backend_option(tmp_path):
    assert error(tmp_path, config(tmp_path, LO + 'options = { blocksize = "4M" }\n')) == \
        ("config key 'capture[0].options.blocksize': the afpacket source has no option 'blocksize' (options: "
         "block_size, block_count, block_timeout_ms, fanout, fanout_group, fanout_flags, promisc, "
         "hw_timestamps, port)")


def test_backend_option_that_belongs_in_the_table(tmp_path):
    assert error(tmp_path, config(tmp_path, LO + 'options = { queue = 0 }\n')) == \
        "config key 'capture[0].options.queue': set queue in the [[capture]] table itself, not in options"


# ------------------------------------------------------------------------------ analyzers

def test_duplicate_analyzer_names(tmp_path):
    body = LO + '[[analyzer]]\nanalyzer = "stats"\n[[analyzer]]\nanalyzer = "stats"\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        ("config key 'analyzer[1].name': 'stats' is already used by analyzer[0]: consumer names must be "
         "unique per ring; set name = \"...\"")


def test_unknown_analyzer(tmp_path):
    from capfan.analyzers import available
    installed = ", ".join(sorted(available()))
    assert error(tmp_path, config(tmp_path, LO + '[[analyzer]]\nanalyzer = "flowmetre"\n')) == \
        (f"config key 'analyzer[0].analyzer': no analyzer named 'flowmetre' (installed: {installed}); plugins "
         "register under the entry-point group 'capfan.analyzers'")


def test_analyzer_on_unknown_capture(tmp_path):
    body = LO + '[[analyzer]]\nanalyzer = "stats"\ncaptures = ["eth0"]\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        "config key 'analyzer[0].captures': no capture named 'eth0' (captures: lo)"


def test_unknown_analyzer_option(tmp_path):
    body = LO + '[[analyzer]]\nanalyzer = "stats"\noptions = { intervall = 5 }\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        ("config key 'analyzer[0].options.intervall': analyzer 'stats' has no option 'intervall' "
         "(options: interval)")


def test_bad_analyzer_option_value(tmp_path):
    body = LO + '[[analyzer]]\nanalyzer = "stats"\noptions = { interval = "soon" }\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        ("config key 'analyzer[0].options.interval': bad value 'soon' for analyzer 'stats': could not convert "
         "string to float: 'soon'")


@pytest.mark.parametrize("value,why", [
    ("/tmp/{nope}", "unknown placeholder {nope}"),
    ("/tmp/{", "Single '{' encountered in format string"),
    # these two raised AttributeError / TypeError (a traceback) before
    ("/tmp/{ring.x}", "'str' object has no attribute 'x'"),
    ("/tmp/{queue[0]}", "'int' object is not subscriptable"),
])
def test_option_placeholder_error(tmp_path, value, why):
    body = LO + f'[[analyzer]]\nanalyzer = "recorder"\noptions = {{ dir = "{value}" }}\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        (f"config key 'analyzer[0].options.dir': cannot fill in {value!r}: {why}; placeholders: {PLACEHOLDERS} "
         "(write {{ and }} for literal braces)")


# ------------------------------------------------------------------------------ metrics, directories

@pytest.mark.parametrize("listen,reason", [
    ("localhost:99999", "port 99999 is above 65535"),
    ("::1:9477", "put an IPv6 address in brackets, e.g. [::1]:9477"),
    ("127.0.0.1:", "no port"),
    ("127.0.0.1:http", "port 'http' is not a number"),
])
def test_bad_metrics_listen(tmp_path, listen, reason):
    text = config(tmp_path).replace('listen = "127.0.0.1:0"', f'listen = "{listen}"')
    assert error(tmp_path, text) == \
        (f"config key 'metrics.listen': {listen!r} is not a listen address ({reason}); write HOST:PORT, "
         "e.g. 127.0.0.1:9477, [::1]:9477 or 9477 (loopback)")


def test_run_dir_cannot_be_created(tmp_path):
    # tests run as root, for whom every directory is writable: a regular file in the path is what
    # stops root too (and an executable one used to pass the check)
    (tmp_path / "file").write_text("#!/bin/sh\n")
    (tmp_path / "file").chmod(0o755)
    text = config(tmp_path).replace(f'run_dir = "{tmp_path}/run"', f'run_dir = "{tmp_path}/file/run"')
    assert error(tmp_path, text) == \
        (f"config key 'agent.run_dir': cannot create {tmp_path}/file/run: {tmp_path}/file is a file, not a "
         "directory; set run_dir to a directory path")
    text = config(tmp_path).replace(f'run_dir = "{tmp_path}/run"', f'run_dir = "{tmp_path}/file"')
    assert error(tmp_path, text) == \
        f"config key 'agent.run_dir': {tmp_path}/file is a file, not a directory; set run_dir to a directory path"


def test_out_dir_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    text = config(tmp_path).replace(f'out = "{tmp_path}/out"', 'out = "file/records"')  # relative: to the config
    assert error(tmp_path, text) == \
        (f"config key 'agent.out': cannot create {tmp_path}/file/records: {tmp_path}/file is a file, not a "
         "directory; set out to a directory path")


def test_ring_dir_not_a_directory(tmp_path):
    text = config(tmp_path).replace(f'ring_dir = "{tmp_path}"', f'ring_dir = "{tmp_path}/nope"')
    assert error(tmp_path, text) == \
        f"config key 'agent.ring_dir': {tmp_path}/nope is not a directory (use /dev/shm or a hugetlbfs mount)"


# root writes anywhere through CAP_DAC_OVERRIDE: as root, drop it (and DAC_READ_SEARCH) so the
# directory's mode applies, as it does to an unprivileged agent
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def test_run_dir_not_writable(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    prefix = []
    if os.geteuid() == 0:
        os.chown(tmp_path / "ro", 65534, 65534)   # nobody's: root without DAC override may not write
        prefix = NO_DAC
    text = config(tmp_path).replace(f'run_dir = "{tmp_path}/run"', f'run_dir = "{tmp_path}/ro/run"')
    assert error(tmp_path, text, prefix=prefix) == \
        (f"config key 'agent.run_dir': cannot write status under {tmp_path}/ro/run ({tmp_path}/ro is not "
         "writable): run as root, or set run_dir to a directory you own")


# ------------------------------------------------------------------------------ privileges

def _without_capture_caps() -> list[str]:
    """Command prefix that runs the agent without CAP_NET_RAW/NET_ADMIN/BPF/SYS_ADMIN."""
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv (util-linux) to drop root's capabilities")
        return DROP_CAPS
    if agentconfig.effective_caps() >> agentconfig.CAP_NET_RAW & 1:
        pytest.skip("this non-root process has CAP_NET_RAW")
    return []


def test_missing_cap_net_raw(tmp_path):
    assert error(tmp_path, config(tmp_path), prefix=_without_capture_caps()) == \
        ("config key 'capture[0].source': capturing lo with afpacket needs CAP_NET_RAW; this process lacks "
         "CAP_NET_RAW. Run the agent as root with its full capabilities, or grant them (systemd: "
         "AmbientCapabilities=CAP_NET_RAW; docker: --cap-add for each)")


def test_missing_cap_bpf(tmp_path):
    assert error(tmp_path, config(tmp_path, LO + 'source = "afxdp"\n'), prefix=_without_capture_caps()) == \
        ("config key 'capture[0].source': capturing lo with afxdp needs CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF "
         "(CAP_SYS_ADMIN instead of CAP_BPF before Linux 5.8); this process lacks CAP_NET_RAW, CAP_NET_ADMIN and "
         "CAP_BPF. " + XDP_TAIL)


def test_replay_needs_no_privileges(tmp_path):
    pcap = tmp_path / "x.pcap"
    pcap.write_bytes(b"")
    r = check(tmp_path, config(tmp_path, '[[capture]]\nsource = "pcap"\nfile = "x.pcap"\n'),
              prefix=_without_capture_caps())
    assert (r.returncode, r.stderr) == (0, "")


def _caps(*names):
    return sum(1 << getattr(agentconfig, n) for n in names)


def _lo_workers(source):
    return agentconfig.build({"capture": [{"interface": "lo", "source": source}]}, check_host=False).captures


def test_check_privileges_alternatives():
    """afxdp takes CAP_BPF or (kernels before 5.8) CAP_SYS_ADMIN; only what is missing is named."""
    xdp = _lo_workers("afxdp")
    agentconfig.check_privileges(xdp, _caps("CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF"))
    agentconfig.check_privileges(xdp, _caps("CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"))
    agentconfig.check_privileges(_lo_workers("afpacket"), _caps("CAP_NET_RAW"))
    with pytest.raises(ConfigError) as e:
        agentconfig.check_privileges(xdp, _caps("CAP_NET_RAW", "CAP_NET_ADMIN"))
    assert str(e.value) == ("config key 'capture[0].source': capturing lo with afxdp needs CAP_NET_RAW, "
                            "CAP_NET_ADMIN and CAP_BPF (CAP_SYS_ADMIN instead of CAP_BPF before Linux 5.8); this "
                            "process lacks CAP_BPF. " + XDP_TAIL)
    with pytest.raises(ConfigError) as e:
        agentconfig.check_privileges(_lo_workers("afpacket"), _caps("CAP_NET_ADMIN", "CAP_BPF"))
    assert str(e.value) == ("config key 'capture[0].source': capturing lo with afpacket needs CAP_NET_RAW; this "
                            "process lacks CAP_NET_RAW. Run the agent as root with its full capabilities, or grant "
                            "them (systemd: AmbientCapabilities=CAP_NET_RAW; docker: --cap-add for each)")
    assert agentconfig.needed_caps("pcap") == []


# ------------------------------------------------------------------------------ valid configs

def _example(tmp_path, name, pcap=None) -> Path:
    """A copy of agents/examples/NAME.toml that works on any host: eth0 -> lo, records under
    tmp_path, and (replay) `file` pointed at a capture that exists."""
    text = (EXAMPLES / name).read_text()
    text = text.replace('interface = "eth0"', 'interface = "lo"')
    text = re.sub(r'(?m)^out = "[^"]*"', f'out = "{tmp_path}/records"', text)
    if pcap is not None:
        text = re.sub(r'(?m)^file = "[^"]*"', f'file = "{pcap}"', text)
    path = tmp_path / name
    path.write_text(text)
    return path


def _plan(tmp_path, text) -> list[str]:
    r = check(tmp_path, text, env={"CAPFAN_RUN_DIR": str(tmp_path / "run")})
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("agent ") and lines[1] == "metrics: http://127.0.0.1:9477/metrics", lines
    assert lines[2].startswith("export: "), lines
    workers = [ln for ln in lines[3:] if not ln.startswith("warning: ")]
    assert lines[3:3 + len(workers)] == workers, "warnings come after the workers"
    return [re.sub(r"cpu \d+$", "cpu N", re.sub(r"  cpu \d+  spin_us", "  cpu N  spin_us", ln)) for ln in workers]


def test_example_afpacket_checks(tmp_path):
    if agentconfig.effective_caps() >> agentconfig.CAP_NET_RAW & 1 == 0:
        pytest.skip("needs CAP_NET_RAW")
    assert _plan(tmp_path, _example(tmp_path, "afpacket.toml").read_text()) == [
        "  capture  lo.q0                afpacket lo queue 0  cpu N",
        "  analyzer lo.q0                flowmeter        flowmeter  cpu N  spin_us 0",
        "  analyzer lo.q0                recorder         recorder  cpu N  spin_us 0",
    ]


def test_example_afxdp_checks(tmp_path):
    caps = agentconfig.effective_caps()
    if not all(caps >> c & 1 for c in (agentconfig.CAP_NET_RAW, agentconfig.CAP_NET_ADMIN)) or \
            not caps >> agentconfig.CAP_BPF & 1 and not caps >> agentconfig.CAP_SYS_ADMIN & 1:
        pytest.skip("needs CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF")
    assert _plan(tmp_path, _example(tmp_path, "afxdp.toml").read_text()) == [
        "  capture  lo.q0                afxdp    lo queue 0  cpu N",
        "  analyzer lo.q0                flowmeter        flowmeter  cpu N  spin_us 0",
        *[f"  analyzer lo.q0                ids-{i}            stats group ids member {i} of 4  cpu N  spin_us 0"
          for i in range(4)],
    ]


def test_example_replay_checks(tmp_path):
    # the bundled sample if there is one (the copy is not beside the original, so it gets the absolute path)
    sample = Path(REPO) / "capfan" / "samples" / "sample.pcap"
    pcap = sample if sample.exists() else next(iter(sorted(PCAPS.glob("*.pcap"))), None)
    if pcap is None:
        pytest.skip(f"no capfan/samples/sample.pcap and no captures in {PCAPS}")
    path = _example(tmp_path, "replay.toml", pcap)
    file = str(pcap)
    ring = agentconfig._stem(file) + ".q0"
    assert _plan(tmp_path, path.read_text()) == [
        f"  capture  {ring:<20} pcap     {file}  cpu N",
        f"  analyzer {ring:<20} flowmeter        flowmeter  cpu N  spin_us 0",
        f"  analyzer {ring:<20} stats            stats  cpu N  spin_us 0",
        f"  analyzer {ring:<20} rec-0            recorder group rec member 0 of 2  cpu N  spin_us 0",
        f"  analyzer {ring:<20} rec-1            recorder group rec member 1 of 2  cpu N  spin_us 0",
    ]


# ------------------------------------------------------------------------------ kernel-bypass sources

def test_efvi_without_the_c_layer(tmp_path):
    """This build has no ef_vi layer (no Onload headers): the config says so and how to get it."""
    body = '[[capture]]\nsource = "efvi"\ninterface = "lo"\n'
    assert error(tmp_path, config(tmp_path, body)) == (
        "config key 'capture[0].source': this capfan was built without ef_vi (the build found no Onload "
        "etherfabric headers): install Onload's development files (etherfabric/vi.h, pd.h, memreg.h and libciul), "
        "set CAPFAN_ONLOAD_PREFIX=DIR when they are not under /usr, then rebuild capfan (pip install -e . or "
        "python setup.py build_ext --inplace); the build prints 'capfan build: compiled ... src_efvi.c'")


def test_efvi_is_one_capture_not_a_queue(tmp_path):
    body = '[[capture]]\nsource = "efvi"\ninterface = "lo"\nqueues = [1]\n'
    assert error(tmp_path, config(tmp_path, body)) == (
        "config key 'capture[0].queues': an ef_vi capture takes what its filters match, not one NIC queue: use "
        "queues = \"all\" (one capture process) and spread it over VIs with options = { rss_vis = N } (ring ports "
        "0..N-1)")
    raw = {"capture": [{"source": "efvi", "interface": "eth9", "options": {"rss_vis": 4, "wait": "interrupt"}}]}
    (w,) = agentconfig.build(raw, check_host=False).captures
    assert (w.ring, w.live, w.options) == ("eth9.q0", True, {"rss_vis": 4, "wait": "interrupt", "queue": 0})


def test_snf_rings_are_the_queues(tmp_path):
    body = '[[capture]]\nsource = "snf"\ninterface = "snf0"\nqueues = [3]\noptions = { num_rings = 2 }\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        "config key 'capture[0].queues': the SNF port is opened with num_rings = 2, so ring 3 does not exist (rings 0-1)"
    body = '[[capture]]\nsource = "snf"\ninterface = "snf0"\nbpf = "udp"\n'
    assert error(tmp_path, config(tmp_path, body)) == \
        "config key 'capture[0].bpf': SNF captures take no BPF filter: filter in the analyzer"
    raw = {"capture": [{"source": "snf", "interface": "snf0", "options": {"num_rings": 2, "app_id": 7}}]}
    ws = agentconfig.build(raw, check_host=False).captures
    assert [(w.ring, w.options) for w in ws] == [("snf0.q0", {"num_rings": 2, "app_id": 7, "queue": 0}),
                                                 ("snf0.q1", {"num_rings": 2, "app_id": 7, "queue": 1})]

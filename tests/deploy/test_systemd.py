"""deploy/systemd units: the agent gets exactly the capabilities capture needs and the collector
none; both run as the unprivileged capfan user with systemd's sandboxing; systemd itself accepts
the files (`systemd-analyze verify`, with ExecStart pointed at this checkout's capfan)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from capfan.agents import config as agent_config

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
AGENT_CAPS = {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF", "CAP_IPC_LOCK", "CAP_SYS_NICE"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (systemd allows a key several times;
    an empty assignment resets the list, as systemd does)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"{path.name}:{n}: {line!r}"
        key, value = (s.strip() for s in line.split("=", 1))
        vals = section.setdefault(key, [])
        if value == "":
            vals.clear()
            vals.append("")
        else:
            vals.append(value)
    return out


def one(unit, key, section="Service") -> str:
    """The value of a key set once."""
    vals = unit[section].get(key)
    assert vals is not None and len(vals) == 1, (key, vals)
    return vals[0]


def words(unit, key, section="Service") -> set[str]:
    """Space-separated items over every assignment of a key."""
    return {w for v in unit[section].get(key, []) for w in v.split()}


@pytest.fixture(scope="module")
def agent():
    return parse_unit(UNITS / "capfan-agent.service")


@pytest.fixture(scope="module")
def collect():
    return parse_unit(UNITS / "capfan-collect.service")


def test_agent_gets_exactly_the_capture_capabilities(agent):
    assert words(agent, "CapabilityBoundingSet") == AGENT_CAPS
    assert words(agent, "AmbientCapabilities") == AGENT_CAPS
    assert one(agent, "LimitMEMLOCK") == "infinity"
    # what the agent's own privilege check asks for (agents/config.py) is inside the set
    needed = {agent_config.CAP_NAMES[alts[0]] for src in agent_config.LIVE_SOURCES
              for alts in agent_config.needed_caps(src)}
    assert needed <= AGENT_CAPS


def test_collector_gets_no_capability(collect):
    assert collect["Service"]["CapabilityBoundingSet"] == [""]
    assert collect["Service"].get("AmbientCapabilities", [""]) == [""]
    assert "LimitMEMLOCK" not in collect["Service"]


@pytest.mark.parametrize("name", ["capfan-agent.service", "capfan-collect.service"])
def test_units_run_unprivileged_and_sandboxed(name):
    u = parse_unit(UNITS / name)
    role = "agent" if "agent" in name else "collect"
    assert one(u, "User") == "capfan" and one(u, "Group") == "capfan"
    assert one(u, "ExecStart") == f"/usr/local/bin/capfan {role} -c /etc/capfan/{'agent' if role == 'agent' else 'collector'}.toml"
    assert one(u, "StateDirectory") == "capfan"
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                      "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
                      "LockPersonality": "yes", "SystemCallArchitectures": "native"}.items():
        assert one(u, key) == want, key
    assert "@system-service" in words(u, "SystemCallFilter")
    assert one(u, "WantedBy", "Install") == "multi-user.target"


def test_agent_sandbox_leaves_what_capture_uses(agent):
    assert words(agent, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
                                                       "AF_PACKET", "AF_XDP"}
    assert "bpf" in words(agent, "SystemCallFilter")          # loading the XDP program
    assert "/dev/shm" in words(agent, "ReadWritePaths")       # the rings
    assert "PrivateDevices" not in agent["Service"] and "RemoveIPC" not in agent["Service"]
    # the run and state directories are the config defaults (agents/config.py)
    assert one(agent, "RuntimeDirectory") == "capfan"
    assert one(agent, "Environment") == "CAPFAN_RUN_DIR=/run/capfan"
    assert agent_config.AGENT["out"].default.startswith("/var/lib/capfan/")
    assert agent_config.EXPORT["spool_dir"].default.startswith("/var/lib/capfan/")


def test_collector_sandbox_has_no_raw_sockets(collect):
    assert words(collect, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one(collect, "PrivateDevices") == "yes"


def verify(tmp_path, name, text):
    """`systemd-analyze verify` of a unit text saved as tmp/name: (returncode, output)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd)")
    p = tmp_path / name
    p.write_text(text)
    r = subprocess.run([exe, "verify", "--man=no", str(p)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    return r.returncode, (r.stdout + r.stderr).strip()


@pytest.mark.parametrize("name", ["capfan-agent.service", "capfan-collect.service"])
def test_systemd_analyze_verify_accepts_the_units_without_a_warning(tmp_path, name):
    capfan = shutil.which("capfan")
    assert capfan, "capfan is not on PATH"
    text = (UNITS / name).read_text().replace("/usr/local/bin/capfan", capfan)
    rc, out = verify(tmp_path, name, text)
    assert rc == 0 and name not in out, out
    # the check is live: a misspelt setting is reported
    rc, out = verify(tmp_path, name, re.sub(r"^ProtectHome=yes$", "ProtectHome=sometimes", text, flags=re.M))
    assert "protect home" in out.lower(), out

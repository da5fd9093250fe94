"""docker-compose.yml, deploy/Dockerfile and the configs the cluster mounts: the compose file passes
`docker-compose config` (CI has no container engine), every config it mounts passes capfan's own
validation with the keys the `keys` service makes, every mounted path and every COPY source exists.
(tests/deploy/test_composenet.py runs the same file for real, one network namespace per service.)"""
import fnmatch
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from tests.deploy import composefile
from tests.deploy.composefile import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
AGENT_ROLES = ("sensor-a", "sensor-b")
KEY_NAMES = ("collector", *AGENT_ROLES, "sensor-live")
UNITS = REPO / "deploy" / "systemd"


@pytest.fixture(scope="module")
def compose():
    """The parsed docker-compose.yml."""
    return composefile.load()


def docker_compose(*args, cwd=REPO):
    """Run the Debian package's docker-compose (1.29)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (apt-get install docker-compose; .ci/install does it)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": "capfan-test"})


def test_docker_compose_accepts_the_file():
    r = docker_compose("config", "-q")
    assert r.returncode == 0, r.stderr


def test_docker_compose_config_would_catch_a_broken_file(tmp_path):
    """The check above is live: the same file with a dependency on a missing service is refused."""
    text = (REPO / "docker-compose.yml").read_text()
    broken = text.replace("clickhouse: {condition: service_healthy}", "clickhous: {condition: service_healthy}", 1)
    assert broken != text
    (tmp_path / "docker-compose.yml").write_text(broken)
    r = docker_compose("config", "-q", cwd=tmp_path)
    assert r.returncode != 0 and "clickhous" in r.stderr, r.stderr


def test_services_and_their_wiring(compose):
    s = compose.services
    assert set(s) == {"clickhouse", "keys", "collector", *AGENT_ROLES}
    # the official ClickHouse image at a pinned release, not a moving tag
    image, _, tag = s["clickhouse"].image.partition(":")
    assert image == "clickhouse/clickhouse-server" and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", tag), s["clickhouse"].image
    assert s["clickhouse"].mount_at("/var/lib/clickhouse").kind == "volume"
    assert s["collector"].argv == ["capfan", "collect", "-c", "/etc/capfan/collector.toml"]
    assert s["collector"].depends_on == {"clickhouse": "service_healthy", "keys": "service_completed_successfully"}
    for name in AGENT_ROLES:
        assert s[name].argv == ["capfan", "agent", "-c", "/etc/capfan/sensor.toml"]
        assert s[name].depends_on["keys"] == "service_completed_successfully"
        assert s[name].mount_at("/etc/capfan/keys").read_only
    assert compose.start_order().index("keys") < compose.start_order().index("collector")
    # every long-running service reports its health; the one-shot key maker does not need to
    assert {n for n, v in s.items() if v.healthcheck} == {"clickhouse", "collector", *AGENT_ROLES}
    # capfan's containers: the unprivileged user, no capability, read-only root
    for name in ("keys", "collector", *AGENT_ROLES):
        raw = s[name].raw
        assert s[name].user == "10001:10001" and raw["cap_drop"] == ["ALL"] and "cap_add" not in raw
        assert raw["read_only"] is True and "no-new-privileges:true" in raw["security_opt"]


def test_only_the_api_is_published_and_only_on_loopback(compose):
    published = {n: v.ports for n, v in compose.services.items() if v.ports}
    # the API, and the CURVE intake for the optional sensor on the host network
    assert published == {"collector": ["127.0.0.1:8477:8477", "127.0.0.1:5557:5557"]}
    cfg = tomllib.loads((REPO / "deploy/compose/collector.toml").read_text())
    assert cfg["api"]["listen"].rsplit(":", 1)[1] == "8477"
    assert cfg["collector"]["listen"].rsplit(":", 1)[1] == "5557" and cfg["security"]["mode"] == "curve"


def test_mounted_host_paths_exist():
    compose = composefile.load(profiles=("live",))
    missing = [f"{n}: {m.source} -> {m.target}" for n, v in compose.services.items() for m in v.mounts
               if m.kind == "bind" and not os.path.exists(m.source)]
    assert not missing, missing
    declared = set(compose.volumes)
    used = {m.source for v in compose.services.values() for m in v.mounts if m.kind == "volume"}
    assert used == declared


def volumes_as_dirs(compose, tmp_path) -> dict[str, str]:
    """One directory per named volume (what a container engine would create)."""
    out = {}
    for name in compose.volumes:
        out[name] = str(tmp_path / "volumes" / name)
        os.makedirs(out[name])
    return out


def mapping(service, volumes) -> list[tuple[str, str]]:
    """(container path, host path) for each of a service's mounts."""
    return [(m.target, m.source if m.kind == "bind" else volumes[m.source]) for m in service.mounts]


def run_keys_service(service, volumes):
    """The keys service's own shell script with its container paths mapped onto the volume dirs."""
    argv = list(service.argv)
    for target, host in mapping(service, volumes):
        argv = [a.replace(target, host) for a in argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_keys_service_makes_every_key_once(compose, tmp_path):
    vols = volumes_as_dirs(compose, tmp_path)
    run_keys_service(compose.services["keys"], vols)
    keydir = vols["keys"]
    names = KEY_NAMES
    assert sorted(os.listdir(keydir)) == sorted(f"{n}{ext}" for n in names for ext in (".key", ".key_secret"))
    before = {f: open(os.path.join(keydir, f)).read() for f in os.listdir(keydir)}
    # idempotent: a second run (docker compose up again) keeps the keys; a half-written pair is redone
    run_keys_service(compose.services["keys"], vols)
    assert {f: open(os.path.join(keydir, f)).read() for f in os.listdir(keydir)} == before
    os.remove(os.path.join(keydir, "sensor-b.key_secret"))
    run_keys_service(compose.services["keys"], vols)
    assert os.path.exists(os.path.join(keydir, "sensor-b.key_secret"))
    assert open(os.path.join(keydir, "sensor-b.key")).read() != before["sensor-b.key"]
    assert open(os.path.join(keydir, "collector.key")).read() == before["collector.key"]


def mounted_config(service, volumes) -> tuple[str, dict]:
    """The host file mounted as the service's -c config, parsed with its container paths remapped."""
    container = service.argv[service.argv.index("-c") + 1]
    host = composefile.host_path(container, mapping(service, volumes))
    assert host is not None and os.path.isfile(host), f"{service.name}: {container} is not mounted"
    with open(host, "rb") as f:
        return host, composefile.remap_strings(tomllib.load(f), mapping(service, volumes))


@pytest.mark.parametrize("name", AGENT_ROLES)
def test_sensor_configs_pass_the_agent_validation(compose, tmp_path, name, ring_dir):
    from capfan.agents import config as agent_config
    vols = volumes_as_dirs(compose, tmp_path)
    run_keys_service(compose.services["keys"], vols)
    svc = compose.services[name]
    host, raw = mounted_config(svc, vols)
    # check_host: the replayed file is readable, run/records directories can be made
    cfg = agent_config.build(raw, path=host, base=os.path.dirname(host), check_host=True)
    assert cfg.name == name
    assert [c.file for c in cfg.captures] == [str(REPO / "capfan" / "samples" / "sample.pcap")]
    assert cfg.exporter.curve is not None                       # CURVE, with this sensor's own key
    assert cfg.exporter.curve["public"] in open(os.path.join(vols["keys"], f"{name}.key")).read()
    # it sends to the collector service's intake port
    col = tomllib.loads((REPO / "deploy/compose/collector.toml").read_text())
    port = col["collector"]["listen"].rsplit(":", 1)[1]
    assert [c["endpoint"] for c in cfg.exporter.collectors] == [f"tcp://collector:{port}"]
    # every path the agent writes is on its own volume, none in the read-only image
    data = svc.mount_at("/var/lib/capfan")
    assert data.kind == "volume" and not data.read_only
    for p in (cfg.run_dir, cfg.out, cfg.exporter.spool_dir):
        assert p.startswith(vols[data.source] + "/"), p
    # the ring fits in the container's /dev/shm
    ring = cfg.captures[0].geometry
    assert ring["ndesc"] * 32 + ring["arena"] + (1 << 20) < svc.shm_size


def test_collector_config_passes_the_collector_validation(compose, tmp_path):
    from capfan.collector import config as collector_config
    vols = volumes_as_dirs(compose, tmp_path)
    run_keys_service(compose.services["keys"], vols)
    svc = compose.services["collector"]
    host, raw = mounted_config(svc, vols)
    cfg = collector_config.resolve(raw, os.path.dirname(host))
    assert cfg["security"]["mode"] == "curve"
    public = {n: open(os.path.join(vols["keys"], f"{n}.key")).read() for n in (*AGENT_ROLES, "sensor-live")}
    assert len(cfg["security"]["authorized"]) == 3
    assert all(any(k in text for text in public.values()) for k in cfg["security"]["authorized"])
    # the store is ClickHouse, the compose service of that name, on its native port
    assert cfg["collector"]["engine"] == "clickhouse"
    assert cfg["clickhouse"]["host"] == "clickhouse" and "clickhouse" in compose.services
    assert cfg["clickhouse"]["port"] == 9000
    assert cfg["collector"]["store"].startswith(vols["collector-data"] + "/")   # its journal: on the volume


def test_live_sensor_profile_gets_the_capture_capabilities_and_nothing_else(tmp_path, ring_dir):
    from capfan.agents import config as agent_config
    from tests.deploy.test_systemd import parse_unit, words
    full = composefile.load(profiles=("live",))
    assert "sensor-live" not in composefile.load().services          # only with --profile live
    svc = full.services["sensor-live"]
    raw = svc.raw
    unit_caps = words(parse_unit(UNITS / "capfan-agent.service"), "AmbientCapabilities")
    assert {f"CAP_{c}" for c in raw["cap_add"]} == unit_caps           # the same set as the systemd unit
    assert raw["cap_drop"] == ["ALL"] and svc.user == "0:0" and raw["network_mode"] == "host"
    assert raw["ulimits"]["memlock"] == -1 and "networks" not in raw
    vols = volumes_as_dirs(full, tmp_path)
    run_keys_service(full.services["keys"], vols)
    host, doc = mounted_config(svc, vols)
    # the NIC is the user's to name: host checks off (no such interface here), the rest validated
    cfg = agent_config.build(doc, path=host, base=os.path.dirname(host), check_host=False)
    assert [c.source for c in cfg.captures] == ["afxdp"] and cfg.captures[0].queue == 0
    published = [p.split(":") for p in full.services["collector"].ports]
    intake = next(p for p in published if p[2] == "5557")
    assert [c["endpoint"] for c in cfg.exporter.collectors] == [f"tcp://{intake[0]}:{intake[1]}"]
    ring = cfg.captures[0].geometry
    assert ring["ndesc"] * 32 + ring["arena"] + (1 << 20) < svc.shm_size


def test_clickhouse_schema_mounted_for_first_start(compose):
    m = compose.services["clickhouse"].mount_at("/docker-entrypoint-initdb.d/schema.sql")
    assert m.kind == "bind" and m.read_only
    assert m.source == str(REPO / "deploy" / "clickhouse" / "schema.sql")
    assert os.path.isfile(m.source), "deploy/clickhouse/schema.sql (rendered by collector/chschema.py) is missing"


# ---------------------------------------------------------------- Dockerfile and build context

def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(negated, pattern) lines of .dockerignore, in order."""
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return out


def excluded(relpath: str, patterns) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    state = False
    for negated, pat in patterns:
        regex = fnmatch.translate(pat.replace("**/", "\0")).replace("\0", "(?:.*/)?")
        if any(re.match(regex, c) and (pat.count("/") == c.count("/") or "**" in pat) for c in candidates):
            state = not negated
    return state


def copy_sources() -> list[str]:
    """Sources of the Dockerfile's COPY lines that come from the build context (not --from=stage)."""
    out = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            out += [w for w in words[1:-1] if not w.startswith("--")]
    return out


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context():
    sources = copy_sources()
    assert {"pyproject.toml", "setup.py", "capfan", "agents", "collector"} <= set(sources)
    patterns = dockerignore_patterns()
    for src in sources:
        assert (REPO / src).exists(), src
        assert not excluded(src, patterns), f"{src} is excluded by .dockerignore"
    # the package builds from what is sent: the C core's sources and the bundled capture too
    for inner in ("capfan/_core/ring.c", "capfan/_core/build.py", "capfan/samples/sample.pcap", "agents/config.py"):
        assert not excluded(inner, patterns), inner
    # and the checkout's own build products and tests are not sent
    for junk in ("tests/test_ring.py", ".git/HEAD", "capfan/_capfan_core.abi3.so", "capfan/__pycache__/x.pyc"):
        assert excluded(junk, patterns), junk


def test_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    build, runtime = re.split(r"^FROM .*$", text, flags=re.M)[1:]
    assert "libpcap-dev" in build and "libxdp-dev" in build and "gcc" in build
    assert "-dev" not in runtime and "gcc" not in runtime          # no compiler or headers in the image
    assert re.search(r"^USER capfan$", runtime, re.M)
    assert "COPY --from=build /opt/capfan /opt/capfan" in runtime
    assert re.search(r'^ENTRYPOINT \["capfan"\]$', runtime, re.M)


def build_context(dest) -> list[str]:
    """Copy what `docker build` would send (the repository minus .dockerignore) to dest."""
    patterns = dockerignore_patterns()
    sent = []
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        dirs[:] = [d for d in dirs if d != ".git"]
        for f in files:
            rel = os.path.normpath(os.path.join(rel_root, f))
            if not excluded(rel, patterns):
                os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(os.path.join(root, f), os.path.join(dest, rel))
                sent.append(rel)
    return sent


@pytest.mark.slow
def test_the_build_context_alone_builds_what_the_image_installs(tmp_path):
    """The Dockerfile's build stage, minus the container: a setuptools build from only what
    .dockerignore lets through compiles the C core (AF_XDP included) and carries the package data
    (`setup.py build`: what `pip install .` runs, without needing the wheel package here)."""
    import sys
    ctx = tmp_path / "ctx"
    sent = build_context(ctx)
    assert "pyproject.toml" in sent and not any(p.startswith(("tests/", "deploy/")) for p in sent)
    r = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-lib", str(tmp_path / "lib")],
                       cwd=ctx, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    lib = tmp_path / "lib"
    for want in ("capfan/samples/sample.pcap", "capfan/agents/config.py", "capfan/collector/config.py",
                 "capfan/_core/ring.h"):
        assert (lib / want).is_file(), want
    assert list((lib / "capfan").glob("_capfan_core*.so"))
    # the Dockerfile's own check, against the built files only
    check = next(line for line in DOCKERFILE.read_text().splitlines() if "backends_built" in line)
    code = check.split("python -c '", 1)[1].rsplit("'", 1)[0]
    env = {**os.environ, "PYTHONPATH": str(lib), "PYTHONNOUSERSITE": "1"}
    r = subprocess.run([sys.executable, "-c", "import capfan._capfan_core as c; print(c.__file__)\n" + code],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "afxdp" in r.stdout, r.stderr
    assert r.stdout.startswith(str(lib) + "/"), r.stdout          # the freshly built core, not this checkout's

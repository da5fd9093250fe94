"""The README's main job (deploy/demo.sh) runs end to end and leaves nothing behind."""
import os
import re
import subprocess
from pathlib import Path

from capfan import samplepcap
from tests.conftest import ring_dir  # noqa: F401 - fixture
from tests.pcapfile import read_pcap

REPO = Path(__file__).resolve().parents[1]


def consumer_row(out: str, name: str) -> list[str]:
    """Cells of one consumer's row in `capfan status` output."""
    return next(line.split() for line in out.splitlines() if re.match(rf"\s+\S+\.q0\s+{name}\s", line))


def test_demo_runs_the_agent_on_the_bundled_sample_and_cleans_up(ring_dir):
    r = subprocess.run(["bash", str(REPO / "deploy" / "demo.sh")], capture_output=True, text=True, timeout=120,
                       start_new_session=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    sample = read_pcap(samplepcap.path())
    frames = len(sample)
    arp = sum(1 for f in sample if f[12:14] == b"\x08\x06")
    assert "every replay ended and the analyzers drained" in r.stderr
    # every fan-out consumer saw every packet; the recorder group split them with nothing lost
    for name in ("flowmeter", "stats"):
        row = consumer_row(r.stdout, name)
        assert row[6:9] == [str(frames), "0", "0"], row
    rec0, rec1 = consumer_row(r.stdout, "rec-0"), consumer_row(r.stdout, "rec-1")
    assert int(rec0[7]) + int(rec1[7]) == frames and int(rec0[7]) > 0 and int(rec1[7]) > 0
    assert "top flows by bytes (from sample.pcap)" in r.stdout
    m = re.search(r"^(\d+) flows, (\d+) packets metered$", r.stdout, re.M)
    assert int(m.group(1)) > 100 and int(m.group(2)) == frames - arp   # everything but ARP is metered
    assert os.listdir(ring_dir) == []  # the ring lived in our private directory and was removed


def test_demo_takes_another_capture(ring_dir):
    from tests.conftest import PCAPS
    r = subprocess.run(["bash", str(REPO / "deploy" / "demo.sh"), str(PCAPS / "afs.pcap")], capture_output=True,
                       text=True, timeout=120, start_new_session=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert consumer_row(r.stdout, "flowmeter")[6:9] == ["601", "0", "0"]
    assert "top flows by bytes (from afs.pcap)" in r.stdout
    assert os.listdir(ring_dir) == []

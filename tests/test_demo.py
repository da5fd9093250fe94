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


def run_demo(*args):
    r = subprocess.run(["bash", str(REPO / "deploy" / "demo.sh"), *args], capture_output=True, text=True,
                       timeout=180, start_new_session=True, env={**os.environ})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_demo_runs_agent_and_collector_on_the_bundled_sample_and_cleans_up(ring_dir):
    r = run_demo()
    sample = read_pcap(samplepcap.path())
    frames = len(sample)
    arp = sum(1 for f in sample if f[12:14] == b"\x08\x06")
    assert "every replay ended and the analyzers drained" in r.stderr
    assert "(curve)" in r.stdout                      # the demo uses CURVE keys, not plain text
    # every fan-out consumer saw every packet; the recorder group split them with nothing lost
    for name in ("flowmeter", "stats"):
        row = consumer_row(r.stdout, name)
        assert row[6:9] == [str(frames), "0", "0"], row
    rec0, rec1 = consumer_row(r.stdout, "rec-0"), consumer_row(r.stdout, "rec-1")
    assert int(rec0[7]) + int(rec1[7]) == frames and int(rec0[7]) > 0 and int(rec1[7]) > 0
    # the collector stored and merged the flows: every IP packet metered, nothing twice
    assert "top flows by bytes at the collector (from sample.pcap)" in r.stdout
    assert "2001:db8:ffff::443" in r.stdout           # whole addresses, also in a pipe
    m = re.search(r"^collector totals: (\d+) flows, (\d+) packets, \d+ bytes; (\d+) batches acknowledged, "
                  r"(\d+) records stored, 0 duplicates, 0 denied$", r.stdout, re.M)
    assert m, r.stdout
    assert int(m.group(1)) > 100 and int(m.group(2)) == frames - arp
    assert os.listdir(ring_dir) == []  # the ring lived in our private directory and was removed


def test_demo_takes_another_capture(ring_dir):
    from tests.conftest import PCAPS
    r = run_demo(str(PCAPS / "afs.pcap"))
    assert consumer_row(r.stdout, "flowmeter")[6:9] == ["601", "0", "0"]
    assert "top flows by bytes at the collector (from afs.pcap)" in r.stdout
    assert re.search(r"^collector totals: \d+ flows, 601 packets", r.stdout, re.M), r.stdout
    assert os.listdir(ring_dir) == []

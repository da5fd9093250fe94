"""The README's main job (deploy/demo.sh) runs end to end and leaves nothing behind."""
import os
import re
import subprocess
from pathlib import Path

from tests.conftest import PCAPS

REPO = Path(__file__).resolve().parents[1]


def test_demo_replays_meters_and_cleans_up(ring_dir):
    r = subprocess.run(["bash", str(REPO / "deploy" / "demo.sh"), str(PCAPS / "afs.pcap")], capture_output=True,
                       text=True, timeout=120, start_new_session=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert "top flows by bytes" in r.stdout
    n = int(re.search(r"^(\d+) flows$", r.stdout, re.M).group(1))
    assert n > 0
    assert "601 packets delivered, 0 dropped" in r.stdout  # the flow meter saw every packet
    assert f"({ring_dir}/capfan.demo-" in r.stdout  # the ring lived in our private directory
    assert os.listdir(ring_dir) == []  # and was removed

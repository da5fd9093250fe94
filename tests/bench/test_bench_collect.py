"""`capfan bench collect --quick`: both paths deliver and store every record exactly once (the
accounting, not the timing: speed targets are read from the bench's own table)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def test_quick_bench_stores_every_record_once(tmp_path):
    out = tmp_path / "collect.json"
    r = subprocess.run([sys.executable, "-m", "capfan", "bench", "collect", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    capfan, js = m["results"]
    assert (capfan["records"], capfan["stored"]) == (200_000, 200_000)
    assert (js["records"], js["stored"]) == (20_000, 20_000)
    assert capfan["batches"] == 20 and capfan["wire_bytes"] < js["wire_bytes"] / 10 * 200_000 / 20_000
    assert capfan["loaded_seconds"] >= capfan["seconds"] > 0      # loading follows the acknowledgements
    for line in ("records/s acked", "records/s into the queryable store", "x the JSON baseline",
                 "every record stored exactly once"):
        assert line in r.stdout

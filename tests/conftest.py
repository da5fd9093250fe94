"""Shared fixtures: every test gets its own ring directory under /dev/shm, removed afterwards."""
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest


@pytest.fixture
def ring_dir(monkeypatch):
    """A private ring directory (CAPFAN_RING_DIR) on tmpfs, deleted with everything in it."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="capfan-test-", dir=base)
    monkeypatch.setenv("CAPFAN_RING_DIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def wait_for(predicate, timeout=10.0, interval=0.005):
    """Poll predicate() until it is true or timeout seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


#: the sample captures shipped beside the repository (../shared/pcaps/tcpdump); override with
#: $CAPFAN_PCAPS (the directory holding tcpdump/)
PCAPS = (Path(os.environ.get("CAPFAN_PCAPS") or Path(__file__).resolve().parents[2] / "shared" / "pcaps")
         / "tcpdump")

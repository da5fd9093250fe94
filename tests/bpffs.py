"""A private bpffs for capfan's AF_XDP pins: the host may have none at /sys/fs/bpf, and `ip netns
exec` hides it anyway. Unmounting it at the end drops every pin the test left."""
import os
import subprocess

import pytest


def pins(root) -> list[str]:
    """Pin files under a pin root, relative to it ("<netns inode>-<ifindex>/prog", ...)."""
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


@pytest.fixture
def bpffs(tmp_path, monkeypatch):
    """Mount a bpffs for this test and point CAPFAN_BPF_DIR at <mount>/capfan; yields that dir."""
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a bpffs (needs root): {r.stderr.strip()}")
    monkeypatch.setenv("CAPFAN_BPF_DIR", str(mnt / "capfan"))
    try:
        yield mnt / "capfan"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

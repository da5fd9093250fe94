"""capfan.flowkey: the canonical flow key hash agents route flow records by. Checked against an
independent pure-Python implementation of the documented formula, for symmetry, uniformity,
IPv4/IPv6, VLANs and the n=1 case."""
import ipaddress
import random
import subprocess
import sys

import numpy as np
import pytest

from capfan import records
from capfan.flowkey import FlowKeyError, flow_hash, flow_shard, has_flow_key

MASK = (1 << 64) - 1


def ref_mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def ref_hash(src, dst, sport, dport, proto, vlan):
    """The module docstring's formula, in plain integers (addresses as text)."""
    def ep(addr, port):
        a = ipaddress.ip_address(addr)
        raw = (b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a.packed
        return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big"), port
    a, b = sorted([ep(src, sport), ep(dst, dport)])
    h = 0x9E3779B97F4A7C15
    for w in (a[0], a[1], b[0], b[1], a[2] << 48 | b[2] << 32 | vlan << 8 | proto):
        h = ref_mix64(h ^ w)
    return h


def make(rows):
    """Flow records from (src, dst, sport, dport, proto, vlan) tuples."""
    r = records.empty(len(rows))
    for i, (s, d, sp, dp, pr, vl) in enumerate(rows):
        r["sourceIPAddress"][i] = np.void(records.pack_address(s))
        r["destinationIPAddress"][i] = np.void(records.pack_address(d))
        r["sourceTransportPort"][i], r["destinationTransportPort"][i] = sp, dp
        r["protocolIdentifier"][i], r["vlanId"][i] = pr, vl
        r["ipVersion"][i] = ipaddress.ip_address(s).version
    return r


ROWS = [
    ("10.0.0.1", "10.0.0.2", 1234, 80, 6, 0),
    ("10.0.0.2", "10.0.0.1", 80, 1234, 6, 0),        # the reverse of the first
    ("10.0.0.1", "10.0.0.2", 1234, 80, 17, 0),       # other protocol
    ("10.0.0.1", "10.0.0.2", 1234, 80, 6, 100),      # other VLAN
    ("10.0.0.1", "10.0.0.1", 5000, 4000, 17, 0),     # same address: ordered by port
    ("2001:db8::1", "2001:db8::2", 443, 55000, 6, 7),
    ("fe80::1", "::1", 0, 0x0800, 58, 4095),
    ("192.168.1.1", "8.8.8.8", 53000, 53, 17, 1),
    ("0.0.0.0", "255.255.255.255", 68, 67, 17, 0),
    ("::ffff:10.0.0.1", "10.0.0.2", 1234, 80, 6, 0), # the IPv4-mapped form is the IPv4 address
]


def test_hash_matches_the_documented_formula():
    got = flow_hash(make(ROWS))
    assert got.dtype == np.uint64
    assert [int(x) for x in got] == [ref_hash(*r) for r in ROWS]
    for n in (1, 2, 3, 7, 1000):
        assert [int(x) for x in flow_shard(make(ROWS), n)] == [ref_hash(*r) % n for r in ROWS]


def test_a_fixed_vector_stays_the_same():
    # pinned output: a change here re-shards every deployment (agents of different versions would
    # send one flow to two collectors), so it must be deliberate
    assert [int(x) for x in flow_shard(make(ROWS[:4]), 2)] == [ref_hash(*r) % 2 for r in ROWS[:4]]
    assert ref_hash("10.0.0.1", "10.0.0.2", 1234, 80, 6, 0) == int(flow_hash(make(ROWS[:1]))[0])
    assert int(flow_hash(make(ROWS[:1]))[0]) == 0x8ED5B3C2336BC3BE


def test_symmetric_and_key_sensitive():
    h = [int(x) for x in flow_hash(make(ROWS))]
    assert h[0] == h[1] and h[0] == h[9]                      # reverse direction, IPv4-mapped spelling
    assert len({h[0], h[2], h[3], h[4], h[5], h[6], h[7], h[8]}) == 8  # proto, vlan, v6 ... differ
    rnd = random.Random(5)
    rows = [(f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
             str(ipaddress.IPv6Address(rnd.getrandbits(128))), rnd.randrange(65536), rnd.randrange(65536),
             rnd.choice([6, 17, 1]), rnd.randrange(4096)) for _ in range(500)]
    fwd, rev = make(rows), make([(d, s, dp, sp, p, v) for s, d, sp, dp, p, v in rows])
    assert np.array_equal(flow_hash(fwd), flow_hash(rev))
    assert np.array_equal(flow_shard(fwd, 5), flow_shard(rev, 5))


def test_ignores_everything_but_the_key():
    r = make(ROWS)
    before = flow_hash(r).copy()
    r["packetDeltaCount"] = 99
    r["flowStartNanoseconds"] = 12345
    r["dot1qCustomerVlanId"] = 7
    r["flowHash"] = 3
    assert np.array_equal(flow_hash(r), before)
    # a view of the records (strided, as a slice of a bigger batch) hashes the same
    assert np.array_equal(flow_hash(r[::2]), before[::2])


def test_uniform_over_random_keys():
    rng = np.random.default_rng(11)
    n_rec = 200_000
    r = records.empty(n_rec)
    raw = rng.integers(0, 256, size=(n_rec, 16), dtype=np.uint8)
    raw[: n_rec // 2, :12] = np.frombuffer(b"\0" * 10 + b"\xff\xff", dtype=np.uint8)  # half IPv4
    r["sourceIPAddress"] = raw.view("V16").ravel()
    r["destinationIPAddress"] = np.roll(raw, 1, axis=0).view("V16").ravel()
    r["sourceTransportPort"] = rng.integers(0, 65536, n_rec)
    r["destinationTransportPort"] = rng.choice([53, 80, 443], n_rec)
    r["protocolIdentifier"] = rng.choice([6, 17], n_rec)
    for n in (2, 3, 16):
        counts = np.bincount(flow_shard(r, n), minlength=n)
        exp = n_rec / n
        chi2 = float(((counts - exp) ** 2 / exp).sum())
        # chi-square with n-1 degrees of freedom: far below this bound unless the hash is skewed
        assert chi2 < 3 * (n - 1) + 30, (n, counts, chi2)
    # low-entropy keys (sequential hosts, one port) spread too
    seq = make([(f"10.0.{i // 256}.{i % 256}", "10.9.9.9", 40000, 443, 6, 0) for i in range(4096)])
    counts = np.bincount(flow_shard(seq, 4), minlength=4)
    assert counts.min() > 4096 / 4 * 0.85, counts


def test_n_is_one_and_bad_n():
    assert not flow_shard(make(ROWS), 1).any()
    assert flow_shard(make(ROWS), 1).dtype == np.uint32
    assert len(flow_shard(records.empty(0), 3)) == 0
    for bad in (0, -1, True, 2.0):
        with pytest.raises(FlowKeyError, match="number of collectors"):
            flow_shard(make(ROWS), bad)


def test_records_without_the_key_are_refused_by_name():
    health = np.zeros(3, dtype=[("rx", "<u8"), ("drops", "<u8")])
    assert has_flow_key(records.FLOW_DTYPE) and not has_flow_key(health.dtype)
    with pytest.raises(FlowKeyError, match="'sourceIPAddress' is missing"):
        flow_hash(health)
    odd = np.zeros(2, dtype=[(n, "<u4") for n in ("sourceIPAddress", "destinationIPAddress",
                                                  "sourceTransportPort", "destinationTransportPort",
                                                  "protocolIdentifier", "vlanId")])
    assert not has_flow_key(odd.dtype)
    with pytest.raises(FlowKeyError, match="16-byte address"):
        flow_shard(odd, 2)


def test_stable_across_processes():
    # a fresh interpreter (other hash randomisation) computes the same shards
    code = ("import sys, numpy as np; from capfan.flowkey import flow_hash; from tests.test_flowkey import make, ROWS;"
            "print(' '.join(str(int(x)) for x in flow_hash(make(ROWS))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}, cwd=_repo())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(int(x)) for x in flow_hash(make(ROWS))]


def _repo():
    import os
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

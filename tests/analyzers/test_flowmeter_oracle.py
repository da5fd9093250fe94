"""Every sample pcap replayed through a ring into the flow meter, compared with tshark's flow
table (../shared/tools/oracle_flows.py): same flows, same packets and bytes per direction, both
for frame bytes and for IP-layer bytes. Differences must be explained by a rule of
tests/analyzers/oracle.py (each rule is demonstrated on crafted packets in
test_flowmeter_rules.py)."""
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.analyzers import oracle
from tests.conftest import PCAPS

PCAP_FILES = sorted(p for p in PCAPS.glob("*") if p.suffix in (".pcap", ".pcapng"))
RESULTS: dict = {}


@pytest.fixture(scope="module")
def oracle_tables():
    """Oracle tables of every sample pcap in both byte modes, computed in parallel once."""
    jobs = [(p, mode) for p in PCAP_FILES for mode in ("frame", "ip")]
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2))) as pool:
        tables = list(pool.map(lambda j: oracle.run_oracle(*j), jobs))
    return {(p.name, mode): t for (p, mode), t in zip(jobs, tables)}


def test_there_are_sample_pcaps():
    assert len(PCAP_FILES) > 300, PCAPS


@pytest.mark.parametrize("pcap", PCAP_FILES, ids=lambda p: p.name)
def test_flow_table_matches_oracle(pcap, oracle_tables, ring_dir):
    recs, stats, corrupt = oracle.meter_pcap(pcap, "oracle")
    # accounting: every packet offered is metered, non-IP or bad (per reason)
    assert stats["packets"] == stats["ip_packets"] + stats["non_ip"] + sum(stats["bad"].values()), stats
    assert sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in recs) == stats["ip_packets"]
    result = {}
    bad_ts = oracle.invalid_timestamps(pcap)
    for mode, field in (("frame", "layer2OctetDeltaCount"), ("ip", "octetDeltaCount")):
        ours = oracle.project(recs, field)
        theirs = oracle.oracle_table(oracle_tables[(pcap.name, mode)])
        r = oracle.compare(ours, theirs, stats, corrupt, mode=mode, check_times=not bad_ts)
        if bad_ts:
            r["rules"]["invalid_timestamp"] = bad_ts
        assert not r["unexplained"], json.dumps(r["unexplained"][:5], indent=1, default=str)
        result[mode] = r
    RESULTS[pcap.name] = result


def test_summary_of_rules_used():
    """Most captures match key for key; print which rules explained the rest."""
    if len(RESULTS) < len(PCAP_FILES):
        pytest.skip("runs after the per-pcap comparisons (run the whole module)")
    rules = Counter()
    exact = 0
    for name, r in RESULTS.items():
        used = set(r["frame"]["rules"]) | set(r["ip"]["rules"])
        exact += not used
        rules.update(used)
    print(f"\n{exact}/{len(RESULTS)} pcaps match the oracle key for key; rules used (pcaps): {dict(rules)}")
    assert exact >= 0.7 * len(RESULTS)

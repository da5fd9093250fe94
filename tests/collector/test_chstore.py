"""ClickHouseStore specifics on real clickhouse-server 18.16 processes: exactly-once loads across a
crash between data and marker, checkpoints per collector, retention by dropping day partitions,
the two-shard Distributed layout, clear errors, and the [clickhouse] config."""
import os
import random
import time
import uuid

import numpy as np
import pytest

from capfan.collector import config as ccfg
from capfan.collector import service
from capfan.collector.chstore import ClickHouseStore
from capfan.collector.store import Store, StoreError
from capfan.errors import ConfigError
from capfan.flowkey import flow_shard
from tests.chserver import free_port
from tests.collector.test_store import S, T0, batch, flows_batch, rec, reference_merge


def new_db():
    return "t_" + uuid.uuid4().hex[:12]


def open_ch(srv, database, **kw):
    kw.setdefault("collector_id", "c1")
    return ClickHouseStore(host=srv.host, port=srv.port, database=database, **kw)


def raw_count(srv, database, table, where="1"):
    """Rows in a table as stored, markers ignored (what the store hides or deletes)."""
    return srv.client().execute(f"SELECT count() FROM {database}.{table} WHERE {where}")[0][0]


# -- exactly-once -----------------------------------------------------------------------------

class Crash(Exception):
    pass


def test_crash_between_data_and_marker_is_invisible_and_cleaned_up(clickhouse, monkeypatch):
    db = new_db()
    s = open_ch(clickhouse, db)
    assert s.ingest_many([("h1", 1, "flows", "q0", flows_batch(1))], checkpoint=(1, 100)) == [True]
    real = s._insert

    def crash_before_marker(table, columns):
        if table == "loads":
            raise Crash()  # the process dies after its data went in, before the marker
        return real(table, columns)

    monkeypatch.setattr(s, "_insert", crash_before_marker)
    health = np.array([(3,)], [("kernel_drops", "<u8")])
    with pytest.raises(Crash):
        s.ingest_many([("h1", 2, "flows", "q0", flows_batch(2)), ("h1", 3, "health", "q0", health),
                       ("h1", 1, "flows", "q0", flows_batch(1))], checkpoint=(1, 200))
    # the rows of the interrupted load are in the tables, but nobody counts them
    assert raw_count(clickhouse, db, "obs") == 6 and raw_count(clickhouse, db, "records") == 1
    assert raw_count(clickhouse, db, "dups") == 1
    assert s.totals()["flows"] == 3 and s.checkpoint() == (1, 100)
    assert [h["batches"] for h in s.health() if h["source"] is None] == [1]
    assert all("kernel_drops" not in h for h in s.health())
    s.close()  # "restart"

    s = open_ch(clickhouse, db)
    assert s.checkpoint() == (1, 100)  # from the latest marked load
    # the loader replays the journal from the checkpoint: the same batches are fresh again, once
    assert s.ingest_many([("h1", 2, "flows", "q0", flows_batch(2)), ("h1", 3, "health", "q0", health)],
                         checkpoint=(1, 200)) == [True, True]
    assert s.ingest("h1", 2, "flows", "q0", flows_batch(2)) is False
    assert s.totals()["flows"] == 6 and s.checkpoint() == (1, 200)
    (h1,) = [h for h in s.health() if h["source"] is None]
    assert (h1["batches"], h1["records"], h1["duplicates"]) == (3, 7, 1)
    # reopening deleted the unmarked rows (a mutation: applied in the background)
    deadline = time.monotonic() + 20
    while raw_count(clickhouse, db, "obs") != 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert raw_count(clickhouse, db, "obs") == 6 and raw_count(clickhouse, db, "records") == 1
    assert raw_count(clickhouse, db, "dups") == 1
    s.close()


def test_checkpoints_and_dedup_are_per_collector(clickhouse):
    db = new_db()
    a, b = open_ch(clickhouse, db, collector_id="col-a"), open_ch(clickhouse, db, collector_id="col-b")
    assert a.checkpoint() is None and b.checkpoint() is None
    assert a.ingest_many([("h1", 1, "flows", "q0", flows_batch(1))], checkpoint=(3, 30)) == [True]
    assert a.ingest_many([("h1", 2, "flows", "q0", flows_batch(2))]) == [True]  # no checkpoint: the old one stays
    # another collector got the other half of the same agent batch (flow-hash routing): same (host, seq)
    other_half = batch(rec("10.0.0.7", "10.0.0.8", 1, 2, 0, 1))
    assert b.ingest_many([("h1", 1, "flows", "q0", other_half)], checkpoint=(9, 90)) == [True]
    assert a.ingest("h1", 1, "flows", "q0", flows_batch(1)) is False
    assert (a.checkpoint(), b.checkpoint()) == ((3, 30), (9, 90))
    assert a.ingest_many([], checkpoint=(4, 0)) == [] and a.checkpoint() == (4, 0)
    a.close()
    b.close()
    a, ro = open_ch(clickhouse, db, collector_id="col-a"), open_ch(clickhouse, db, collector_id="col-b", read_only=True)
    assert (a.checkpoint(), ro.checkpoint()) == ((4, 0), (9, 90))
    assert a.totals()["flows"] == ro.totals()["flows"] == 7  # both collectors' rows in one database
    with pytest.raises(StoreError, match="read-only"):
        ro.ingest("h1", 5, "flows", "q0", flows_batch(5))
    a.close()
    ro.close()


# -- retention --------------------------------------------------------------------------------

def test_retention_drops_old_day_partitions_on_a_server_without_ttl(clickhouse):
    db = new_db()
    now = time.time_ns()
    day = 86400 * S
    s = open_ch(clickhouse, db, retention_days=7)
    assert s.server_version.startswith("18.") and not s.ttl_supported and s.drops_partitions
    assert "TTL" not in clickhouse.client().execute(
        "SELECT engine_full FROM system.tables WHERE database = %(d)s AND name = 'obs'", {"d": db})[0][0]

    def obs_at(t_ns, sport):
        r = rec("10.0.0.1", "10.0.0.2", sport, 80, 0, 1, p=1, b=100)
        r["flowStartNanoseconds"], r["flowEndNanoseconds"] = t_ns, t_ns + S
        return r

    s.ingest("h1", 1, "flows", "q0", batch(obs_at(now - 30 * day, 1), obs_at(now - 8 * day, 2),
                                            obs_at(now - 6 * day, 3), obs_at(now - 60 * S, 4)))
    assert s.totals()["flows"] == 4
    dropped = s.drop_expired()
    assert sorted(t for t, _ in dropped) == ["obs", "obs"]  # 30 and 8 days old; batches are recent
    assert sorted(f["sport"] for f in s.flows()) == [3, 4]
    assert s.drop_expired() == []
    # the batches' own partitions go by the day they were received
    later = s.drop_expired(now_ns=now + 9 * day)
    assert {t for t, _ in later} == {"obs", "batches"}
    assert s.flows() == [] and [h for h in s.health()] == []
    s.close()
    # opening with retention drops what has expired since
    s = open_ch(clickhouse, db, retention_days=7)
    s.ingest("h1", 2, "flows", "q0", batch(obs_at(now - 20 * day, 5), obs_at(now, 6)))
    s.close()
    s = open_ch(clickhouse, db, retention_days=7)
    assert [f["sport"] for f in s.flows()] == [6]
    s.close()
    keep = open_ch(clickhouse, db)  # retention_days = 0 keeps everything
    assert not keep.drops_partitions and keep.drop_expired(now_ns=now + 400 * day) == []
    keep.close()


# -- errors -----------------------------------------------------------------------------------

def test_unreachable_server_names_the_address_and_the_config_keys():
    port = free_port()
    with pytest.raises(StoreError, match=f"cannot reach ClickHouse at 127.0.0.1:{port} "
                                         r"\(\[clickhouse\] host / port\)"):
        ClickHouseStore(port=port, connect_timeout=1)


def test_schema_version_and_layout_are_checked(clickhouse):
    db = new_db()
    open_ch(clickhouse, db).close()
    clickhouse.client().execute(f"ALTER TABLE {db}.meta UPDATE value = '7' WHERE key = 'schema_version'")
    deadline = time.monotonic() + 20
    while clickhouse.client().execute(f"SELECT value FROM {db}.meta")[0][0] != "7" and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(StoreError, match="schema version 7; this capfan uses ClickHouse schema version 1"):
        open_ch(clickhouse, db)
    with pytest.raises(StoreError, match=r"cluster 'capfan2' \(\[clickhouse\] cluster\) is not in remote_servers"):
        open_ch(clickhouse, new_db(), cluster="capfan2")
    with pytest.raises(StoreError, match="not a plain identifier"):
        open_ch(clickhouse, "bad-name")
    with pytest.raises(StoreError, match="refused the login.*user and password_file"):
        open_ch(clickhouse, new_db(), user="nobody")


def test_a_single_server_database_is_refused_with_a_cluster_and_vice_versa(clickhouse_pair):
    srv = clickhouse_pair[0]
    single, clustered = new_db(), new_db()
    open_ch(srv, single).close()
    open_ch(srv, clustered, cluster="capfan2").close()
    with pytest.raises(StoreError, match="single-server layout but \\[clickhouse\\] cluster = 'capfan2'"):
        open_ch(srv, single, cluster="capfan2")
    with pytest.raises(StoreError, match="cluster layout .*set \\[clickhouse\\] cluster"):
        open_ch(srv, clustered)


# -- two shards -------------------------------------------------------------------------------

def random_observations(rng, n_batches=30):
    """Observations like the store's property test: several hosts, address families, sessions."""
    addrs = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "2001:db8::1", "2001:db8::2"]
    seqs, out = {}, []
    for _ in range(n_batches):
        host = rng.choice(["h1", "h2", "h3"])
        seqs[host] = seqs.get(host, 0) + 1
        for idx in range(rng.randint(1, 20)):
            fam = rng.choice([addrs[:3], addrs[3:]])
            a, b = rng.sample(fam, 2)
            pa_, pb = rng.choice([(1000, 80), (80, 1000), (53, 53)])
            start = rng.randint(0, 200) * S // 2
            out.append({"host": host, "seq": seqs[host], "idx": idx, "src": a, "dst": b, "sport": pa_, "dport": pb,
                        "vlan": rng.choice([0, 3]), "proto": rng.choice([6, 17]), "start": T0 + start,
                        "end": T0 + start + rng.randint(0, 10) * S, "p": rng.randint(0, 50),
                        "rp": rng.randint(0, 50), "b": rng.randint(0, 10**6), "rb": rng.randint(0, 10**6)})
    return out


def as_record(o):
    r = rec(o["src"], o["dst"], o["sport"], o["dport"], 0, 0, p=o["p"], rp=o["rp"], b=o["b"], rb=o["rb"],
            vlan=o["vlan"], proto=o["proto"])
    r["flowStartNanoseconds"], r["flowEndNanoseconds"] = o["start"], o["end"]
    return r


def canonical_shard(o, n=2):
    """Shard of an observation's canonical key: the agents' flow-hash routing (capfan.flowkey)."""
    return int(flow_shard(as_record(o), n)[0])


def ingest_split(stores, observations, shard_of, per_load=8):
    """Each agent batch (host, seq) goes to every store as the sub-batch of its observations there
    (per_load batches per ingest_many, like the loader's groups)."""
    by_batch = {}
    for o in observations:
        by_batch.setdefault((o["host"], o["seq"]), []).append(o)
    items = sorted(by_batch.items())
    for i, st in enumerate(stores):
        subs = [(host, seq, "flows", "q0", batch(*[as_record(o) for o in obs if shard_of(o) == i]))
                for (host, seq), obs in items]
        for k in range(0, len(subs), per_load):
            assert st.ingest_many(subs[k:k + per_load]) == [True] * len(subs[k:k + per_load])


def flow_tuples(flows):
    return sorted(((f["src"], f["dst"], f["sport"], f["dport"], f["proto"], f["vlan"], f["packets"],
                    f["reverse_packets"], f["bytes"], f["reverse_bytes"], f["start_ns"], f["end_ns"],
                    f["observers"], f["n_observations"]) for f in flows), key=repr)


@pytest.mark.parametrize("routing", ["flow-hash", "round-robin"])
def test_two_shards_distributed_query_returns_the_merged_flows_of_both(clickhouse_pair, tmp_path, routing):
    rng = random.Random(8)
    observations = random_observations(rng)
    window = 5
    db = new_db()
    stores = [open_ch(srv, db, cluster="capfan2", collector_id=f"col{i}", merge_window_s=window)
              for i, srv in enumerate(clickhouse_pair)]
    if routing == "flow-hash":
        shard_of = canonical_shard
    else:  # observations of one flow on both shards: the merge still runs over all of them
        shard_of = lambda o: (o["seq"] + o["idx"]) % 2  # noqa: E731
    ingest_split(stores, observations, shard_of)
    per_shard = [sum(1 for o in observations if shard_of(o) == i) for i in range(2)]
    assert all(per_shard)
    for i, srv in enumerate(clickhouse_pair):  # each shard holds only its part
        assert raw_count(srv, db, "obs_local") == per_shard[i]
    want = reference_merge(observations, window * S)
    for st in stores:  # either collector's query sees the whole cluster
        assert flow_tuples(st.flows(limit=100_000)) == want
        assert st.totals() == {"flows": len(want), "packets": sum(f[6] + f[7] for f in want),
                               "bytes": sum(f[8] + f[9] for f in want)}
    # a single DuckDB store fed everything gives the same answer
    duck = Store(str(tmp_path / "all.duckdb"), merge_window_s=window)
    ingest_split([duck], observations, lambda o: 0)
    assert flow_tuples(duck.flows(limit=100_000)) == want
    assert stores[0].top(group=["host"], by="flows") == duck.top(group=["host"], by="flows")
    assert stores[1].top(group=["src", "dport"], limit=5, where={"proto": 6}) == \
        duck.top(group=["src", "dport"], limit=5, where={"proto": 6})
    hosts = {h["host"]: h["records"] for h in stores[0].health() if h["source"] is None}
    assert hosts == {h: sum(1 for o in observations if o["host"] == h) for h in hosts}
    duck.close()
    for st in stores:
        st.close()


# -- config and engine selection -----------------------------------------------------------------

def load_cfg(tmp_path, text):
    p = tmp_path / "collector.toml"
    p.write_text('[security]\nmode = "plain"\n' + text)
    return ccfg.load(str(p))


def test_config_clickhouse_defaults_and_password_file(tmp_path):
    c = load_cfg(tmp_path, '[collector]\nname = "colx"\n')
    assert c["collector"]["engine"] == "duckdb"
    assert c["clickhouse"] == {"host": "127.0.0.1", "port": 9000, "database": "capfan", "user": "default",
                               "password_file": "", "password": "", "cluster": "", "retention_days": 0,
                               "collector_id": "colx"}
    (tmp_path / "pw").write_text("s3cret\n")
    c = load_cfg(tmp_path, '[collector]\nengine = "clickhouse"\n[clickhouse]\npassword_file = "pw"\n'
                           'cluster = "capfan2"\nretention_days = 30\ncollector_id = "c-1"\n')
    assert (c["clickhouse"]["password"], c["clickhouse"]["cluster"], c["clickhouse"]["collector_id"]) == \
        ("s3cret", "capfan2", "c-1")


@pytest.mark.parametrize("text, key", [
    ('[collector]\nengine = "postgres"\n', "collector.engine"),
    ('[clickhouse]\nport = 0\n', "clickhouse.port"),
    ('[clickhouse]\nport = "9000"\n', "clickhouse.port"),
    ('[clickhouse]\ndatabase = "my-db"\n', "clickhouse.database"),
    ('[clickhouse]\ncluster = "1x"\n', "clickhouse.cluster"),
    ('[clickhouse]\nretention_days = -1\n', "clickhouse.retention_days"),
    ('[clickhouse]\npassword_file = "missing"\n', "clickhouse.password_file"),
    ('[clickhouse]\ncollector_id = "a b"\n', "clickhouse.collector_id"),
    ('[clickhouse]\nhots = "x"\n', "clickhouse.hots"),
])
def test_config_clickhouse_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_cfg(tmp_path, text)
    assert e.value.key == key


def test_service_opens_the_engine_the_config_selects(tmp_path, clickhouse):
    db = new_db()
    c = load_cfg(tmp_path, f'[collector]\nname = "svc"\nengine = "clickhouse"\nstore = "j/c.duckdb"\n'
                           f'[clickhouse]\nport = {clickhouse.port}\ndatabase = "{db}"\n')
    st = service.open_store(c)
    try:
        assert isinstance(st, ClickHouseStore) and st.collector_id == "svc" and st.database == db
        assert st.ingest("h1", 1, "flows", "q0", flows_batch(1)) and st.totals()["flows"] == 3
    finally:
        st.close()
    c = load_cfg(tmp_path, '[collector]\nstore = "d/c.duckdb"\n')
    os.makedirs(tmp_path / "d")
    st = service.open_store(c)
    assert isinstance(st, Store)
    st.close()


def test_check_report_names_the_clickhouse_store(tmp_path):
    from capfan.collectcli import check_report
    c = load_cfg(tmp_path, '[collector]\nname = "c9"\nengine = "clickhouse"\n[clickhouse]\nhost = "10.0.0.5"\n'
                           'cluster = "capfan2"\nretention_days = 14\n')
    line = [ln for ln in check_report(c).splitlines() if ln.strip().startswith("store")][0]
    assert "clickhouse://10.0.0.5:9000/capfan" in line and "cluster capfan2" in line
    assert "retention 14 days" in line and "collector id c9" in line


def test_example_config_is_valid_apart_from_its_key_files():
    here = os.path.join(os.path.dirname(__file__), "..", "..", "collector", "examples", "collector-clickhouse.toml")
    with pytest.raises(ConfigError) as e:
        ccfg.load(here)
    assert e.value.key == "security.server_key"
    data = ccfg.C.load_file(here)
    data["security"] = {"mode": "plain"}
    c = ccfg.resolve(data)
    assert c["collector"]["engine"] == "clickhouse" and c["clickhouse"]["port"] == 9000


# -- the loader while the server is away ---------------------------------------------------------

def test_loader_keeps_batches_while_the_server_is_down(tmp_path):
    from capfan.collector.journal import Journal
    from capfan.collector.loader import Loader
    from capfan.collector.store import StoreUnavailable
    from tests.chserver import ClickHouseServer
    from tests.collector.test_loader import journal_batches, stored
    srv = ClickHouseServer(tmp_path / "ch").start()
    store = j = None
    try:
        store = open_ch(srv, "capfan")
        j = Journal(str(tmp_path / "j"), fsync=False)
        journal_batches(j, "h1", [1, 2])
        ld = Loader(store, j)
        assert sum(iter(ld.load_once, 0)) == 2
        srv.stop(remove=False, graceful=False)  # the server dies; its data stays for the restart
        journal_batches(j, "h1", [3, 4, 5])
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match=f"cannot reach ClickHouse at 127.0.0.1:{srv.port}"):
                ld.load_once()
        assert ld.counters()["load_rejected"] == 0  # nothing set aside
        srv.start()
        assert sum(iter(ld.load_once, 0)) == 3
        assert stored(store, "h1") == (5, 25) and store.checkpoint() == ld.position
        assert ld.counters()["load_rejected"] == 0
    finally:
        if store is not None:
            store.close()
        if j is not None:
            j.close()
        srv.stop()

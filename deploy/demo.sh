#!/usr/bin/env bash
# The main job on the embedded default: a local `capfan collect` and a `capfan agent` that
# replays a capture (default: the sample bundled with capfan) into a shared-memory ring read in
# place by the flow meter, the stats counter and a load-balanced group of two pcap recorders; the
# flow records go to the collector over ZeroMQ with CURVE keys made for the occasion, are stored
# (DuckDB) and queried back: the agent's final status, then the top flows from the collector.
# Usage: deploy/demo.sh [FILE.pcap]
set -euo pipefail
pcap="${1:-$(python3 -c 'from capfan import samplepcap; print(samplepcap.path())')}"
[ -r "$pcap" ] || { echo "demo: no capture at $pcap (pass a pcap/pcapng file)" >&2; exit 2; }
case "$pcap" in *"'"*) echo "demo: the path must not contain a single quote" >&2; exit 2;; esac
work="$(mktemp -d)"
collector=""
cleanup() {
    if [ -n "$collector" ]; then kill "$collector" 2>/dev/null || true; wait "$collector" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
name="demo-$$"
capfan keys gen collector --dir "$work/keys" >/dev/null
capfan keys gen "$name" --dir "$work/keys" >/dev/null
# TOML literal strings ('...') take the paths as they are
cat >"$work/collector.toml" <<TOML
[collector]
name = "demo-collector"
listen = 'ipc://$work/intake.sock'   # a local socket; sensors elsewhere use tcp://HOST:PORT
store = '$work/flows.duckdb'
status_interval = 0

[security]
mode = "curve"
server_key = '$work/keys/collector.key_secret'
authorized_keys = ['$work/keys/$name.key']

[api]
listen = "127.0.0.1:0"               # any free port (printed at start)
TOML
cat >"$work/agent.toml" <<TOML
[agent]
name = "$name"
run_dir = '$work/run'
out = '$work/records'
exit_when_done = true        # stop once the file is replayed, the analyzers drained and the spool delivered

[metrics]
enabled = false

[export]
collectors = ['ipc://$work/intake.sock']
key = '$work/keys/$name.key_secret'
server_key = '$work/keys/collector.key'
spool_dir = '$work/spool'

[[capture]]
source = "pcap"
file = '$pcap'
name = "$name"
options = { speed = "max" }

[[analyzer]]
analyzer = "flowmeter"

[[analyzer]]
analyzer = "stats"

[[analyzer]]
name = "rec"
analyzer = "recorder"
group_size = 2
policy = "reliable"
TOML
capfan collect -c "$work/collector.toml" 2>"$work/collector.log" &
collector=$!
api=""
for _ in $(seq 100); do
    api="$(sed -n 's/.*API on \(http:[^ ]*\).*/\1/p' "$work/collector.log")"
    [ -n "$api" ] && break
    kill -0 "$collector" 2>/dev/null || { cat "$work/collector.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$api" ] || { echo "demo: the collector did not start" >&2; cat "$work/collector.log" >&2; exit 1; }
cat "$work/collector.log"
capfan agent -c "$work/agent.toml"
echo
capfan status -c "$work/agent.toml" || true   # exit status 1: the agent has finished
echo
echo "top flows by bytes at the collector (from $(basename "$pcap")):"
capfan flows --api "$api" top -n 10 --group src,dst,dport,proto
capfan flows --api "$api" top --by flows --group proto -n 5
python3 - "$api" <<'PY'
import json, sys, urllib.request
t = json.load(urllib.request.urlopen(sys.argv[1] + "/api/totals", timeout=30))
h = json.load(urllib.request.urlopen(sys.argv[1] + "/api/health", timeout=30))
print(f"collector totals: {t['flows']} flows, {t['packets']} packets, {t['bytes']} bytes; "
      f"{h['intake']['journaled']} batches acknowledged, {h['loader']['loaded_records']} records stored, "
      f"{h['loader']['duplicates']} duplicates, {h['intake']['denied_unauthenticated']} denied")
PY

#!/usr/bin/env bash
# The main job on the embedded default: `capfan agent` replays a capture (default: the sample
# bundled with capfan) into a shared-memory ring that four analyzer processes read in place — the
# flow meter, the stats counter and a load-balanced group of two pcap recorders — then shows the
# agent's final status (every consumer's accounting: each fan-out consumer saw every packet, the
# group split them) and the top flows. Usage: deploy/demo.sh [FILE.pcap]
set -euo pipefail
pcap="${1:-$(python3 -c 'from capfan import samplepcap; print(samplepcap.path())')}"
[ -r "$pcap" ] || { echo "demo: no capture at $pcap (pass a pcap/pcapng file)" >&2; exit 2; }
case "$pcap" in *"'"*) echo "demo: the path must not contain a single quote" >&2; exit 2;; esac
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
name="demo-$$"
# TOML literal strings ('...') take the paths as they are
cat >"$work/agent.toml" <<TOML
[agent]
name = "$name"
run_dir = '$work/run'
out = '$work/records'
exit_when_done = true        # stop once the file is replayed and every analyzer has drained

[metrics]
enabled = false

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
capfan agent -c "$work/agent.toml"
echo
capfan status -c "$work/agent.toml" || true   # exit status 1: the agent has finished
echo
flows="$work/records/$name.q0/flowmeter/flows.jsonl"
echo "top flows by bytes (from $(basename "$pcap")):"
python3 - "$flows" <<'PY'
import json, sys
flows = [json.loads(line) for line in open(sys.argv[1])]
flows.sort(key=lambda f: f["layer2OctetDeltaCount"] + f["reverseLayer2OctetDeltaCount"], reverse=True)
print(f"{'proto':>5} {'initiator':>28} {'responder':>28} {'pkts >':>7} {'pkts <':>7} {'bytes':>9}  end")
for f in flows[:10]:
    src = f"{f['sourceIPAddress']}:{f['sourceTransportPort']}"
    dst = f"{f['destinationIPAddress']}:{f['destinationTransportPort']}"
    print(f"{f['protocolIdentifier']:>5} {src:>28} {dst:>28} {f['packetDeltaCount']:>7} "
          f"{f['reversePacketDeltaCount']:>7} {f['layer2OctetDeltaCount'] + f['reverseLayer2OctetDeltaCount']:>9}"
          f"  {f['flowEndReasonName']}")
print(f"{len(flows)} flows, {sum(f['packetDeltaCount'] + f['reversePacketDeltaCount'] for f in flows)} packets metered")
PY

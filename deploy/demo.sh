#!/usr/bin/env bash
# The main job on the embedded default: replay a capture into a ring while two analyzers read
# the same packets in place — a live packet dump and the flow meter — then show the ring's
# per-consumer accounting and the top flows. Usage: deploy/demo.sh [FILE.pcap]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
pcap="${1:-$here/../shared/pcaps/tcpdump/afs.pcap}"
[ -r "$pcap" ] || { echo "demo: no capture at $pcap (pass a pcap/pcapng file)" >&2; exit 2; }
ring="demo-$$"
work="$(mktemp -d)"
pids=()
cleanup() {
    # never `kill 0`: that would be this whole process group, the demo included
    [ ${#pids[@]} -eq 0 ] || { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; } || true
    capfan ring rm --force "$ring" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
capfan ring create "$ring" --ndesc 65536 --arena 64M >/dev/null
# two consumers attached before the replay, each seeing every packet (no copy per consumer)
capfan ring dump "$ring" --follow >"$work/dump" & pids+=($!)
capfan analyze --ring "$ring" --analyzer flowmeter --exit-on-eof --out "$work" >"$work/meter" 2>&1 &
meter=$!
sleep 1
capfan replay "$pcap" --ring "$ring" --speed max --no-progress
wait "$meter" || { cat "$work/meter" >&2; exit 1; }
capfan ring stat "$ring"
echo "first packets the live dump saw:"
head -5 "$work/dump"
echo
cat "$work/meter"
echo "top flows by bytes (from $(basename "$pcap")):"
python3 - "$work/flows.jsonl" <<'PY'
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
print(f"{len(flows)} flows")
PY

#!/usr/bin/env bash
# The main job on the embedded default: replay a capture into a ring while a live consumer
# reads it, then show the ring's per-consumer accounting. Usage: deploy/demo.sh [FILE.pcap]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
pcap="${1:-$here/../shared/pcaps/tcpdump/afs.pcap}"
[ -r "$pcap" ] || { echo "demo: no capture at $pcap (pass a pcap/pcapng file)" >&2; exit 2; }
ring="demo-$$"
out="$(mktemp)"
cleanup() { kill "${follower:-0}" 2>/dev/null || true; capfan ring rm --force "$ring" 2>/dev/null || true; rm -f "$out"; }
trap cleanup EXIT
capfan ring create "$ring" --ndesc 65536 --arena 64M >/dev/null
# a live consumer attached before the replay: summarises every packet as it arrives
capfan ring dump "$ring" --follow >"$out" & follower=$!
sleep 1
capfan replay "$pcap" --ring "$ring" --speed max --no-progress
sleep 1
capfan ring stat "$ring"
echo "first packets the live consumer saw:"
head -5 "$out"

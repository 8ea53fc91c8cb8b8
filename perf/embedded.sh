#!/usr/bin/env bash
# Embedded mode end to end: the same loadgen load against the echo_worker
# example (frames through the worker queues and back) and against
# `ringgate serve` with its built-in echo (no worker hop), in one run.
# Writes perf/results/embedded-<date>.md with both figures and the ratio
# embedded / serve.
#
# Usage: perf/embedded.sh   (CONNS=1000 SECS=10 SIZE=64 SHARDS=1 WORKERS=1 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${CONNS:-1000} secs=${SECS:-10} size=${SIZE:-64} shards=${SHARDS:-1} workers=${WORKERS:-1}

cargo build --release --quiet --bin ringgate --example echo_worker
bin=target/release/ringgate
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p_serve=$(free_port)
p_emb=$(free_port)
"$bin" serve --listen "127.0.0.1:$p_serve" --shards "$shards" >"$tmp/serve.log" 2>&1 &
pids+=($!)
target/release/examples/echo_worker --listen "127.0.0.1:$p_emb" --shards "$shards" --workers "$workers" >"$tmp/emb.log" 2>&1 &
pids+=($!)
sleep 1

load() {
    "$bin" loadgen --connect "127.0.0.1:$1" --connections "$conns" --duration "$secs" \
        --size "$size" --shards 1 --json "$2" >/dev/null
}
load "$p_serve" "$tmp/serve.json"
load "$p_emb" "$tmp/emb.json"

mkdir -p perf/results
out="perf/results/embedded-$(date +%Y%m%d-%H%M%S).md"
python3 - "$tmp/serve.json" "$tmp/emb.json" "$conns" "$size" "$secs" "$shards" "$workers" >"$out" <<'PY'
import json, sys
serve, emb = (json.load(open(p)) for p in sys.argv[1:3])
conns, size, secs, shards, workers = sys.argv[3:8]
print(f"# embedded mode vs serve: {conns} SCP sessions, {size}-byte messages, {secs} s, "
      f"{shards} shard(s), {workers} worker(s)\n")
print("| figure | serve, built-in echo (baseline) | echo_worker (embedded) | ratio |")
print("| --- | --- | --- | --- |")
def row(name, a, b):
    print(f"| {name} | {a:,.1f} | {b:,.1f} | {b / a if a else float('nan'):.2f} |")
row("msgs/s", serve["msgs_per_sec"], emb["msgs_per_sec"])
row("p50 latency µs", serve["latency_us"]["p50"], emb["latency_us"]["p50"])
row("p99 latency µs", serve["latency_us"]["p99"], emb["latency_us"]["p99"])
print(f"\nbytes lost / duplicated: serve {serve['bytes_lost']}/{serve['bytes_duplicated']}, "
      f"embedded {emb['bytes_lost']}/{emb['bytes_duplicated']}")
PY
cat "$out"

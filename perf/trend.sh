#!/usr/bin/env bash
# Memory per session as the session count grows: holds N SCP sessions through
# `ringgate serve` (built-in echo), one 64-byte message per second each, every
# session dropped (TCP RST) and resumed once during the run; samples the gate's
# RSS while they are held. Writes perf/results/trend-<date>.md.
#
#   perf/trend.sh [N...]        (default: 50000 100000 200000)
#
# Environment: TREND_DURATION (measured seconds, default 60), TREND_RATE
# (messages per second per session, default 1), TREND_RAMP (new sessions per
# second, default 20000). A small machine that runs both ends needs a lower
# rate and ramp than the million-session target of one message a second.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(50000 100000 200000)
DURATION=${TREND_DURATION:-60}
RATE=${TREND_RATE:-1}
RAMP=${TREND_RAMP:-20000}
DATE=$(date +%Y%m%d-%H%M%S)
BIN=target/release/ringgate
TMP=$(mktemp -d)
OUT="perf/results/trend-$DATE.md"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release --quiet
mkdir -p perf/results
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

{
    echo "# ringgate perf: session-count trend ($DATE)"
    echo
    echo "Host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), RLIMIT_NOFILE $(ulimit -Hn)."
    echo "\`ringgate serve\` with the built-in echo; \`--rate $RATE\`, \`--ramp $RAMP\`, 64-byte messages; each session is reset and resumes about once"
    echo "(\`--resume-every\` = 60% of the messages it sends in the measured run); client source addresses 127.0.0.2-127.0.0.40."
    echo "RSS per session = (gate RSS while held − before) ÷ sessions held. Kernel socket memory is not in RSS: \`TCP mem\` below is"
    echo "the kernel's count of TCP buffer pages for the whole host (both ends of every loopback connection) while held."
    echo
    echo "| sessions | gate shards | held | gate RSS before (MiB) | while held (MiB) | RSS per session (bytes) | TCP mem while held (MiB) | msgs/s (expected ≈ sessions) | p99 µs | resumes ok | resumes failed | bytes lost | bytes dup | errors |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$OUT"

PORT=17600
for N in "${SIZES[@]}"; do
    PORT=$((PORT + 1))
    # Room under each ring's descriptor cap for the overlap of old and new
    # connections while sessions resume.
    SHARDS=$(((N + 7999) / 8000))
    "$BIN" serve --listen "127.0.0.1:$PORT" --shards "$SHARDS" --max-sessions $((N * 2)) \
        --reuse-time 60s >"$TMP/gate-$N.log" 2>&1 &
    GATE=$!
    PIDS+=("$GATE")
    sleep 1
    BEFORE=$(rss_kb "$GATE")
    # Every session resumes about once, 60% into its measured messages.
    K=$(awk -v d="$DURATION" -v r="$RATE" 'BEGIN { k = int(d * r * 0.6); print (k < 1 ? 1 : k) }')
    "$BIN" loadgen --connect "127.0.0.1:$PORT" --connections "$N" --ramp "$RAMP" \
        --duration "$DURATION" --rate "$RATE" --size 64 --resume-every "$K" \
        --source-ips 127.0.0.2-127.0.0.40 --json "$TMP/trend-$N.json" >"$TMP/lg-$N.txt" 2>&1 &
    LG=$!
    PIDS+=("$LG")
    for _ in $(seq 1200); do
        [ "$(established "$PORT")" -ge "$N" ] && break
        kill -0 "$LG" 2>/dev/null || break
        sleep 0.25
    done
    HELD=$(established "$PORT")
    sleep $((DURATION / 3))
    AFTER=$(rss_kb "$GATE")
    TCPMEM=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
    wait "$LG" || true
    cat "$TMP/lg-$N.txt"
    kill "$GATE"
    wait "$GATE" 2>/dev/null || true
    python3 - "$TMP/trend-$N.json" "$N" "$SHARDS" "$HELD" "$BEFORE" "$AFTER" "$TCPMEM" >>"$OUT" <<'EOF'
import json, sys
path = sys.argv[1]
n, shards, held, before, after, tcpmem = map(int, sys.argv[2:8])
try:
    d = json.load(open(path))
except Exception:
    print(f"| {n:,} | {shards} | {held:,} | {before/1024:.0f} | {after/1024:.0f} | – | – | load generator failed | | | | | | |")
    sys.exit()
per = (after - before) * 1024 / max(held, 1)
print(f"| {n:,} | {shards} | {held:,} | {before/1024:.0f} | {after/1024:.0f} | {per:,.0f} | {tcpmem*4/1024:.0f} | "
      f"{d['msgs_per_sec']:,.0f} | {d['latency_us']['p99']:,} | {d['resumes_ok']:,} | {d['resumes_failed']} | "
      f"{d['bytes_lost']:,} | {d['bytes_duplicated']:,} | {d['errors']} |")
EOF
done
cat "$OUT"

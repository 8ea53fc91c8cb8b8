#!/usr/bin/env bash
# Holds a million SCP sessions through `ringgate serve` on one large Linux
# machine (loopback), resumes each once, and writes the load generator's
# report. Run as root (it checks and raises sysctls; it tells you what it
# changes and restores nothing: these are the settings such a host needs).
#
#   scripts/million.sh [SESSIONS] [DURATION_SECS]
#
# Environment: GATE_SHARDS, LOADGEN_SHARDS (default: from the cores and the
# per-ring table cap), UPSTREAM=1 to proxy to `ringgate echo` instead of the
# built-in echo, RATE (messages/s per session, default 0.2), OUT (report dir).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${1:-1000000}
DURATION=${2:-120}
RATE=${RATE:-0.2}
OUT=${OUT:-scripts/results}
CORES=$(nproc)
BIN=target/release/ringgate
PORT=19248
ECHO_PORT=19249

need() {
    # need KEY MIN: raise sysctl KEY to at least MIN (every field, for ranges handled separately).
    local key=$1 want=$2 have
    have=$(sysctl -n "$key")
    if [ "$have" -lt "$want" ]; then
        echo "sysctl $key: $have -> $want"
        sysctl -qw "$key=$want"
    else
        echo "sysctl $key: $have (ok, need ≥ $want)"
    fi
}

echo "== system settings for $SESSIONS sessions"
# Every session is two sockets on loopback (client and gate side), plus one
# upstream pair per session in proxy mode; direct descriptors are files too.
FILES=$((SESSIONS * 5 + 100000))
need fs.file-max "$FILES"
# A ring's direct table is capped at RLIMIT_NOFILE, which cannot exceed fs.nr_open.
need fs.nr_open $((SESSIONS + 100000 > 1048576 ? SESSIONS + 100000 : 1048576))
need net.core.somaxconn 65535
need net.ipv4.tcp_max_syn_backlog 65535
need net.core.netdev_max_backlog 65536
# Enough orphan/TIME_WAIT room for the resume storm (resets leave neither, but
# the gate's own closes of superseded connections may).
need net.ipv4.tcp_max_tw_buckets 2000000
need net.ipv4.tcp_max_orphans 1000000
# tcp_mem is in pages (4 KiB): allow ~8 KiB of socket buffers per socket at pressure.
PAGES=$((SESSIONS * 4 * 2))
read -r MEM_LOW MEM_PRESSURE MEM_HIGH < /proc/sys/net/ipv4/tcp_mem
if [ "$MEM_HIGH" -lt "$PAGES" ]; then
    echo "sysctl net.ipv4.tcp_mem: $MEM_LOW $MEM_PRESSURE $MEM_HIGH -> $((PAGES / 2)) $PAGES $((PAGES * 2))"
    sysctl -qw net.ipv4.tcp_mem="$((PAGES / 2)) $PAGES $((PAGES * 2))"
fi
# Small per-socket buffers by default: idle sessions then cost little kernel memory.
sysctl -qw net.ipv4.tcp_rmem="4096 16384 4194304"
sysctl -qw net.ipv4.tcp_wmem="4096 16384 4194304"
# Ephemeral ports: about 64k per source address with this range.
sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
PORTS_PER_IP=60000

ulimit -n "$(sysctl -n fs.nr_open)"
LIMIT=$(ulimit -n)
echo "RLIMIT_NOFILE: $LIMIT (a ring's direct-descriptor table can hold this many)"

# Source addresses: loopback 127.0.0.0/8 answers on every address, so spread the
# client side over enough of them that no (source, destination) pair runs out of
# ports, with a margin for sockets being replaced during resumes.
IPS=$(((SESSIONS * 3 / 2) / PORTS_PER_IP + 1))
LAST_IP=$((IPS + 1))
if [ "$LAST_IP" -gt 254 ]; then
    echo "too many sessions for 127.0.0.2-127.0.0.254 at $PORTS_PER_IP ports each" >&2
    exit 1
fi
SOURCES="127.0.0.2-127.0.0.$LAST_IP"
echo "client source addresses: $SOURCES ($IPS addresses)"

# Shards: each ring's table holds at most RLIMIT_NOFILE descriptors. The gate's
# ring holds a client socket per session (and an upstream socket in proxy mode),
# with twice that as headroom for sessions being resumed; so sessions ÷ shards
# must stay below about LIMIT ÷ 2 (÷ 4 in proxy mode). At least one per core.
PER_SESSION=2
[ "${UPSTREAM:-0}" = 1 ] && PER_SESSION=4
MIN_GATE=$(((SESSIONS * PER_SESSION + LIMIT - 1) / LIMIT))
GATE_SHARDS=${GATE_SHARDS:-$((MIN_GATE > CORES / 2 ? MIN_GATE : CORES / 2))}
[ "$GATE_SHARDS" -lt 1 ] && GATE_SHARDS=1
LOADGEN_SHARDS=${LOADGEN_SHARDS:-}
echo "gate shards: $GATE_SHARDS (need ≥ $MIN_GATE); loadgen shards: ${LOADGEN_SHARDS:-automatic}"

echo "== build"
cargo build --release --quiet
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

UPSTREAM_ARGS=()
if [ "${UPSTREAM:-0}" = 1 ]; then
    "$BIN" echo --listen "127.0.0.1:$ECHO_PORT" --shards "$GATE_SHARDS" >"$OUT/echo-$STAMP.log" 2>&1 &
    PIDS+=($!)
    UPSTREAM_ARGS=(--upstream "echo=127.0.0.1:$ECHO_PORT")
fi
"$BIN" serve --listen "127.0.0.1:$PORT" --shards "$GATE_SHARDS" --max-sessions "$((SESSIONS + SESSIONS / 10))" \
    --reuse-time 120s "${UPSTREAM_ARGS[@]}" >"$OUT/gate-$STAMP.log" 2>&1 &
GATE=$!
PIDS+=("$GATE")
sleep 2
RSS0=$(awk '/^VmRSS/ {print $2}' "/proc/$GATE/status")

# Every session resumes once: --resume-every K with K = messages per session in the run.
K=$(python3 -c "import math; print(max(1, math.floor($RATE * $DURATION * 0.6)))")
RAMP=${RAMP:-50000}
echo "== load: $SESSIONS sessions, ramp $RAMP/s, rate $RATE msg/s each, resume after $K messages, ${DURATION}s"
(
    sleep $((SESSIONS / RAMP + DURATION / 2))
    echo "gate RSS while held: $(awk '/^VmRSS/ {print $2}' "/proc/$GATE/status") KiB (before: $RSS0 KiB)"
) | tee "$OUT/rss-$STAMP.txt" &
SAMPLER=$!
PIDS+=("$SAMPLER")
"$BIN" loadgen --connect "127.0.0.1:$PORT" --connections "$SESSIONS" --ramp "$RAMP" \
    --duration "$DURATION" --rate "$RATE" --size 64 --resume-every "$K" \
    --source-ips "$SOURCES" ${LOADGEN_SHARDS:+--shards "$LOADGEN_SHARDS"} \
    --json "$OUT/million-$STAMP.json" | tee "$OUT/million-$STAMP.txt"
wait "$SAMPLER" || true
echo "report: $OUT/million-$STAMP.json"

#!/usr/bin/env bash
# Puts ringgate beside its baselines in one run, on loopback, and writes a
# markdown table per scenario to perf/results/<scenario>-<date>.md.
#
#   perf/run.sh [echo-small|idle-memory|storm|bulk|relay-baseline|all]
#
# Every ratio compares figures measured in the same run of this script.
# Environment: PERF_DURATION (seconds of each measured run, default 10),
# PERF_SHARDS (gate shards, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIO=${1:-all}
DURATION=${PERF_DURATION:-10}
GATE_SHARDS=${PERF_SHARDS:-2}
DATE=$(date +%Y%m%d-%H%M%S)
BIN=target/release/ringgate
TMP=$(mktemp -d)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case "$SCENARIO" in
echo-small | idle-memory | storm | bulk | relay-baseline | all) ;;
*)
    echo "usage: $0 [echo-small|idle-memory|storm|bulk|relay-baseline|all]" >&2
    exit 2
    ;;
esac

echo "building (release)..."
cargo build --release --quiet
mkdir -p perf/results

# ---- helpers ------------------------------------------------------------------

PORT=17400
next_port() {
    PORT=$((PORT + 1))
    while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
}

wait_port() {
    local i
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

# start NAME PORT CMD... : runs CMD in the background until it listens on PORT; sets LAST_PID.
start() {
    local name=$1 port=$2
    shift 2
    "$@" >"$TMP/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$port"
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

# loadgen OUT.json ARGS... : runs the load generator, report to OUT.json.
loadgen() {
    local out=$1
    shift
    "$BIN" loadgen --json "$out" "$@" >"$TMP/loadgen.txt" 2>&1 || {
        cat "$TMP/loadgen.txt" >&2
        return 1
    }
}

# measure_cpu PID OUT.json ARGS... : runs the loadgen and records PID's CPU
# seconds over the run in OUT.json as "cpu_seconds".
measure_cpu() {
    local pid=$1 out=$2
    shift 2
    local before after
    before=$(cpu_ticks "$pid")
    loadgen "$out" "$@"
    after=$(cpu_ticks "$pid")
    python3 - "$out" "$before" "$after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
path, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
d["cpu_seconds"] = (after - before) / hz
json.dump(d, open(path, "w"), indent=2)
EOF
}

echo_server() {
    next_port
    ECHO_PORT=$PORT
    start echo "$ECHO_PORT" "$BIN" echo --listen "127.0.0.1:$ECHO_PORT" --shards 1
    ECHO_PID=$LAST_PID
}

# gate [--plain] : ringgate serve in front of the echo server.
gate() {
    next_port
    GATE_PORT=$PORT
    start gate "$GATE_PORT" "$BIN" serve --listen "127.0.0.1:$GATE_PORT" --shards "$GATE_SHARDS" \
        --upstream "echo=127.0.0.1:$ECHO_PORT" --max-sessions 1000000 "$@"
    GATE_PID=$LAST_PID
}

# gate_builtin : ringgate serve with its built-in echo (no upstream).
gate_builtin() {
    next_port
    GATE_PORT=$PORT
    start gate "$GATE_PORT" "$BIN" serve --listen "127.0.0.1:$GATE_PORT" --shards "$GATE_SHARDS" "$@"
    GATE_PID=$LAST_PID
}

haproxy_relay() {
    if ! command -v haproxy >/dev/null; then
        echo "installing haproxy..."
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; } >"$TMP/apt.log" 2>&1; then
            echo "haproxy could not be installed (see apt output below); relay-baseline needs it" >&2
            tail -5 "$TMP/apt.log" >&2
            return 1
        fi
    fi
    next_port
    HAPROXY_PORT=$PORT
    cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 8000
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    server echo 127.0.0.1:$ECHO_PORT
EOF
    start haproxy "$HAPROXY_PORT" haproxy -db -f "$TMP/haproxy.cfg"
    HAPROXY_PID=$LAST_PID
}

# table TITLE FILE NOTES ROWSPEC... : builds the markdown table from JSON
# reports; the first row is the baseline. ROWSPEC is "label=path.json".
# Columns are chosen with COLUMNS="key:heading:better" (better = up|down).
table() {
    local out=$1 title=$2 notes=$3
    shift 3
    python3 - "$out" "$title" "$notes" "$COLUMNS" "$@" <<'EOF'
import json, sys
out, title, notes, columns = sys.argv[1:5]
rows = [r.split("=", 1) for r in sys.argv[5:]]
cols = [c.split(":") for c in columns.split(",")]
data = [(label, json.load(open(path))) for label, path in rows]

def get(d, key):
    v = d
    for k in key.split("."):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v

def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)

base = data[0][1]
lines = [f"## {title}", "", notes, ""]
head = ["setup"] + [h for _, h, _ in cols] + [f"{h} ÷ baseline" for _, h, b in cols if b != "-"]
lines.append("| " + " | ".join(head) + " |")
lines.append("|" + "---|" * len(head))
for i, (label, d) in enumerate(data):
    cells = [label + (" (baseline)" if i == 0 else "")]
    cells += [fmt(get(d, k)) for k, _, _ in cols]
    for k, _, better in cols:
        if better == "-":
            continue
        v, b = get(d, k), get(base, k)
        cells.append(f"{v / b:.2f}×" if isinstance(v, (int, float)) and isinstance(b, (int, float)) and b else "–")
    lines.append("| " + " | ".join(cells) + " |")
lines.append("")
text = "\n".join(lines)
with open(out, "a") as f:
    f.write(text + "\n")
print(text)
EOF
}

header() {
    local out=$1 name=$2
    {
        echo "# ringgate perf: $name ($DATE)"
        echo
        echo "Host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); loopback only."
        echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown). Measured run: ${DURATION}s per load; gate shards: $GATE_SHARDS."
        echo "Every process of a run shares the same cores (the load generator included), so absolute"
        echo "figures are low; the ratios, taken within one run, are the point."
        echo
    } >"$out"
}

with_cpu_per_million() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
m = d.get("messages_total") or 0
d["cpu_s_per_million_msgs"] = d["cpu_seconds"] / m * 1e6 if m else None
json.dump(d, open(sys.argv[1], "w"), indent=2)
EOF
}

# ---- scenarios ----------------------------------------------------------------

SMALL=(--connections 1000 --size 64 --rate 0 --duration "$DURATION")
BULK=(--connections 16 --size 16384 --rate 0 --duration "$DURATION")

echo_small() {
    local out="perf/results/echo-small-$DATE.md"
    header "$out" echo-small
    echo_server
    measure_cpu "$ECHO_PID" "$TMP/es-base.json" --connect "127.0.0.1:$ECHO_PORT" --protocol plain "${SMALL[@]}"
    with_cpu_per_million "$TMP/es-base.json"
    gate
    measure_cpu "$GATE_PID" "$TMP/es-gate.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp "${SMALL[@]}"
    with_cpu_per_million "$TMP/es-gate.json"
    stop "$GATE_PID"
    stop "$ECHO_PID"
    COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-" \
        table "$out" "echo-small: 1000 sessions, 64-byte messages, next message when the echo returns" \
        "Baseline: the load generator in plain TCP straight against \`ringgate echo\` (CPU: the echo process). Gate: \`ringgate serve\` (SCP) proxying to the same echo (CPU: the gate process only; the echo behind it is not counted). CPU per million messages covers the whole load run (ramp and drain included) ÷ all echoes." \
        "ringgate echo, plain=$TMP/es-base.json" "ringgate serve, SCP → echo=$TMP/es-gate.json"
}

idle_run() {
    # idle_run OUT.json PORT PID: 10k sessions, each sends one 64-byte message
    # within 10 s then one every 10 s; RSS sampled while they are held.
    local out=$1 port=$2 pid=$3 proto=$4
    local before after
    before=$(rss_kb "$pid")
    loadgen "$out" --connect "127.0.0.1:$port" --protocol "$proto" --connections 10000 \
        --size 64 --rate 0.1 --duration 20 &
    local lg=$!
    PIDS+=("$lg")
    local i
    for i in $(seq 600); do
        [ "$(established "$port")" -ge 10000 ] && break
        sleep 0.1
    done
    sleep 12 # every session has sent its first message (staggered over 10 s)
    after=$(rss_kb "$pid")
    wait "$lg"
    python3 - "$out" "$before" "$after" <<'EOF'
import json, sys
path, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = json.load(open(path))
d["rss_before_kib"], d["rss_held_kib"] = before, after
d["rss_per_session_bytes"] = (after - before) * 1024 / max(d["connections"], 1)
json.dump(d, open(path, "w"), indent=2)
EOF
}

idle_memory() {
    local out="perf/results/idle-memory-$DATE.md"
    header "$out" idle-memory
    echo_server
    gate --plain
    idle_run "$TMP/im-base.json" "$GATE_PORT" "$GATE_PID" plain
    stop "$GATE_PID"
    gate
    idle_run "$TMP/im-gate.json" "$GATE_PORT" "$GATE_PID" scp
    stop "$GATE_PID"
    gate_builtin
    idle_run "$TMP/im-builtin.json" "$GATE_PORT" "$GATE_PID" scp
    stop "$GATE_PID"
    stop "$ECHO_PID"
    COLUMNS="connections:sessions:-,rss_before_kib:RSS before KiB:-,rss_held_kib:RSS held KiB:-,rss_per_session_bytes:RSS per session (bytes):down,bytes_lost:bytes lost:-" \
        table "$out" "idle-memory: 10,000 held sessions that completed a handshake and exchanged 1–2 messages of 64 bytes" \
        "Gate RSS (user space: kernel socket buffers are not in RSS) after − before, ÷ sessions. Baseline: \`ringgate serve --plain\` relaying the same connections to the same upstream (no SCP state). For comparison, goscon's design notes measured about 117 KB per live session (not measured here)." \
        "ringgate serve --plain → echo=$TMP/im-base.json" "ringgate serve, SCP → echo=$TMP/im-gate.json" "ringgate serve, SCP, built-in echo=$TMP/im-builtin.json"
}

storm() {
    local out="perf/results/storm-$DATE.md"
    header "$out" storm
    echo_server
    gate --plain
    loadgen "$TMP/st-base.json" --connect "127.0.0.1:$GATE_PORT" --protocol plain --connections 10000 --rate 1 --duration 2
    stop "$GATE_PID"
    gate
    loadgen "$TMP/st-gate.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp --connections 10000 --rate 1 --duration 5 --storm
    stop "$GATE_PID"
    stop "$ECHO_PID"
    python3 - "$TMP/st-base.json" "$TMP/st-gate.json" "$TMP/st-new.json" <<'EOF'
import json, sys
base, gate, new = sys.argv[1:4]
b = json.load(open(base)); g = json.load(open(gate))
b["seconds"], b["per_sec"] = b["ramp_seconds"], b["handshakes_per_sec"]
n = dict(g); n["seconds"], n["per_sec"] = g["ramp_seconds"], g["handshakes_per_sec"]
g["seconds"], g["per_sec"] = g.get("storm_seconds"), g.get("storm_resumes_per_sec")
for p, d in ((base, b), (gate, g), (new, n)):
    json.dump(d, open(p, "w"), indent=2)
EOF
    COLUMNS="connections:sessions:-,seconds:seconds until all are up:down,per_sec:per second:up,resumes_ok:resumes ok:-,resumes_failed:resumes failed:-,bytes_lost:bytes lost:-" \
        table "$out" "storm: 10,000 sessions dropped at once (TCP RST) and resumed" \
        "Resume storm: every session of \`ringgate serve\` (SCP, proxying to an echo) is reset at once and resumes; seconds from the drop until the last one is back. Baseline: opening 10,000 fresh plain TCP connections through \`ringgate serve --plain\` (what a plain relay's clients must do after a drop, without keeping any session). The new-session row is the same SCP gate's initial ramp (a full DH handshake each)." \
        "10k new plain connections via ringgate serve --plain=$TMP/st-base.json" "10k SCP resumes (storm)=$TMP/st-gate.json" "10k new SCP sessions (ramp)=$TMP/st-new.json"
}

bulk() {
    local out="perf/results/bulk-$DATE.md"
    header "$out" bulk
    echo_server
    measure_cpu "$ECHO_PID" "$TMP/bk-base.json" --connect "127.0.0.1:$ECHO_PORT" --protocol plain "${BULK[@]}"
    gate
    measure_cpu "$GATE_PID" "$TMP/bk-gate.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp "${BULK[@]}"
    stop "$GATE_PID"
    stop "$ECHO_PID"
    COLUMNS="mb_per_sec:MB/s (each way):up,msgs_per_sec:msgs/s:up,latency_us.p99:p99 µs:down,cpu_seconds:CPU s of the process:down,bytes_lost:bytes lost:-" \
        table "$out" "bulk: 16 sessions, 16 KiB messages, next message when the echo returns" \
        "Baseline: plain TCP straight against \`ringgate echo\`. Gate: \`ringgate serve\` (SCP: RC4 both ways) proxying to the same echo." \
        "ringgate echo, plain=$TMP/bk-base.json" "ringgate serve, SCP → echo=$TMP/bk-gate.json"
}

relay_baseline() {
    local out="perf/results/relay-baseline-$DATE.md"
    header "$out" relay-baseline
    echo_server
    if ! haproxy_relay; then
        echo "haproxy unavailable: relay-baseline skipped" | tee -a "$out"
        stop "$ECHO_PID"
        return 0
    fi
    local load
    for load in small bulk; do
        local -a args
        if [ "$load" = small ]; then args=("${SMALL[@]}"); else args=("${BULK[@]}"); fi
        measure_cpu "$HAPROXY_PID" "$TMP/rb-$load-haproxy.json" --connect "127.0.0.1:$HAPROXY_PORT" --protocol plain "${args[@]}"
        gate --plain
        measure_cpu "$GATE_PID" "$TMP/rb-$load-plain.json" --connect "127.0.0.1:$GATE_PORT" --protocol plain "${args[@]}"
        stop "$GATE_PID"
        gate
        measure_cpu "$GATE_PID" "$TMP/rb-$load-scp.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp "${args[@]}"
        stop "$GATE_PID"
        for f in haproxy plain scp; do with_cpu_per_million "$TMP/rb-$load-$f.json"; done
    done
    stop "$HAPROXY_PID"
    stop "$ECHO_PID"
    COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,bytes_lost:bytes lost:-" \
        table "$out" "relay-baseline, echo-small load: 1000 connections, 64-byte messages" \
        "Baseline: HAProxy $(haproxy -v 2>/dev/null | head -1 | awk '{print $3}') in TCP mode (2 threads) relaying plain TCP to \`ringgate echo\`. \`ringgate serve --plain\` relays the same plain load (same upstream); \`ringgate serve\` (SCP) carries the same frames inside SCP, so its row adds the cost of SCP. CPU: the relay process only." \
        "haproxy, plain=$TMP/rb-small-haproxy.json" "ringgate serve --plain=$TMP/rb-small-plain.json" "ringgate serve, SCP=$TMP/rb-small-scp.json"
    COLUMNS="mb_per_sec:MB/s (each way):up,latency_us.p99:p99 µs:down,cpu_seconds:CPU s of the relay:down,bytes_lost:bytes lost:-" \
        table "$out" "relay-baseline, bulk load: 16 connections, 16 KiB messages" \
        "As above, with the bulk load." \
        "haproxy, plain=$TMP/rb-bulk-haproxy.json" "ringgate serve --plain=$TMP/rb-bulk-plain.json" "ringgate serve, SCP=$TMP/rb-bulk-scp.json"
}

run() {
    echo "== $1"
    "$2"
}

case "$SCENARIO" in
echo-small) run echo-small echo_small ;;
idle-memory) run idle-memory idle_memory ;;
storm) run storm storm ;;
bulk) run bulk bulk ;;
relay-baseline) run relay-baseline relay_baseline ;;
all)
    run echo-small echo_small
    run idle-memory idle_memory
    run storm storm
    run bulk bulk
    run relay-baseline relay_baseline
    ;;
esac
echo "results in perf/results/"

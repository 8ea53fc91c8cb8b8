#!/usr/bin/env bash
# Puts ringgate beside its baselines in one run, on loopback, and writes a
# markdown table per scenario to perf/results/<scenario>-<date>.md.
#
#   perf/run.sh [echo-small|idle-memory|storm|bulk|relay-baseline|churn|msgserver|vs-goscon|kcp|websocket|all]
#   OLD=/path/to/old/ringgate perf/run.sh compare [SCENARIO...]
#
# Every ratio compares figures measured in the same run of this script.
# Environment: PERF_DURATION (seconds of each measured run, default 10),
# PERF_SHARDS (gate shards, default 2).
# churn: IDLE_FEW (default 5000) and IDLE_MANY (default 80000) idle sessions,
# CHURN_SESSIONS (resuming sessions, default 1000), CHURN_DURATION (seconds,
# default 20), CHURN_RATE (messages per second per resuming session; 0, the
# default, sends the next as soon as the echo is back), CHURN_SHARDS (gate
# shards, default 8), CHURN_IDLE_RATE (messages per second per idle session,
# default 0.0001), CHURN_LOG (the gate's RUST_LOG, default warn).
# msgserver: MSG_USERS (logged-in users, and SCP sessions beside them; default 1000).
# vs-goscon (and goscon's rows in relay-baseline): GOSCON, the path to a goscon
# binary you built yourself from https://github.com/ejoy/goscon (`go build
# -mod=vendor` in its checkout); without it those parts are skipped.
# HELD_SESSIONS (default 5000) sessions at one message per second for RSS.
# kcp: KCP_SESSIONS (default 200) SCP sessions over KCP beside as many over TCP
# through one gate, and through goscon's KCP listener when GOSCON is set.
# websocket: WS_SESSIONS (busy sessions per transport, default 1000), WS_IDLE (idle
# sessions per transport for RSS, default 5000), WS_ROUNDS (turns of the busy
# loads, default 3); needs openssl for its certificate.
# compare: runs each scenario's gate rows with the gate binary OLD and with the
# one this tree builds (the load generator and echo server are always this
# tree's) and writes perf/results/compare-<date>.md; OLD_LABEL names the old
# binary in the tables. Scenarios: echo-small, relay-baseline, idle-memory,
# storm, churn (default: all five), and paired: both gates loaded at the same
# time, PAIRED_ROUNDS rounds (default 4) alternating which starts first, for a
# CPU-per-message ratio that a noisy host disturbs less.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIO=${1:-all}
DURATION=${PERF_DURATION:-10}
GATE_SHARDS=${PERF_SHARDS:-2}
IDLE_FEW=${IDLE_FEW:-5000}
IDLE_MANY=${IDLE_MANY:-80000}
CHURN_SESSIONS=${CHURN_SESSIONS:-1000}
CHURN_DURATION=${CHURN_DURATION:-20}
CHURN_RATE=${CHURN_RATE:-0}
CHURN_SHARDS=${CHURN_SHARDS:-8}
CHURN_IDLE_RATE=${CHURN_IDLE_RATE:-0.0001}
CHURN_LOG=${CHURN_LOG:-warn}
MSG_USERS=${MSG_USERS:-1000}
HELD_SESSIONS=${HELD_SESSIONS:-5000}
KCP_SESSIONS=${KCP_SESSIONS:-200}
GOSCON=${GOSCON:-}
WS_SESSIONS=${WS_SESSIONS:-1000}
WS_IDLE=${WS_IDLE:-5000}
WS_ROUNDS=${WS_ROUNDS:-3}
DATE=$(date +%Y%m%d-%H%M%S)
BIN=target/release/ringgate
# The `ringgate serve` under test; compare mode points it at each binary in turn.
GATE_BIN=$BIN
TMP=$(mktemp -d)
PIDS=()
# A command the load generator runs under (the websocket scenario pins it).
LOADGEN_PREFIX=()

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

usage() {
    echo "usage: $0 [echo-small|idle-memory|storm|bulk|relay-baseline|churn|msgserver|vs-goscon|kcp|websocket|all]" >&2
    echo "       OLD=/path/to/old/ringgate $0 compare [echo-small|relay-baseline|idle-memory|storm|churn|paired...]" >&2
    exit 2
}

COMPARE=()
case "$SCENARIO" in
echo-small | idle-memory | storm | bulk | relay-baseline | churn | msgserver | vs-goscon | kcp | websocket | all) ;;
compare)
    shift
    COMPARE=("$@")
    [ ${#COMPARE[@]} -eq 0 ] && COMPARE=(echo-small relay-baseline idle-memory storm churn)
    for s in "${COMPARE[@]}"; do
        case "$s" in
        echo-small | relay-baseline | idle-memory | storm | churn | paired) ;;
        *) usage ;;
        esac
    done
    if [ -z "${OLD:-}" ]; then
        cat >&2 <<'EOF'
compare needs the old gate binary in OLD; nothing was run. To build one from an
older revision REV of this repository:

    git worktree add /tmp/ringgate-old REV
    (cd /tmp/ringgate-old && cargo build --release)
    OLD=/tmp/ringgate-old/target/release/ringgate perf/run.sh compare

(afterwards: git worktree remove /tmp/ringgate-old)
EOF
        exit 0
    fi
    if [ ! -x "$OLD" ]; then
        echo "OLD=$OLD is not an executable file" >&2
        exit 2
    fi
    ;;
*) usage ;;
esac

echo "building (release)..."
cargo build --release --quiet
if [ "$SCENARIO" = msgserver ] || [ "$SCENARIO" = all ]; then
    cargo build --release --quiet --example skynet_login
fi
mkdir -p perf/results

# ---- helpers ------------------------------------------------------------------

PORT=17400
# port_free PORT : whether a TCP socket can bind 127.0.0.1:PORT now (nothing
# listens there, and no client socket of another program holds it).
port_free() {
    python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

next_port() {
    PORT=$((PORT + 1))
    while ! port_free "$PORT"; do PORT=$((PORT + 1)); done
}

wait_port() {
    for _ in $(seq 100); do
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
    "${LOADGEN_PREFIX[@]}" "$BIN" loadgen --json "$out" "$@" >"$TMP/loadgen.txt" 2>&1 || {
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
    start gate "$GATE_PORT" "$GATE_BIN" serve --listen "127.0.0.1:$GATE_PORT" --shards "$GATE_SHARDS" \
        --upstream "echo=127.0.0.1:$ECHO_PORT" --max-sessions 1000000 "$@"
    GATE_PID=$LAST_PID
}

# gate_builtin : ringgate serve with its built-in echo (no upstream).
gate_builtin() {
    next_port
    GATE_PORT=$PORT
    start gate "$GATE_PORT" "$GATE_BIN" serve --listen "127.0.0.1:$GATE_PORT" --shards "$GATE_SHARDS" "$@"
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

# have_goscon : whether GOSCON names a goscon binary; says why not otherwise.
have_goscon() {
    if [ -z "$GOSCON" ]; then
        echo "GOSCON is not set: goscon's rows are skipped. Build goscon from https://github.com/ejoy/goscon" >&2
        echo "(go build -mod=vendor in its checkout) and run again with GOSCON=/path/to/goscon." >&2
        return 1
    fi
    if [ ! -x "$GOSCON" ]; then
        echo "GOSCON=$GOSCON is not an executable file: goscon's rows are skipped" >&2
        return 1
    fi
}

# goscon_gate : goscon (TCP only, SCP, the same reuse settings as ringgate's
# defaults) in front of the echo server; sets GOSCON_PORT and GOSCON_PID.
goscon_gate() {
    next_port
    local manager=$PORT # goscon's HTTP manager must have a port of its own
    next_port
    GOSCON_PORT=$PORT
    mkdir -p "$TMP/goscon"
    cat >"$TMP/goscon/config.yaml" <<EOF
manager: 127.0.0.1:$manager
tcp: 127.0.0.1:$GOSCON_PORT
scp:
  handshake_timeout: 30
  reuse_time: 30
  reuse_buffer: 65536
tcp_option:
  read_timeout: 0
  keepalive: false
upstream_option:
  net: tcp
hosts:
  - name: echo
    addr: 127.0.0.1:$ECHO_PORT
    weight: 100
EOF
    # goscon logs through glog into -log_dir (its default is the working directory).
    start goscon "$GOSCON_PORT" "$GOSCON" -config "$TMP/goscon/config.yaml" -log_dir "$TMP/goscon"
    GOSCON_PID=$LAST_PID
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

# header OUT NAME [SETUP] : SETUP replaces the line on the measured run.
header() {
    local out=$1 name=$2
    local setup=${3:-"Measured run: ${DURATION}s per load; gate shards: $GATE_SHARDS."}
    {
        echo "# ringgate perf: $name ($DATE)"
        echo
        echo "Host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); loopback only."
        echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown). $setup"
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
    # idle_run OUT.json PORT PID PROTO [N [RATE]]: N sessions (default 10k),
    # each sends one 64-byte message within 1/RATE s (default 0.1/s) then one
    # every 1/RATE s; RSS sampled while they are held.
    local out=$1 port=$2 pid=$3 proto=$4 n=${5:-10000} rate=${6:-0.1}
    local before after
    before=$(rss_kb "$pid")
    loadgen "$out" --connect "127.0.0.1:$port" --protocol "$proto" --connections "$n" \
        --size 64 --rate "$rate" --duration 20 &
    local lg=$!
    PIDS+=("$lg")
    for _ in $(seq 600); do
        [ "$(established "$port")" -ge "$n" ] && break
        sleep 0.1
    done
    # every session has sent its first message (staggered over 1/RATE s)
    sleep "$(python3 -c "print(1 / $rate + 2)")"
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
    gate_builtin --max-sessions 1000000
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
    d["resumes_failed_total"] = sum(d["resumes_failed"].values())
    json.dump(d, open(p, "w"), indent=2)
EOF
    COLUMNS="connections:sessions:-,seconds:seconds until all are up:down,per_sec:per second:up,resumes_ok:resumes ok:-,resumes_failed_total:resumes failed:-,bytes_lost:bytes lost:-" \
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
    local load goscon=0 small_goscon=() bulk_goscon=()
    if have_goscon; then
        goscon=1
        small_goscon=("goscon, SCP=$TMP/rb-small-goscon.json")
        bulk_goscon=("goscon, SCP=$TMP/rb-bulk-goscon.json")
    fi
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
        if [ "$goscon" = 1 ]; then
            goscon_gate
            measure_cpu "$GOSCON_PID" "$TMP/rb-$load-goscon.json" --connect "127.0.0.1:$GOSCON_PORT" --protocol scp "${args[@]}"
            stop "$GOSCON_PID"
            with_cpu_per_million "$TMP/rb-$load-goscon.json"
        fi
    done
    stop "$HAPROXY_PID"
    stop "$ECHO_PID"
    COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,bytes_lost:bytes lost:-" \
        table "$out" "relay-baseline, echo-small load: 1000 connections, 64-byte messages" \
        "Baseline: HAProxy $(haproxy -v 2>/dev/null | head -1 | awk '{print $3}') in TCP mode (2 threads) relaying plain TCP to \`ringgate echo\`. \`ringgate serve --plain\` relays the same plain load (same upstream); \`ringgate serve\` (SCP) carries the same frames inside SCP, so its row adds the cost of SCP; goscon's row (when GOSCON is set) carries the same SCP load. CPU: the relay process only." \
        "haproxy, plain=$TMP/rb-small-haproxy.json" "ringgate serve --plain=$TMP/rb-small-plain.json" "ringgate serve, SCP=$TMP/rb-small-scp.json" "${small_goscon[@]}"
    COLUMNS="mb_per_sec:MB/s (each way):up,latency_us.p99:p99 µs:down,cpu_seconds:CPU s of the relay:down,bytes_lost:bytes lost:-" \
        table "$out" "relay-baseline, bulk load: 16 connections, 16 KiB messages" \
        "As above, with the bulk load." \
        "haproxy, plain=$TMP/rb-bulk-haproxy.json" "ringgate serve --plain=$TMP/rb-bulk-plain.json" "ringgate serve, SCP=$TMP/rb-bulk-scp.json" "${bulk_goscon[@]}"
}

# ---- vs-goscon: the gate it replaces, on the same load --------------------------

vs_goscon() {
    local out="perf/results/vs-goscon-$DATE.md"
    header "$out" vs-goscon
    if ! have_goscon; then
        echo "GOSCON is not set or not executable: vs-goscon skipped (see above for how to get goscon)" | tee -a "$out"
        return 0
    fi
    echo_server
    # CPU per message: the echo-small load through each gate.
    goscon_gate
    measure_cpu "$GOSCON_PID" "$TMP/vg-goscon.json" --connect "127.0.0.1:$GOSCON_PORT" --protocol scp "${SMALL[@]}"
    stop "$GOSCON_PID"
    gate
    measure_cpu "$GATE_PID" "$TMP/vg-gate.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp "${SMALL[@]}"
    stop "$GATE_PID"
    for f in goscon gate; do with_cpu_per_million "$TMP/vg-$f.json"; done
    # Memory per session: HELD_SESSIONS sessions at one message a second, each
    # gate fresh, RSS growth while they are held.
    goscon_gate
    idle_run "$TMP/vm-goscon.json" "$GOSCON_PORT" "$GOSCON_PID" scp "$HELD_SESSIONS" 1
    stop "$GOSCON_PID"
    gate
    idle_run "$TMP/vm-gate.json" "$GATE_PORT" "$GATE_PID" scp "$HELD_SESSIONS" 1
    stop "$GATE_PID"
    stop "$ECHO_PID"
    local version
    version=$("$GOSCON" -version 2>/dev/null | head -1 || true)
    COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-" \
        table "$out" "vs-goscon, CPU: 1000 SCP sessions, 64-byte messages, next message when the echo returns" \
        "Baseline: ${version:-goscon} (GOMAXPROCS = all cores) proxying SCP to \`ringgate echo\`. ringgate: \`ringgate serve\` ($GATE_SHARDS shards) proxying to the same echo. Same load generator, same load. CPU: the gate process only (the echo and the load generator are not counted), over the whole load run ÷ all echoes." \
        "goscon=$TMP/vg-goscon.json" "ringgate serve=$TMP/vg-gate.json"
    COLUMNS="connections:sessions:-,rss_before_kib:RSS before KiB:-,rss_held_kib:RSS held KiB:-,rss_per_session_bytes:RSS per session (bytes):down,bytes_lost:bytes lost:-" \
        table "$out" "vs-goscon, memory: $HELD_SESSIONS SCP sessions, one 64-byte message per second each" \
        "Gate RSS while the sessions are held − RSS before they opened, ÷ sessions (user space; the kernel's socket memory is the same for both and not in RSS). Each gate freshly started, proxying to the same echo." \
        "goscon=$TMP/vm-goscon.json" "ringgate serve=$TMP/vm-gate.json"
}

# ---- kcp: SCP over KCP beside SCP over TCP, through one gate ---------------------

# goscon_kcp_gate : goscon listening for TCP and KCP on one port (its sample
# kcp_option with the gate's default windows, no FEC) in front of the echo
# server; sets GOSCON_PORT and GOSCON_PID.
goscon_kcp_gate() {
    next_port
    local manager=$PORT
    next_port
    GOSCON_PORT=$PORT
    mkdir -p "$TMP/goscon-kcp"
    cat >"$TMP/goscon-kcp/config.yaml" <<EOF
manager: 127.0.0.1:$manager
tcp: 127.0.0.1:$GOSCON_PORT
kcp: 127.0.0.1:$GOSCON_PORT
scp:
  handshake_timeout: 30
  reuse_time: 30
  reuse_buffer: 65536
tcp_option:
  read_timeout: 0
  keepalive: false
kcp_option:
  read_timeout: 60
  fec_data_shards: 0
  fec_parity_shards: 0
  read_buffer: 4194304
  write_buffer: 4194304
  opt_mtu: 1400
  opt_nodelay: 1
  opt_interval: 10
  opt_resend: 2
  opt_nc: 1
  opt_sndwnd: 256
  opt_rcvwnd: 256
  opt_stream: true
  opt_writedelay: false
upstream_option:
  net: tcp
hosts:
  - name: echo
    addr: 127.0.0.1:$ECHO_PORT
    weight: 100
EOF
    start goscon-kcp "$GOSCON_PORT" "$GOSCON" -config "$TMP/goscon-kcp/config.yaml" -log_dir "$TMP/goscon-kcp"
    GOSCON_PID=$LAST_PID
}

kcp_echo() {
    local out="perf/results/kcp-$DATE.md"
    header "$out" kcp
    local load=(--connections "$KCP_SESSIONS" --size 64 --rate 0 --duration "$DURATION")
    echo_server
    # One gate, both listeners on one port (as goscon's sample config has it).
    next_port
    GATE_PORT=$PORT
    start gate "$GATE_PORT" "$GATE_BIN" serve --listen "127.0.0.1:$GATE_PORT" --kcp "127.0.0.1:$GATE_PORT" \
        --shards "$GATE_SHARDS" --upstream "echo=127.0.0.1:$ECHO_PORT" --max-sessions 1000000
    GATE_PID=$LAST_PID
    measure_cpu "$GATE_PID" "$TMP/kc-tcp.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp "${load[@]}"
    measure_cpu "$GATE_PID" "$TMP/kc-kcp.json" --connect "127.0.0.1:$GATE_PORT" --transport kcp "${load[@]}"
    measure_cpu "$GATE_PID" "$TMP/kc-kcp-lossy.json" --connect "127.0.0.1:$GATE_PORT" --transport kcp \
        --loss 0.05 --reorder --duplicate 0.01 --resume-every 100 --seed 7 "${load[@]}"
    stop "$GATE_PID"
    local rows=() files=(tcp kcp kcp-lossy)
    if have_goscon; then
        goscon_kcp_gate
        measure_cpu "$GOSCON_PID" "$TMP/kc-goscon.json" --connect "127.0.0.1:$GOSCON_PORT" --transport kcp "${load[@]}"
        stop "$GOSCON_PID"
        rows=("goscon, SCP over KCP=$TMP/kc-goscon.json")
        files+=(goscon)
    else
        echo "GOSCON is not set or not executable: goscon's KCP row is skipped" | tee -a "$out"
    fi
    stop "$ECHO_PID"
    for f in "${files[@]}"; do with_cpu_per_million "$TMP/kc-$f.json"; done
    COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,resumes_ok:resumes:-,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-" \
        table "$out" "kcp: $KCP_SESSIONS SCP sessions, 64-byte messages, next message when the echo returns" \
        "Baseline: \`ringgate serve\` ($GATE_SHARDS shards) with the same sessions over TCP (the io_uring load generator). KCP rows: the same gate process, its KCP door on the same port, loaded by \`loadgen --transport kcp\` (a poll loop per client thread over non-blocking UDP sockets; KCP nodelay, interval 10 ms, windows 256). The lossy row impairs the clients' own link (5% loss each way, 1% duplicates, reordering) and resumes every session every 100 echoes over a new conversation. goscon's row (when GOSCON is set) is goscon's KCP listener with the same kcp_option. All proxy to the same \`ringgate echo\`. CPU: the gate process only, over the whole load run ÷ all echoes." \
        "ringgate serve, SCP over TCP=$TMP/kc-tcp.json" "ringgate serve, SCP over KCP=$TMP/kc-kcp.json" \
        "ringgate serve, SCP over KCP, lossy link=$TMP/kc-kcp-lossy.json" "${rows[@]}"
}

# ---- churn: resumes beside few and many idle sessions -------------------------

# churn_run OUT.json N : a fresh `ringgate serve` (built-in echo, CHURN_SHARDS
# shards) holding N idle SCP sessions (load generator A), and beside them
# CHURN_SESSIONS sessions that drop (TCP RST) and resume after every message
# (load generator B, report in OUT.json). The gate's CPU is read over B's run.
churn_run() {
    local out=$1 n=$2
    local GATE_SHARDS=$CHURN_SHARDS
    local -x RUST_LOG=$CHURN_LOG
    gate_builtin --max-sessions $((2 * (n + CHURN_SESSIONS)))
    local port=$GATE_PORT gate_pid=$GATE_PID
    # A: idle sessions, spread over many source addresses (one address has
    # about 28k ephemeral ports); bounded in time, stopped once B is done.
    "$BIN" loadgen --connect "127.0.0.1:$port" --protocol scp --connections "$n" --size 64 \
        --rate "$CHURN_IDLE_RATE" --duration $((CHURN_DURATION + 180)) \
        --source-ips 127.0.0.2-127.0.0.40 --json "$TMP/churn-idle.json" >"$TMP/churn-idle.txt" 2>&1 &
    local idle=$!
    PIDS+=("$idle")
    for _ in $(seq 1200); do
        [ "$(established "$port")" -ge "$n" ] && break
        kill -0 "$idle" 2>/dev/null || break
        sleep 0.25
    done
    sleep 2 # the last handshakes after their TCP connect
    local held
    held=$(established "$port")
    if [ "$held" -lt "$n" ]; then
        echo "churn: only $held of $n idle sessions connected" >&2
        cat "$TMP/churn-idle.txt" >&2
    fi
    # B: resume after every message, on source addresses of its own.
    measure_cpu "$gate_pid" "$out" --connect "127.0.0.1:$port" --protocol scp \
        --connections "$CHURN_SESSIONS" --size 64 --rate "$CHURN_RATE" --resume-every 1 \
        --duration "$CHURN_DURATION" --source-ips 127.0.0.41-127.0.0.60
    local rss
    rss=$(rss_kb "$gate_pid")
    stop "$idle"
    stop "$gate_pid"
    python3 - "$out" "$n" "$held" "$rss" <<'EOF'
import json, sys
path, n, held, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
d["idle_target"], d["idle_held"] = n, held
d["gate_rss_mib"] = rss / 1024
# resumes_ok counts the whole run: ramp, measured run and drain (the drain adds
# at most one resume per session: no new message is sent then).
secs = d["ramp_seconds"] + d["measured_seconds"]
d["resumes_per_sec"] = d["resumes_ok"] / secs if secs else None
d["resumes_failed_total"] = sum(d["resumes_failed"].values())
d["errors_total"] = sum(d["errors"].values())
d["cpu_us_per_resume"] = d["cpu_seconds"] / d["resumes_ok"] * 1e6 if d["resumes_ok"] else None
json.dump(d, open(path, "w"), indent=2)
EOF
}

CHURN_COLUMNS="idle_target:idle sessions:-,idle_held:held:-,resumes_per_sec:resumes/s:up,msgs_per_sec:verified echoes/s:up,resumes_failed_total:resumes failed:-,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-,errors_total:errors:-,gate_rss_mib:gate RSS MiB:-,cpu_seconds:gate CPU s:-,cpu_us_per_resume:gate CPU µs / resume:down"

churn_notes() {
    echo "One \`ringgate serve\` (built-in echo, $CHURN_SHARDS shards, RUST_LOG=$CHURN_LOG) per row, fresh for each. Load generator A holds the idle SCP sessions (\`--rate $CHURN_IDLE_RATE\`); once all are connected, load generator B holds $CHURN_SESSIONS sessions that each drop (TCP RST) and resume after every message (\`--resume-every 1 --rate $CHURN_RATE\`, 64 bytes) for ${CHURN_DURATION}s. resumes/s: B's resumes answered 200 ÷ (B's ramp + measured seconds); verified echoes/s: B's echoes in the measured run (one per resume, so the two agree). Gate CPU: user + system seconds of the gate over B's whole run."
}

# churn_verdict OUT FEW.json MANY.json LABEL : appends the many/few ratio.
churn_verdict() {
    python3 - "$@" <<'EOF' | tee -a "$1"
import json, sys
_, few, many, label = sys.argv[1:5]
f, m = json.load(open(few)), json.load(open(many))
a, b = f.get("resumes_per_sec"), m.get("resumes_per_sec")
bad = sum(d["bytes_lost"] + d["bytes_duplicated"] + d["resumes_failed_total"] for d in (f, m))
if a and b is not None:
    r = b / a
    verdict = "meets" if r >= 0.8 else "misses"
    print(f"**{label}resumes/s with {m['idle_target']:,} idle ÷ with {f['idle_target']:,} idle = {r:.2f}** ({verdict} the target ≥ 0.8)."
          + ("" if bad == 0 else " Resumes failed or bytes lost/duplicated: these figures do not count."))
else:
    print(f"{label}no ratio: a run produced no resumes.")
print()
EOF
}

churn() {
    local out="perf/results/churn-$DATE.md"
    header "$out" churn "Resuming run: ${CHURN_DURATION}s; gate shards: $CHURN_SHARDS."
    churn_run "$TMP/ch-few.json" "$IDLE_FEW"
    churn_run "$TMP/ch-many.json" "$IDLE_MANY"
    COLUMNS=$CHURN_COLUMNS table "$out" \
        "churn: $CHURN_SESSIONS sessions resuming after every message, beside $IDLE_FEW and beside $IDLE_MANY idle sessions" \
        "$(churn_notes) The ratio column of the second row is many ÷ few (target for resumes/s: ≥ 0.8)." \
        "$IDLE_FEW idle=$TMP/ch-few.json" "$IDLE_MANY idle=$TMP/ch-many.json"
    churn_verdict "$out" "$TMP/ch-few.json" "$TMP/ch-many.json" ""
}

# ---- compare: the old gate binary beside the new one ---------------------------

# compare_table OUT TITLE NOTES SPEC... : one table, two rows per SPEC
# "label=old.json=new.json" (old first), the new row with new ÷ old per column.
# Columns as for `table` (COLUMNS).
compare_table() {
    local out=$1 title=$2 notes=$3
    shift 3
    python3 - "$out" "$title" "$notes" "$COLUMNS" "$OLD_NAME" "$NEW_NAME" "$@" <<'EOF'
import json, sys
out, title, notes, columns, old_name, new_name = sys.argv[1:7]
cols = [c.split(":") for c in columns.split(",")]

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

def load(path):
    try:
        return json.load(open(path))
    except Exception:
        return {}

lines = [f"## {title}", "", notes, ""]
head = ["setup", "gate"] + [h for _, h, _ in cols] + [f"{h} new ÷ old" for _, h, b in cols if b != "-"]
lines.append("| " + " | ".join(head) + " |")
lines.append("|" + "---|" * len(head))
for spec in sys.argv[7:]:
    label, old_path, new_path = spec.split("=", 2)
    old, new = load(old_path), load(new_path)
    for name, d in ((old_name, old), (new_name, new)):
        cells = [label, name] + [fmt(get(d, k)) for k, _, _ in cols]
        for k, _, better in cols:
            if better == "-":
                continue
            v, b = get(d, k), get(old, k)
            ok = d is new and isinstance(v, (int, float)) and isinstance(b, (int, float)) and b
            cells.append(f"{v / b:.2f}×" if ok else "")
        lines.append("| " + " | ".join(cells) + " |")
lines.append("")
text = "\n".join(lines)
with open(out, "a") as f:
    f.write(text + "\n")
print(text)
EOF
}

# Each cmp_* measures the gate rows of one scenario with GATE_BIN, into
# $TMP/cmp-<scenario>-<TAG>-*.json.
cmp_echo_small() {
    local tag=$1
    echo_server
    gate
    measure_cpu "$GATE_PID" "$TMP/cmp-es-$tag.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp "${SMALL[@]}"
    with_cpu_per_million "$TMP/cmp-es-$tag.json"
    stop "$GATE_PID"
    stop "$ECHO_PID"
}

cmp_relay_baseline() {
    local tag=$1 load mode
    echo_server
    for load in small bulk; do
        local -a args
        if [ "$load" = small ]; then args=("${SMALL[@]}"); else args=("${BULK[@]}"); fi
        for mode in plain scp; do
            if [ "$mode" = plain ]; then gate --plain; else gate; fi
            measure_cpu "$GATE_PID" "$TMP/cmp-rb-$tag-$load-$mode.json" --connect "127.0.0.1:$GATE_PORT" --protocol "$mode" "${args[@]}"
            with_cpu_per_million "$TMP/cmp-rb-$tag-$load-$mode.json"
            stop "$GATE_PID"
        done
    done
    stop "$ECHO_PID"
}

cmp_idle_memory() {
    local tag=$1
    echo_server
    gate --plain
    idle_run "$TMP/cmp-im-$tag-plain.json" "$GATE_PORT" "$GATE_PID" plain
    stop "$GATE_PID"
    gate
    idle_run "$TMP/cmp-im-$tag-scp.json" "$GATE_PORT" "$GATE_PID" scp
    stop "$GATE_PID"
    gate_builtin --max-sessions 1000000
    idle_run "$TMP/cmp-im-$tag-builtin.json" "$GATE_PORT" "$GATE_PID" scp
    stop "$GATE_PID"
    stop "$ECHO_PID"
}

cmp_storm() {
    local tag=$1
    echo_server
    gate
    loadgen "$TMP/cmp-st-$tag.json" --connect "127.0.0.1:$GATE_PORT" --protocol scp --connections 10000 --rate 1 --duration 5 --storm
    stop "$GATE_PID"
    stop "$ECHO_PID"
    python3 - "$TMP/cmp-st-$tag.json" "$TMP/cmp-st-$tag-ramp.json" <<'EOF'
import json, sys
storm, ramp = sys.argv[1:3]
g = json.load(open(storm))
n = dict(g)
n["seconds"], n["per_sec"] = g["ramp_seconds"], g["handshakes_per_sec"]
g["seconds"], g["per_sec"] = g.get("storm_seconds"), g.get("storm_resumes_per_sec")
for d in (g, n):
    d["resumes_failed_total"] = sum(d["resumes_failed"].values())
json.dump(g, open(storm, "w"), indent=2)
json.dump(n, open(ramp, "w"), indent=2)
EOF
}

cmp_churn() {
    local tag=$1
    churn_run "$TMP/cmp-ch-$tag-few.json" "$IDLE_FEW"
    churn_run "$TMP/cmp-ch-$tag-many.json" "$IDLE_MANY"
}

# cmp_paired OUT : the old and the new gate under the same load at the same
# time, PAIRED_ROUNDS rounds (default 4), the start order alternating: on a
# shared, noisy host both see the same interference, so the ratio of their
# CPU per message holds steadier than two runs one after the other.
cmp_paired() {
    local out=$1 rounds=${PAIRED_ROUNDS:-4} r
    local conns=500
    echo_server
    local echo_a=$ECHO_PORT echo_a_pid=$ECHO_PID
    echo_server
    local echo_b=$ECHO_PORT
    for r in $(seq "$rounds"); do
        echo "-- paired round $r"
        local first=old second=new
        [ $((r % 2)) = 0 ] && first=new second=old
        local tag port pid
        declare -A gport gpid before
        for tag in $first $second; do
            if [ "$tag" = old ]; then GATE_BIN=$OLD; else GATE_BIN=$BIN; fi
            next_port
            port=$PORT
            local up=$echo_a
            [ "$tag" = new ] && up=$echo_b
            start "gate-$tag" "$port" "$GATE_BIN" serve --listen "127.0.0.1:$port" --shards 1 \
                --upstream "echo=127.0.0.1:$up" --max-sessions 100000
            gport[$tag]=$port
            gpid[$tag]=$LAST_PID
        done
        GATE_BIN=$BIN
        local -a lgs=()
        for tag in $first $second; do
            before[$tag]=$(cpu_ticks "${gpid[$tag]}")
        done
        for tag in $first $second; do
            "$BIN" loadgen --json "$TMP/cmp-pr-$tag-$r.json" --connect "127.0.0.1:${gport[$tag]}" --protocol scp \
                --connections $conns --size 64 --rate 0 --duration "$DURATION" --shards 1 >"$TMP/cmp-pr-$tag-$r.txt" 2>&1 &
            lgs+=($!)
        done
        wait "${lgs[@]}"
        for tag in old new; do
            python3 - "$TMP/cmp-pr-$tag-$r.json" "${before[$tag]}" "$(cpu_ticks "${gpid[$tag]}")" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
path, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
d["cpu_seconds"] = (after - before) / hz
json.dump(d, open(path, "w"), indent=2)
EOF
            with_cpu_per_million "$TMP/cmp-pr-$tag-$r.json"
            stop "${gpid[$tag]}"
        done
    done
    stop "$ECHO_PID"
    stop "$echo_a_pid"
    python3 - "$out" "$rounds" "$TMP" "$OLD_NAME" "$NEW_NAME" "$conns" "$DURATION" <<'EOF'
import json, statistics, sys
out, rounds, tmp, old_name, new_name, conns, secs = sys.argv[1:8]
rows, cpu_r, msg_r = [], [], []
for r in range(1, int(rounds) + 1):
    o = json.load(open(f"{tmp}/cmp-pr-old-{r}.json"))
    n = json.load(open(f"{tmp}/cmp-pr-new-{r}.json"))
    co, cn = o["cpu_s_per_million_msgs"], n["cpu_s_per_million_msgs"]
    cpu_r.append(cn / co)
    msg_r.append(n["msgs_per_sec"] / o["msgs_per_sec"])
    lost = o["bytes_lost"] + n["bytes_lost"] + o["bytes_duplicated"] + n["bytes_duplicated"]
    first = "old" if r % 2 else "new"
    rows.append(f"| {r} ({first} first) | {co:.2f} | {cn:.2f} | {cn / co:.3f}× | {o['msgs_per_sec']:,.0f} | {n['msgs_per_sec']:,.0f} | {n['msgs_per_sec'] / o['msgs_per_sec']:.3f}× | {lost} |")
lines = [
    f"## paired: both gates at once, {conns} SCP sessions each, 64-byte messages, {secs}s a round",
    "",
    "Each round starts the old and the new gate (1 shard each, each proxying to its own `ringgate echo`)",
    "and loads both at the same time with their own load generators, so whatever else the host runs",
    "slows both alike. CPU: each gate process's own CPU seconds over the round ÷ its echoed messages.",
    "",
    f"| round | {old_name}: CPU s / 1M msgs | {new_name}: CPU s / 1M msgs | new ÷ old | old msgs/s | new msgs/s | new ÷ old | bytes lost + dup |",
    "|---|---|---|---|---|---|---|---|",
    *rows,
    f"| **median** | | | **{statistics.median(cpu_r):.3f}×** | | | **{statistics.median(msg_r):.3f}×** | |",
    "",
]
text = "\n".join(lines)
open(out, "a").write(text + "\n")
print(text)
EOF
}

compare() {
    local out="perf/results/compare-$DATE.md" s tag
    local old_rev=""
    old_rev=$(git -C "$(dirname "$OLD")" rev-parse --short HEAD 2>/dev/null) || old_rev=""
    OLD_NAME=${OLD_LABEL:-old${old_rev:+ ($old_rev)}}
    NEW_NAME="new ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ", modified"))"
    header "$out" "old vs new gate" "Measured run: ${DURATION}s per load (churn: ${CHURN_DURATION}s); gate shards: $GATE_SHARDS (churn: $CHURN_SHARDS)."
    {
        echo "Old gate: \`$OLD\`${old_rev:+ (from a tree at $old_rev)}. New gate: \`$BIN\` built from this tree."
        echo "Only \`ringgate serve\` differs between the two rows of a pair: the load generator and the echo"
        echo "server are this tree's for both. Each scenario runs the old gate first, then the new one."
        echo
    } >>"$out"
    for s in "${COMPARE[@]}"; do
        echo "== compare $s"
        if [ "$s" = paired ]; then
            cmp_paired "$out"
            continue
        fi
        for tag in old new; do
            if [ "$tag" = old ]; then GATE_BIN=$OLD; else GATE_BIN=$BIN; fi
            echo "-- $tag gate: $GATE_BIN"
            case "$s" in
            echo-small) cmp_echo_small "$tag" ;;
            relay-baseline) cmp_relay_baseline "$tag" ;;
            idle-memory) cmp_idle_memory "$tag" ;;
            storm) cmp_storm "$tag" ;;
            churn) cmp_churn "$tag" ;;
            esac
        done
        GATE_BIN=$BIN
        case "$s" in
        echo-small)
            COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-" \
                compare_table "$out" "echo-small: 1000 SCP sessions, 64-byte messages, next message when the echo returns" \
                "\`ringgate serve\` (SCP) proxying to \`ringgate echo\`; CPU of the gate process only." \
                "serve, SCP → echo=$TMP/cmp-es-old.json=$TMP/cmp-es-new.json"
            ;;
        relay-baseline)
            COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,bytes_lost:bytes lost:-" \
                compare_table "$out" "relay-baseline, echo-small load: 1000 connections, 64-byte messages" \
                "\`ringgate serve --plain\` relaying plain TCP, and \`ringgate serve\` carrying the same frames inside SCP, to \`ringgate echo\` (HAProxy is left out: it is the same for both). CPU: the gate process only." \
                "serve --plain=$TMP/cmp-rb-old-small-plain.json=$TMP/cmp-rb-new-small-plain.json" \
                "serve, SCP=$TMP/cmp-rb-old-small-scp.json=$TMP/cmp-rb-new-small-scp.json"
            COLUMNS="mb_per_sec:MB/s (each way):up,latency_us.p99:p99 µs:down,cpu_seconds:CPU s of the gate:down,bytes_lost:bytes lost:-" \
                compare_table "$out" "relay-baseline, bulk load: 16 connections, 16 KiB messages" \
                "As above, with the bulk load." \
                "serve --plain=$TMP/cmp-rb-old-bulk-plain.json=$TMP/cmp-rb-new-bulk-plain.json" \
                "serve, SCP=$TMP/cmp-rb-old-bulk-scp.json=$TMP/cmp-rb-new-bulk-scp.json"
            ;;
        idle-memory)
            COLUMNS="connections:sessions:-,rss_before_kib:RSS before KiB:-,rss_held_kib:RSS held KiB:-,rss_per_session_bytes:RSS per session (bytes):down,bytes_lost:bytes lost:-" \
                compare_table "$out" "idle-memory: 10,000 held sessions that exchanged 1–2 messages of 64 bytes" \
                "Gate RSS while held − before, ÷ sessions (user space only)." \
                "serve --plain → echo=$TMP/cmp-im-old-plain.json=$TMP/cmp-im-new-plain.json" \
                "serve, SCP → echo=$TMP/cmp-im-old-scp.json=$TMP/cmp-im-new-scp.json" \
                "serve, SCP, built-in echo=$TMP/cmp-im-old-builtin.json=$TMP/cmp-im-new-builtin.json"
            ;;
        storm)
            COLUMNS="connections:sessions:-,seconds:seconds until all are up:down,per_sec:per second:up,resumes_ok:resumes ok:-,resumes_failed_total:resumes failed:-,bytes_lost:bytes lost:-" \
                compare_table "$out" "storm: 10,000 SCP sessions dropped at once (TCP RST) and resumed" \
                "\`ringgate serve\` (SCP) proxying to \`ringgate echo\`. Storm: from the drop until the last session is resumed. Ramp: the same gate's initial 10,000 new sessions (a DH handshake each)." \
                "10k resumes (storm)=$TMP/cmp-st-old.json=$TMP/cmp-st-new.json" \
                "10k new sessions (ramp)=$TMP/cmp-st-old-ramp.json=$TMP/cmp-st-new-ramp.json"
            ;;
        churn)
            COLUMNS=$CHURN_COLUMNS compare_table "$out" \
                "churn: $CHURN_SESSIONS sessions resuming after every message, beside $IDLE_FEW and beside $IDLE_MANY idle sessions" \
                "$(churn_notes)" \
                "$IDLE_FEW idle=$TMP/cmp-ch-old-few.json=$TMP/cmp-ch-new-few.json" \
                "$IDLE_MANY idle=$TMP/cmp-ch-old-many.json=$TMP/cmp-ch-new-many.json"
            churn_verdict "$out" "$TMP/cmp-ch-old-few.json" "$TMP/cmp-ch-old-many.json" "$OLD_NAME: "
            churn_verdict "$out" "$TMP/cmp-ch-new-few.json" "$TMP/cmp-ch-new-many.json" "$NEW_NAME: "
            ;;
        esac
    done
}

# rss_run OUT.json PORT PID N ARGS... : runs the loadgen with ARGS and samples
# PID's RSS before and once N connections to PORT are up, in OUT.json.
rss_run() {
    local out=$1 port=$2 pid=$3 n=$4
    shift 4
    local before after
    before=$(rss_kb "$pid")
    loadgen "$out" "$@" &
    local lg=$!
    PIDS+=("$lg")
    for _ in $(seq 600); do
        [ "$(established "$port")" -ge "$n" ] && break
        sleep 0.1
    done
    sleep 2 # every connection has had requests answered
    after=$(rss_kb "$pid")
    wait "$lg"
    python3 - "$out" "$before" "$after" <<'EOF'
import json, sys
path, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = json.load(open(path))
d["rss_before_kib"], d["rss_held_kib"] = before, after
d["rss_per_user_bytes"] = (after - before) * 1024 / max(d["connections"], 1)
json.dump(d, open(path, "w"), indent=2)
EOF
}

msgserver() {
    local out="perf/results/msgserver-$DATE.md"
    header "$out" msgserver
    local load=(--connections "$MSG_USERS" --size 64 --rate 0 --duration "$DURATION")
    gate_builtin --max-sessions 1000000
    rss_run "$TMP/ms-scp.json" "$GATE_PORT" "$GATE_PID" "$MSG_USERS" \
        --connect "127.0.0.1:$GATE_PORT" --protocol scp "${load[@]}"
    stop "$GATE_PID"
    next_port
    local login=$PORT
    next_port
    local gport=$PORT
    start skynet "$gport" target/release/examples/skynet_login --login "127.0.0.1:$login" \
        --gate "127.0.0.1:$gport" --shards "$GATE_SHARDS" --delay-ms 0
    local spid=$LAST_PID
    wait_port "$login"
    rss_run "$TMP/ms-msg.json" "$gport" "$spid" "$MSG_USERS" --connect "127.0.0.1:$gport" \
        --login "127.0.0.1:$login" --protocol msgserver "${load[@]}"
    # Other user names: a second login of a uid would replace the first.
    loadgen "$TMP/ms-resume.json" --connect "127.0.0.1:$gport" --login "127.0.0.1:$login" \
        --protocol msgserver --user-prefix resume "${load[@]}" --resume-every 10
    stop "$spid"
    COLUMNS="connections:users:-,msgs_per_sec:requests/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,rss_per_user_bytes:RSS per user (bytes):down,resumes_ok:reconnects:-,repeats_answered:repeats answered once:-,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-" \
        table "$out" "msgserver: $MSG_USERS logged-in skynet users beside $MSG_USERS SCP sessions, 64-byte payloads, next request when the answer returns" \
        "Baseline: \`ringgate serve\` with its built-in echo, SCP (the io_uring load generator). msgserver: \`examples/skynet_login\` (agent delay 0) loaded by \`loadgen --protocol msgserver\`, which drives blocking clients with one request in flight per user, so its requests/s are bounded by the client as much as by the gate. RSS per user: gate RSS once every connection is up, minus before, ÷ connections (for msgserver it includes the login state and the response cache). The last row reconnects every 10 answers and repeats the unanswered session; its users are logged in beside the previous row's, so its RSS is not sampled." \
        "ringgate serve, SCP, built-in echo=$TMP/ms-scp.json" "skynet_login, msgserver=$TMP/ms-msg.json" "skynet_login, msgserver, reconnect every 10=$TMP/ms-resume.json"
}

# ws_gate : ringgate serve, built-in echo, SCP on GATE_PORT, SCP over a
# WebSocket on WS_PORT and over TLS on WSS_PORT (certificate in $TMP).
ws_gate() {
    next_port
    GATE_PORT=$PORT
    next_port
    WS_PORT=$PORT
    next_port
    WSS_PORT=$PORT
    start gate "$GATE_PORT" "$GATE_BIN" serve --listen "127.0.0.1:$GATE_PORT" --shards "$WS_GATE_SHARDS" \
        --max-sessions 1000000 --ws "127.0.0.1:$WS_PORT" --wss "127.0.0.1:$WSS_PORT" --ws-mode scp \
        --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
    GATE_PID=$LAST_PID
    wait_port "$WS_PORT"
    wait_port "$WSS_PORT"
}

# ws_port ROW : the gate's port for transport ROW (tcp, ws, wss).
ws_port() {
    case "$1" in
    tcp) echo "$GATE_PORT" ;;
    ws) echo "$WS_PORT" ;;
    wss) echo "$WSS_PORT" ;;
    esac
}

# ws_idle_run OUT.json PORT PID ARGS... : WS_IDLE sessions that each send one
# 64-byte message within 10 s, then one every 10 s; the gate's RSS before
# and while they are held.
ws_idle_run() {
    local out=$1 port=$2 pid=$3
    shift 3
    local before after
    before=$(rss_kb "$pid")
    loadgen "$out" --connect "127.0.0.1:$port" --protocol scp --connections "$WS_IDLE" \
        --size 64 --rate 0.1 --duration 20 "$@" &
    local lg=$!
    PIDS+=("$lg")
    for _ in $(seq 600); do
        [ "$(established "$port")" -ge "$WS_IDLE" ] && break
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

# ws_transport ROW : the load generator's flags for transport ROW.
ws_transport() {
    case "$1" in
    tcp) echo --transport tcp ;;
    ws) echo --transport ws ;;
    wss) echo --transport wss --tls-ca "$TMP/cert.pem" ;;
    esac
}

# median_round OUT.json ROUND.json... : copies the round with the median
# msgs/s to OUT.json, with every round's msgs/s and CPU per message.
median_round() {
    local out=$1
    shift
    python3 - "$out" "$@" <<'EOF'
import json, sys
out, paths = sys.argv[1], sys.argv[2:]
runs = sorted((json.load(open(p)) for p in paths), key=lambda d: d["msgs_per_sec"])
d = dict(runs[len(runs) // 2])
d["rounds_msgs_per_sec"] = " / ".join(f"{r['msgs_per_sec']:,.0f}" for r in runs)
d["rounds_cpu"] = " / ".join(f"{r['cpu_s_per_million_msgs']:.2f}" for r in runs)
json.dump(d, open(out, "w"), indent=2)
EOF
}

websocket() {
    local out="perf/results/websocket-$DATE.md"
    if ! command -v openssl >/dev/null; then
        echo "websocket needs openssl (Debian package openssl) for its certificate" >&2
        return 1
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
    local load=(--protocol scp --connections "$WS_SESSIONS" --size 64 --rate 0 --duration "$DURATION")
    local row round placement
    # The gate on one core (its one shard pins itself to the first core) and
    # the load generator on the second, when there are two and taskset:
    # sharing both cores, the two take turns in a different pattern each
    # run and msgs/s varies twofold from run to run.
    WS_GATE_SHARDS=$GATE_SHARDS
    placement="gate shards: $GATE_SHARDS, load generator beside it on the same cores"
    if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
        WS_GATE_SHARDS=1
        LOADGEN_PREFIX=(taskset -c 1)
        load+=(--shards 1)
        placement="gate: 1 shard, pinned to core 0; load generator: 1 shard, pinned to core 1 (taskset)"
    fi
    header "$out" websocket "Measured run: ${DURATION}s per load; $placement."
    local load_start
    load_start=$(cut -d' ' -f1 /proc/loadavg)
    # The busy loads take turns, WS_ROUNDS times over (tcp, ws, wss, tcp, ...),
    # each on a fresh gate; each row shows its median round by msgs/s, so
    # that a moment of noise on a shared host does not decide a ratio.
    for round in $(seq "$WS_ROUNDS"); do
        for row in tcp ws wss; do
            ws_gate
            measure_cpu "$GATE_PID" "$TMP/ws-$row-$round.json" --connect "127.0.0.1:$(ws_port "$row")" \
                "${load[@]}" $(ws_transport "$row")
            with_cpu_per_million "$TMP/ws-$row-$round.json"
            stop "$GATE_PID"
        done
    done
    for row in tcp ws wss; do
        median_round "$TMP/ws-$row.json" "$TMP"/ws-"$row"-*.json
        # A fresh gate for each idle load too, so that every RSS figure starts alike.
        ws_gate
        ws_idle_run "$TMP/ws-idle-$row.json" "$(ws_port "$row")" "$GATE_PID" $(ws_transport "$row")
        stop "$GATE_PID"
    done
    LOADGEN_PREFIX=()
    COLUMNS="msgs_per_sec:msgs/s:up,latency_us.p50:p50 µs:down,latency_us.p99:p99 µs:down,cpu_s_per_million_msgs:CPU s / 1M msgs:down,rounds_msgs_per_sec:msgs/s of each round:-,rounds_cpu:CPU s / 1M msgs of each round:-,bytes_lost:bytes lost:-,bytes_duplicated:bytes dup:-" \
        table "$out" "websocket, busy: $WS_SESSIONS SCP sessions, 64-byte messages, next message when the echo returns" \
        "\`ringgate serve\` with its built-in echo and three doors (SCP on TCP, \`--ws\`, \`--wss\`, \`--ws-mode scp\`), loaded through one door by \`ringgate loadgen --protocol scp --transport tcp|ws|wss\`, a fresh gate per load; the loads took turns $WS_ROUNDS times over and each row is its median round by msgs/s (every round's figures beside it). Baseline: SCP over TCP. WebSocket: the same SCP stream in binary messages (client-masked). WebSocket + TLS: the same over TLS 1.3 (rustls with ring, ECDSA P-256 certificate; no kTLS). CPU: the gate process only, whole load run (the ramp's TLS handshakes included) ÷ all echoes." \
        "SCP over TCP=$TMP/ws-tcp.json" "SCP over WebSocket=$TMP/ws-ws.json" "SCP over WebSocket + TLS=$TMP/ws-wss.json"
    COLUMNS="connections:sessions:-,rss_before_kib:RSS before KiB:-,rss_held_kib:RSS held KiB:-,rss_per_session_bytes:RSS per session (bytes):down,bytes_lost:bytes lost:-" \
        table "$out" "websocket, idle: $WS_IDLE held SCP sessions per transport that exchanged 1–2 messages of 64 bytes" \
        "Gate RSS (user space; kernel socket buffers are not in RSS) while the sessions are held − before they connected, ÷ sessions; a fresh gate per row. Baseline: SCP over TCP." \
        "SCP over TCP=$TMP/ws-idle-tcp.json" "SCP over WebSocket=$TMP/ws-idle-ws.json" "SCP over WebSocket + TLS=$TMP/ws-idle-wss.json"
    echo "Host load average (1 min) when the scenario started: $load_start; when it ended: $(cut -d' ' -f1 /proc/loadavg)." >>"$out"
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
churn) run churn churn ;;
msgserver) run msgserver msgserver ;;
vs-goscon) run vs-goscon vs_goscon ;;
kcp) run kcp kcp_echo ;;
websocket) run websocket websocket ;;
compare) compare ;;
all)
    run echo-small echo_small
    run idle-memory idle_memory
    run storm storm
    run bulk bulk
    run relay-baseline relay_baseline
    run churn churn
    run msgserver msgserver
    run vs-goscon vs_goscon
    run kcp kcp_echo
    run websocket websocket
    ;;
esac
echo "results in perf/results/"

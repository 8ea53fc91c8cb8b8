#!/usr/bin/env bash
# Holds SESSIONS (default 1,000,000) SCP sessions through one `ringgate serve`
# on this machine over loopback, gate and load generator side by side: ramps
# them up, holds them (each sends a 64-byte message about every 100 s), then
# drops every connection at once with a TCP reset and times until all have
# resumed. Every echoed byte is verified across the resume.
#
#   scripts/million.sh [SESSIONS]
#
# Environment: MODE=echo (the gate's built-in echo, default) or proxy (the
# gate proxies to `ringgate echo` processes), RAMP (new sessions per second,
# default 25000), HOLD (seconds held before the storm, default 60), RATE
# (messages per second per session, default 0.01), OUT (default perf/results),
# MIN_AVAILABLE_KIB (the run is stopped when MemAvailable falls under it,
# default 4 GiB: the machine may be shared), REUSE_TIME (the gate's
# --reuse-time; default: the gate's own, 30 s).
#
# Run it as root: it raises the sysctls such a run needs and says what it
# changed (it restores nothing). The gate runs with its default settings
# (shards, tables, limits) apart from its address and an admin endpoint the
# sampler reads; the load generator chooses its own ring count.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${1:-1000000}
MODE=${MODE:-echo}
RAMP=${RAMP:-25000}
HOLD=${HOLD:-60}
RATE=${RATE:-0.01}
OUT=${OUT:-perf/results}
# The run stops when the machine's MemAvailable falls under this (KiB).
MIN_AVAILABLE_KIB=${MIN_AVAILABLE_KIB:-4194304}
# The gate's reuse_time (how long a dropped session waits for its client);
# empty: the gate's default (30 s).
export REUSE_TIME=${REUSE_TIME:-}
BIN=target/release/ringgate
PORT=19248
ADMIN=127.0.0.1:19247
ECHO_PORT=19300
STAMP=$(date +%Y%m%d-%H%M%S)
TMP=$(mktemp -d)
case "$MODE" in echo | proxy) ;; *) echo "MODE must be echo or proxy" >&2 && exit 2 ;; esac

set_sysctl() {
    # set_sysctl KEY VALUE: set and say so when it differs.
    local have
    have=$(sysctl -n "$1" | tr -s '\t ' ' ')
    if [ "$have" != "$2" ]; then
        echo "sysctl $1: $have -> $2"
        sysctl -qw "$1=$2"
    fi
}
raise() {
    # raise KEY MIN: at least MIN.
    local have
    have=$(sysctl -n "$1")
    [ "$have" -lt "$2" ] && set_sysctl "$1" "$2"
    return 0
}

echo "== system settings for $SESSIONS sessions ($MODE)"
# Loopback: each session is two sockets (client, gate), four in proxy mode.
SOCKETS=$((SESSIONS * 2))
[ "$MODE" = proxy ] && SOCKETS=$((SESSIONS * 4))
raise fs.file-max $((SOCKETS + 200000))
raise net.core.somaxconn 65535
raise net.ipv4.tcp_max_syn_backlog 65535
raise net.core.netdev_max_backlog 65536
raise net.ipv4.tcp_max_orphans 262144
# Socket memory (pages): an idle loopback socket holds little, but a storm
# of resumes queues a little on each; allow 4 pages a socket before pressure.
read -r _ _ MEM_HIGH </proc/sys/net/ipv4/tcp_mem
if [ "$MEM_HIGH" -lt $((SOCKETS * 4)) ]; then
    set_sysctl net.ipv4.tcp_mem "$((SOCKETS * 2)) $((SOCKETS * 4)) $((SOCKETS * 6))"
fi
# Ephemeral ports: ~64,000 per (source, destination) pair, but connect()'s
# search for a free one grows with the ports already taken: at 33,000
# connections from one address to one destination the load generator spent
# 28 s of CPU on a 100k ramp (5 s at 25,000 per address), and the ramp
# stalled. Keep each (source, destination) pair at 12,000 connections.
set_sysctl net.ipv4.ip_local_port_range "1024 65000"
PER_PAIR=12000
echo "RLIMIT_NOFILE: $(ulimit -Hn) (hard): each ring's direct-descriptor table holds at most this many"

# Client sources: 127.0.0.2-127.0.0.N.
IPS=$((SESSIONS / PER_PAIR + 1))
[ "$IPS" -gt 250 ] && { echo "more than 250 source addresses needed" >&2 && exit 2; }
SOURCES="127.0.0.2-127.0.0.$((IPS + 1))"
echo "load generator sources: $SOURCES ($IPS addresses)"

command -v gnuplot >/dev/null || {
    echo "installing gnuplot..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox; } >"$TMP/apt.log" 2>&1 ||
        echo "gnuplot could not be installed; the plot is left out (see $TMP/apt.log)" >&2
}
echo "== build"
cargo build --release --quiet
mkdir -p "$OUT"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# metric NAME: the sum over its labels (gauges are per shard).
metric() { awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2; n++} END {if (n) printf "%d\n", s}' "$TMP/metrics"; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

MEM0=$(awk '/^MemAvailable/ {print $2}' /proc/meminfo)
SLAB0=$(awk '/^Slab/ {print $2}' /proc/meminfo)
UPSTREAMS=()
ECHO_PIDS=()
if [ "$MODE" = proxy ]; then
    # The gate's upstream connections go to several echo processes, one
    # port each, at most PER_PAIR connections per (gate address, echo
    # address) pair (see the sources above).
    ECHOS=$((SESSIONS / PER_PAIR + 1))
    EACH=$((SESSIONS / ECHOS + 1))
    for i in $(seq 0 $((ECHOS - 1))); do
        "$BIN" echo --listen "127.0.0.1:$((ECHO_PORT + i))" --shards $((EACH * 4 / 3 / $(ulimit -Hn) + 1)) \
            >"$TMP/echo-$i.log" 2>&1 &
        PIDS+=($!)
        ECHO_PIDS+=($!)
        UPSTREAMS+=(--upstream "echo$i=127.0.0.1:$((ECHO_PORT + i))")
    done
    for i in $(seq 0 $((ECHOS - 1))); do wait_port "127.0.0.1:$((ECHO_PORT + i))"; done
    echo "upstream: $ECHOS ringgate echo processes"
fi
# The gate listens with SO_REUSEPORT: another process on the port would
# silently take a share of the connections.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$PORT" >&2
    exit 1
fi
GATE_OPTS=()
[ -n "$REUSE_TIME" ] && GATE_OPTS+=(--reuse-time "$REUSE_TIME")
RUST_LOG=${RUST_LOG:-warn} "$BIN" serve --listen "127.0.0.1:$PORT" --admin "$ADMIN" "${UPSTREAMS[@]}" "${GATE_OPTS[@]}" \
    >"$TMP/gate.log" 2>&1 &
GATE=$!
PIDS+=("$GATE")
wait_port "127.0.0.1:$PORT"
head -3 "$TMP/gate.log"
sleep 1
GATE_RSS0=$(rss "$GATE")

# The sampler: one line a second from the gate's counters and the kernel.
SAMPLES="$TMP/samples.tsv"
echo -e "t\tlive\topened\tresumed\tgate_rss_kib\tloadgen_rss_kib\tslab_kib\ttcp_mem_pages\tmem_available_kib" >"$SAMPLES"
(
    T0=$(date +%s%N)
    while kill -0 "$GATE" 2>/dev/null; do
        curl -s -m 2 "http://$ADMIN/metrics" >"$TMP/metrics" 2>/dev/null || true
        LG=$(cat "$TMP/loadgen.pid" 2>/dev/null || true)
        T=$((($(date +%s%N) - T0) / 1000000))
        AVAIL=$(awk '/^MemAvailable/ {print $2}' /proc/meminfo)
        if [ "$AVAIL" -lt "$MIN_AVAILABLE_KIB" ]; then
            # The machine is shared: stop before the kernel's OOM killer picks anyone.
            echo "MemAvailable ${AVAIL} kB is under ${MIN_AVAILABLE_KIB} kB: stopping the run" | tee "$TMP/aborted" >&2
            [ -n "$LG" ] && kill "$LG" 2>/dev/null
            kill "$GATE" 2>/dev/null
        fi
        printf '%d.%03d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $((T / 1000)) $((T % 1000)) \
            "$(metric ringgate_sessions_live)" "$(metric ringgate_sessions_opened_total)" \
            "$(metric ringgate_sessions_resumed_total)" "$(rss "$GATE")" "$([ -n "$LG" ] && rss "$LG" || echo 0)" \
            "$(awk '/^Slab/ {print $2}' /proc/meminfo)" "$(awk '/^TCP:/ {print $NF}' /proc/net/sockstat)" \
            "$(awk '/^MemAvailable/ {print $2}' /proc/meminfo)" >>"$SAMPLES"
        sleep 1
    done
) &
SAMPLER=$!
PIDS+=("$SAMPLER")

echo "== load: $SESSIONS sessions at $RAMP/s, held ${HOLD}s at $RATE msg/s each, then all dropped and resumed"
"$BIN" loadgen --connect "127.0.0.1:$PORT" --connections "$SESSIONS" --ramp "$RAMP" \
    --duration "$HOLD" --rate "$RATE" --size 64 --storm --source-ips "$SOURCES" \
    --json "$TMP/loadgen.json" >"$TMP/loadgen.txt" 2>&1 &
LOADGEN=$!
PIDS+=("$LOADGEN")
echo "$LOADGEN" >"$TMP/loadgen.pid"
# Figures while every session is held and quiet: halfway through the hold,
# counted from when the gate holds them all (the ramp may be slower than asked).
HELD=""
while kill -0 "$LOADGEN" 2>/dev/null && [ "$(tail -1 "$SAMPLES" | cut -f2)" != "$SESSIONS" ]; do
    sleep 0.5
done
for _ in $(seq $((HOLD * 5))); do
    kill -0 "$LOADGEN" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$LOADGEN" 2>/dev/null; then
    curl -s -m 5 "http://$ADMIN/metrics" >"$TMP/metrics" || true
    HELD="$(metric ringgate_sessions_live) $(rss "$GATE") $(rss "$LOADGEN")"
    grep -E '^(MemAvailable|Slab|SReclaimable|SUnreclaim|Sock)' /proc/meminfo >"$TMP/meminfo.txt" || true
    cat /proc/net/sockstat >"$TMP/sockstat.txt"
    grep -E '^(Rss|Pss_Anon|Pss_File|Pss_Shmem)' "/proc/$GATE/smaps_rollup" >"$TMP/smaps.txt" || true
    ECHO_RSS=0
    for p in "${ECHO_PIDS[@]}"; do ECHO_RSS=$((ECHO_RSS + $(rss "$p"))); done
fi
wait "$LOADGEN" || true
cat "$TMP/loadgen.txt"
sleep 2
kill "$SAMPLER" 2>/dev/null || true

# ---- report -------------------------------------------------------------------
base="$OUT/million-$MODE-$STAMP"
read -r HELD_LIVE HELD_RSS HELD_LG <<<"${HELD:-0 0 0}"
python3 - "$TMP/loadgen.json" "$SAMPLES" "$base.md" "$SESSIONS" "$MODE" "$GATE_RSS0" "$HELD_LIVE" "$HELD_RSS" \
    "$HELD_LG" "$MEM0" "$SLAB0" "$TMP" "$(git rev-parse --short HEAD)" "$RAMP" "$HOLD" "${ECHO_RSS:-0}" <<'EOF'
import json, sys, os
(jpath, spath, out, sessions, mode, rss0, live, rss, lg, mem0, slab0, tmp, commit,
 ramp, hold, echo_rss) = sys.argv[1:]
sessions, rss0, live, rss, lg, mem0, slab0, echo_rss = map(int, (sessions, rss0, live or 0, rss, lg, mem0, slab0, echo_rss))
try:
    r = json.load(open(jpath))
except Exception as e:
    r = {"error": str(e)}
rows = [l.rstrip("\n").split("\t") for l in open(spath)][1:]
def num(x):
    try: return float(x)
    except ValueError: return 0.0
rows = [[num(x) for x in row] for row in rows if len(row) == 9]
# The samples with rates (per second, between consecutive samples) for the plot.
with open(out[:-3] + ".tsv", "w") as t:
    t.write("t\tlive\topened\tresumed\tgate_rss_kib\tloadgen_rss_kib\tslab_kib\ttcp_mem_pages\tmem_available_kib\thandshakes_per_s\tresumes_per_s\n")
    for i, row in enumerate(rows):
        dt = row[0] - rows[i - 1][0] if i else 0
        hs = (row[2] - rows[i - 1][2]) / dt if dt > 0 else 0
        rs = (row[3] - rows[i - 1][3]) / dt if dt > 0 else 0
        t.write("\t".join(f"{x:g}" for x in row + [max(hs, 0), max(rs, 0)]) + "\n")
# Ramp rate per 100k step, from the gate's own count of opened sessions.
steps, mark, t_prev = [], 100000, 0.0
t_first = next((row[0] for row in rows if row[2] > 0), 0.0)
t_prev = t_first
for i in range(1, len(rows)):
    while rows[i][2] >= mark and mark <= sessions:
        (t0, o0), (t1, o1) = rows[i - 1][:3:2], rows[i][:3:2]
        t = t0 + (t1 - t0) * ((mark - o0) / max(o1 - o0, 1))
        steps.append((mark, 100000 / max(t - t_prev, 1e-9)))
        t_prev, mark = t, mark + 100000
def kv(path):
    d = {}
    if os.path.exists(path):
        for l in open(path):
            p = l.split(":")
            if len(p) == 2:
                d[p[0].strip()] = p[1].split()[0]
    return d
mi, sm = kv(f"{tmp}/meminfo.txt"), kv(f"{tmp}/smaps.txt")
sockstat = open(f"{tmp}/sockstat.txt").read() if os.path.exists(f"{tmp}/sockstat.txt") else "(not sampled)\n"
per = (rss - rss0) * 1024 / live if live else float("nan")
lgper = lg * 1024 / live if live else float("nan")
slab = int(mi.get("Slab", 0))
import re
m = re.search(r"with (\d+) shards", open(f"{tmp}/gate.log").read())
shards_line = m.group(1) if m else "?"
with open(out, "w") as f:
    f.write(f"# ringgate: {sessions:,} sessions on one small machine ({mode})\n\n")
    f.write(f"Host: {os.cpu_count()} cores, {int(open('/proc/meminfo').readline().split()[1]) // 1024 // 1024} GiB, "
            f"kernel {os.uname().release}, RLIMIT_NOFILE {os.popen('ulimit -Hn').read().strip()}; loopback. Commit {commit}.\n")
    reuse = os.environ.get("REUSE_TIME")
    settings = f"default settings except `--reuse-time {reuse}`" if reuse else "default settings (reuse_time 30 s)"
    f.write(f"Gate: `ringgate serve` with {settings} ({'built-in echo' if mode == 'echo' else 'proxying to ringgate echo processes'}); "
            f"load generator on the same two cores; ramp asked {int(ramp):,}/s, held {hold} s, each session sending a 64-byte message about every 100 s, "
            "then every connection reset at once and resumed.\n\n")
    if os.path.exists(f"{tmp}/aborted"):
        f.write("**The run was stopped early:** " + open(f"{tmp}/aborted").read().strip() + ".\n\n")
    f.write("| figure | value |\n|---|---|\n")
    g = r.get
    f.write(f"| sessions held | {g('connections', 0):,} of {sessions:,} |\n")
    f.write(f"| gate shards (rings) | {shards_line} |\n")
    f.write(f"| load generator shards | {g('shards', '?')} |\n")
    f.write(f"| ramp | {g('ramp_seconds', 0):.1f} s, {g('handshakes_per_sec', 0):,.0f} new sessions/s |\n")
    f.write(f"| storm: all dropped at once, back after | {g('storm_seconds') or float('nan'):.1f} s ({g('storm_resumes_per_sec') or 0:,.0f} resumes/s) |\n")
    f.write(f"| resumes ok / refused | {g('resumes_ok', 0):,} / {g('resumes_failed', {})} |\n")
    f.write(f"| bytes lost / duplicated | {g('bytes_lost', '?')} / {g('bytes_duplicated', '?')} |\n")
    f.write(f"| messages verified | {g('messages_total', 0):,} |\n")
    f.write(f"| errors | {g('errors', {})} |\n")
    f.write(f"| gate RSS before / held | {rss0 / 1024:,.0f} MiB / {rss / 1024:,.0f} MiB at {live:,} live sessions |\n")
    f.write(f"| **gate RSS per held session** | **{per:,.0f} bytes** |\n")
    if echo_rss:
        f.write(f"| ringgate echo processes' RSS | {echo_rss / 1024:,.0f} MiB |\n")
    f.write(f"| load generator RSS per session | {lgper:,.0f} bytes ({lg / 1024:,.0f} MiB) |\n")
    f.write(f"| kernel: Slab before / held | {slab0 / 1024:,.0f} MiB / {slab / 1024:,.0f} MiB "
            f"(+{(slab - slab0) * 1024 / max(live, 1):,.0f} bytes per session) |\n")
    f.write(f"| MemAvailable before / held | {mem0 / 1024:,.0f} MiB / {int(mi.get('MemAvailable', 0)) / 1024:,.0f} MiB |\n\n")
    if steps:
        f.write("Ramp, per 100k step (new sessions/s, from the gate's count of opened sessions sampled each second):\n\n")
        f.write("| sessions | " + " | ".join(f"{m // 1000}k" for m, _ in steps) + " |\n")
        f.write("|---|" + "---|" * len(steps) + "\n")
        f.write("| per second | " + " | ".join(f"{v:,.0f}" for _, v in steps) + " |\n\n")
    f.write("Kernel while held (`/proc/meminfo`, `/proc/net/sockstat`; `TCP mem` is in pages):\n\n```\n")
    f.write("".join(f"{k}: {v} kB\n" for k, v in mi.items()))
    f.write(sockstat)
    f.write("```\n\nGate `smaps_rollup` while held (kB): " + ", ".join(f"{k} {v}" for k, v in sm.items()) + "\n\n")
    f.write(f"Samples: `{os.path.basename(out)[:-3]}.tsv`; plot: `{os.path.basename(out)[:-3]}.svg`.\n")
print(open(out).read())
EOF

if command -v gnuplot >/dev/null; then
    gnuplot <<EOF
set terminal svg size 1000,900 dynamic font "sans,11"
set output "$base.svg"
set datafile separator "\t"
set key autotitle columnhead top left
set multiplot layout 3,1 title "ringgate: $SESSIONS sessions ($MODE), $(nproc) cores"
set xlabel "seconds"
set ylabel "sessions"
set format y "%.0s%c"
plot "$base.tsv" using 1:2 with lines lw 2 title "live sessions"
set ylabel "MiB"
set format y "%.0f"
plot "$base.tsv" using 1:(\$5/1024) with lines lw 2 title "gate RSS", \
     "" using 1:(\$6/1024) with lines title "load generator RSS", \
     "" using 1:(\$7/1024) with lines title "kernel Slab", \
     "" using 1:(\$8*4/1024) with lines title "TCP socket memory"
set ylabel "per second"
set format y "%.0s%c"
plot "$base.tsv" using 1:10 with lines lw 2 title "handshakes/s", \
     "" using 1:11 with lines lw 2 title "resumes/s"
unset multiplot
EOF
    echo "plot: $base.svg"
fi
echo "report: $base.md"

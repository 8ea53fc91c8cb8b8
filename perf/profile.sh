#!/usr/bin/env bash
# Where a gate's CPU goes per message: runs the echo-small load (1000 SCP
# sessions, 64-byte messages, next one when the echo is back) through a gate
# proxying to `ringgate echo`, samples the gate process with `perf record`
# (cpu-clock, call graphs) in the middle of the run, and sorts every sample
# into a cost class by its stack. The gate's CPU seconds over the run ÷
# messages gives CPU per message; each class's share of the samples splits it.
#
#   perf/profile.sh            # this tree's gate
#   OLD=/path/to/old/ringgate perf/profile.sh   # adds the old gate (before)
#   GOSCON=/path/to/goscon perf/profile.sh      # adds goscon (built by you
#       from https://github.com/ejoy/goscon with `go build -mod=vendor`)
#
# Writes perf/results/profile-<date>.md. Environment: PROFILE_DURATION
# (seconds of load, default 14; samples are taken over its middle 8 s),
# PERF_SHARDS (gate shards, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v perf >/dev/null || {
    echo "perf is not installed (Debian: linux-perf); nothing was run" >&2
    exit 1
}
DURATION=${PROFILE_DURATION:-14}
SHARDS=${PERF_SHARDS:-2}
DATE=$(date +%Y%m%d-%H%M%S)
BIN=target/release/ringgate
OUT=perf/results/profile-$DATE.md
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

echo "building (release)..."
cargo build --release --quiet
mkdir -p perf/results

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}
PORT=17800
next_port() {
    PORT=$((PORT + 1))
    while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

next_port
ECHO_PORT=$PORT
"$BIN" echo --listen "127.0.0.1:$ECHO_PORT" --shards 1 >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
wait_port "$ECHO_PORT"

# profile NAME PORT PID : loads the gate PID listening on PORT, samples it,
# and leaves $TMP/NAME.json (loadgen report + cpu_seconds) and $TMP/NAME.txt
# (perf script output).
profile() {
    local name=$1 port=$2 pid=$3 before after
    before=$(cpu_ticks "$pid")
    "$BIN" loadgen --connect "127.0.0.1:$port" --protocol scp --connections 1000 --size 64 \
        --rate 0 --duration "$DURATION" --json "$TMP/$name.json" >"$TMP/$name.lg" 2>&1 &
    local lg=$!
    sleep 3
    perf record -q -e cpu-clock -F 1999 -g -p "$pid" -o "$TMP/$name.data" -- sleep 8 >/dev/null 2>&1
    wait "$lg"
    after=$(cpu_ticks "$pid")
    perf script -i "$TMP/$name.data" -F ip,sym,dso 2>/dev/null >"$TMP/$name.txt"
    python3 - "$TMP/$name.json" "$before" "$after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
path, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
d["cpu_seconds"] = (after - before) / hz
json.dump(d, open(path, "w"), indent=2)
EOF
}

ROWS=()
run_gate() {
    # run_gate LABEL NAME BINARY
    local label=$1 name=$2 bin=$3
    next_port
    "$bin" serve --listen "127.0.0.1:$PORT" --shards "$SHARDS" --upstream "echo=127.0.0.1:$ECHO_PORT" \
        --max-sessions 100000 >"$TMP/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT"
    echo "== $label"
    profile "$name" "$PORT" "$pid"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    ROWS+=("$label=$name")
}

if [ -n "${OLD:-}" ]; then
    [ -x "$OLD" ] || { echo "OLD=$OLD is not executable" >&2; exit 2; }
    run_gate "${OLD_LABEL:-ringgate, before}" old "$OLD"
fi
run_gate "ringgate serve (this tree)" new "$BIN"
if [ -n "${GOSCON:-}" ] && [ -x "$GOSCON" ]; then
    next_port
    manager=$PORT
    next_port
    mkdir -p "$TMP/goscon"
    cat >"$TMP/goscon/config.yaml" <<EOF
manager: 127.0.0.1:$manager
tcp: 127.0.0.1:$PORT
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
    "$GOSCON" -config "$TMP/goscon/config.yaml" -log_dir "$TMP/goscon" >"$TMP/goscon.log" 2>&1 &
    gpid=$!
    PIDS+=("$gpid")
    wait_port "$PORT"
    echo "== goscon"
    profile goscon "$PORT" "$gpid"
    kill "$gpid"
    wait "$gpid" 2>/dev/null || true
    ROWS+=("goscon=goscon")
else
    echo "GOSCON not set (or not executable): goscon's column is skipped" >&2
fi

{
    echo "# ringgate perf: profile ($DATE)"
    echo
    echo "Host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); loopback only."
    echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown). Load: 1000 SCP sessions, 64-byte messages,"
    echo "next message when the echo is back, ${DURATION}s; gates proxy to \`ringgate echo\`; $SHARDS shards."
    echo
} >"$OUT"
python3 - "$OUT" "$TMP" "${ROWS[@]}" <<'EOF'
import json, sys

out, tmp, rows = sys.argv[1], sys.argv[2], [r.split("=", 1) for r in sys.argv[3:]]

# Classes, checked in this order against a sample's stack (leaf first for
# the leaf rules, any frame for the path rules).
LEAF = [
    ("RC4", lambda s: "rc4" in s.lower()),
    ("copies (kernel ↔ user)", lambda s: s.startswith(("_copy_to_iter", "_copy_from_iter", "copy_user", "rep_movs", "__check_object_size", "check_heap_object", "__virt_addr_valid"))),
    ("copies (user space)", lambda s: s.startswith(("__memmove", "__memcpy", "memcpy", "memmove", "runtime.memmove"))),
    ("allocation (user space)", lambda s: s.startswith(("mi_", "_mi_", "malloc", "free", "__libc_malloc", "cfree", "realloc", "runtime.mallocgc", "runtime.(*mcache)", "runtime.(*mheap)", "runtime.gcWriteBarrier", "runtime.scanobject", "runtime.gcDrain", "runtime.greyobject", "runtime.markBits", "runtime.findObject", "runtime.heapBits", "runtime.(*gcWork)", "runtime.(*mspan)", "runtime.mallocgcSmall"))),
]
PATH = [
    ("waking the peers (loopback delivery's wake-ups)", ("try_to_wake_up", "sock_def_readable", "__wake_up_common", "ep_poll_callback", "io_poll_wake", "sock_def_write_space", "tcp_check_space")),
    ("TCP/IP receive path of loopback delivery", ("net_rx_action", "process_backlog", "__netif_receive_skb", "tcp_v4_rcv", "ip_rcv")),
    ("TCP send (sendmsg, transmit)", ("tcp_sendmsg", "tcp_write_xmit", "__tcp_transmit_skb", "tcp_push", "sock_sendmsg", "__sys_sendto", "__sys_sendmsg", "ksys_write")),
    ("TCP receive (recvmsg)", ("tcp_recvmsg", "sock_recvmsg", "tcp_rcv_established", "__sys_recvfrom", "ksys_read", "tcp_cleanup_rbuf")),
    ("scheduling, waiting", ("schedule", "finish_task_switch", "io_cqring_wait", "do_epoll_wait", "futex_wait", "hrtimer_nanosleep", "runtime.futex", "runtime.usleep", "runtime.notesleep")),
    ("io_uring submission and completion", ("io_submit_sqes", "__io_run_local_work", "io_issue_sqe", "__do_sys_io_uring_enter", "io_cqring", "io_req_", "__io_submit_flush_completions", "io_uring")),
    ("epoll", ("ep_poll", "do_epoll", "ep_send_events", "ep_item_poll")),
    ("syscall entry and exit", ("entry_SYSCALL", "do_syscall_64", "syscall_exit", "exit_to_user_mode")),
]

def classify(stack):
    """stack: list of (symbol, dso) from leaf to root."""
    leaf_sym, leaf_dso = stack[0]
    for name, test in LEAF:
        if test(leaf_sym):
            return name
    user = "kernel" not in leaf_dso
    if user:
        if leaf_sym.startswith("runtime.") or leaf_sym.startswith("internal/"):
            return "Go runtime (scheduler, netpoll, GC)"
        return "the gate's own code (user space)"
    syms = [s for s, _ in stack]
    for name, keys in PATH:
        if any(s.startswith(keys) for s in syms):
            return name
    return "other kernel"

def load(path):
    counts, total, stack = {}, 0, []
    def flush():
        nonlocal total
        if stack:
            c = classify(stack)
            counts[c] = counts.get(c, 0) + 1
            total += 1
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            stack = []
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        dso = rest[rest.rfind("(") + 1:-1] if rest.endswith(")") else ""
        sym = rest[: rest.rfind("(")].strip() if "(" in rest else rest
        sym = sym.rsplit("+0x", 1)[0]
        stack.append((sym, dso))
    flush()
    return counts, total

cols = []
for label, name in rows:
    d = json.load(open(f"{tmp}/{name}.json"))
    counts, total = load(f"{tmp}/{name}.txt")
    msgs = d.get("messages_total") or 1
    us = d["cpu_seconds"] / msgs * 1e6
    cols.append((label, d, counts, total, us))

classes = []
for _, _, counts, _, _ in cols:
    for c in sorted(counts, key=lambda c: -counts[c]):
        if c not in classes:
            classes.append(c)

lines = ["## CPU per message, by cost class", "",
         "µs of the gate process's CPU per echoed message (64 bytes each way), split by the share of",
         "`perf record` samples (cpu-clock) whose stack falls in each class. Loopback: a send's cost",
         "includes delivering the segment into the receiving socket and waking its reader.", ""]
head = ["class"] + [f"{label}: µs/msg (share)" for label, *_ in cols]
lines.append("| " + " | ".join(head) + " |")
lines.append("|" + "---|" * len(head))
for c in classes:
    cells = [c]
    for _, _, counts, total, us in cols:
        share = counts.get(c, 0) / max(total, 1)
        cells.append(f"{us * share:.2f} ({share:.1%})")
    lines.append("| " + " | ".join(cells) + " |")
cells = ["**total**"]
for _, d, _, total, us in cols:
    cells.append(f"**{us:.2f}** ({total} samples, {d.get('msgs_per_sec', 0):,.0f} msgs/s)")
lines.append("| " + " | ".join(cells) + " |")
lines.append("")
text = "\n".join(lines)
open(out, "a").write(text + "\n")
print(text)
EOF
echo "results in $OUT"

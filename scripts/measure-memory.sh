#!/usr/bin/env bash
# Measures the master's memory for issue 4's targets: resident memory per idle authenticated
# connection (10,000 held) and per queued 8-byte task (10M queued). Each measurement starts a
# fresh release `taskmill-master serve` on a free loopback port, reads its VmRSS before a
# `taskmill-bench` run, and prints per item the growth of VmRSS with everything held (the
# connections open, the tasks queued) and of its peak (VmHWM), which also counts what was
# only briefly in use: a growing queue's old and new buffers during the copy, for one.
#
#   scripts/measure-memory.sh [connections] [tasks]     # defaults 10000 10000000; 0 skips one
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
conns="${1:-10000}"
tasks="${2:-10000000}"
export TASKMILL_AUTHKEY="${TASKMILL_AUTHKEY:-memory-measure-key-0123}"
target="${CARGO_TARGET_DIR:-$root/target}/release"
cargo build --release --locked -q -p taskmill-master -p taskmill-bench

# Each process holds one descriptor per connection, plus a margin.
ulimit -n "$(( conns + 1024 ))" 2>/dev/null || {
    echo "measure-memory: cannot raise the open-file limit to $(( conns + 1024 ))" >&2
    exit 2
}

master_pid=""
work="$(mktemp -d)"
trap '[ -n "$master_pid" ] && kill "$master_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# Starts a master with extra flags; sets master_pid and port.
start_master() {
    local log
    log="$(mktemp)"
    "$target/taskmill-master" serve --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
    master_pid=$!
    for _ in $(seq 100); do
        port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)"
        [ -n "$port" ] && return 0
        sleep 0.1
    done
    echo "measure-memory: the master did not report its port" >&2
    cat "$log" >&2
    exit 1
}

stop_master() {
    kill "$master_pid"
    wait "$master_pid" 2>/dev/null || true
    master_pid=""
}

# Runs taskmill-bench with --json and prints the items it achieved: the figure per item is
# divided by what was really held or queued, not by what was asked for.
bench() {
    "$target/taskmill-bench" --json "$@" >"$work/report"
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["items"])' "$work/report"
}

report() { # name items before_kib held_kib peak_kib
    awk -v name="$1" -v n="$2" -v b="$3" -v h="$4" -v p="$5" 'BEGIN {
        printf "%s: %d items, RSS %.1f MiB before, %.1f MiB held, peak %.1f MiB: " \
            "%.1f bytes per item held, %.1f at the peak\n",
            name, n, b / 1024, h / 1024, p / 1024, (h - b) * 1024 / n, (p - b) * 1024 / n }'
}

# Idle connections: the bench opens them, holds them for the run, then pings each one.
if [ "$conns" -gt 0 ]; then
start_master --max-connections "$(( conns + 100 ))"
before="$(kib "$master_pid" VmRSS)"
# The connections scenario ends by closing them, so the held figure is the highest VmRSS
# sampled while the bench runs.
held_kib=0
bench connections --master "127.0.0.1:$port" -c "$conns" -n "$conns" -d 20s >"$work/held" &
bench_pid=$!
while kill -0 "$bench_pid" 2>/dev/null; do
    rss="$(kib "$master_pid" VmRSS)"
    [ "${rss:-0}" -gt "$held_kib" ] && held_kib=$rss
    sleep 0.2
done
wait "$bench_pid"
peak="$(kib "$master_pid" VmHWM)"
report "idle connections" "$(cat "$work/held")" "$before" "$held_kib" "$peak"
stop_master
fi

# Queued tasks: put 8-byte items into an unbounded queue and leave them there (--keep).
if [ "$tasks" -gt 0 ]; then
start_master --queue-capacity 0
before="$(kib "$master_pid" VmRSS)"
queued="$(bench produce --keep --master "127.0.0.1:$port" -c 2 -b 4096 -n "$tasks" -d 300s)"
report "queued 8-byte tasks" "$queued" "$before" "$(kib "$master_pid" VmRSS)" \
    "$(kib "$master_pid" VmHWM)"
stop_master
fi

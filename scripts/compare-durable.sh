#!/usr/bin/env bash
# Owns the durable comparison for BENCHMARKS.md: in one run, on this machine, taskmill with
# --data-dir (every reply after its fsync), beanstalkd with its binlog (`-f 0`: fsync before
# every reply, the fair comparison; and its default, at most every 50 ms), Redis with an
# append-only file (`appendfsync always` and `everysec`), and taskmill in memory for
# reference; then taskmill's recovery of 10 million queued 8-byte tasks. Writes one JSON line
# per run to $1 (default target/compare-durable.jsonl) and prints a table.
#
#   scripts/compare-durable.sh [results.jsonl]
#
# Installs beanstalkd and redis-server with apt-get when missing. Honours CARGO_TARGET_DIR.
# Data directories go under $TMPDIR (/tmp), on the machine's disk. Every run is bounded by
# `timeout`; every process started here is stopped on exit. RECOVERY=0 leaves out the
# 10-million-task recovery (about 2 minutes of the 6 or so this takes).
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS=${1:-target/compare-durable.jsonl}
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
PIDS=()

stop() {
    [ -n "${1:-}" ] || return 0
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '== %s\n' "$*" >&2; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # PORT: until something listens there (10 s)
    for _ in $(seq 100); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

for tool in beanstalkd redis-server; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "installing $tool (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "$tool" >/dev/null
    fi
done

log "building taskmill and the peer examples (release)"
cargo build --release --quiet -p taskmill-master -p taskmill-bench --bins \
    --example redis_squares --example beanstalk_squares

mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"

# record LABEL SECONDS CMD...: run CMD (bounded), take the JSON object it printed, add the label,
# append it to $RESULTS as one line. A failed run is recorded too.
record() {
    local label=$1 limit=$2 rc=0
    shift 2
    log "$label"
    timeout --kill-after=5 "$limit" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null || rc=$?
    python3 - "$label" "$rc" "$WORK/out" "$WORK/err" >>"$RESULTS" <<'EOF'
import json, sys
label, rc, out, err = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
text = open(out).read()
try:
    report = json.loads(text[text.index("{"):text.rindex("}") + 1])
except ValueError:
    report = {}
report = {"label": label, **report}
if rc != 0:
    report["exit"] = rc
    report.setdefault("error", open(err).read().strip()[-500:] or "exit %d" % rc)
print(json.dumps(report))
EOF
    tail -n 1 "$RESULTS" >&2
}

# --- taskmill -----------------------------------------------------------------------------------
TASKMILL_AUTHKEY=compare-durable-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export TASKMILL_AUTHKEY
unset TASKMILL_AUTHKEY_FILE TASKMILL_MASTER
MASTER_PID=
start_master() { # [serve flags...]: a fresh master; its address in $MASTER
    "$BIN/taskmill-master" serve --listen 127.0.0.1:0 "$@" \
        >"$WORK/master.out" 2>"$WORK/master.err" </dev/null &
    MASTER_PID=$!
    PIDS+=("$MASTER_PID")
    MASTER=
    for _ in $(seq 200); do
        MASTER=$(sed -n 's/^listening on \(.*\)$/\1/p' "$WORK/master.out" | head -n 1)
        [ -n "$MASTER" ] && return 0
        kill -0 "$MASTER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/master.err" >&2
    echo "taskmill-master did not report its port" >&2
    exit 1
}
taskmill() { # LABEL durable|memory BENCH-ARGS...
    local label=$1 mode=$2 flags=()
    shift 2
    if [ "$mode" = durable ]; then
        rm -rf "$WORK/data"
        flags=(--data-dir "$WORK/data")
    fi
    start_master "${flags[@]}"
    record "$label" 130 "$BIN/taskmill-bench" --master "$MASTER" -d 120s --json "$@"
    stop "$MASTER_PID"
}
for c in 2 4; do
    taskmill "taskmill durable squares c$c b256" durable squares -c "$c" -b 256 -n 2000000
done
taskmill "taskmill memory squares c4 b256" memory squares -c 4 -b 256 -n 2000000
for w in 1 8 32; do
    n=$([ "$w" = 1 ] && echo 10000 || echo 100000)
    taskmill "taskmill durable one-task w$w" durable squares -c "$w" -b 1 --prefetch 1 -n "$n"
done
for w in 8 32; do
    taskmill "taskmill memory one-task w$w" memory squares -c "$w" -b 1 --prefetch 1 -n 100000
done

# --- beanstalkd ---------------------------------------------------------------------------------
BS=("$BIN/examples/beanstalk_squares" --json --deadline-secs 110)
beanstalk() { # LABEL "beanstalkd flags" EXAMPLE-ARGS...
    local label=$1 flags=$2 port
    shift 2
    port=$(free_port)
    rm -rf "$WORK/binlog" && mkdir -p "$WORK/binlog"
    # shellcheck disable=SC2086 # the flags are words
    beanstalkd -l 127.0.0.1 -p "$port" -b "$WORK/binlog" $flags >"$WORK/bs.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    record "$label" 120 "${BS[@]}" --addr "127.0.0.1:$port" "$@"
    stop "$pid"
}
for w in 1 8 32; do
    n=$([ "$w" = 1 ] && echo 3000 || echo 20000)
    beanstalk "beanstalkd -f0 w$w" "-f 0" --workers "$w" --count "$n"
done
for w in 1 8 32; do
    beanstalk "beanstalkd default w$w" "" --workers "$w" --count 50000
done

# --- Redis --------------------------------------------------------------------------------------
R=("$BIN/examples/redis_squares" --json --deadline-secs 110)
redis() { # LABEL appendfsync EXAMPLE-ARGS...
    local label=$1 fsync=$2 port
    shift 2
    port=$(free_port)
    rm -rf "$WORK/aof" && mkdir -p "$WORK/aof"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes \
        --appendfsync "$fsync" --dir "$WORK/aof" --daemonize no >"$WORK/redis.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    record "$label" 120 "${R[@]}" --addr "127.0.0.1:$port" "$@"
    stop "$pid"
}
for fsync in always everysec; do
    redis "redis $fsync b64 w4" "$fsync" --batch 64 --workers 4 --count 1000000
    for w in 1 8 32; do
        n=$([ "$w" = 1 ] && echo 5000 || echo 50000)
        redis "redis $fsync b1 w$w" "$fsync" --batch 1 --feed-batch 256 --workers "$w" --count "$n"
    done
done

# --- Recovery of 10 million queued tasks ---------------------------------------------------------
if [ "${RECOVERY:-1}" = 1 ]; then
    rm -rf "$WORK/data"
    start_master --data-dir "$WORK/data"
    log "putting 10,000,000 tasks of 8 bytes on a durable master"
    timeout 300 "$BIN/taskmill-bench" produce --master "$MASTER" -c 4 -b 4096 -n 10000000 \
        -d 280s --keep --json >"$WORK/produce.json"
    stop "$MASTER_PID"
    disk=$(du -sb "$WORK/data" | cut -f1)
    start_master --data-dir "$WORK/data"
    "$BIN/taskmill-master" stats --master "$MASTER" --json >"$WORK/stats.json"
    stop "$MASTER_PID"
    python3 - "$WORK/stats.json" "$disk" "$WORK/master.err" >>"$RESULTS" <<'EOF'
import json, re, sys
stats = json.load(open(sys.argv[1]))
queued = sum(q["size"] for q in stats["queues"])
disk = int(sys.argv[2])
log = open(sys.argv[3]).read()
took = re.findall(r"recovered the queues.* took=([0-9.]+\w+)", log)
print(json.dumps({"label": "taskmill recovery 10M", "queued": queued, "disk_bytes": disk,
                  "bytes_per_task": disk / max(queued, 1),
                  "recovery_ms": stats["storage"]["recovery_ms"], "took": took[-1] if took else None}))
EOF
    tail -n 1 "$RESULTS" >&2
fi

# --- Summary ------------------------------------------------------------------------------------
python3 - "$RESULTS" "$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {r["label"]: r for r in rows}
rate = lambda r: (r or {}).get("tasks_per_sec", (r or {}).get("items_per_sec")) or 0.0
def ok(r):
    if r is None:
        return False
    if "verified" in r and isinstance(r["verified"], bool):
        return r["verified"] and "exit" not in r
    return r.get("errors", 1) == 0 and "exit" not in r
print()
print("Durable comparison (2-core machine, loopback, ext4 virtual disk; Redis %s)" % sys.argv[2])
print("%-34s %12s %9s" % ("run", "tasks/s", "verified"))
for r in rows:
    if "queued" in r:
        continue
    print("%-34s %12s %9s" % (r["label"], "{:,.0f}".format(rate(r)), "yes" if ok(r) else "NO"))
for r in rows:
    if "queued" in r:
        print("recovery: %s queued tasks, %s bytes on disk (%.1f bytes per task), recovered in %s ms"
              % ("{:,}".format(r["queued"]), "{:,}".format(r["disk_bytes"]), r["bytes_per_task"],
                 "{:,}".format(r["recovery_ms"])))
def ratio(name, a, b):
    a, b = by.get(a), by.get(b)
    if ok(a) and ok(b) and rate(b):
        print("  %-52s %8.2fx" % (name, rate(a) / rate(b)))
    else:
        print("  %-52s n/a" % name)
print()
print("Ratios (higher = taskmill faster):")
best = lambda prefix: max((l for l in by if l.startswith(prefix) and ok(by[l])), key=lambda l: rate(by[l]), default=None)
tm = best("taskmill durable squares")
print("  best durable batched run: %s" % tm)
ratio("durable batched / Redis always b64", tm, "redis always b64 w4")
ratio("durable batched / Redis everysec b64", tm, "redis everysec b64 w4")
ratio("durable batched / memory batched", tm, "taskmill memory squares c4 b256")
for w in (1, 8, 32):
    ratio("durable one-task w%d / beanstalkd -f0 w%d" % (w, w), "taskmill durable one-task w%d" % w, "beanstalkd -f0 w%d" % w)
    ratio("durable one-task w%d / Redis always b1 w%d" % (w, w), "taskmill durable one-task w%d" % w, "redis always b1 w%d" % w)
print()
print("Results: %s" % sys.argv[1])
EOF

#!/usr/bin/env bash
# Owns the peer comparison for BENCHMARKS.md: in one run, on this machine, the Python original
# (bench/peers/python_manager.py), a Redis list work queue (bench/examples/redis_squares.rs,
# against a private redis-server this script starts and stops) and taskmill itself (a `serve`
# master plus taskmill-bench). Writes one JSON line per run to $1 (default
# target/compare-peers.jsonl), prints a table with ratios, and draws the charts of
# BENCHMARKS.md into docs/bench/ (scripts/plot-results.py, with matplotlib from PyPI).
#
#   scripts/compare-peers.sh [results.jsonl]
#
# Installs redis-server with apt-get when it is missing. Honours CARGO_TARGET_DIR. Every run is
# bounded by `timeout`; every process started here is stopped on exit. About 8 minutes here;
# SWEEP=0 leaves out the 1..64 connection sweep.
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS=${1:-target/compare-peers.jsonl}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release
WORK=$(mktemp -d)
REDIS_PID=
MASTER_PID=

# stop PID: SIGTERM, then SIGKILL if it is still there after about 5 s; reaps it.
stop() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    stop "$MASTER_PID"
    stop "$REDIS_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '== %s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- Redis -------------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
fi
REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
REDIS_PORT=$(free_port)
log "starting redis-server $REDIS_VERSION on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
redis_ping() {
    python3 - "$REDIS_PORT" <<'EOF'
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
    s.settimeout(1)
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
EOF
}
for i in $(seq 50); do
    redis_ping 2>/dev/null && break
    if [ "$i" = 50 ]; then
        cat "$WORK/redis.log" >&2
        echo "redis-server did not answer PING within 5 s" >&2
        exit 1
    fi
    sleep 0.1
done

# --- Build -------------------------------------------------------------------------------------
log "building taskmill and the Redis example (release)"
cargo build --release --quiet -p taskmill-master -p taskmill-bench --bins --example redis_squares

# --- Runs --------------------------------------------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"
FAILED=0

# record LABEL SECONDS CMD...: run CMD (bounded), take the JSON object it printed (one line or
# pretty-printed), add the label, append it to $RESULTS as one line. A failed run is recorded too.
record() {
    local label=$1 limit=$2 rc=0
    shift 2
    log "$label"
    timeout --kill-after=5 "$limit" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null || rc=$?
    [ "$rc" = 0 ] || FAILED=1
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

# (a) The Python original, corrected.
for w in 2 4; do
    record "python-manager w$w" 90 python3 bench/peers/python_manager.py --tasks 20000 --workers "$w" --deadline 80
done

# (b) Redis list queue: one task per round trip everywhere, then batches of 64.
R=("$BIN/examples/redis_squares" --addr "127.0.0.1:$REDIS_PORT" --json --deadline-secs 50)
for w in 1 4 8; do
    record "redis b1 w$w" 60 "${R[@]}" --batch 1 --workers "$w" --count 50000
done
# Like taskmill-bench squares -b 1: workers one task per round trip, producer/collector batched.
record "redis b1 feed1024 w4" 60 "${R[@]}" --batch 1 --feed-batch 1024 --workers 4 --count 200000
for w in 1 2 4; do
    record "redis b64 w$w" 60 "${R[@]}" --batch 64 --workers "$w" --count 2000000
done

# (c) taskmill: a fresh `serve` master for each run.
TASKMILL_AUTHKEY=compare-peers-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export TASKMILL_AUTHKEY
unset TASKMILL_AUTHKEY_FILE TASKMILL_MASTER
start_master() {
    "$BIN/taskmill-master" serve --listen 127.0.0.1:0 \
        >"$WORK/master.out" 2>"$WORK/master.err" </dev/null &
    MASTER_PID=$!
    MASTER=
    for _ in $(seq 100); do
        MASTER=$(sed -n 's/^listening on \(.*\)$/\1/p' "$WORK/master.out" | head -n 1)
        [ -n "$MASTER" ] && return 0
        kill -0 "$MASTER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/master.err" >&2
    echo "taskmill-master did not report its port" >&2
    exit 1
}
stop_master() {
    stop "$MASTER_PID"
    MASTER_PID=
}
taskmill() {
    local label=$1
    shift
    start_master
    record "$label" 130 "$BIN/taskmill-bench" --master "$MASTER" -d 120s --json "$@"
    stop_master
}
# The issue's job: 10M tasks at the best worker count (2 or 4 on two cores).
for c in 2 4; do
    taskmill "taskmill squares c$c b256" squares -c "$c" -b 256 -n 10000000
done
# One task at a time: the simple loop (one CompleteAndGet round trip per task), then the
# reference worker's default prefetch window of 2. Workers that wait a round trip per task
# leave the cores idle between trips, so more of them than cores does better: 8 is taskmill's
# best count here (Redis's is 4, with 8 within a few percent).
for w in 1 4 8; do
    taskmill "taskmill squares c$w b1 p1" squares -c "$w" -b 1 --prefetch 1 -n 200000
done
for w in 4 8; do
    taskmill "taskmill squares c$w b1 p2" squares -c "$w" -b 1 --prefetch 2 -n 200000
done
taskmill "taskmill latency" latency -n 5000
# Worker connections from 1 to 64 (the issue: throughput falls by no more than 10%).
if [ "${SWEEP:-1}" = 1 ]; then
    for c in 1 2 4 8 16 32 64; do
        taskmill "taskmill sweep c$c" squares -c "$c" -b 256 -n 2000000
    done
fi

# --- Summary -----------------------------------------------------------------------------------
python3 - "$RESULTS" "$REDIS_VERSION" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {r["label"]: r for r in rows}

def rate(r):
    return r.get("tasks_per_sec", r.get("items_per_sec")) or 0.0

def ok(r):
    if "verified" in r:
        return bool(r["verified"])
    return r.get("errors", 1) == 0 and "exit" not in r

print()
print("Peer comparison (2-core machine, loopback; Redis %s)" % sys.argv[2])
print("%-24s %10s %8s %7s %14s %9s" % ("run", "tasks", "workers", "batch", "tasks/s", "verified"))
for r in rows:
    tasks = r.get("tasks", r.get("items", 0))
    workers = r.get("workers", r.get("connections", ""))
    batch = r.get("batch", "")
    if r.get("feed_batch") not in (None, batch):
        batch = "%s/%s" % (batch, r["feed_batch"])
    print("%-24s %10s %8s %7s %14s %9s" % (
        r["label"], "{:,}".format(tasks), workers, batch, "{:,.0f}".format(rate(r)),
        "yes" if ok(r) else "NO"))
lat = by.get("taskmill latency", {}).get("latency_us")
if lat:
    print("taskmill latency (one task, put -> result): p50 %s us, p99 %s us, p99.9 %s us"
          % (lat["p50"], lat["p99"], lat["p999"]))

def best(prefix):
    cands = [r for label, r in by.items() if label.startswith(prefix) and ok(r)]
    return max(cands, key=rate) if cands else None

def ratio(name, a, b):
    if a is None or b is None or not ok(a) or not ok(b) or rate(b) == 0:
        print("  %-58s n/a" % name)
    else:
        print("  %-58s %8.2fx  (%s / %s)" % (name, rate(a) / rate(b), a["label"], b["label"]))

def best_taskmill(suffix):
    cands = [r for l, r in by.items() if l.startswith("taskmill squares") and
             l.endswith(suffix) and ok(r)]
    return max(cands, key=rate) if cands else None

tm_batched = best_taskmill(" b256")
tm_single = best_taskmill(" b1 p1")
tm_prefetch = best_taskmill(" b1 p2")
print()
print("Ratios (higher = taskmill faster):")
ratio("taskmill batched / Redis batch 64, best", tm_batched, best("redis b64"))
ratio("taskmill one-at-a-time / Redis batch 1, best", tm_single, best("redis b1 w"))
ratio("taskmill one-at-a-time / Redis b1 workers, batched feed", tm_single,
      by.get("redis b1 feed1024 w4"))
ratio("taskmill one-at-a-time, prefetch 2 / Redis batch 1, best", tm_prefetch,
      best("redis b1 w"))
ratio("taskmill batched / Python original, best", tm_batched, best("python-manager"))
ratio("taskmill one-at-a-time / Python original, best", tm_single, best("python-manager"))
ratio("Redis batch 1 / Python original (4 workers each)", by.get("redis b1 w4"),
      by.get("python-manager w4"))
sweep = [(int(l.split("c")[-1]), rate(r)) for l, r in by.items()
         if l.startswith("taskmill sweep c") and ok(r)]
if sweep:
    sweep.sort()
    top = max(v for _, v in sweep)
    print()
    print("Worker connections sweep (batch 256): " + ", ".join(
        "%d: %s" % (c, "{:,.0f}".format(v)) for c, v in sweep))
    # The target: adding connections costs at most 10%, i.e. no count does worse than any
    # smaller count by more than that.
    fall = min((b / a for i, (_, a) in enumerate(sweep) for _, b in sweep[i + 1:]), default=1.0)
    print("  largest fall to a higher connection count: %.0f%% (lowest %.0f%% of the highest)"
          % (max(0, 100 * (1 - fall)), 100 * min(v for _, v in sweep) / top))
print()
print("Results: %s" % sys.argv[1])
EOF

# --- Charts ------------------------------------------------------------------------------------
# The PNGs BENCHMARKS.md shows, from this run's results (CHARTS=DIR puts them elsewhere).
if python3 -c 'import matplotlib' 2>/dev/null; then
    python3 scripts/plot-results.py "$RESULTS" "${CHARTS:-docs/bench}"
else
    log "no charts: matplotlib is missing (python3 -m pip install matplotlib; then scripts/plot-results.py $RESULTS docs/bench)"
fi

exit "$FAILED"

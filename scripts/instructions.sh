#!/usr/bin/env bash
# Instructions the master executes for one fixed job, counted by callgrind: repeatable where
# timings on this shared machine are not (BENCHMARKS.md compares builds with it).
#
#   scripts/instructions.sh [RELEASE-DIR] [TASKS]     # default target/release, 200000
#
# Runs `serve` under valgrind --tool=callgrind, drives `taskmill-bench squares -c 4 -b 256 -n
# TASKS` at it natively, stops it, and prints the program total. Repeats differ by about 0.3%
# (the batching depends on timing). With HTTP=1 the master also serves `--http` and a poller
# reads /api/dashboard and /metrics twice a second meanwhile (what the dashboard and a
# Prometheus scrape cost).
set -euo pipefail
D=${1:-target/release}
N=${2:-200000}
export TASKMILL_AUTHKEY=instructions-key-0123456789 RUST_LOG=warn
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
http=()
[ "${HTTP:-0}" = 1 ] && http=(--http 127.0.0.1:0)
valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$D/taskmill-master" serve \
    --listen 127.0.0.1:0 "${http[@]}" >"$work/out" 2>/dev/null &
pid=$!
ready="listening on"
[ "${HTTP:-0}" = 1 ] && ready="http listening on"
for _ in $(seq 300); do grep -q "$ready" "$work/out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
if [ "${HTTP:-0}" = 1 ]; then
    python3 - "$(sed -n 's/^http listening on //p' "$work/out")" <<'EOF_POLL' &
import sys, time, urllib.request
while True:
    for path in ("/api/dashboard", "/metrics"):
        try:
            urllib.request.urlopen("http://" + sys.argv[1] + path, timeout=5).read()
        except OSError:
            sys.exit(0)
    time.sleep(0.5)
EOF_POLL
    poller=$!
fi
timeout 600 "$D/taskmill-bench" squares -c 4 -b 256 -n "$N" -d 300s --master "$addr" --json >/dev/null
[ -z "${poller:-}" ] || kill "$poller" 2>/dev/null || true
kill -TERM "$pid"
wait "$pid" 2>/dev/null || true
callgrind_annotate "$work/cg" 2>/dev/null | grep -m1 "PROGRAM TOTALS"

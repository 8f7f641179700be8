#!/usr/bin/env bash
# Instructions the master executes for one fixed job, counted by callgrind: repeatable where
# timings on this shared machine are not (BENCHMARKS.md compares builds with it).
#
#   scripts/instructions.sh [RELEASE-DIR] [TASKS]     # default target/release, 200000
#
# Runs `serve` under valgrind --tool=callgrind, drives `taskmill-bench squares -c 4 -b 256 -n
# TASKS` at it natively, stops it, and prints the program total. Repeats differ by about 0.3%
# (the batching depends on timing).
set -euo pipefail
D=${1:-target/release}
N=${2:-200000}
export TASKMILL_AUTHKEY=instructions-key-0123456789 RUST_LOG=warn
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$D/taskmill-master" serve \
    --listen 127.0.0.1:0 >"$work/out" 2>/dev/null &
pid=$!
for _ in $(seq 300); do grep -q "listening on" "$work/out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
timeout 600 "$D/taskmill-bench" squares -c 4 -b 256 -n "$N" -d 300s --master "$addr" --json >/dev/null
kill -TERM "$pid"
wait "$pid" 2>/dev/null || true
callgrind_annotate "$work/cg" 2>/dev/null | grep -m1 "PROGRAM TOTALS"

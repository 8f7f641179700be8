#!/usr/bin/env bash
# Measures what the review's memory-amplifying requests (H1: one 1 MB Nack of 3,000 leased
# tasks; H2: 64 waiting 1 MiB puts on each of 3 connections into a full queue) cost a fresh
# release `taskmill-master serve` on a free loopback port: its VmRSS and VmHWM before and
# after each, printed by bench/examples/hostile_memory.rs. Extra arguments go to the master.
#
#   scripts/measure-hostile.sh [master flags...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export TASKMILL_AUTHKEY="${TASKMILL_AUTHKEY:-hostile-measure-key-0123}"
target="${CARGO_TARGET_DIR:-$root/target}/release"
cargo build --release --locked -q -p taskmill-master
cargo build --release --locked -q -p taskmill-bench --example hostile_memory

master_pid=""
log="$(mktemp)"
trap '[ -n "$master_pid" ] && kill "$master_pid" 2>/dev/null; wait 2>/dev/null; rm -f "$log"' EXIT
"$target/taskmill-master" serve --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
master_pid=$!
port=""
for _ in $(seq 100); do
    port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)"
    [ -n "$port" ] && break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "measure-hostile: the master did not report its port" >&2
    cat "$log" >&2
    exit 1
fi
timeout 300 "$target/examples/hostile_memory" "127.0.0.1:$port" "$master_pid"

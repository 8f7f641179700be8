#!/usr/bin/env bash
# Queue operations from the shell with `taskmill`: declare, put, peek, take, inspect, purge,
# dead letters and kick, delete, stats. Every command is printed before it runs.
#
#   examples/queue-ops.sh                      # starts a master of its own on a free port
#   TASKMILL_MASTER=host:5000 TASKMILL_AUTHKEY=... examples/queue-ops.sh   # uses yours
#
# Needs `taskmill` and `taskmill-master` on PATH (cargo install --path ctl, --path master);
# with a master of its own it also shows a poison task dead-lettered by `taskmill-worker`.
# Against your master it touches only queues named `demo.*`, and deletes them at the end.
set -euo pipefail

# Prints a command line as it is written here, then runs it.
run() {
    printf '\n$ %s\n' "$1"
    eval "$1"
}

own_master=no
if [[ -z "${TASKMILL_MASTER:-}" ]]; then
    own_master=yes
    TASKMILL_AUTHKEY="${TASKMILL_AUTHKEY:-$(taskmill-master keygen)}"
    export TASKMILL_AUTHKEY
    out=$(mktemp)
    err=$(mktemp)
    taskmill-master serve --listen 127.0.0.1:0 >"$out" 2>"$err" &
    master_pid=$!
    trap 'kill "$master_pid" 2>/dev/null; wait "$master_pid" 2>/dev/null; rm -f "$out" "$err"' EXIT
    addr=""
    for _ in $(seq 100); do # up to 10 s
        addr=$(sed -n 's/^listening on //p' "$out")
        [[ -n "$addr" ]] && break
        kill -0 "$master_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$addr" ]]; then
        echo "the master did not start:" >&2
        cat "$err" >&2
        exit 1
    fi
    export TASKMILL_MASTER="$addr"
    echo "a master of our own at $TASKMILL_MASTER"
fi

# A bounded queue: puts beyond 100 items wait (--wait) or are refused.
run 'taskmill declare demo.jobs --capacity 100'

# Payloads from the arguments, then from stdin one per line: each command prints the ids.
run "taskmill put demo.jobs 'resize photo-1.jpg' 'resize photo-2.jpg'"
run "printf 'resize photo-%d.jpg\\n' 3 4 5 | taskmill put demo.jobs"

# JSON lines, each one checked before any is put.
run "printf '{\"user\": %d, \"event\": \"signup\"}\\n' 1 2 | taskmill put demo.events --json-lines"

# Look without taking, then take (removed at once: at most once).
run 'taskmill peek demo.jobs -n 3'
run 'taskmill take demo.jobs -n 2'
run 'taskmill take demo.jobs --json'
run 'taskmill inspect demo.jobs'

# Empty a queue, whatever it holds.
run 'taskmill purge demo.jobs'

if [[ $own_master == yes ]] && command -v taskmill-worker >/dev/null; then
    # A poison task: the squares worker cannot decode it, so it goes to tasks.dead at once
    # with the reason. (Only on a master of our own: the worker serves the `tasks` queue.)
    run "taskmill put tasks 'not a number'"
    run 'RUST_LOG=warn taskmill-worker --idle-exit 1s'
    run 'taskmill dead tasks'
    # Back to the queue with fresh attempts, e.g. once the workers are fixed...
    run 'taskmill kick tasks'
    run 'taskmill peek tasks'
    # ...or, as here, thrown away.
    run 'taskmill purge tasks'
fi

# --if-empty refuses to delete a queue that holds items (exit 1).
if ! run 'taskmill delete demo.events --if-empty'; then
    echo "(refused: demo.events still holds its 2 events)"
fi
run 'taskmill delete demo.events'
run 'taskmill delete demo.jobs --if-empty'

run 'taskmill stats'

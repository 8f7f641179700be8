#!/usr/bin/env bash
# SIGKILLs a durable master many times while a job and two worker processes run against it
# (master/tests/durable.rs, which CI runs with 20 kills), in release.
#
#   scripts/kill-nine.sh [KILLS]      # default 200
#
# The job grows with the kills (3,000 tasks each), so it outlasts them; it must finish with
# every task verified, none wrong, and no second result for any task.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKMILL_KILL_ROUNDS=${1:-200} exec cargo test --release -p taskmill-master --test durable \
    a_master_killed_again_and_again -- --nocapture

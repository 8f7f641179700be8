#!/usr/bin/env bash
# The compose cluster on a real Docker engine. Builds the image (scripts/build-image.sh, no
# registry needed), starts docker-compose.yml (the file users run, unchanged, parameterised
# through environment variables) under a project name of its own, and checks:
#
#   6. a key that cannot work (too short): master and worker exit 2 and restart in a loop,
#      the master's log says why, its healthcheck fails and the job refuses to start at once
#   5. a worker started before the master waits, then joins; it reaches master:5000 by name
#   1. master + 3 workers: the squares job, run as the README says, completes and verifies
#   2. a worker killed (docker kill) mid-job: the job still completes, nothing lost; and a
#      worker whose process dies by itself is brought back by the restart policy
#   4. the master, which keeps its queues in a named volume, restarted (docker restart:
#      SIGTERM) and then killed (docker kill: SIGKILL) while a job runs: the job completes
#      with every task verified exactly once; the same worker containers reconnect by
#      themselves each time
#   3. a worker cut off (docker network disconnect: no FIN, no RST) mid-job while it holds
#      tasks: the master drops it within two heartbeat intervals and redelivers its tasks, the
#      job completes; the worker, reconnected, adds no wrong or double-counted result and
#      completes a job on its own
#
# Scenario 6 runs on a cluster of its own, removed before the others; one cluster serves the
# other five, in that order. Workers run with --simulated-work, so a batch
# is in hand most of the time and job lengths do not depend on the machine's speed. Every
# step is bounded by `timeout`, everything is logged with a timestamp, and a trap removes the
# project's containers, networks and volumes and the image it built, whatever happens.
# Traffic stays between the containers it made (and their loopback-published port).
#
# Exit 0 when every scenario passed, or with a SKIP line when there is no usable Docker
# engine (`docker info` fails); non-zero on any failure.
#
# Environment (optional):
#   TASKMILL_TEST_IMAGE      test this existing image (e.g. built from the root Dockerfile)
#                            instead of building one; it is not removed
#   TASKMILL_TEST_SCENARIOS  which scenarios to run, e.g. "5 1 3" (default: all)
#   TASKMILL_TEST_BUDGET     seconds for the whole run, build included (default 1800)
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C

# The whole run is bounded too; timeout's SIGTERM still goes through the teardown trap.
if [ -z "${_TASKMILL_TEST_BOUNDED:-}" ]; then
    export _TASKMILL_TEST_BOUNDED=1
    exec timeout --foreground -k 120 "${TASKMILL_TEST_BUDGET:-1800}" bash "$0" "$@"
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

start_us=${EPOCHREALTIME/./}
log() {
    local el=$(((${EPOCHREALTIME/./} - start_us) / 100000))
    printf '%s [%4d.%ds] %s\n' "$(date -u +%H:%M:%S)" $((el / 10)) $((el % 10)) "$*"
}
fail() {
    log "FAIL: $*"
    exit 1
}
now() { date +%s.%N; }
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# Preflight: no engine means SKIP, not failure.
if ! command -v docker >/dev/null 2>&1; then
    echo "SKIP compose-test: no docker command on this machine"
    exit 0
fi
if ! timeout 30 docker info >/dev/null 2>&1; then
    echo "SKIP compose-test: 'docker info' failed, no usable Docker engine"
    exit 0
fi
if timeout 30 docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    fail "the engine answers but there is neither 'docker compose' nor 'docker-compose'"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to read the JSON reports"

run_id="$(date -u +%Y%m%d%H%M%S)-$$"
project="taskmill-test-$run_id"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/taskmill-compose-test.XXXXXX")"
built_image=""
job_pid="" # the job running in the background, if any

# Compose reads only what is set here: not a .env in the work tree (an empty --env-file
# replaces it), not TASKMILL_* or COMPOSE_* settings of the caller's shell.
unset COMPOSE_FILE COMPOSE_PROFILES COMPOSE_PROJECT_NAME COMPOSE_PATH_SEPARATOR
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^TASKMILL_' | grep -v '^TASKMILL_TEST_' || true)
: >"$tmp/empty.env"
# The key, as the README says: a file the containers' user (uid 10001) may read, handed to
# them as a Docker secret. A second file holds a key too short to use (scenario 6).
key_file() {
    printf '%s\n' "$2" >"$tmp/$1"
    chown 10001:10001 "$tmp/$1" 2>/dev/null || chmod 644 "$tmp/$1"
    chmod go-w "$tmp/$1"
    [ "$(id -u)" != 0 ] || chmod 400 "$tmp/$1"
}
key_file authkey "test-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
key_file short-authkey short
export TASKMILL_AUTHKEY_FILE="$tmp/authkey"
export TASKMILL_PUBLISH="127.0.0.1:" # loopback, a free port the engine picks
export TASKMILL_HTTP_PUBLISH="127.0.0.1:"
export TASKMILL_LEASE_TIMEOUT=5s
export TASKMILL_HEARTBEAT_INTERVAL=1s
concurrency=256
export TASKMILL_CONCURRENCY=$concurrency
export TASKMILL_SIMULATED_WORK=50ms # each batch held 50 ms: ~5,000 tasks/s per worker
export TASKMILL_MAX_BACKOFF=1s
export TASKMILL_TASKS=100000
export TASKMILL_STALL_TIMEOUT=30s
# Session ends (peer address, tasks given back) are logged at debug.
export RUST_LOG="info,taskmill_broker::net::session=debug"

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local label="label=com.docker.compose.project=$project" cid left
    if [ "$rc" -ne 0 ]; then
        log "--- last log lines of each container (exit $rc) ---"
        for cid in $(timeout 30 docker ps -aq --filter "$label" 2>/dev/null); do
            echo "--- $(timeout 10 docker inspect -f '{{.Name}} ({{.State.Status}}, exit {{.State.ExitCode}})' "$cid" 2>/dev/null)"
            timeout 10 docker logs --tail 25 "$cid" 2>&1 | sed 's/^/    /'
        done
    fi
    log "teardown: project $project"
    if [ -n "$job_pid" ]; then kill "$job_pid" 2>/dev/null; fi
    timeout 90 "${compose_cmd[@]}" -p "$project" -f "$root/docker-compose.yml" \
        --env-file "$tmp/empty.env" down -v --remove-orphans -t 5 >"$tmp/down.log" 2>&1 ||
        log "compose down failed: $(tail -1 "$tmp/down.log")"
    # Whatever compose left (one-off containers of an interrupted run, ...).
    timeout 30 docker ps -aq --filter "$label" | xargs -r timeout 60 docker rm -f -v >/dev/null
    timeout 30 docker network ls -q --filter "$label" | xargs -r timeout 60 docker network rm >/dev/null
    timeout 30 docker volume ls -q --filter "$label" | xargs -r timeout 60 docker volume rm -f >/dev/null
    if [ -n "$built_image" ]; then
        timeout 60 docker image rm -f "$built_image" >/dev/null && log "removed image $built_image"
    fi
    left="$(timeout 30 docker ps -aq --filter "$label")$(timeout 30 docker network ls -q --filter "$label")$(timeout 30 docker volume ls -q --filter "$label")"
    if [ -n "$left" ]; then log "WARNING: could not remove all of $project: $left"; fi
    rm -rf "$tmp"
    local passed=0 failed=0 skipped=0 s
    for s in 6 5 1 2 4 3; do
        if [ -n "${result[$s]:-}" ]; then
            passed=$((passed + 1))
        elif [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && [[ "$scenarios" == *" $s "* ]]; then
            failed=1 # the scenario that was running (or the setup before it)
        else
            skipped=$((skipped + 1))
        fi
    done
    if [ "$rc" -eq 0 ]; then
        log "PASS: compose-test"
    else
        log "FAIL: compose-test (exit $rc)"
    fi
    echo "compose-test: $passed passed, $failed failed, $skipped skipped"
    exit "$rc"
}
scenarios=" ${TASKMILL_TEST_SCENARIOS:-6 5 1 2 4 3} "
declare -A result=() # scenario -> what it showed, once it passed
trap teardown EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated (time budget spent?)"; exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers. Every docker call is bounded.

compose() { # compose SECONDS ARGS...
    local t=$1
    shift
    timeout "$t" "${compose_cmd[@]}" -p "$project" -f "$root/docker-compose.yml" --env-file "$tmp/empty.env" "$@"
}
dk() { # dk SECONDS ARGS...
    local t=$1
    shift
    timeout "$t" docker "$@"
}
# Running containers of a service, oldest first.
service_cids() {
    dk 20 ps -q --no-trunc --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | tac
}
container_ip() { dk 20 inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
short() { echo "${1:0:12}"; }

# A container's log since unix time SINCE (0: all), with docker's timestamps, in $tmp/logs.
# (Read into a file first: `docker logs | grep -q` can fail on SIGPIPE under pipefail.)
# Waits until the container's log since SINCE has a line matching PATTERN, in $tmp/logs.
wait_log() { # CID SINCE PATTERN SECONDS
    local deadline=$((SECONDS + $4))
    until fetch_logs "$1" "$2" && grep -q "$3" "$tmp/logs"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
fetch_logs() { # CID SINCE
    dk 15 logs -t --since "$2" "$1" >"$tmp/logs" 2>&1 || true
}

# json FILE EXPR: a Python expression over the parsed document `d`.
json() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

master_cid=""
# The master's counters, from an authenticated stats call inside its container, in
# $tmp/stats.json.
fetch_stats() {
    for _ in 1 2 3; do
        dk 15 exec "$master_cid" taskmill-master stats --master 127.0.0.1:5000 --json --timeout 5s \
            >"$tmp/stats.json" 2>"$tmp/stats.err" && return 0
        sleep 0.5
    done
    fail "no stats from the master 3 times in a row: $(tail -1 "$tmp/stats.err")"
}
# queue_stat QUEUE FIELD, from the last fetch_stats (0 while the queue does not exist).
queue_stat() {
    json "$tmp/stats.json" "next((q.get('$2', 0) for q in d['queues'] if q['name'] == '$1'), 0)"
}
# The tasks queue's counters, for differences over a job.
snapshot_tasks() {
    fetch_stats
    echo "$(queue_stat tasks settled_total) $(queue_stat tasks requeued_total) $(queue_stat tasks expired_total)"
}

wait_master_healthy() { # SECONDS
    local deadline=$((SECONDS + $1)) status
    while :; do
        status="$(dk 10 inspect -f '{{.State.Health.Status}}' "$master_cid" 2>/dev/null || true)"
        [ "$status" = healthy ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && fail "master not healthy after $1 s (status: $status)"
        sleep 0.5
    done
}

# Waits until worker CID is connected: its last connection-state line since unix time SINCE
# (0: ever) says "connected".
wait_worker_connected() { # CID SINCE SECONDS
    local deadline=$((SECONDS + $3))
    while :; do
        fetch_logs "$1" "$2"
        grep -E ' connected master=|not reachable|reconnecting|shutting down|SIGTERM' "$tmp/logs" |
            tail -1 | grep -q ' connected master=' && return 0
        [ "$SECONDS" -ge "$deadline" ] && fail "worker $(short "$1") not connected within $3 s"
        sleep 0.3
    done
}

# Master + 3 workers running and connected (starting what is missing); sets $master_cid and
# $workers.
workers=()
ensure_cluster() {
    local w
    compose 120 up -d --no-recreate --scale worker=3 master worker >"$tmp/up.log" 2>&1 ||
        { cat "$tmp/up.log"; fail "compose up master + 3 workers"; }
    master_cid="$(service_cids master)"
    [ -n "$master_cid" ] || fail "no master container"
    wait_master_healthy 60
    mapfile -t workers < <(service_cids worker)
    [ "${#workers[@]}" -eq 3 ] || fail "expected 3 running workers, have ${#workers[@]}"
    for w in "${workers[@]}"; do wait_worker_connected "$w" 0 30; done
}

# Starts the squares job in the background: start_job NAME TASKS STALL LIMIT. The JSON report
# lands in $tmp/NAME.json, the job's log in $tmp/NAME.err, its PID in $job_pid.
start_job() {
    local name=$1 tasks=$2 stall=$3 limit=$4
    compose $((limit + 60)) run --rm -T job run --master master:5000 --tasks "$tasks" --json \
        --stall-timeout "$stall" --timeout "$limit" </dev/null >"$tmp/$name.json" 2>"$tmp/$name.err" &
    job_pid=$!
}
job_rc=0
finish_job() { # waits for the job started last; its exit code in $job_rc
    job_rc=0
    wait "$job_pid" || job_rc=$?
    job_pid=""
}
# The job must have completed with every task verified exactly once.
check_report() { # NAME TASKS
    local f="$tmp/$1.json"
    if [ "$job_rc" -ne 0 ]; then
        tail -15 "$tmp/$1.err" | sed 's/^/    job: /'
        sed 's/^/    /' "$f"
        fail "job $1 exited $job_rc"
    fi
    [ "$(json "$f" "d['ending']")" = complete ] || fail "job $1 ended $(json "$f" "d['ending']")"
    [ "$(json "$f" "d['tasks']")" -eq "$2" ] || fail "job $1 ran $(json "$f" "d['tasks']") tasks, not $2"
    [ "$(json "$f" "d['verified']")" -eq "$2" ] || fail "job $1 verified $(json "$f" "d['verified']") of $2"
    [ "$(json "$f" "d['wrong']")" -eq 0 ] || fail "job $1 had $(json "$f" "d['wrong']") wrong results"
    [ "$(json "$f" "d['missing']")" -eq 0 ] || fail "job $1 is missing $(json "$f" "d['missing']") results"
    [ "$(json "$f" "d['duplicates']")" -eq 0 ] || fail "job $1 had $(json "$f" "d['duplicates']") second results for a task"
}
summary() { # NAME: the report in one line
    json "$tmp/$1.json" "'tasks=%d verified=%d wrong=%d duplicates=%d redelivered=%s missing=%d workers_seen=%d in %.1fs (%.0f/s)' % (d['tasks'], d['verified'], d['wrong'], d['duplicates'], d.get('redelivered', '?'), d['missing'], d['workers_seen'], d['elapsed_secs'], d['tasks_per_sec'])"
}
# What the master did with the tasks queue since a snapshot_tasks: "requeued=R expired=E".
requeues_since() { # "SETTLED REQUEUED EXPIRED" from snapshot_tasks
    local s r e
    read -r s r e <<<"$1"
    fetch_stats
    echo "requeued=$(($(queue_stat tasks requeued_total) - r)) expired=$(($(queue_stat tasks expired_total) - e))"
}

# Waits until at least MIN more tasks than BASE are settled (the job is under way); the count
# reached is left in $settled.
settled=0
wait_settled() { # MIN BASE SECONDS
    local deadline=$((SECONDS + $3))
    while :; do
        fetch_stats
        settled=$(($(queue_stat tasks settled_total) - $2))
        [ "$settled" -ge "$1" ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && fail "fewer than $1 tasks settled after $3 s ($settled)"
        kill -0 "$job_pid" 2>/dev/null || fail "the job ended before $1 tasks were settled"
        sleep 0.2
    done
}

# docker stop (SIGTERM to PID 1, 10 s grace) must end the container with exit 0, well inside
# the grace period.
stop_gracefully() { # CID
    local cid=$1 code t0 took last service
    t0=$(now)
    dk 30 stop -t 10 "$cid" >/dev/null || fail "docker stop $(short "$cid")"
    took="$(secs_between "$t0" "$(now)")"
    code="$(dk 10 inspect -f '{{.State.ExitCode}}' "$cid")"
    service="$(dk 10 inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$cid")"
    [ "$code" -eq 0 ] || fail "$service $(short "$cid") exited $code on SIGTERM"
    awk -v t="$took" 'BEGIN { exit !(t < 9) }' || fail "$service $(short "$cid") took $took s to stop"
    fetch_logs "$cid" "$t0"
    last="$(grep -Eo '(worker finished|master stopped).*' "$tmp/logs" | tail -1 || true)"
    log "stopped $service $(short "$cid") with SIGTERM: exit 0 in $took s${last:+ ($last)}"
}

# A job size that keeps the cluster busy for about SECONDS at the rate scenario 1 measured.
rate=15000
job_size() { # SECONDS MIN MAX
    awk -v r="$rate" -v s="$1" -v lo="$2" -v hi="$3" \
        'BEGIN { n = int(r * s / 1000) * 1000; if (n < lo) n = lo; if (n > hi) n = hi; print n }'
}

# ---------------------------------------------------------------------------------------------
log "compose-test $run_id: engine $(timeout 30 docker version -f '{{.Server.Version}}' 2>/dev/null), ${compose_cmd[*]} $(timeout 30 "${compose_cmd[@]}" version --short 2>/dev/null || echo '?'), project $project"

if [ -n "${TASKMILL_TEST_IMAGE:-}" ]; then
    export TASKMILL_IMAGE="$TASKMILL_TEST_IMAGE"
    dk 20 image inspect "$TASKMILL_IMAGE" >/dev/null || fail "no image $TASKMILL_IMAGE"
    log "image: $TASKMILL_IMAGE (given: not built, not removed)"
else
    export TASKMILL_IMAGE="taskmill-compose-test:$run_id"
    built_image="$TASKMILL_IMAGE"
    log "building $TASKMILL_IMAGE with scripts/build-image.sh (static binaries, FROM scratch)"
    TASKMILL_IMAGE_LABEL="taskmill.compose-test=$run_id" timeout 1500 "$root/scripts/build-image.sh" ||
        fail "image build failed"
fi
user="$(dk 20 image inspect -f '{{.Config.User}}' "$TASKMILL_IMAGE")"
case "${user%%:*}" in
"" | 0 | root) fail "the image runs as root (USER '$user')" ;;
esac
log "image runs as user $user"
compose 60 config -q || fail "docker-compose.yml does not validate"

# ---------------------------------------------------------------------------------------------
scenario_6() {
    log "== scenario 6: a key too short: the services restart in a loop, and it shows"
    local cid state deadline t0 ok=0
    TASKMILL_AUTHKEY_FILE="$tmp/short-authkey" compose 120 up -d --scale worker=1 master worker >"$tmp/up.log" 2>&1 ||
        { cat "$tmp/up.log"; fail "compose up"; }
    cid="$(compose 30 ps -q master)"
    [ -n "$cid" ] || fail "no master container"
    # Code 2 (a mistake found before starting), and Docker starting it again and again.
    deadline=$((SECONDS + 60))
    until state="$(dk 10 inspect -f '{{.State.ExitCode}} {{.RestartCount}}' "$cid")" &&
        [ "${state%% *}" = 2 ] && [ "${state##* }" -ge 2 ]; do
        [ "$SECONDS" -ge "$deadline" ] && fail "the master did not exit 2 and restart (exit code, restarts: $state)"
        sleep 0.5
    done
    log "master $(short "$cid"): exit code ${state%% *}, ${state##* } restarts"
    compose 30 logs --no-color master >"$tmp/s6.log" 2>&1 || true
    grep -q 'authkey is 5 bytes; at least 16 are required' "$tmp/s6.log" ||
        { tail -5 "$tmp/s6.log"; fail "docker-compose logs master does not say why"; }
    log "docker-compose logs master: $(grep -m1 'authkey is' "$tmp/s6.log" | sed 's/.*| //')"
    # The job, which waits for a healthy master, refuses at once instead of running.
    t0=$SECONDS
    TASKMILL_AUTHKEY_FILE="$tmp/short-authkey" compose 90 run --rm -T job </dev/null >"$tmp/s6.out" 2>"$tmp/s6.err" || ok=$?
    [ "$ok" -ne 0 ] || fail "the job ran against a master that cannot start"
    grep -qi unhealthy "$tmp/s6.err" || { cat "$tmp/s6.err"; fail "the job's refusal does not name the unhealthy master"; }
    [ $((SECONDS - t0)) -lt 60 ] || fail "the job took $((SECONDS - t0)) s to refuse"
    log "docker-compose run --rm job: exit $ok after $((SECONDS - t0)) s: $(grep -im1 unhealthy "$tmp/s6.err")"
    compose 90 down -v --remove-orphans -t 5 >"$tmp/down.log" 2>&1 || { cat "$tmp/down.log"; fail "compose down"; }
    result[6]="PASS: exit 2 and ${state##* } restarts, the reason in the master's log, the job refused at once (exit $ok)"
}

scenario_5() {
    log "== scenario 5: a worker started before the master waits, then joins by service name"
    local t0 worker wip tasks=10000 deadline published host_bin
    t0=$(now)
    compose 120 up -d --scale worker=1 worker >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; fail "compose up worker"; }
    worker="$(service_cids worker)"
    [ -n "$worker" ] || fail "no worker container"
    [ -z "$(service_cids master)" ] || fail "a master started with the worker"
    log "worker $(short "$worker") up, no master yet"
    deadline=$((SECONDS + 20))
    while :; do
        fetch_logs "$worker" 0
        [ "$(grep -c 'master not reachable' "$tmp/logs")" -ge 3 ] && break
        [ "$SECONDS" -ge "$deadline" ] && fail "the worker logged no failed connection attempts"
        sleep 0.5
    done
    log "worker retries with backoff: $(grep -m1 'master not reachable' "$tmp/logs" | sed 's/.*cause=//')"
    [ "$(dk 10 inspect -f '{{.State.Running}}' "$worker")" = true ] || fail "the worker gave up"

    log "starting the master"
    compose 120 up -d master >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; fail "compose up master"; }
    master_cid="$(service_cids master)"
    wait_master_healthy 60
    published="$(compose 30 port master 5000)"
    log "master $(short "$master_cid") healthy (authenticated stats healthcheck); published on $published"
    # The published port, from the host, with the static binary the build left (if any).
    host_bin="${CARGO_TARGET_DIR:-$root/target/docker}/$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')/release/taskmill-master"
    if [ -n "$built_image" ] && [ -x "$host_bin" ]; then
        timeout 20 "$host_bin" stats --master "$published" --timeout 5s >"$tmp/host-stats.txt" 2>&1 ||
            { cat "$tmp/host-stats.txt"; fail "no authenticated stats answer on the published port $published"; }
        log "the published port answers from the host: $(head -1 "$tmp/host-stats.txt")"
    fi
    wait_worker_connected "$worker" "$t0" 30
    log "worker: $(grep -m1 ' connected master=' "$tmp/logs" | sed 's/^[^ ]* *[^ ]* *//')"
    # The worker knows only "master:5000"; the master sees it arrive from its own address.
    wip="$(container_ip "$worker")"
    fetch_logs "$master_cid" 0
    grep -q "client authenticated peer=$wip:" "$tmp/logs" || fail "the master saw no session from $wip"
    log "the master authenticated a session from the worker's address $wip: master:5000 resolved by Docker's DNS"

    start_job s5 $tasks 20s 60
    finish_job
    check_report s5 $tasks
    [ "$(json "$tmp/s5.json" "d['workers_seen']")" -eq 1 ] || fail "the job did not run on the one worker: $(summary s5)"
    log "job: $(summary s5)"
    # A fresh worker process for scenario 1 (its job counts the connections that complete
    # their first task), and a check that SIGTERM stops a worker running as PID 1.
    stop_gracefully "$worker"
    result[5]="PASS: the worker retried (DNS failures, backoff) and joined once the master was up; $(summary s5)"
}

scenario_1() {
    log "== scenario 1: master + 3 workers, the squares job as users run it"
    local tasks=60000 ok=0
    ensure_cluster
    log "3 workers connected: $(for w in "${workers[@]}"; do printf '%s ' "$(short "$w")"; done)"
    local procs
    procs="$(dk 10 top "$master_cid" -o uid,pid,comm | tail -n +2)"
    grep -Eq '^10001 +[0-9]+ +taskmill-master' <<<"$procs" || fail "the master does not run as uid 10001: $procs"
    log "the master runs as uid 10001"

    export TASKMILL_TASKS=$tasks
    log "docker-compose run --rm job (TASKMILL_TASKS=$tasks), the README's command"
    compose 180 run --rm -T job </dev/null >"$tmp/s1.out" 2>"$tmp/s1.err" || ok=$?
    export TASKMILL_TASKS=100000
    sed 's/^/    /' "$tmp/s1.out"
    [ "$ok" -eq 0 ] || { tail -20 "$tmp/s1.err"; fail "the job exited $ok"; }
    grep -q '^OK: every input came back exactly once' "$tmp/s1.out" || fail "no OK line"
    grep -Eq "^verified: +$tasks\$" "$tmp/s1.out" || fail "not every task verified"
    grep -Eq '^workers seen: +3$' "$tmp/s1.out" || fail "not all 3 workers took part: $(grep workers "$tmp/s1.out")"
    rate="$(awk '/^throughput:/ { print $2 }' "$tmp/s1.out")"

    # The master's HTTP port (--http in the compose file), published on loopback.
    local http
    http="$(compose 30 port master 8080)"
    python3 - "$http" >"$tmp/s1-http.txt" 2>&1 <<'PY' || { cat "$tmp/s1-http.txt"; fail "the HTTP port on $http"; }
import sys, urllib.request
base = "http://" + sys.argv[1]
def get(path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return r.status, r.read().decode()
status, body = get("/healthz")
assert (status, body) == (200, "ok\n"), (status, body)
status, body = get("/metrics")
line = next(l for l in body.splitlines() if l.startswith('taskmill_queue_puts_total{queue="tasks"}'))
assert int(line.split()[-1]) > 0, line
status, page = get("/")
assert "<canvas" in page
print(line)
PY
    log "the HTTP port answers on $http: /healthz ok, dashboard served, $(cat "$tmp/s1-http.txt")"

    log "docker-compose run --rm bench latency -n 500 --json (the load tool over the compose network)"
    ok=0
    compose 120 run --rm -T bench latency -n 500 --json </dev/null >"$tmp/s1b.json" 2>"$tmp/s1b.err" || ok=$?
    [ "$ok" -eq 0 ] || { tail -20 "$tmp/s1b.err"; fail "the bench exited $ok"; }
    [ "$(json "$tmp/s1b.json" "d['items']")" -eq 500 ] || fail "the bench moved $(json "$tmp/s1b.json" "d['items']") of 500 tasks"
    [ "$(json "$tmp/s1b.json" "d['errors']")" -eq 0 ] || fail "the bench saw $(json "$tmp/s1b.json" "d['errors']") errors"
    local p50
    p50="$(json "$tmp/s1b.json" "d['latency_us']['p50']")"
    result[1]="PASS: $tasks tasks verified exactly once, 3 workers seen, $rate tasks/s; bench latency over the compose network p50 $p50 us"
}

scenario_2() {
    log "== scenario 2: a worker killed (docker kill) mid-job"
    local tasks base victim vip at_kill t0 gave_back state
    tasks="$(job_size 5 20000 2000000)"
    ensure_cluster
    victim="${workers[0]}"
    vip="$(container_ip "$victim")"
    base="$(snapshot_tasks)"
    start_job s2 "$tasks" 20s 120
    log "job of $tasks tasks started; waiting until it is under way"
    wait_settled $((tasks / 10)) "${base%% *}" 60
    t0=$(now)
    dk 20 kill "$victim" >/dev/null || fail "docker kill"
    fetch_stats
    at_kill=$(($(queue_stat tasks settled_total) - ${base%% *}))
    log "killed worker $(short "$victim") ($vip) with SIGKILL at $at_kill/$tasks settled"
    [ "$at_kill" -lt "$tasks" ] || fail "the job had finished before the kill"
    finish_job
    check_report s2 "$tasks"
    log "job: $(summary s2)"
    fetch_logs "$master_cid" "$t0"
    gave_back="$(grep "peer=$vip:" "$tmp/logs" | grep -o 'requeued=[0-9]*' | head -1 || true)"
    log "master: the killed worker's connection closed with ${gave_back:-requeued=?}; tasks queue: $(requeues_since "$base")"
    state="$(dk 10 inspect -f '{{.State.Status}}, exit {{.State.ExitCode}}, {{.RestartCount}} restarts' "$victim")"
    log "the killed container afterwards: $state"
    result[2]="PASS: killed at $at_kill/$tasks settled; its connection gave back ${gave_back:-requeued=?}; $(summary s2)"
    # Back to three workers.
    dk 30 start "$victim" >/dev/null || fail "start the killed worker again"
    wait_worker_connected "$victim" "$t0" 30

    # `docker kill` counts as a manual stop, which restart policies leave alone; a worker
    # that dies by itself is restarted. Simulated by SIGKILL to its process from the host
    # (possible when this script may signal the container's processes, e.g. as root).
    local crashed=${workers[2]} pid restarts deadline
    pid="$(dk 10 inspect -f '{{.State.Pid}}' "$crashed")"
    restarts="$(dk 10 inspect -f '{{.RestartCount}}' "$crashed")"
    t0=$(now)
    if kill -KILL "$pid" 2>/dev/null; then
        deadline=$((SECONDS + 30))
        until [ "$(dk 10 inspect -f '{{.RestartCount}} {{.State.Running}}' "$crashed")" = "$((restarts + 1)) true" ]; do
            [ "$SECONDS" -ge "$deadline" ] && fail "the restart policy did not restart crashed worker $(short "$crashed")"
            sleep 0.3
        done
        wait_worker_connected "$crashed" "$t0" 30
        log "worker $(short "$crashed") crashed (SIGKILL to its process): restarted by 'restart: unless-stopped' and connected again"
        result[2]+="; a crashed worker was restarted by the restart policy"
    else
        log "NOTE: cannot signal the container's process $pid from here; restart-policy check skipped"
    fi
}

scenario_4() {
    log "== scenario 4: the master restarted, then killed, while a job runs"
    local tasks before base t0 t1 took
    tasks="$(job_size 8 30000 3000000)"
    ensure_cluster
    before="$(for w in "${workers[@]}"; do dk 10 inspect -f '{{.Id}} {{.State.StartedAt}} {{.RestartCount}}' "$w"; done)"
    base="$(snapshot_tasks)"
    start_job s4 "$tasks" 60s 240
    log "job of $tasks tasks started; waiting until it is under way"
    wait_settled $((tasks / 10)) "${base%% *}" 60
    t0=$(now)
    log "docker restart master at $settled/$tasks settled (SIGTERM, 10 s grace)"
    dk 60 restart -t 10 "$master_cid" >/dev/null || fail "docker restart master"
    t1=$(now)
    took="$(secs_between "$t0" "$t1")"
    wait_log "$master_cid" "$t0" 'recovered the queues from the data directory' 30 ||
        fail "the master did not recover its queues"
    grep -q 'SIGTERM received' "$tmp/logs" || fail "the master did not log SIGTERM"
    grep -q 'master stopped' "$tmp/logs" || fail "the master did not stop gracefully"
    awk -v t="$took" 'BEGIN { exit !(t < 10) }' || fail "the restart took $took s: SIGTERM not handled as PID 1?"
    log "the master stopped on SIGTERM as PID 1 and is back with its queues; the restart took $took s"
    wait_master_healthy 60
    wait_settled $((tasks / 2)) "${base%% *}" 120
    t0=$(now)
    log "docker kill master at $settled/$tasks settled (SIGKILL: no drain, no goodbye), then docker start"
    dk 30 kill "$master_cid" >/dev/null || fail "docker kill master"
    dk 60 start "$master_cid" >/dev/null || fail "docker start master"
    wait_log "$master_cid" "$t0" 'recovered the queues from the data directory' 30 ||
        fail "the killed master did not recover its queues"
    grep 'recovered the queues' "$tmp/logs" | tail -1 | sed 's/^/    /'
    finish_job
    check_report s4 "$tasks"
    log "the job in flight completed across both: $(summary s4)"
    for w in "${workers[@]}"; do wait_worker_connected "$w" "$t0" 30; done
    [ "$before" = "$(for w in "${workers[@]}"; do dk 10 inspect -f '{{.Id}} {{.State.StartedAt}} {{.RestartCount}}' "$w"; done)" ] ||
        fail "worker containers were restarted or replaced"
    log "the worker containers are the same ones, never restarted, and all reconnected"
    result[4]="PASS: master restarted (SIGTERM, back in $took s) and killed (SIGKILL) mid-job; the job in flight completed, every task verified exactly once: $(summary s4); the same 3 worker containers reconnected"
}

scenario_3() {
    log "== scenario 3: a worker cut off from the network (docker network disconnect) mid-job"
    local tasks base victim vip net t0 t1 t2 line gave_back detect leased attempt w others=()
    tasks="$(job_size 8 30000 3000000)"
    ensure_cluster
    victim="${workers[1]}"
    vip="$(container_ip "$victim")"
    # shellcheck disable=SC2016 # a Go template, not a shell expansion
    net="$(dk 10 inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$victim")"
    base="$(snapshot_tasks)"
    start_job s3 "$tasks" 20s 120
    log "job of $tasks tasks started (heartbeat $TASKMILL_HEARTBEAT_INTERVAL, lease $TASKMILL_LEASE_TIMEOUT); waiting until it is under way"
    wait_settled $((tasks / 10)) "${base%% *}" 60

    # The master drops a silent peer only while it holds tasks, so cut while it does: the other
    # two hold at most 2 x concurrency, so more leased than that proves the victim holds some.
    # (A cut that proves nothing is undone at once, well inside the heartbeat bound.)
    for attempt in 1 2 3 4 5; do
        t0=$(now)
        dk 20 network disconnect "$net" "$victim" || fail "docker network disconnect"
        fetch_stats
        leased=$(queue_stat tasks leased)
        [ "$leased" -gt $((2 * concurrency)) ] && break
        log "cut $attempt: $leased leased, cannot tell whether the victim holds tasks; reconnecting and retrying"
        dk 20 network connect "$net" "$victim" || fail "docker network connect"
        [ "$attempt" -eq 5 ] && fail "could not cut the worker while it provably held tasks"
        sleep 1
    done
    log "cut worker $(short "$victim") ($vip) off $net at ~$settled/$tasks settled; $leased tasks leased in all, at least $((leased - 2 * concurrency)) by it"

    # Detected when the master ends that worker's session.
    local deadline=$((SECONDS + 30))
    while :; do
        fetch_logs "$master_cid" "$t0"
        line="$(grep -m1 "peer=$vip:" "$tmp/logs" || true)"
        [ -n "$line" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            dk 20 network connect "$net" "$victim" || true
            fail "the master did not drop the cut-off worker within 30 s (heartbeat $TASKMILL_HEARTBEAT_INTERVAL, lease $TASKMILL_LEASE_TIMEOUT)"
        fi
        sleep 0.2
    done
    t1="$(date -d "${line%% *}" +%s.%N)"
    detect="$(secs_between "$t0" "$t1")"
    gave_back="$(grep "peer=$vip:" "$tmp/logs" | grep -o 'requeued=[0-9]*' | head -1 || true)"
    line="${line#* }" # docker's timestamp
    log "partition detected after $detect s: ${line#* }"
    # Two heartbeat intervals plus the master's check granularity; well under the lease.
    awk -v t="$detect" 'BEGIN { exit !(t < 4.5) }' || fail "detection took $detect s, more than 2 heartbeat intervals allow"

    t2=$(now)
    dk 20 network connect "$net" "$victim" || fail "docker network connect"
    # Reconnected mid-job, so that anything it hands in late meets the running job.
    kill -0 "$job_pid" 2>/dev/null || fail "the job had finished before the worker was reconnected"
    log "reconnected the worker while the job runs (its address now $(container_ip "$victim"))"
    finish_job
    check_report s3 "$tasks"
    log "job: $(summary s3)"
    log "master: the cut-off connection gave back ${gave_back:-requeued=?}; tasks queue: $(requeues_since "$base")"

    wait_worker_connected "$victim" "$t2" 60
    fetch_logs "$victim" "$t0"
    log "the cut-off worker is connected again; its log since the cut:"
    grep -E 'WARN|connected|stale|hand' "$tmp/logs" | sed 's/^[^ ]* *[^ ]* */    /' | head -8
    log "stopping the other two workers to give it a job alone"
    for w in "${workers[@]}"; do [ "$w" = "$victim" ] || others+=("$w"); done
    for w in "${others[@]}"; do stop_gracefully "$w"; done
    start_job s3b 10000 20s 90
    finish_job
    check_report s3b 10000
    log "job on the reconnected worker alone: $(summary s3b)"
    dk 30 start "${others[@]}" >/dev/null || fail "start the other workers again"
    for w in "${others[@]}"; do wait_worker_connected "$w" "$t2" 30; done
    result[3]="PASS: cut at ~$settled/$tasks settled; detected after $detect s; the connection gave back ${gave_back:-requeued=?}; $(summary s3); then the reconnected worker alone: $(summary s3b)"
}

for s in 6 5 1 2 4 3; do
    if [[ "$scenarios" == *" $s "* ]]; then "scenario_$s"; fi
done

log "== stop: SIGTERM to every container"
for cid in $(service_cids worker) $(service_cids master); do stop_gracefully "$cid"; done

log "== summary"
for s in 6 5 1 2 4 3; do
    if [ -n "${result[$s]:-}" ]; then log "scenario $s: ${result[$s]}"; fi
done

#!/usr/bin/env python3
"""Peer benchmark: the Python original (multiprocessing BaseManager squares job), done correctly.

This file owns the Python side of the peer comparison run by scripts/compare-peers.sh. It is a
comparison script, not product code. It runs the "distributed process" example from
shared/ORIGIN.md with the two well-known bugs of the commonly copied version fixed:

* get_result_queue returns the result queue (the copied example returns the task queue twice);
* the worker catches queue.Empty (the copied example catches Queue.Empty, which does not exist).

The master serves a task queue and a result queue on 127.0.0.1 (a free port) with an authkey.
N worker *processes* each connect() to it like remote workers would, loop task.get(timeout=1),
put n*n on the result queue and stop when the task queue stays empty. The master puts --tasks
integers, collects every result with get(timeout=10), verifies each square, and prints one JSON
line. Python 3.11 standard library only. Every wait is bounded and an overall deadline stops the
run, so it never hangs.
"""

import argparse
import json
import multiprocessing
import os
import queue
import signal
import sys
import time
from multiprocessing.managers import BaseManager

AUTHKEY = b"taskmill-peer-python-manager-key"
TASK_GET_TIMEOUT = 1.0  # the worker's get, as in the original
RESULT_GET_TIMEOUT = 10.0  # the master's get, as in the original

# The queues live in the manager's server process. Module-level functions (not lambdas) so the
# registration also works with the spawn start method.
_task_queue = queue.Queue()
_result_queue = queue.Queue()


def get_task_queue():
    return _task_queue


def get_result_queue():
    return _result_queue  # the copied example's bug: it returns _task_queue here too


class MasterManager(BaseManager):
    pass


MasterManager.register("get_task_queue", callable=get_task_queue)
MasterManager.register("get_result_queue", callable=get_result_queue)


class WorkerManager(BaseManager):
    """What a worker on another machine would define: names only, no callables."""


WorkerManager.register("get_task_queue")
WorkerManager.register("get_result_queue")


def worker(address, authkey, ready, deadline):
    """One worker process: connect like a remote worker, square until the task queue is empty."""
    manager = WorkerManager(address=address, authkey=authkey)
    manager.connect()
    tasks = manager.get_task_queue()
    results = manager.get_result_queue()
    ready.set()
    # The first get waits for the job to start (the master puts once every worker is ready,
    # and a slow spawn of the last one must not make the first give up); then the original's
    # "stop when the queue stays empty for a second".
    timeout = max(0.0, deadline - time.monotonic())
    while time.monotonic() < deadline:
        try:
            n = tasks.get(timeout=timeout)
        except queue.Empty:  # not Queue.Empty
            break
        timeout = TASK_GET_TIMEOUT
        results.put((n, n * n))
    sys.exit(0)


class Deadline(Exception):
    pass


class Stopped(Exception):
    pass


def _on_alarm(signum, frame):
    raise Deadline()


def _on_term(signum, frame):
    # Turn SIGTERM (e.g. from `timeout`) into an exception so the cleanup below still stops the
    # workers and the manager's server process instead of leaving them behind.
    raise Stopped()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=120.0, help="overall limit, seconds")
    args = parser.parse_args()
    if args.tasks < 1 or args.workers < 1:
        parser.error("--tasks and --workers must be at least 1")

    # A hard stop for anything below that does not time out on its own.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(max(1, int(args.deadline + 0.999)))
    deadline = time.monotonic() + args.deadline

    manager = MasterManager(address=("127.0.0.1", 0), authkey=AUTHKEY)  # port 0: a free port
    manager.start()
    workers = []
    received = 0
    wrong = 0
    elapsed = 0.0
    error = None
    try:
        address = manager.address
        tasks = manager.get_task_queue()
        results = manager.get_result_queue()

        # Workers as separate interpreters (spawn), each connecting over TCP with the authkey.
        ctx = multiprocessing.get_context("spawn")
        readies = []
        for _ in range(args.workers):
            ready = ctx.Event()
            p = ctx.Process(target=worker, args=(address, AUTHKEY, ready, deadline), daemon=True)
            p.start()
            workers.append(p)
            readies.append(ready)
        for ready in readies:
            if not ready.wait(timeout=max(0.0, deadline - time.monotonic())):
                raise Deadline()

        # The timed part: the original's master loop (put all tasks, then get every result).
        start = time.perf_counter()
        for n in range(args.tasks):
            tasks.put(n)
        seen = bytearray(args.tasks)
        while received < args.tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline()
            n, square = results.get(timeout=min(RESULT_GET_TIMEOUT, left))
            received += 1
            if not (0 <= n < args.tasks) or seen[n] or square != n * n:
                wrong += 1
            else:
                seen[n] = 1
        elapsed = time.perf_counter() - start
    except Deadline:
        error = "deadline of %.0f s passed" % args.deadline
    except Stopped:
        error = "stopped by SIGTERM"
    except queue.Empty:
        error = "no result within %.0f s" % RESULT_GET_TIMEOUT
    except Exception as exc:  # report, do not hang
        error = "%s: %s" % (type(exc).__name__, exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        for p in workers:
            p.join(timeout=max(0.1, min(3.0, deadline + 5 - time.monotonic())))
        for p in workers:
            if p.is_alive():
                p.terminate()
                p.join(timeout=1.0)
        manager.shutdown()

    verified = error is None and wrong == 0 and received == args.tasks
    report = {
        "peer": "python-manager",
        "tasks": received,
        "workers": args.workers,
        "elapsed_secs": round(elapsed, 6),
        "tasks_per_sec": round(received / elapsed, 1) if elapsed > 0 else 0.0,
        "verified": verified,
    }
    if error is not None:
        report["error"] = error
    if wrong:
        report["wrong"] = wrong
    print(json.dumps(report), flush=True)
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())

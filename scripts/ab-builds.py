#!/usr/bin/env python3
"""Alternating A/B of two release builds on this machine, for BENCHMARKS.md: the README job
(`run --tasks TASKS --local-workers 4`: throughput, and CPU seconds per million tasks) and
`taskmill-bench squares -c 4 -b 256 -n BENCH_N` against a `serve` master of the same build
(throughput, and the master's and the bench's CPU per million tasks). With ONE_N set, also
`taskmill-bench squares -c 4 -b 1 -n ONE_N`: one task per frame, where a per-frame cost shows
most. Rounds alternate which build goes first; medians at the end.

    A=/path/to/old/target/release B=target/release ROUNDS=8 scripts/ab-builds.py
    LOCAL_WORKERS=2 ONE_N=200000 ...   # the README job's 2 workers; the one-task bench too

Build the old side in a worktree: `git worktree add /tmp/old REV && (cd /tmp/old &&
CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p taskmill-master -p taskmill-bench)`.
"""
import json, os, resource, subprocess, sys, time
A = os.environ["A"]; B = os.environ.get("B", "target/release")
ROUNDS = int(os.environ.get("ROUNDS", 5)); TASKS = int(os.environ.get("TASKS", 1000000)); N = int(os.environ.get("BENCH_N", 2000000))
WORKERS = os.environ.get("LOCAL_WORKERS", "4"); ONE_N = int(os.environ.get("ONE_N", 0))
env = dict(os.environ, TASKMILL_AUTHKEY="ab-test-key-0123456789", RUST_LOG="warn")
def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN); return r.ru_utime + r.ru_stime
def job(d):
    c0 = cpu_children()
    out = subprocess.run([f"{d}/taskmill-master", "run", "--tasks", str(TASKS), "--local-workers", WORKERS, "--json"], env=env, capture_output=True, text=True).stdout
    cpu = cpu_children() - c0
    rep = json.loads(out[out.index("{"):])
    return rep["tasks_per_sec"], cpu / TASKS * 1e6
def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def bench(d, batch="256", n=N):
    m = subprocess.Popen([f"{d}/taskmill-master", "serve", "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, text=True)
    addr = m.stdout.readline().split()[-1]
    c0 = cpu_children()
    out = subprocess.run([f"{d}/taskmill-bench", "squares", "-c", "4", "-b", batch, "-n", str(n), "-d", "60s", "--master", addr, "--json"], env=env, capture_output=True, text=True).stdout
    bcpu = cpu_children() - c0
    mcpu = proc_cpu(m.pid)
    m.terminate(); m.wait()
    return json.loads(out)["items_per_sec"], mcpu / n * 1e6, bcpu / n * 1e6
rows = {"A": [], "B": []}
for r in range(ROUNDS):
    for side, d in (("A", A), ("B", B)) if r % 2 == 0 else (("B", B), ("A", A)):
        j = job(d); b = bench(d)
        o = bench(d, "1", ONE_N) if ONE_N else ()
        rows[side].append(j + b + o)
        one = f" | one-task {o[0]:,.0f}/s master {o[1]:.2f} bench {o[2]:.2f} cpu-s/M" if o else ""
        print(f"round {r+1} {side}: job {j[0]:,.0f}/s {j[1]:.2f} cpu-s/M | bench {b[0]:,.0f}/s master {b[1]:.2f} bench {b[2]:.2f} cpu-s/M{one}", flush=True)
def med(xs): xs = sorted(xs); return xs[len(xs)//2]
names = ["job tasks/s", "job cpu-s/M", "bench items/s", "bench master cpu-s/M", "bench client cpu-s/M"]
if ONE_N: names += ["one-task items/s", "one-task master cpu-s/M", "one-task client cpu-s/M"]
for i, name in enumerate(names):
    a, b = med([r[i] for r in rows["A"]]), med([r[i] for r in rows["B"]])
    print(f"median {name}: A {a:,.2f}  B {b:,.2f}  B/A {b/a:.3f}")

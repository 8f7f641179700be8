#!/usr/bin/env python3
"""Alternating A/B of two release builds on this machine, for BENCHMARKS.md: the README job
(`run --tasks TASKS --local-workers 4`: throughput, and CPU seconds per million tasks) and
`taskmill-bench squares -c 4 -b 256 -n BENCH_N` against a `serve` master of the same build
(throughput, and the master's and the bench's CPU per million tasks). Rounds alternate which
build goes first; medians at the end.

    A=/path/to/old/target/release B=target/release ROUNDS=8 scripts/ab-builds.py

Build the old side in a worktree: `git worktree add /tmp/old REV && (cd /tmp/old &&
CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p taskmill-master -p taskmill-bench)`.
"""
import json, os, resource, subprocess, sys, time
A = os.environ["A"]; B = os.environ.get("B", "target/release")
ROUNDS = int(os.environ.get("ROUNDS", 5)); TASKS = int(os.environ.get("TASKS", 1000000)); N = int(os.environ.get("BENCH_N", 2000000))
env = dict(os.environ, TASKMILL_AUTHKEY="ab-test-key-0123456789", RUST_LOG="warn")
def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN); return r.ru_utime + r.ru_stime
def job(d):
    c0 = cpu_children()
    out = subprocess.run([f"{d}/taskmill-master", "run", "--tasks", str(TASKS), "--local-workers", "4", "--json"], env=env, capture_output=True, text=True).stdout
    cpu = cpu_children() - c0
    rep = json.loads(out[out.index("{"):])
    return rep["tasks_per_sec"], cpu / TASKS * 1e6
def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def bench(d):
    m = subprocess.Popen([f"{d}/taskmill-master", "serve", "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, text=True)
    addr = m.stdout.readline().split()[-1]
    c0 = cpu_children()
    out = subprocess.run([f"{d}/taskmill-bench", "squares", "-c", "4", "-b", "256", "-n", str(N), "-d", "60s", "--master", addr, "--json"], env=env, capture_output=True, text=True).stdout
    bcpu = cpu_children() - c0
    mcpu = proc_cpu(m.pid)
    m.terminate(); m.wait()
    return json.loads(out)["items_per_sec"], mcpu / N * 1e6, bcpu / N * 1e6
rows = {"A": [], "B": []}
for r in range(ROUNDS):
    for side, d in (("A", A), ("B", B)) if r % 2 == 0 else (("B", B), ("A", A)):
        j = job(d); b = bench(d)
        rows[side].append(j + b)
        print(f"round {r+1} {side}: job {j[0]:,.0f}/s {j[1]:.2f} cpu-s/M | bench {b[0]:,.0f}/s master {b[1]:.2f} bench {b[2]:.2f} cpu-s/M", flush=True)
def med(xs): xs = sorted(xs); return xs[len(xs)//2]
for i, name in enumerate(["job tasks/s", "job cpu-s/M", "bench items/s", "bench master cpu-s/M", "bench client cpu-s/M"]):
    a, b = med([r[i] for r in rows["A"]]), med([r[i] for r in rows["B"]])
    print(f"median {name}: A {a:,.2f}  B {b:,.2f}  B/A {b/a:.3f}")

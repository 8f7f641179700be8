#!/usr/bin/env python3
"""Alternating A/B of two release builds on the README job alone (`taskmill-master run --tasks
1000000 --local-workers 2 --json`): throughput and CPU seconds (getrusage of the children) per
run; rounds alternate which build goes first; medians at the end. For BENCHMARKS.md.

    A=/path/to/old/target/release B=target/release ROUNDS=10 scripts/ab-job.py
"""
import json, os, resource, subprocess

A=os.environ["A"]; B=os.environ["B"]; R=int(os.environ.get("ROUNDS","10"))
env=dict(os.environ, TASKMILL_AUTHKEY="ab-test-key-0123456789", RUST_LOG="warn")
def cpu():
    r=resource.getrusage(resource.RUSAGE_CHILDREN); return r.ru_utime+r.ru_stime
def job(d):
    c=cpu()
    out=subprocess.run([f"{d}/taskmill-master","run","--tasks","1000000","--local-workers","2","--json"],env=env,capture_output=True,text=True).stdout
    c=cpu()-c
    return json.loads(out[out.index("{"):])["tasks_per_sec"], c
rows={"A":[],"B":[]}
for r in range(R):
    for s,d in ((("A",A),("B",B)) if r%2==0 else (("B",B),("A",A))):
        t,c=job(d); rows[s].append((t,c)); print(f"round {r+1} {s}: {t:,.0f} tasks/s, {c:.2f} cpu-s", flush=True)
med=lambda xs: sorted(xs)[len(xs)//2]
for i,n in enumerate(["tasks/s","cpu-s per 1M"]):
    a=med([x[i] for x in rows["A"]]); b=med([x[i] for x in rows["B"]]); print(f"median {n}: A {a:,.2f} B {b:,.2f} B/A {b/a:.3f}")

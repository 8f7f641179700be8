#!/usr/bin/env python3
"""Python workers' throughput on CPython's own manager server and on taskmill-master's
Python listener, measured in one run, alternating A/B.

The same scripts talk to both: a producer puts N ints on get_task_queue(), W worker processes
loop like the tutorial's worker (get(timeout=1), put the "n * n = square" string on
get_result_queue()) without its sleep, and a collector gets the N results, checking each. The
figure is N divided by the time from starting the workers to the last result collected.

    scripts/python-managers-bench.py [--tasks 20000] [--workers 4] [--rounds 3]
                                     [--master target/release/taskmill-master]

The master binary defaults to $CARGO_TARGET_DIR/release (or target/release); build it with
`cargo build --release -p taskmill-master`. Every process started here is stopped on exit.
"""
import argparse, os, queue, random, re, statistics, subprocess, sys, time
from multiprocessing.managers import BaseManager

KEY = 'bench-python-managers-7f3a9c'


class QueueManager(BaseManager):
    pass


def serve_cpython():
    """CPython's own server: the tutorial master's two queues, served until killed."""
    tasks, results = queue.Queue(), queue.Queue()
    QueueManager.register('get_task_queue', callable=lambda: tasks)
    QueueManager.register('get_result_queue', callable=lambda: results)
    server = QueueManager(address=('127.0.0.1', 0), authkey=KEY.encode()).get_server()
    print('python listening on %s:%d' % server.address, flush=True)
    server.serve_forever()


def connect(addr):
    QueueManager.register('get_task_queue')
    QueueManager.register('get_result_queue')
    host, port = addr.rsplit(':', 1)
    m = QueueManager(address=(host, int(port)), authkey=KEY.encode())
    m.connect()
    return m.get_task_queue(), m.get_result_queue()


def work(addr):
    """The tutorial's worker loop without its sleep, until the queue stays empty for 1 s."""
    task, result = connect(addr)
    while True:
        try:
            n = task.get(timeout=1)
        except queue.Empty:
            return
        result.put('%d * %d = %d' % (n, n, n * n))


def start(cmd, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        m = re.match(r'python listening on (\S+)', line)
        if m:
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit('no "python listening on" line from %s' % cmd)


def round_trip(addr, tasks, workers):
    task, result = connect(addr)
    inputs = [random.randint(0, 10000) for _ in range(tasks)]
    for n in inputs:
        task.put(n)
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, '--work', addr]) for _ in range(workers)]
    got = []
    try:
        for _ in range(tasks):
            got.append(result.get(timeout=30))
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            p.wait(timeout=60)
    squares = sorted(int(r.split('=')[1]) for r in got)
    assert squares == sorted(n * n for n in inputs), 'a result is missing or wrong'
    return tasks / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tasks', type=int, default=20000)
    ap.add_argument('--workers', type=int, default=4)
    ap.add_argument('--rounds', type=int, default=3)
    target = os.environ.get('CARGO_TARGET_DIR', 'target')
    ap.add_argument('--master', default=os.path.join(target, 'release', 'taskmill-master'))
    ap.add_argument('--work', help=argparse.SUPPRESS)
    ap.add_argument('--serve-cpython', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.work:
        return work(args.work)
    if args.serve_cpython:
        return serve_cpython()
    if not os.access(args.master, os.X_OK):
        sys.exit('%s not found: cargo build --release -p taskmill-master' % args.master)
    print('python-managers-bench: %d tasks, %d worker processes, %d rounds alternating, '
          'Python %s' % (args.tasks, args.workers, args.rounds, sys.version.split()[0]), flush=True)
    sides = {
        "CPython's manager server": [sys.executable, __file__, '--serve-cpython'],
        'taskmill-master --python-listen': [args.master, 'serve', '--listen', '127.0.0.1:0',
                                            '--python-listen', '127.0.0.1:0'],
    }
    rates = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, cmd in sides.items():
            server, addr = start(cmd, {'TASKMILL_AUTHKEY': KEY, 'RUST_LOG': 'warn'})
            try:
                rate = round_trip(addr, args.tasks, args.workers)
            finally:
                server.kill()
                server.wait()
            rates[name].append(rate)
            print('round %d  %-32s %8.0f tasks/s' % (r + 1, name, rate), flush=True)
    base = None
    for name, got in rates.items():
        median = statistics.median(got)
        base = base or median
        print('%-32s median %8.0f tasks/s  (%.2fx)' % (name, median, median / base))


if __name__ == '__main__':
    main()

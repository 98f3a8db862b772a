#!/usr/bin/python3
"""bench/ops_torch.py -- the PyTorch CPU side of the engine-ops benchmark.

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/ops_torch.py SECTION [THREADS]

SECTION is "tiny", "elementwise" or "matmul".  Prints one line per case,

    result <TAB> section <TAB> case <TAB> value <TAB> unit

(tiny cases also print "case|cpu", the same figure in CPU time)
for bench/ops.lua (the driver) to collect, plus "info" lines.  The cases,
their names and the way each is timed mirror bench/ops_lualign.lua; keep the
two in step.  bench/ops.lua starts it under each setting of bench/peer.lua
(stock, OpenMP passive waiting, glibc's malloc keeping freed memory,
jemalloc) and compares lualign with the best of them.
"""
import statistics
import sys
import time
import timeit

import torch

SECTION = sys.argv[1] if len(sys.argv) > 1 else sys.exit("usage: ops_torch.py tiny|elementwise|matmul [threads]")
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(THREADS)
torch.manual_seed(0)


def report(case, value, unit):
    print(f"result\t{SECTION}\t{case}\t{value:.6g}\t{unit}", flush=True)


# --------------------------------------------------------------------------
# Per-op overhead on tiny tensors.  timeit compiles each statement into a
# plain loop (no function call around it), as the Lua side does with load().
# The result is assigned to a name that the next iteration overwrites, so
# freeing it is part of the figure, as collecting it is on the Lua side.

TINY = [
    ("empty loop", "c = a"),
    ("add", "c = a + b"),
    ("mul", "c = a * b"),
    ("exp", "c = a.exp()"),
    ("sum", "c = a.sum()"),
    ("matmul 4x4", "c = a.matmul(b)"),
    ("view", "c = a.view(16)"),
    ("transpose", "c = a.t()"),
    ("softmax", "c = a.softmax(-1)"),
    # forward (matmul, add, relu, sum) + backward + clearing the two gradients
    ("autograd step", "y = (x.matmul(w) + bias).relu().sum(); y.backward(); w.grad = None; bias.grad = None"),
]


def time_loop(stmt, env):
    """Microseconds per iteration, wall-clock and CPU time (process_time, as
    os.clock on the Lua side): the count grows until one timed run takes at
    least 50 ms, then the medians of 5 such runs are kept."""
    timer = timeit.Timer(stmt, globals=env)
    timer.timeit(1000)  # warm-up
    n = 1000
    while timer.timeit(n) < 0.05:
        n *= 2
    wall, cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        timer.timeit(n)
        wall.append((time.perf_counter() - t0) / n * 1e6)
        cpu.append((time.process_time() - c0) / n * 1e6)
    return statistics.median(wall), statistics.median(cpu)


def bench_tiny():
    env = dict(a=torch.randn(4, 4), b=torch.randn(4, 4), x=torch.randn(4, 4),
               w=torch.randn(4, 4, requires_grad=True), bias=torch.randn(4, requires_grad=True))
    for name, stmt in TINY:
        wall, cpu = time_loop(stmt, env)
        report(name, wall, "us")
        report(name + "|cpu", cpu, "us")


# --------------------------------------------------------------------------
# Elementwise throughput on 16M float32 (64 MiB per tensor).  Bytes counted
# are those an ideal kernel must move (each input read once, the output
# written once).  Each call's result is dropped inside the timed call, as the
# Lua side closes its result there.

N = 16 * 1024 * 1024
MIB64 = N * 4

ELEMENTWISE = [
    ("add", 3 * MIB64, lambda t: t["a"] + t["b"]),
    ("mul", 3 * MIB64, lambda t: t["a"] * t["b"]),
    ("exp", 2 * MIB64, lambda t: t["a"].exp()),
    ("relu", 2 * MIB64, lambda t: t["a"].relu()),
    ("sum", 1 * MIB64, lambda t: t["a"].sum()),
    ("softmax rows 4096x4096", 2 * MIB64, lambda t: t["m"].softmax(-1)),
    ("add_ in place", 3 * MIB64, lambda t: t["c"].add_(t["b"])),
]


def time_call(fn, arg):
    """Median seconds of one call over 7 timed calls after 2 warm-up calls."""
    runs = []
    for i in range(9):
        t0 = time.perf_counter()
        fn(arg)  # the result is freed here, when its last reference goes
        if i >= 2:
            runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def bench_elementwise():
    t = dict(a=torch.randn(N), b=torch.randn(N), c=torch.randn(N))
    t["m"] = t["a"].view(4096, 4096)
    with torch.no_grad():
        for name, nbytes, fn in ELEMENTWISE:
            report(name, nbytes / time_call(fn, t) / 1e9, "GB/s")


# --------------------------------------------------------------------------
# Matmul GFLOP/s (M x N x K: A is M x K, B is K x N), as bench/ops_lualign.lua.

MATMUL = [
    ("1024x1024x1024", 1, 1024, 1024, 1024),
    ("2048x768x768", 1, 2048, 768, 768),
    ("2048x3072x768", 1, 2048, 3072, 768),
    ("2048x768x3072", 1, 2048, 768, 3072),
    ("2048x8192x384", 1, 2048, 8192, 384),
    ("48x 256x64x256 (scores @ V)", 48, 256, 64, 256),
    ("48x 256x256x64 (Q @ K^T)", 48, 256, 256, 64),
]


def time_matmul(a, b):
    """Median seconds per product: at least 3 timed calls, and more until
    0.5 s of timing have been spent, after one warm-up call."""
    a.matmul(b)
    runs = []
    while len(runs) < 3 or sum(runs) < 0.5:
        t0 = time.perf_counter()
        a.matmul(b)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def bench_matmul():
    with torch.no_grad():
        for name, batch, m, n, k in MATMUL:
            shape_a, shape_b = ((m, k), (k, n)) if batch == 1 else ((batch, m, k), (batch, k, n))
            a, b = torch.randn(*shape_a), torch.randn(*shape_b)
            report(name, 2 * batch * m * n * k / time_matmul(a, b) / 1e9, "GFLOP/s")


print(f"info\ttorch\t{torch.__version__}, {torch.get_num_threads()} threads", flush=True)
{"tiny": bench_tiny, "elementwise": bench_elementwise, "matmul": bench_matmul}[SECTION]()

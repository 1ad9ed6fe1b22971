"""Throughput of the replay kernels (sim/fastpath.py) and stack distances (sim/mrc.py).

Run ``python bench/bench_fastpath.py [--n 1000000] [--repeat 5]``. Kernels are compiled first
(``warm_up``), so times exclude JIT; each figure is the best of ``--repeat`` runs of the public
function (validation and dense-id mapping included), single-threaded, with ``frames`` = half the
distinct pages. Both wall-clock and process CPU time are shown: on a busy machine the CPU figure
is the steadier one (time slices lost to other processes do not count), though shared caches
still slow it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import fastpath, mrc  # noqa: E402


def traces(n: int, rng: np.random.Generator) -> dict[str, NDArray[np.int64]]:
    """Uniform (many misses), Zipf-like (skewed, many hits), sparse 62-bit page numbers, and
    uniform over 2**20 pages (mostly first touches; per-page state far beyond L2)."""
    uniform = rng.integers(0, 1 << 16, n)
    ranks = np.arange(1, (1 << 18) + 1)
    weights = 1.0 / ranks**0.99
    zipf = rng.choice(ranks.size, size=n, p=weights / weights.sum())
    sparse_alphabet = rng.integers(0, 1 << 62, 1 << 16)
    sparse = sparse_alphabet[rng.integers(0, sparse_alphabet.size, n)]
    wide = rng.integers(0, 1 << 20, n)
    return {"uniform-64k": uniform, "zipf-256k": zipf, "sparse-64k": sparse, "uniform-1M": wide}


def best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Fastest wall-clock and fastest CPU time of ``repeat`` runs, in seconds."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(wall), min(cpu)


def main() -> None:
    """Print accesses per second for every kernel on every trace."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000, help="accesses per trace")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (best is kept)")
    args = ap.parse_args()
    fastpath.warm_up()
    print(
        f"{platform.machine()}, python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}, {args.n} accesses, best of {args.repeat}"
    )
    head = ("trace", "distinct", "frames", "kernel", "M/s wall", "M/s cpu", "faults")
    print("{:<12} {:>8} {:>7} {:<15} {:>8} {:>8} {:>8}".format(*head))
    for name, pages in traces(args.n, np.random.default_rng(1)).items():
        _, distinct = fastpath.dense_ids(pages)
        frames = distinct // 2
        runs: dict[str, Callable[[], object]] = {
            "lru": lambda p=pages, f=frames: fastpath.lru(p, f),
            "fifo": lambda p=pages, f=frames: fastpath.fifo(p, f),
            "clock": lambda p=pages, f=frames: fastpath.clock(p, f),
            "opt": lambda p=pages, f=frames: fastpath.opt(p, f),
            "stack_distances": lambda p=pages: mrc.stack_distances(p),
            "dense_ids": lambda p=pages: fastpath.dense_ids(p),
            "next_use": lambda p=pages: fastpath.next_use(p),
        }
        for kernel, fn in runs.items():
            out = fn()
            faults = getattr(out, "faults", "")
            wall, cpu = best(fn, args.repeat)
            print(
                f"{name:<12} {distinct:>8} {frames:>7} {kernel:<15} "
                f"{args.n / wall / 1e6:>8.1f} {args.n / cpu / 1e6:>8.1f} {faults:>8}"
            )


if __name__ == "__main__":
    main()

"""Throughput of the replay kernels (sim/fastpath.py) and stack distances (sim/mrc.py).

Part of ``python -m bench`` (``--only fastpath``): ``run(quick)`` gives one row per kernel and
synthetic trace (no baseline, no target: bench_replay.py compares with libCacheSim on a real
trace). Standalone, with both clocks and the helper kernels:
``python -m bench.bench_fastpath [--n 1000000] [--repeat 5]``. Kernels are compiled first
(``warm_up``), so times exclude JIT; each figure is the best of ``--repeat`` runs of the public
function (validation and dense-id mapping included), single-threaded, with ``frames`` = half the
distinct pages. Both wall-clock and process CPU time are shown: on a busy machine the CPU figure
is the steadier one (time slices lost to other processes do not count), though shared caches
still slow it.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray

from bench import row
from sim import fastpath, mrc

PIN_ONE_CORE = True


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


def kernels(pages: NDArray[np.int64], frames: int) -> dict[str, Callable[[], object]]:
    """The timed calls on one trace."""
    return {
        "lru": lambda: fastpath.lru(pages, frames),
        "fifo": lambda: fastpath.fifo(pages, frames),
        "clock": lambda: fastpath.clock(pages, frames),
        "opt": lambda: fastpath.opt(pages, frames),
        "stack_distances": lambda: mrc.stack_distances(pages),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per kernel and trace: best-of-``repeat`` accesses per wall second."""
    n, repeat = (200_000, 2) if quick else (1_000_000, 5)
    fastpath.warm_up()
    rows = []
    for name, pages in traces(n, np.random.default_rng(1)).items():
        _, distinct = fastpath.dense_ids(pages)
        frames = distinct // 2
        for kernel, fn in kernels(pages, frames).items():
            out = fn()
            wall, cpu = best(fn, repeat)
            rows.append(
                row(
                    "kernels",
                    f"{kernel}, {name}",
                    n / wall,
                    "acc/s",
                    value_cpu=n / cpu if cpu else None,
                    accesses=n,
                    distinct_pages=distinct,
                    frames=frames,
                    faults=getattr(out, "faults", None),
                    repeat=repeat,
                )
            )
    return rows


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
        runs = kernels(pages, frames)
        runs["dense_ids"] = lambda p=pages: fastpath.dense_ids(p)
        runs["next_use"] = lambda p=pages: fastpath.next_use(p)
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

"""Sweep parallelism: 8 equal runs with 1 worker, then with 2 (issue 5: at least 1.8x faster).

Run ``python bench/bench_sweep.py [--quick]``, or through ``python -m bench``, which calls
:func:`run`. Both sweeps go through ``sim.sweep.run_points`` into fresh temporary directories,
so nothing is cached and the 2-worker figure includes starting the process pool, as a user
pays it. The 8 runs are one scenario with seeds 1-8 (the same work, different streams; equal
configs would be run once). Times are wall clock: on a shared machine the ratio is low whenever
another process holds a core, so read it next to the load average printed when run alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.sweep import load_sweep, run_points  # noqa: E402

RUNS = 8
TARGET = 1.8


def scenario(quick: bool) -> dict[str, Any]:
    """One overcommitted host (1.5x), two guests; a few seconds of CPU per run, or well under
    one with ``quick``."""
    return {
        "name": "bench-sweep",
        "duration_s": 0.05 if quick else 1.5,
        "host": {"memory_mib": 32 if quick else 128},
        "swap": {"size_mib": 512},
        "vms": [
            {
                "name": "vm",
                "count": 2,
                "memory_mib": 24 if quick else 96,
                "access_rate_per_s": 500_000,
                "workload": {"type": "zipf", "alpha": 1.1},
            }
        ],
    }


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_sweep(quick: bool, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds for the 8 runs with ``workers`` processes, from an empty directory.
    CPU / wall is the number of cores the sweep actually got: 1 and 2 on an idle machine."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        path = Path(tmp) / "sweep.yaml"
        spec = {"base": scenario(quick), "seeds": list(range(1, RUNS + 1))}
        path.write_text(yaml.safe_dump(spec))
        _, points = load_sweep(path)
        t0, c0 = time.perf_counter(), _cpu_s()
        df = run_points(points, Path(tmp) / "out", workers=workers)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    if set(df.status) != {"ok"}:
        raise RuntimeError(f"bench sweep had failed runs: {df.error.dropna().tolist()}")
    return wall, cpu


def run(quick: bool) -> list[dict[str, Any]]:
    """One table row for ``python -m bench``: 2-worker time against the serial time."""
    return _rows(quick)[0]


def _rows(quick: bool) -> tuple[list[dict[str, Any]], tuple[float, float], tuple[float, float]]:
    """The row, and (wall, CPU) seconds of the serial and the 2-worker sweep."""
    (serial, serial_cpu), (parallel, parallel_cpu) = timed_sweep(quick, 1), timed_sweep(quick, 2)
    ratio = serial / parallel
    rows = [
        {
            "bench": "sweep",
            "metric": f"{RUNS} runs, 2 workers",
            "value": round(parallel, 3),
            "unit": "s",
            "baseline": f"{RUNS} runs, 1 worker",
            "baseline_value": round(serial, 3),
            "ratio": round(ratio, 3),
            "target": f">= {TARGET}x",
            "met": ratio >= TARGET,
        }
    ]
    return rows, (serial, serial_cpu), (parallel, parallel_cpu)


def main() -> None:
    """Print the row, with the machine's load for context."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny runs (pool overhead dominates)")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows, (sw, sc), (pw, pc) = _rows(args.quick)
    for row in rows:
        print(
            f"{row['baseline']}: {row['baseline_value']:.2f} s; {row['metric']}: "
            f"{row['value']:.2f} s; speed-up {row['ratio']:.2f}x (target {row['target']}: "
            f"{'met' if row['met'] else 'NOT met'})"
        )
    print(f"cores used (CPU s / wall s): 1 worker {sc / sw:.2f}, 2 workers {pc / pw:.2f}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

"""Compile the simulator's numba kernels once, before the test workers start.

Why
    Every kernel is compiled on its first call and cached beside its module
    (``cache=True``). From a fresh checkout the suite's workers, and the CLI tests' subprocesses,
    each met kernels nobody had cached yet and compiled them again: 270 s of the suite's 1,290 s
    of CPU, and two minutes of its wall time, went to compiling. Warming the cache first, in
    two processes that share the kernels between them, costs about as long as one compile of
    each. A kernel the worlds here miss is compiled by the first test that calls it, as before.

Use
    ``python -m tests.warm GROUP`` for one group of :data:`GROUPS`; ``conftest.py`` runs the
    groups side by side at the start of a run with workers when the cache is cold.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

GROUPS = ("a", "b")


def _worlds(half: int) -> None:
    """Half of the watermark worlds that reach each family of kernels (every other one): the
    two-list core and fused fault, the write-back drain and the eviction log, MGLRU, THP,
    memcgs, zram and zswap, guest TLBs with and without a guest kernel, KSM and prefault."""
    import tempfile
    from pathlib import Path

    guest = {"name": "g", "memory_mib": 8, "vcpus": 1, "guest": {}, "workload": {"type": "zipf"}}
    variants: list[dict[str, object]] = [
        {"duration_s": 0.05},
        {"reclaim": {"policy": "mglru"}},
        {"host__thp": {}},
        {"vms__0__memcg": {}},
        {"swap__device": "zram"},
        {"swap__zswap": {"enabled": True}},
        {"vms__0__guest_tlb": {}},
        {"vms": [guest]},
        {"vms": [guest | {"guest_tlb": {}}]},
        {"host__ksm": {}, "vms__0__content": {"image_share": 0.5}},
        {"vms__0__prefault": True},
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, changes in enumerate(variants[half::2]):
            out = Path(tmp) / str(i)
            out.mkdir()
            _world(changes, out)


def _world(changes: dict[str, object], out: object = None) -> None:
    """Build and run one tiny world (with the eviction log when ``out`` is a directory)."""
    from sim.engine import build_world
    from tests.conftest import tiny

    changes = {"duration_s": 0.02} | changes
    try:
        build_world(tiny(**changes), out).run()
    except Exception as exc:  # noqa: BLE001 - a warm-up failure is the tests' to report
        print(f"tests.warm: {changes}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _kernels() -> None:
    """The kernels outside a watermark world: the compiled replay and MRC, demand mode."""
    from sim.replay import mrc, replay

    rng = np.random.default_rng(1)
    pages = rng.integers(0, 200, 5_000).astype(np.int64)
    writes = rng.random(5_000) < 0.3
    for policy in ("lru", "fifo", "clock", "opt"):
        replay(pages, writes, frames=50, policy=policy)
    mrc(pages, writes, policies=["lru", "opt"], sizes=[20, 50])
    _world({"duration_s": 0.005, "reclaim": {"policy": "two_list", "trigger": "demand"}})


def _b() -> None:
    _worlds(1)
    _kernels()


WARM: dict[str, Callable[[], None]] = {"a": lambda: _worlds(0), "b": _b}


def main(argv: list[str]) -> int:
    """Warm one group; exit 0 even when a world fails (its test will say why)."""
    WARM[argv[0]]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

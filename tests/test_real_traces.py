"""The replays on the committed real-program samples: compiled kernels against the brute-force
references, the simulated mechanism against the kernels, and mrc against replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim import fastpath
from sim.guest.traces import read_trace
from sim.replay import mrc, replay
from tests.test_fastpath import ref_clock, ref_fifo, ref_lru, ref_opt

TRACES = Path(__file__).resolve().parent.parent / "traces"
REFS = {"lru": ref_lru, "fifo": ref_fifo, "clock": ref_clock, "opt": ref_opt}


@pytest.fixture(scope="module")
def sqlite3() -> np.ndarray:
    return read_trace(TRACES / "sqlite3.lackey.gz").pages


@pytest.fixture(scope="module")
def python3() -> np.ndarray:
    return read_trace(TRACES / "python3.npy.gz").pages


@pytest.mark.parametrize("policy", sorted(REFS))
@pytest.mark.parametrize("frames", [16, 64, 150])
def test_sqlite3_sample_kernels_equal_brute_force(
    sqlite3: np.ndarray, policy: str, frames: int
) -> None:
    pages = sqlite3[:150_000]
    faults, evictions = REFS[policy](pages.tolist(), frames)
    r = getattr(fastpath, policy)(pages, frames)
    assert (r.faults, r.evictions) == (faults, evictions)


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock"])
def test_python3_sample_kernels_equal_brute_force(python3: np.ndarray, policy: str) -> None:
    pages = python3[:100_000]
    faults, evictions = REFS[policy](pages.tolist(), 500)
    r = getattr(fastpath, policy)(pages, 500)
    assert (r.faults, r.evictions) == (faults, evictions)


@pytest.mark.parametrize("policy", ["lru", "opt", "fifo", "clock"])
def test_general_engine_equals_kernels_on_a_real_trace(sqlite3: np.ndarray, policy: str) -> None:
    pages = sqlite3[300_000:310_000]
    writes = np.zeros(len(pages), dtype=np.bool_)
    general = replay(pages, writes, frames=12, policy=policy, engine="general")
    fast = replay(pages, writes, frames=12, policy=policy, engine="fast")
    assert general["faults"] == fast["faults"] > general["distinct_pages"]


def test_mrc_agrees_with_replay_on_the_real_sample(sqlite3: np.ndarray) -> None:
    """At every size the curve reports (1 to the 216 distinct pages)."""
    writes = np.zeros(len(sqlite3), dtype=np.bool_)
    table = mrc(sqlite3, writes, policies=["lru"])
    lru = table[table.policy == "lru"]
    assert list(lru.frames) == list(range(1, 217))
    for row in lru.itertuples():
        r = replay(sqlite3, writes, frames=int(row.frames), policy="lru")
        assert row.faults == r["faults"], row

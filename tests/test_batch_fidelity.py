"""Batch-size fidelity: a vCPU applies a run of up to ``engine.batch_accesses`` hits at once
(their accessed bits set together, time advanced once), so results may drift as the batch grows
and must converge to the one-access-per-event model (batch size 1) as it shrinks.

Two regimes: an 8 MiB host where both guests thrash, and a 12 MiB host that can settle with one
guest holding its working set and the other thrashing. The second is the sharp test: before
faults were handled at their own time, first-touch faults of a whole batch landed at one
instant in process order, and from batch 256 up one guest always won (half the major faults of
batch size 1)."""

from __future__ import annotations

import pytest

from sim.engine import build_world
from tests.conftest import tiny

BATCHES = (1, 64, 1024)
# Stated tolerance (README, "Batch size"): within 1% of batch size 1 up to 64, 2% at 1024.
TOLERANCE = {64: 0.01, 1024: 0.02}


def _counts(batch: int, seed: int, host_mib: int) -> dict[str, int]:
    sc = tiny(
        seed=seed,
        duration_s=0.1,
        host={"memory_mib": host_mib},
        engine={"batch_accesses": batch, "sample_interval_ms": 1.0},
    )
    w = build_world(sc, None)
    w.run()
    s = w.summary(0.0)
    return {
        "major": sum(v["faults"]["major"] for v in s["vms"]),
        "pswpout": s["host"]["pswpout"],
    }


@pytest.mark.parametrize(("seed", "host_mib"), [(7, 8), (7, 12), (8, 12)])
def test_fault_counts_converge_to_batch_size_one(seed: int, host_mib: int) -> None:
    exact = _counts(1, seed, host_mib)
    assert exact["major"] > 1000  # memory pressure is real
    for batch in BATCHES[1:]:
        got = _counts(batch, seed, host_mib)
        for key, ref in exact.items():
            err = abs(got[key] - ref) / ref
            assert err <= TOLERANCE[batch], f"batch {batch}: {key} {got[key]} vs {ref}"


def _guest_counts(batch: int, tlb: bool = False) -> dict[str, int]:
    """A guest kernel swapping on a host that swaps too (seed 7, 0.4 s): both levels' counts
    (``tlb``: the guest VM's vCPUs cache combined translations, and their TLB's counts)."""
    import copy

    from sim.config import parse_scenario
    from tests.conftest import TINY

    raw = copy.deepcopy(TINY)
    raw.update(seed=7, duration_s=0.4, host={"memory_mib": 10})
    raw["engine"] = {"batch_accesses": batch, "sample_interval_ms": 1.0}
    zipf = {"type": "zipf", "alpha": 0.9}
    raw["vms"] = [
        {
            "name": "g",
            "memory_mib": 8,
            "vcpus": 2,
            "access_rate_per_s": 2_000_000,
            "workload": zipf,
            "guest": {"footprint_mib": 12},
        },
        {
            "name": "p",
            "memory_mib": 8,
            "vcpus": 2,
            "access_rate_per_s": 2_000_000,
            "workload": zipf,
        },
    ]
    if tlb:
        raw["vms"][0]["guest_tlb"] = {"entries": 1536, "ways": 12}
    w = build_world(parse_scenario(raw), None)
    w.run()
    s = w.summary(0.0)
    g = s["vms"][0]["guest"]
    out = {
        "host major": sum(v["faults"]["major"] for v in s["vms"]),
        "host pswpout": s["host"]["pswpout"],
        "guest major": g["pgmajfault"],
        "guest pswpout": g["pswpout"],
        "double paging": g["double_paging"],
    }
    if tlb:
        t = s["vms"][0]["guest_tlb"]
        out |= {"tlb hits": t["hits"], "tlb fills": t["fills"]}
    return out


def test_guest_kernel_counts_converge_to_batch_size_one() -> None:
    """With a guest kernel the guest's page walk and its accessed bits are batched too; both
    levels' counts stay within 5% of batch size 1 (measured: at most 3.7%, double paging at
    1024)."""
    exact = _guest_counts(1)
    assert exact["guest major"] > 1000 < exact["host major"]
    for batch in BATCHES[1:]:
        got = _guest_counts(batch)
        for key, ref in exact.items():
            err = abs(got[key] - ref) / ref
            assert err <= 0.05, f"batch {batch}: {key} {got[key]} vs {ref}"


def test_guest_kernel_with_a_tlb_converges_to_batch_size_one() -> None:
    """The combined translations (guest TLB with a guest kernel) are batched too: a guest
    flush or a zap landing mid-run empties the TLB at the flush, and the run keeps its
    entries. Both levels' counts and the TLB's hits and fills stay within 8% of batch size 1
    (measured, seeds 7 to 9: guest major faults 6.5 to 7% low at batch 64, within 2% at
    1024; the other counts within 5%; without the TLB the same runs stay within 4.4%)."""
    exact = _guest_counts(1, tlb=True)
    assert exact["guest major"] > 1000 < exact["host major"]
    assert exact["tlb hits"] > 0.05 * exact["tlb fills"]
    for batch in BATCHES[1:]:
        got = _guest_counts(batch, tlb=True)
        for key, ref in exact.items():
            err = abs(got[key] - ref) / ref
            assert err <= 0.08, f"batch {batch}: {key} {got[key]} vs {ref}"

"""vCPUs apply accesses in batches, stop at the first fault, and never lose stream accesses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.engine import World, rng_for
from sim.guest.workloads import AccessStream
from sim.kvm.spte import SPTE_ACCESSED, SPTE_DIRTY
from tests.conftest import tiny

_NONE = np.zeros(0, np.uint8)  # no KSM: ept_touch marks no writes

ROOMY = {"host__memory_mib": 64, "vms__0__count": 1, "vms__0__vcpus": 1}


def _replay_stream(w: World, n: int) -> tuple[np.ndarray, np.ndarray]:
    cfg = w.sc.vms[0]
    stream = AccessStream(
        cfg.workload,
        vm_pages=w.vms[0].mm.nr_pages,
        working_set_pages=w.vms[0].mm.nr_pages,
        access_rate_per_s=cfg.access_rate_per_s,
        write_ratio=cfg.write_ratio,
        vcpu=0,
        nr_vcpus=1,
        rng=rng_for(w.sc.seed, "vm.vcpu0.stream"),
    )
    return stream.next(n)


@pytest.mark.parametrize("batch", [1, 5, 128, 4096])
def test_first_touches_equal_distinct_pages_of_the_consumed_stream(batch: int) -> None:
    w = World(tiny(duration_s=0.01, engine={"batch_accesses": batch}, **ROOMY))
    w.run()
    st = w.vms[0].stats
    gfns, writes = _replay_stream(w, st.accesses)
    assert st.faults["first_touch"] == len(np.unique(gfns))
    assert st.faults["major"] == st.faults["minor"] == 0
    # every access landed: accessed bits on all touched pages, dirty exactly on written ones
    spte = w.vms[0].mmu.spte
    assert (spte[np.unique(gfns)] & SPTE_ACCESSED).all()
    dirty = np.flatnonzero(spte & SPTE_DIRTY)
    assert set(dirty.tolist()) == set(gfns[writes].tolist())


def test_guest_time_matches_the_access_rate() -> None:
    w = World(tiny(duration_s=0.02, **ROOMY))
    w.run()
    st = w.vms[0].stats
    rate = w.sc.vms[0].access_rate_per_s
    assert st.compute_ns == pytest.approx(st.accesses * 1e9 / rate, abs=1)
    assert st.compute_ns + st.stall_ns == pytest.approx(w.env.now, rel=0.01)


def test_faults_before_the_batch_end_stop_the_batch() -> None:
    """A fault that must wait splits the batch: hits before it apply now, the rest later."""
    w = World(tiny(duration_s=0.05, engine={"batch_accesses": 4096}))
    w.run()
    majors = sum(v.stats.faults["major"] for v in w.vms)
    assert majors > 0
    # vCPU time is conserved: guest compute plus stall equals elapsed time per vCPU
    for vm in w.vms:
        total = vm.stats.compute_ns + vm.stats.stall_ns
        assert total == pytest.approx(len(vm.vcpus) * w.env.now, rel=0.02)


def test_ept_touch_stops_at_the_first_violation_and_sets_bits_before_it() -> None:
    """The compiled walk: hits set A (and D on writes) and stamp the page; a non-present or
    access-tracked spte stops it there, untouched. With no stamps array it stamps nothing."""
    from sim.guest.touch import ept_touch
    from sim.kvm.spte import SPTE_ACCESS_TRACKED, SPTE_PRESENT

    gfns = np.array([0, 1, 2, 1, 4, 5, 0], dtype=np.int64)
    writes = np.array([False, True, False, False, False, False, True])
    for stamps in (True, False):
        spte = np.array(
            [SPTE_PRESENT] * 4 + [0, SPTE_PRESENT | SPTE_ACCESS_TRACKED], dtype=np.uint8
        )
        last = np.zeros(16 if stamps else 0, dtype=np.uint32)
        assert ept_touch(spte, gfns, gfns, writes, last, 10, 7, 0, len(gfns), _NONE) == 4
        assert spte[:3].tolist() == [
            SPTE_PRESENT | SPTE_ACCESSED,
            SPTE_PRESENT | SPTE_ACCESSED | SPTE_DIRTY,
            SPTE_PRESENT | SPTE_ACCESSED,
        ]
        assert spte[3] == SPTE_PRESENT  # gfn 3 is never accessed
        if stamps:
            assert last[10:13].tolist() == [7, 7, 7]
            assert not last[13:].any()
        assert ept_touch(spte, gfns, gfns, writes, last, 10, 8, 5, len(gfns), _NONE) == 5  # tracked
        assert ept_touch(spte, gfns, gfns, writes, last, 10, 9, 6, len(gfns), _NONE) == len(gfns)
        assert spte[0] == SPTE_PRESENT | SPTE_ACCESSED | SPTE_DIRTY
        if stamps:
            assert last[10] == 9


def test_stamps_only_for_the_eviction_log(tmp_path: Path) -> None:
    """The analysis-only stamps (last access per page, scans per frame) exist only when the
    eviction log is written; the simulation is the same with or without them."""
    from sim.engine import build_world

    (tmp_path / "on").mkdir()
    logged = build_world(tiny(), tmp_path / "on")
    assert logged.mem.stamps
    assert len(logged.mem.last_access_us) == logged.mem.nr_pages
    assert len(logged.mem.scans) == logged.nr_frames
    logged.run()
    assert logged.recorder is not None
    logged.recorder.close()
    ev = pd.read_parquet(tmp_path / "on" / "evictions.parquet")
    assert len(ev) > 0
    assert ev["last_access_ns"].max() > 0
    assert (ev["idle_ns"] >= 0).all()
    for w in (build_world(tiny(), None), build_world(tiny(output={"evictions": False}), tmp_path)):
        assert not w.mem.stamps
        assert len(w.mem.last_access_us) == len(w.mem.scans) == 0
        w.run()
        same = {**w.summary(0.0), "config_hash": None}  # the output switch is in the config
        assert same == {**logged.summary(0.0), "config_hash": None}

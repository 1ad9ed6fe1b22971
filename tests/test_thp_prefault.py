"""The prefault fill with THP-backed guest RAM (host.thp with vms[].prefault, sim/prefault.py):
whole 2 MiB blocks, placed as a long THP run leaves them.

The worlds are a 64 MiB host and two 64 MiB guests (32 blocks each) whose 48 MiB working sets
overcommit it; each fill is checked against huge_memory.py's definitions (a THP: 512 frames,
PMD-mapped, its 2 MiB spte, one LRU entry of 512 pages; a THP swapped out whole: 512 pages in
one aligned cluster with the folio's one shadow) and every world invariant (``World.check``)
right after the fill and over a short run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import fast
from sim.config import Scenario
from sim.engine import World, build_world
from sim.host.huge_memory import HPAGE_PMD_NR, THP_LARGE, THP_PMD
from sim.host.memory import NO_PFN, PAGE_SIZE, PG_RESIDENT, PG_SWAP, PTE_PRESENT, PTE_YOUNG
from sim.host.swap import SWAPFILE_CLUSTER
from sim.kvm import spte as sp
from sim.prefault import block_heat, heat
from tests.conftest import run_checked, tiny
from tests.test_prefault_batch import _drain, _state

NR = HPAGE_PMD_NR


def _scenario(**changes: Any) -> Scenario:
    base: dict[str, Any] = {
        "host__thp": {},
        "host__memory_mib": 64,
        "vms__0__memory_mib": 64,
        "vms__0__working_set_mib": 48,
        "vms__0__prefault": True,
        "swap__size_mib": 64,
        "duration_s": 0.02,
    }
    base.update(changes)
    return tiny(**base)


def _world(**changes: Any) -> World:
    w = build_world(_scenario(**changes), None)
    assert isinstance(w, World)
    return w


def _blocks(w: World) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 2 MiB block of guest RAM: resident as a THP, wholly in swap, untouched."""
    n = w.thp.nr_vm_pages if w.thp is not None else 0
    f = w.mem.flags[:n].reshape(-1, NR)
    pfn = w.mem.pfn[:n].reshape(-1, NR)
    resident = ((f & PG_RESIDENT) != 0).all(axis=1)
    swapped = (f == PG_SWAP).all(axis=1)
    untouched = (f == 0).all(axis=1) & (pfn == NO_PFN).all(axis=1)
    return resident, swapped, untouched


CONFIGS: dict[str, dict[str, Any]] = {
    "disk": {},
    "memcg_max_swap_max": {"vms__0__memcg": {"max_mib": 24, "swap_max_mib": 12}},
    "memcg_high": {"vms__0__memcg": {"high_mib": 20}},
    "zram": {"swap__device": "zram"},
    "thp_swap_off": {"host__thp": {"swap": False}},
    "legacy_tdp": {"kvm__mmu": "legacy_tdp"},
    "zswap": {"swap__zswap": {"enabled": True, "max_pool_percent": 10}},
    "zswap_pre_6_18": {
        "swap__zswap": {"enabled": True, "max_pool_percent": 10, "store_incompressible": False}
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fill_places_whole_blocks_and_keeps_every_invariant(name: str) -> None:
    w = _world(**CONFIGS[name])
    w.check()
    mem, thp = w.mem, w.thp
    assert thp is not None
    resident, swapped, untouched = _blocks(w)
    assert (resident | swapped | untouched).all(), "a block placed in part"
    assert resident.any()
    assert swapped.any()
    # a resident block is a PMD-mapped THP: 512 frames, the head young, a 2 MiB spte
    assert (thp.block[resident] == THP_LARGE | THP_PMD).all()
    assert (thp.block[~resident] == 0).all()
    f = mem.flags[: thp.nr_vm_pages].reshape(-1, NR)[resident]
    assert ((f & PTE_PRESENT) != 0).all()
    assert ((f[:, 0] & PTE_YOUNG) != 0).all()
    assert not (f[:, 1:] & PTE_YOUNG).any()
    spte = np.concatenate([vm.mmu.spte for vm in w.vms]).reshape(-1, NR)
    assert sp.is_present(spte[resident]).all()
    assert not sp.is_present(spte[~resident]).any()
    # one LRU entry per THP, its head's frame, counted as 512 pages (two_list: all active)
    heads = np.flatnonzero(resident) * NR
    policy_pages = sum(w.policy.lru_sizes().values())
    assert policy_pages == NR * len(heads) == mem.nr_frames - mem.nr_free - _pool(w)
    assert mem.nr_free > mem.wmark.high
    assert not any(w.vmstat.values())
    assert all(vm.mmu.pf_fixed == 0 for vm in w.vms)
    assert int(mem.nr_swapped.sum()) == NR * int(swapped.sum())
    run_checked(w, every_ns=5_000_000)


def _pool(w: World) -> int:
    return w.swap.zpool.frames_needed() if w.swap.zpool is not None else 0


def test_a_block_swapped_whole_is_what_shrink_large_leaves() -> None:
    """512 slots of one aligned cluster, in order; one shadow for the folio's 512 pages."""
    w = _world()
    _, swapped, _ = _blocks(w)
    slots = w.swap.page_slot[: w.thp.nr_vm_pages].reshape(-1, NR)[swapped]
    assert (slots[:, 0] % SWAPFILE_CLUSTER == 0).all()
    assert (slots == slots[:, :1] + np.arange(NR)).all()
    pfn = w.mem.pfn[: w.thp.nr_vm_pages].reshape(-1, NR)[swapped]
    assert (pfn == pfn[:, :1]).all()
    # the workingset clock advanced 512 pages per folio evicted: shadows 512 apart
    ages = np.sort(pfn[:, 0] & 0x7FFFFFFF)
    assert (np.diff(ages.astype(np.int64)) == NR).all()


def test_without_thp_swap_every_cold_block_is_split_into_4k_swap() -> None:
    """THP_SWAP off: reclaim splits each THP first, so its pages take order-0 slots and a
    shadow each (the clock advancing a page per eviction)."""
    w = _world(host__thp={"swap": False})
    _, swapped, _ = _blocks(w)
    pfn = w.mem.pfn[: w.thp.nr_vm_pages].reshape(-1, NR)[swapped]
    assert len(np.unique(pfn)) == pfn.size


def test_when_free_clusters_run_out_the_warmest_swapped_block_is_split() -> None:
    """8 MiB of swap: 2,048 slots, the header's cluster (511 free), two wholly free clusters
    and one past them with a single slot. The fill takes four blocks (2,048 slots): reclaim,
    coldest first, swaps the three coldest out whole, in the free clusters; the fourth finds
    none free and is split, its 512 pages taking the header cluster's slots and the last."""
    w = _world(swap__size_mib=8)
    _, swapped, _ = _blocks(w)
    assert int(swapped.sum()) == 4
    assert w.swap.nr_free_slots == 0
    cfgs = w.sc.vm_list()
    bh = np.concatenate([block_heat(heat(w, i, cfg)) for i, (_, cfg) in enumerate(cfgs)])
    order = np.flatnonzero(swapped)[np.argsort(bh[swapped], kind="stable")]  # coldest first
    n = w.thp.nr_vm_pages
    pfn = w.mem.pfn[:n].reshape(-1, NR)
    slots = w.swap.page_slot[:n].reshape(-1, NR)
    for b in order[:3]:
        assert (pfn[b] == pfn[b, 0]).all()
        assert slots[b, 0] % SWAPFILE_CLUSTER == 0
    split = order[3]
    assert len(np.unique(pfn[split])) == NR
    assert sorted((slots[split] // SWAPFILE_CLUSTER).tolist()) == [0] * 511 + [4]
    w.check()


def test_hot_blocks_resident_cold_in_swap_by_block_heat() -> None:
    w = _world()
    cfgs = w.sc.vm_list()
    bh = np.concatenate([block_heat(heat(w, i, cfg)) for i, (_, cfg) in enumerate(cfgs)])
    resident, swapped, untouched = _blocks(w)
    assert bh[resident].min() >= bh[swapped].max()
    cold_left = (bh > 0) & untouched  # touched, but no slot was left for them
    if cold_left.any():
        assert bh[swapped].min() >= bh[cold_left].max()
    assert (untouched[bh == 0]).all(), "a block the sample never touched was placed"


def test_fill_is_deterministic() -> None:
    a, b = _world(), _world()
    for x, y in (
        (a.mem.flags, b.mem.flags),
        (a.mem.pfn, b.mem.pfn),
        (a.mem.thp, b.mem.thp),
        (a.swap.page_slot, b.swap.page_slot),
    ):
        assert np.array_equal(x, y)
    assert all(np.array_equal(u.mmu.spte, v.mmu.spte) for u, v in zip(a.vms, b.vms, strict=True))
    _drain(a.policy)
    _drain(b.policy)
    assert _state(a.policy) == _state(b.policy)


def test_batched_lru_placement_equals_the_per_folio_hooks() -> None:
    batch = _world()
    with fast.disabled("prefault_batch"):
        loop = _world()
    _drain(loop.policy)
    _drain(batch.policy)
    assert _state(batch.policy) == _state(loop.policy)
    assert np.array_equal(batch.mem.flags, loop.mem.flags)


def test_prefaulted_thp_world_faults_far_less_early_than_a_cold_start() -> None:
    """The point of prefault: a cold THP start faults every block in (and falls back to 4 KiB
    pages once memory runs short), then swaps the cold part out and back; a prefaulted one
    starts where that settles: no first-touch storm, and fewer faults in all over the first
    50 ms (the major faults left are warm subpages of blocks that start swapped out whole,
    which a long run would have brought back as 4 KiB pages: see the module's
    Simplifications)."""
    faults: dict[str, dict[str, int]] = {}
    for name, prefault in (("cold", False), ("warm", True)):
        w = _world(vms__0__prefault=prefault, duration_s=0.05)
        w.run()
        faults[name] = {}
        for vm in w.vms:
            for kind, n in vm.stats.faults.items():
                faults[name][kind] = faults[name].get(kind, 0) + n
    assert faults["cold"]["first_touch"] > 1000
    assert faults["warm"]["first_touch"] * 20 < faults["cold"]["first_touch"]
    assert 2 * sum(faults["warm"].values()) < sum(faults["cold"].values())


@pytest.mark.parametrize("as_is", [True, False])
def test_behind_zswap_each_thp_is_stored_whole_or_not_at_all(as_is: bool) -> None:
    """zswap at 10% of the host: the fill stores the THPs it swaps out whole, oldest eviction
    first, until the pool fills; its shrink worker then sends the oldest entries on to the
    device. Before 6.18 (``store_incompressible: false``) a THP with a page that does not
    compress is not stored at all."""
    zs = {"enabled": True, "max_pool_percent": 10, "store_incompressible": as_is}
    w = _world(swap__zswap=zs)
    w.check()
    pool, zswap, mem = w.swap.zpool, w.swap.zswap, w.mem
    assert pool is not None
    assert zswap is not None
    assert not any(w.vmstat.values())
    _, swapped, _ = _blocks(w)
    n = w.thp.nr_vm_pages
    stored = pool.stored[:n].reshape(-1, NR)[swapped]
    poor = (pool.obj_bytes[:n].reshape(-1, NR)[swapped] >= PAGE_SIZE).any(axis=1)
    if as_is:  # the pool filled: the newest evictions in it, the shrink worker's on disk
        assert stored.any()
        assert not stored.all()
        assert zswap.accept_thr_pages <= mem.nr_pool <= zswap.max_pages
    else:  # 1.8% of pages do not compress: nearly every THP has one, and goes to the disk
        assert poor.any()
        assert not stored[poor].any()
    assert mem.nr_free > mem.wmark.high
    run_checked(w, every_ns=5_000_000)


@settings(max_examples=8, deadline=None)
@given(
    host=st.sampled_from([16, 24, 32]),
    vm=st.sampled_from([8, 16, 24]),
    ws=st.floats(0.3, 1.0),
    swap=st.sampled_from([0, 4, 8, 32]),
    memcg=st.sampled_from([None, {"max_mib": 6}, {"high_mib": 10, "swap_max_mib": 4}]),
    seed=st.integers(0, 1000),
)
def test_random_small_worlds_fill_whole_blocks_and_check(
    host: int, vm: int, ws: float, swap: int, memcg: dict[str, int] | None, seed: int
) -> None:
    changes: dict[str, Any] = {
        "host__memory_mib": host,
        "vms__0__memory_mib": vm,
        "vms__0__working_set_mib": max(2, round(vm * ws)),
        "swap__size_mib": swap,
        "seed": seed,
        "duration_s": 0.005,
    }
    if memcg is not None:
        changes["vms__0__memcg"] = memcg
    w = _world(**changes)
    w.check()
    resident, swapped, untouched = _blocks(w)
    assert (resident | swapped | untouched).all()
    assert w.mem.nr_free > w.mem.wmark.high
    assert not any(w.vmstat.values())
    run_checked(w, every_ns=2_500_000)

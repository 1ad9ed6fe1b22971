"""The host's discard of guest pages (sim/host/madvise.py, ``Machine.discard``): every host
state a guest page can be in, worked by hand in small worlds, then random worlds discarding
random gfns while they run.

After a discard a page is as if never touched: no spte, no pte, no frame, no slot, no shadow;
its next access is a first touch (no swap-in, not a refault). A folio whose I/O is in flight
keeps its frame and slot until the I/O ends, and goes then.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import fast
from sim.config import parse_scenario
from sim.demand import DemandWorld
from sim.engine import World
from sim.host.madvise import gfn_ranges
from sim.host.memory import (
    NO_PFN,
    PG_LOCKED,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
)
from sim.host.vmscan import ScanControl
from sim.kvm.fault import FaultKind, kvm_fault_nowait, kvm_page_fault
from sim.kvm.spte import SPTE_PRESENT
from tests.conftest import run_checked, tiny
from tests.test_invariants import scenarios

T_IO = 10_000_000  # 10 ms: every read and write of the tiny worlds has ended by then


def _pids(w: World, vm: int, gfns: list[int]) -> np.ndarray:
    return w.vms[vm].mm.pid_base + np.array(gfns, dtype=np.int64)


def _fault_in(w: World, vm: int, gfns: list[int], alias: int = 0) -> list[FaultKind]:
    """Fault pages in synchronously, as a vCPU's EPT violations would."""
    v = w.vms[vm]
    kinds = []
    for g in gfns:
        r = kvm_fault_nowait(
            v.mmu, w.host_fault, w.sc.costs, pid=v.mm.pid_base + g, gfn=g, alias=alias, write=False
        )
        assert r is not None
        kinds.append(r[0])
    return kinds


def _evict(w: World, n: int) -> ScanControl:
    """Deactivate ``n`` folios and scan the inactive tail: unmapped, their writes started."""
    sc = ScanControl(nr_to_reclaim=n)
    w.policy.shrink_active_list(n, sc, w.vmscan)  # type: ignore[attr-defined]
    sc = ScanControl(nr_to_reclaim=n)
    w.policy.shrink_inactive_list(n, sc, w.vmscan)  # type: ignore[attr-defined]
    return sc


def _swap_out(w: World, vm: int, gfns: list[int], *, free: bool) -> None:
    """Fault ``gfns`` in and evict them: unmapped swap-cache folios whose writes ended, or
    (``free``) pages only in swap."""
    _fault_in(w, vm, gfns)
    _evict(w, len(gfns))
    w.env.run(until=w.env.now + T_IO)
    if free:
        sc = ScanControl(nr_to_reclaim=len(gfns))
        w.policy.shrink_inactive_list(len(gfns), sc, w.vmscan)  # type: ignore[attr-defined]
        assert sc.nr_reclaimed == len(gfns)


def _assert_untouched(w: World, vm: int, gfns: list[int]) -> None:
    """No flag (no pte, no swap entry), no frame, no shadow, no spte, not zapped."""
    v = w.vms[vm]
    pids = _pids(w, vm, gfns)
    assert not w.mem.flags[pids].any()
    assert (w.mem.pfn[pids] == NO_PFN).all()
    assert not (v.mmu.spte.reshape(-1, v.mmu.k)[gfns] & SPTE_PRESENT).any()
    assert not v.mm.zapped.keys() & set(pids.tolist())
    for p in pids.tolist():
        assert not w.host_fault.is_refault(p)
    if w.swap.tracks_slots:
        assert (w.swap.page_slot[pids] == -1).all()


def _first_touch(w: World, vm: int, gfn: int) -> None:
    """The next access is a zero-fill fault: counted as a fault, not a major one nor a
    refault, and nothing is read."""
    vs = w.vmstat
    before = (vs["pgfault"], vs["pgmajfault"], vs["pswpin"], vs["swap_ra_hit"])
    assert _fault_in(w, vm, [gfn]) == [FaultKind.FIRST_TOUCH]
    assert (vs["pgfault"], vs["pgmajfault"], vs["pswpin"], vs["swap_ra_hit"]) == (
        before[0] + 1,
        *before[1:],
    )


def _fault_proc(w: World, vm: int, gfn: int) -> simpy.Process:
    """A guest fault that must wait, as a vCPU's (``kvm_page_fault`` in a process)."""
    v = w.vms[vm]
    gen = kvm_page_fault(
        v.mmu,
        v.mm,
        w.host_fault,
        w.sc.costs,
        pid=v.mm.pid_base + gfn,
        gfn=gfn,
        alias=0,
        write=False,
    )
    return w.env.process(gen)


def test_gfn_ranges_are_the_contiguous_runs() -> None:
    s, e = gfn_ranges(np.array([3, 4, 5, 9, 10, 20], dtype=np.int64))
    assert s.tolist() == [3, 9, 20]
    assert e.tolist() == [6, 11, 21]
    s, e = gfn_ranges(np.array([], dtype=np.int64))
    assert len(s) == len(e) == 0


def test_mapped_pages_are_freed_with_one_invalidation_per_range() -> None:
    """Seven mapped pages in two runs (given unsorted, one twice): two invalidations, two
    remote TLB flushes (each vCPU in guest mode owes two exits), seven frames free at once;
    a run of never-touched pages costs an invalidation and no flush."""
    w = World(tiny())
    v = w.vms[0]
    _fault_in(w, 0, list(range(20)))
    free, seq = w.mem.nr_free, v.mmu.mmu_invalidate_seq
    revoked = [0]
    mmu_revoked = v.mmu.revoked

    def spy() -> None:
        revoked[0] += 1
        mmu_revoked()

    v.mmu.revoked = spy  # type: ignore[method-assign]
    gone = [0, 1, 2, 3, 4, 7, 8]
    assert w.discard(0, np.array([8, 3, 1, 0, 2, 4, 7, 3])) == 7
    assert w.mem.nr_free == free + 7
    assert int(w.mem.nr_resident[0]) == 13
    pm = w.vmstat.per_mm[0]
    assert pm["mmu_notifier_invalidate_range_start"] == 2
    assert pm["mmu_notifier_invalidate_range_end"] == 2
    assert pm["remote_tlb_flush"] == 2
    assert pm["kvm_sptes_walked"] == 7
    assert v.mmu.mmu_invalidate_seq == seq + 2
    assert v.mmu.mmu_invalidate_in_progress == 0
    assert revoked[0] >= 1  # vCPU steps in flight recheck their sptes
    for cpu in v.vcpus:
        assert cpu.pending_ns == 2 * w.sc.costs.tlb_flush_exit_ns
    assert v.stats.pages_discarded == 7
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 13}
    _assert_untouched(w, 0, gone)
    w.check()
    assert w.discard(0, np.arange(30, 40)) == 0  # never touched: nothing to free or flush
    assert pm["mmu_notifier_invalidate_range_start"] == 3
    assert pm["remote_tlb_flush"] == 2
    assert v.stats.pages_discarded == 7
    assert w.vmstat.per_mm[1]["mmu_notifier_invalidate_range_start"] == 0  # the other VM's
    _first_touch(w, 0, 3)
    w.check()


@pytest.mark.parametrize("rotational", [False, True])
def test_swap_cache_folio_and_swap_entry_are_freed(rotational: bool) -> None:
    """An unmapped swap-cache folio whose write ended goes with its slot and frame; a page
    only in swap gives back its slot and its workingset shadow; neither is read back. With
    slot identities (``swap.rotational``) the slots lose their owners."""
    w = World(tiny(swap__rotational=rotational))
    _swap_out(w, 0, [0, 1, 2, 3], free=False)
    pids = _pids(w, 0, [0, 1, 2, 3])
    assert ((w.mem.flags[pids] & (PG_SWAP | PTE_PRESENT | PG_WRITEBACK)) == PG_SWAP).all()
    used = w.swap.nr_slots - w.swap.nr_free_slots
    assert w.discard(0, np.array([0, 1])) == 2  # frames freed now
    assert w.swap.nr_slots - w.swap.nr_free_slots == used - 2
    _assert_untouched(w, 0, [0, 1])
    w.check()
    sc = ScanControl(nr_to_reclaim=2)
    w.policy.shrink_inactive_list(2, sc, w.vmscan)  # type: ignore[attr-defined]
    assert sc.nr_reclaimed == 2  # gfns 2 and 3 are only in swap now, with their shadows
    assert w.mem.nr_swapped[0] == 2
    assert (w.mem.pfn[pids[2:]] != NO_PFN).all()
    free = w.mem.nr_free
    assert w.discard(0, np.array([2, 3])) == 0  # nothing in memory to free
    assert w.mem.nr_free == free
    assert w.mem.nr_swapped[0] == 0
    assert w.swap.nr_free_slots == w.swap.nr_slots
    assert w.vms[0].stats.pages_discarded == 4
    _assert_untouched(w, 0, [0, 1, 2, 3])
    w.check()
    for g in (0, 2):
        _first_touch(w, 0, g)
    w.check()


def _fast(on: bool, *names: str) -> AbstractContextManager[None]:
    """The fast paths as they are, or ``names`` (every one if none named) off."""
    if on:
        return nullcontext()
    return fast.disabled(*names) if names else fast.disabled_all()


@pytest.mark.parametrize("fast_paths", [True, False])
def test_a_folio_under_write_out_goes_when_its_write_ends(fast_paths: bool) -> None:
    """Discarded while its write-out is in flight, the folio keeps its frame and slot (and
    stays under write-back) until the write ends; a guest access meanwhile waits for that and
    then takes a first-touch fault."""
    with _fast(fast_paths):
        w = World(tiny())
    _fault_in(w, 0, [0, 1, 2])
    _evict(w, 3)
    pids = _pids(w, 0, [0, 1, 2])
    assert ((w.mem.flags[pids] & PG_WRITEBACK) != 0).all()
    free, wb = w.mem.nr_free, w.mem.nr_writeback
    used = w.swap.nr_slots - w.swap.nr_free_slots
    assert w.discard(0, np.array([0, 1])) == 0
    assert w.mem.nr_free == free
    assert w.mem.nr_writeback == wb
    assert set(w.vms[0].mm.zapped) == set(pids[:2].tolist())
    assert not w.host_fault.is_refault(int(pids[0]))
    assert w.host_fault.is_refault(int(pids[2]))  # not discarded: still an evicted page
    assert w.vms[0].stats.pages_discarded == 2
    w.check()
    proc = _fault_proc(w, 0, 0)
    w.env.run(until=w.env.now + 1)
    assert proc.is_alive  # waits for the write
    assert w.mem.nr_free == free
    w.env.run(until=w.env.now + T_IO)
    kind, _, _ = proc.value
    assert kind == FaultKind.FIRST_TOUCH
    assert not w.vms[0].mm.zapped
    assert w.mem.nr_writeback == 0
    assert w.swap.nr_slots - w.swap.nr_free_slots == used - 2
    assert w.vmstat["pswpin"] == 0
    assert w.mem.nr_free == free + 1  # gfn 1's frame is free, gfn 0 has a fresh one
    _assert_untouched(w, 0, [1])
    assert w.mem.flags[pids[0]] & PTE_PRESENT
    assert not w.mem.flags[pids[0]] & PG_SWAP
    w.check()


@pytest.mark.parametrize("plain", [True, False])
def test_a_folio_being_read_in_goes_when_its_read_ends(plain: bool) -> None:
    """Discarded while its fault's read is in flight (the folio locked): the read ends, the
    fault finds the pte gone, counts its major fault, frees the folio and its slot, and its
    retry zero-fills a new page; a second fault waiting meanwhile does the same."""
    with _fast(plain, "plain_swapin"):
        w = World(tiny())
        _swap_out(w, 0, [0, 1], free=True)
        pids = _pids(w, 0, [0, 1])
        first = _fault_proc(w, 0, 0)
        w.env.run(until=w.env.now + 1)
        assert w.mem.flags[pids[0]] & PG_LOCKED
        assert w.vmstat["pswpin"] == 1
        free = w.mem.nr_free
        assert w.discard(0, np.array([0, 1])) == 0  # gfn 0 waits for its read
        assert set(w.vms[0].mm.zapped) == {int(pids[0])}
        assert w.mem.nr_swapped[0] == 0  # gfn 1 gave its slot back now
        w.check()
        second = _fault_proc(w, 0, 0)
        w.env.run(until=w.env.now + T_IO)
    kind, _, retries = first.value
    assert kind == FaultKind.MAJOR  # the access began as a major fault
    assert retries >= 1
    assert second.value[0] in (FaultKind.FIRST_TOUCH, FaultKind.MINOR)
    assert w.vmstat["pgmajfault"] == 1
    assert w.vmstat["pswpin"] == 1
    assert not w.vms[0].mm.zapped
    assert w.swap.nr_free_slots == w.swap.nr_slots
    assert w.mem.flags[pids[0]] & PTE_PRESENT
    assert not w.mem.flags[pids[0]] & PG_SWAP
    assert w.mem.nr_free == free  # the read-in frame freed, a fresh one taken
    _assert_untouched(w, 0, [1])
    w.check()


def test_a_fault_waiting_for_a_frame_finds_the_swap_entry_gone() -> None:
    """A major fault that must reclaim for its frame before it can read: the page discarded
    meanwhile (only in swap: its slot goes at once), the fault zero-fills the frame it gets
    (the kernel's retry does), reads nothing, and KVM retries for the invalidation."""
    w = World(tiny())
    _swap_out(w, 0, [0], free=True)
    v = w.vms[1]
    g = 0
    while kvm_fault_nowait(
        v.mmu, w.host_fault, w.sc.costs, pid=v.mm.pid_base + g, gfn=g, alias=0, write=False
    ):  # the other VM fills memory down to the min watermark
        g += 1
    pid = int(_pids(w, 0, [0])[0])
    fault = _fault_proc(w, 0, 0)
    w.env.run(until=w.env.now + 1)
    assert fault.is_alive
    assert w.mem.flags[pid] == PG_SWAP  # no frame yet: reclaiming for one
    assert w.host_fault.fault_in_progress(pid)
    assert w.discard(0, np.array([0])) == 0
    assert w.swap.nr_free_slots == w.swap.nr_slots
    assert not w.vms[0].mm.zapped
    w.env.run(until=w.env.now + T_IO)
    kind, _, retries = fault.value
    assert kind == FaultKind.FIRST_TOUCH
    assert retries == 1
    assert w.vmstat["pswpin"] == w.vmstat["pgmajfault"] == 0
    assert w.mem.flags[pid] & PTE_PRESENT
    assert not w.mem.flags[pid] & PG_SWAP
    w.check()


def test_readahead_folios_locked_or_read() -> None:
    """A readahead folio discarded while its read is in flight goes when the read ends; one
    whose read has ended (PG_readahead, unmapped, in the swap cache) goes at once. Neither
    counts a readahead hit when the guest touches the page again."""
    w = World(tiny(swap__page_cluster=3))
    gfns = list(range(8))
    _swap_out(w, 0, gfns, free=True)
    mm = w.vms[0].mm
    base = mm.hva_base >> 12
    mm.swap_ra.addr, mm.swap_ra.hits = base - 1, 6  # a sequential fault: 8-page window
    pids = _pids(w, 0, gfns)
    fault = _fault_proc(w, 0, 0)
    w.env.run(until=w.env.now + 1)
    assert w.vmstat["swap_ra"] == 7
    assert (w.mem.readahead[pids[1:]]).all()
    assert ((w.mem.flags[pids] & PG_LOCKED) != 0).all()
    assert w.discard(0, np.array([2, 3])) == 0
    assert set(mm.zapped) == set(pids[2:4].tolist())
    w.check()
    w.env.run(until=w.env.now + T_IO)
    assert fault.value[0] == FaultKind.MAJOR
    assert not mm.zapped
    _assert_untouched(w, 0, [2, 3])
    assert not w.mem.readahead[pids[2:4]].any()
    assert w.mem.readahead[pids[4]]
    assert w.discard(0, np.array([4])) == 1
    _assert_untouched(w, 0, [4])
    assert not w.mem.readahead[pids[4]]
    w.check()
    for g in (2, 4):
        _first_touch(w, 0, g)
    hits = w.vmstat["swap_ra_hit"]
    assert _fault_in(w, 0, [5]) == [FaultKind.MINOR]  # a readahead folio kept: a hit
    assert w.vmstat["swap_ra_hit"] == hits + 1
    w.check()


@pytest.mark.parametrize("swap", [{"device": "zram"}, {"zswap": {"enabled": True}}])
def test_compressed_copies_are_freed_with_their_slots(swap: dict[str, Any]) -> None:
    """zram's pool entries and zswap's go with the slots (``zram_slot_free_notify``,
    ``zswap_invalidate``), and the pool gives back the frames it no longer needs."""
    w = World(tiny(swap={**tiny().swap.model_dump(), **swap}))
    gfns = list(range(64))
    _fault_in(w, 0, gfns)
    _evict(w, len(gfns))  # stored compressed before pageout returned: freed at once
    pool = w.swap.zpool
    assert pool is not None
    pids = _pids(w, 0, gfns)
    assert pool.stored[pids].all()
    frames = w.mem.nr_pool
    assert frames > 0
    free = w.mem.nr_free
    n = w.discard(0, np.array(gfns))
    assert pool.nr_stored == 0
    assert w.mem.nr_pool == 0
    assert n == frames == w.mem.nr_free - free  # the pool's frames are what was freed
    assert w.swap.nr_free_slots == w.swap.nr_slots
    _assert_untouched(w, 0, gfns)
    w.check()
    _first_touch(w, 0, 7)
    assert w.vmstat["zswpin"] == 0


def test_memcg_charges_drop() -> None:
    """A VM in a memcg: ``memory.current`` drops by the frames its discarded pages owned and
    ``memory.swap.current`` by their slots; what a folio with I/O in flight holds stays
    charged until it goes."""
    raw = copy.deepcopy(tiny().model_dump(mode="json", exclude_unset=True))
    raw["vms"][0]["memcg"] = {"max_mib": 6}
    w = World(parse_scenario(raw))
    w.start()
    w.env.run(until=w.horizon_ns // 2)
    memcg = w.memcg
    assert memcg is not None
    overhead = w.memcg_limits.overhead[0]  # type: ignore[union-attr]
    assert memcg.usage(0) > overhead
    assert memcg.swap_usage[0] > 0
    w.discard(0, np.arange(w.vms[0].mm.nr_pages))
    mm = w.vms[0].mm
    zapped = np.array(sorted(mm.zapped), dtype=np.int64)
    assert memcg.usage(0) == overhead + len(zapped)
    assert memcg.swap_usage[0] == int(np.count_nonzero(w.mem.flags[zapped] & PG_SWAP))
    w.check()
    w.run()  # the vCPUs fault pages back in; what was in flight has gone
    w.check()


def test_shadow_paging_zaps_every_alias() -> None:
    w = World(tiny(kvm={"mmu": "shadow", "shadow_sptes_per_gfn": 2}))
    v = w.vms[0]
    _fault_in(w, 0, [0, 1, 2], alias=0)
    _fault_in(w, 0, [0, 1, 2], alias=1)
    assert v.mmu.rmap_count[:3].tolist() == [2, 2, 2]
    assert w.discard(0, np.array([0, 1, 2])) == 3
    assert not v.mmu.rmap_count[:3].any()
    assert w.vmstat.per_mm[0]["kvm_sptes_walked"] == 6  # the rmap chains
    assert w.vmstat.per_mm[0]["remote_tlb_flush"] == 1
    _assert_untouched(w, 0, [0, 1, 2])
    w.check()


def test_the_eviction_log_stays_consistent(tmp_path: Path) -> None:
    """An eviction whose page is discarded never refaults: its row has no next access, and
    the page's next fault (a first touch) links to nothing; a fault that had begun (its read
    in flight) is still the eviction's refault."""
    out = tmp_path / "run"
    out.mkdir()
    w = World(tiny(), out)
    rec = w.recorder
    assert rec is not None
    _swap_out(w, 0, [0, 1, 2, 3], free=True)
    pids = _pids(w, 0, [0, 1, 2, 3])
    reading = _fault_proc(w, 0, 2)
    w.env.run(until=w.env.now + 1)
    assert w.discard(0, np.array([0, 1, 2])) == 0
    w.env.run(until=w.env.now + T_IO)
    assert reading.value[0] == FaultKind.MAJOR
    _first_touch(w, 0, 0)
    t = int(w.env.now)
    for g in (0, 2):
        rec.fault(t, 0, 0, g, "first_touch" if g == 0 else "major", 1, int(pids[g]))
    back = _fault_proc(w, 0, 3)  # not discarded: its refault links as ever
    w.env.run(until=back)
    rec.fault(int(w.env.now), 0, 0, 3, "major", 1, int(pids[3]))
    rec.close()
    ev = pd.read_parquet(out / "evictions.parquet").sort_values("gfn")
    assert ev.gfn.tolist() == [0, 1, 2, 3]
    assert ev.refault.tolist() == [False, False, True, True]
    assert ev.next_access_ns.isna().tolist() == [True, True, False, False]


def test_a_dead_mm_has_nothing_to_discard_and_zapped_folios_still_go() -> None:
    w = World(tiny())
    _fault_in(w, 0, [0, 1])
    _evict(w, 2)
    w.discard(0, np.array([0]))
    assert w.vms[0].mm.zapped
    w.oom.kill(w.vms[0].mm)
    assert w.discard(0, np.array([0, 1])) == 0
    w.env.run(until=w.env.now + T_IO)
    assert not w.vms[0].mm.zapped
    assert w.mem.nr_resident[0] == 0
    w.check()


@pytest.mark.parametrize("policy", ["two_list", "mglru", "clock", "lru", "opt"])
def test_demand_mode_discards_between_runs(policy: str) -> None:
    """In demand mode nothing is ever in flight: a discard frees everything at once, and the
    policy (oracles too) keeps its lists consistent."""
    w = DemandWorld(tiny(duration_s=0.003, reclaim={"policy": policy, "trigger": "demand"}))
    w.run()
    mm = w.vms[0].mm
    held = int(w.mem.nr_resident[0])
    assert held > 0
    assert w.mem.nr_swapped[0] > 0
    assert w.discard(0, np.arange(mm.nr_pages)) == held
    assert w.mem.nr_resident[0] == w.mem.nr_swapped[0] == 0
    assert not mm.zapped
    w.check()


def test_gfns_outside_the_vm_are_refused() -> None:
    w = World(tiny())
    with pytest.raises(ValueError, match="outside"):
        w.discard(0, np.array([w.vms[0].mm.nr_pages]))


@st.composite
def discarding_worlds(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """The invariant tests' random worlds, some with memcgs, and a seed for the discards."""
    raw = draw(scenarios())
    if draw(st.booleans()):  # memcgs: for two_list and MGLRU
        raw["reclaim"]["policy"] = draw(st.sampled_from(["two_list", "mglru"]))
        for p in raw["vms"]:
            if draw(st.booleans()):
                p["memcg"] = {
                    "max_mib": draw(st.integers(1, 8)),
                    "swap_max_mib": draw(st.sampled_from([None, 0, 2])),
                }
    return raw, draw(st.integers(0, 2**32 - 1))


def _discarder(w: World, rng: np.random.Generator, log: list[int]) -> Any:
    """Discard random gfns (runs, scattered pages, pages with I/O in flight) of random VMs
    every 0-2 ms, checking each discarded page: untouched, or zapped with its I/O in flight."""
    while True:
        yield w.env.timeout(int(rng.integers(0, 2_000_000)))
        vm = int(rng.integers(len(w.vms)))
        n = w.vms[vm].mm.nr_pages
        mode = rng.random()
        base = w.vms[vm].mm.pid_base
        busy = np.flatnonzero(w.mem.flags[base : base + n] & (PG_LOCKED | PG_WRITEBACK))
        if mode < 0.4:
            start = int(rng.integers(n))
            gfns = np.arange(start, min(n, start + int(rng.integers(1, 64))))
        elif mode < 0.7 or not len(busy):
            gfns = rng.integers(0, n, int(rng.integers(1, 32)))
        else:  # pages with I/O in flight, and some others
            gfns = np.concatenate((busy, rng.integers(0, n, 4)))
        free = w.mem.nr_free
        got = w.discard(vm, gfns)
        assert got == w.mem.nr_free - free >= 0
        log.append(len(gfns))
        mm = w.vms[vm].mm
        if mm.dead:
            continue
        pids = mm.pid_base + np.unique(gfns)
        zapped = np.array([p in mm.zapped for p in pids.tolist()], dtype=np.bool_)
        gone = pids[~zapped]
        assert not w.mem.flags[gone].any()
        assert (w.mem.pfn[gone] == NO_PFN).all()
        assert ((w.mem.flags[pids[zapped]] & (PG_LOCKED | PG_WRITEBACK)) != 0).all()


@settings(max_examples=15)
@given(discarding_worlds())
def test_invariants_hold_while_random_gfns_are_discarded(case: tuple[dict[str, Any], int]) -> None:
    raw, seed = case
    w = World(parse_scenario(raw))
    log: list[int] = []
    w.start()
    w.env.process(_discarder(w, np.random.default_rng(seed), log))
    assert run_checked(w) >= 10
    s = w.summary(0.0)
    assert log
    assert s["host"]["swap"]["used_end"] <= s["host"]["swap"]["slots"]

"""MMU notifier semantics: aging reaches KVM's sptes, invalidation zaps them."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine import World
from sim.host.memory import PAGE_SIZE, PG_SWAP, PG_WRITEBACK, PTE_PRESENT
from sim.host.mmu_notifier import MmuNotifierOps, MmuNotifierSubscriptions
from sim.host.vmscan import ScanControl
from sim.host.vmstat import VmEvents
from sim.kvm.fault import FaultKind, kvm_fault_nowait
from sim.kvm.spte import SPTE_ACCESS_TRACKED, SPTE_ACCESSED, SPTE_PRESENT
from tests.conftest import tiny

GFNS = list(range(10))


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


def _touch(w: World, vm: int, gfn: int, alias: int = 0) -> None:
    """A guest access: hardware sets the spte accessed bit (the host pte is untouched)."""
    mmu = w.vms[vm].mmu
    mmu.spte[mmu.spte_index(gfn, alias)] |= np.uint8(SPTE_ACCESSED)


def _scan(w: World, n: int) -> ScanControl:
    """One trip over the inactive tail (shrink_inactive_list)."""
    sc = ScanControl(nr_to_reclaim=n)
    w.policy.shrink_inactive_list(n, sc, w.vmscan)  # type: ignore[attr-defined]
    return sc


def _deactivate(w: World, n: int) -> ScanControl:
    """Move folios from the active tail to the inactive list (shrink_active_list)."""
    sc = ScanControl(nr_to_reclaim=n)
    w.policy.shrink_active_list(n, sc, w.vmscan)  # type: ignore[attr-defined]
    return sc


def _resident(w: World, vm: int, gfn: int) -> bool:
    return bool(w.mem.flags[w.vms[vm].mm.pid_base + gfn] & PTE_PRESENT)


def test_kvm_faults_start_pages_on_the_active_list() -> None:
    """GUP's FOLL_TOUCH plus KVM's release mark the folio accessed twice: it is activated."""
    w = World(tiny())
    _fault_in(w, 0, GFNS)
    assert w.policy.lru_sizes() == {"inactive": 0, "active": len(GFNS)}


@pytest.mark.parametrize("notifiers", [True, False])
def test_recently_touched_page_survives_a_scan_only_with_notifiers(notifiers: bool) -> None:
    w = World(tiny(kvm={"mmu_notifiers": notifiers}))
    _fault_in(w, 0, GFNS)
    _deactivate(w, len(GFNS))  # ages every page (clears host and spte young bits)
    _touch(w, 0, 3)  # the guest uses gfn 3 again: only its spte knows
    sc = _scan(w, len(GFNS))
    assert _resident(w, 0, 3) is notifiers
    assert not any(_resident(w, 0, g) for g in GFNS if g != 3)
    # every unmapped page is dirty (first touch): its write starts, nothing is freed yet
    assert sc.nr_pageout == len(GFNS) - (1 if notifiers else 0)
    assert sc.nr_reclaimed == 0
    calls = w.vmstat["mmu_notifier_clear_flush_young"]
    assert calls == (2 * len(GFNS) if notifiers else 0)


def test_referenced_flag_survives_activation_so_one_sighting_reactivates() -> None:
    """folio_check_references sets PG_referenced before ACTIVATE; deactivation keeps it."""
    w = World(tiny())
    _fault_in(w, 0, [1])
    _deactivate(w, 1)
    _touch(w, 0, 1)
    _scan(w, 1)  # first sighting: KEEP, PG_referenced
    _touch(w, 0, 1)
    assert _scan(w, 1).nr_activate == 1  # second: ACTIVATE
    _deactivate(w, 1)
    _touch(w, 0, 1)
    assert _scan(w, 1).nr_activate == 1  # PG_referenced kept: one sighting activates again


def test_invalidated_page_has_no_spte_and_costs_a_tlb_flush() -> None:
    w = World(tiny())
    v = w.vms[0]
    _fault_in(w, 0, GFNS)
    seq0 = v.mmu.mmu_invalidate_seq
    _deactivate(w, len(GFNS))
    sc = _scan(w, len(GFNS))  # nothing touched since: all unmapped, their writes started
    assert sc.nr_pageout == len(GFNS)
    assert sc.nr_reclaimed == 0  # nothing freed until the writes end
    assert not (v.mmu.spte[GFNS] & SPTE_PRESENT).any()
    assert not v.mmu.rmap_count[GFNS].any()
    assert v.mmu.mmu_invalidate_seq == seq0 + len(GFNS)
    assert v.mmu.mmu_invalidate_in_progress == 0
    assert w.vmstat.per_mm[0]["remote_tlb_flush"] == len(GFNS) == sc.nr_tlb_flushes
    for cpu in v.vcpus:  # every running vCPU took one forced exit per flush
        assert cpu.pending_ns == len(GFNS) * w.sc.costs.tlb_flush_exit_ns
    pids = v.mm.pid_base + np.array(GFNS)
    f = w.mem.flags[pids]
    assert ((f & PG_WRITEBACK) != 0).all()  # first-touch pages are dirty: written out
    assert ((f & PG_SWAP) != 0).all()
    free0 = w.mem.nr_free
    w.env.run(until=10_000_000)  # the writes end: the folios are rotated to the inactive tail
    assert w.mem.nr_free == free0
    assert w.vmstat["pgrotated"] == len(GFNS)
    w.check()
    calls = w.vmstat.notifier_calls()
    sc = _scan(w, len(GFNS))  # the next scan frees them: unmapped, clean, in swap
    assert sc.nr_reclaimed == len(GFNS)
    assert w.mem.nr_free == free0 + len(GFNS)
    assert w.vmstat.notifier_calls() == calls  # an unmapped folio has no mapping to walk
    w.check()


@pytest.mark.parametrize("clean", [False, True])
def test_the_eviction_shadow_takes_the_pfn_place_until_the_swap_in(clean: bool) -> None:
    """The workingset shadow of an evicted page is what its swap-in hands the policy. It is
    taken when the folio is freed (``__remove_mapping``) and waits in the page's pfn entry
    (where a pfn no longer is); a dirty folio is freed by the scan after its write ends, a
    clean one (a valid swap copy) at once."""
    w = World(tiny())
    w.policy.core = None  # the general path: it spies on workingset_eviction
    v = w.vms[0]
    pid = v.mm.pid_base + 5
    _fault_in(w, 0, [5])
    if clean:  # swapped out and read back once: a clean swap-cache copy
        _deactivate(w, 1)
        _scan(w, 1)
        w.env.run(until=10_000_000)
        _scan(w, 1)
        proc = w.env.process(w.host_fault.handle_mm_fault(pid, write=False))
        w.env.run(until=proc)
        v.mmu.map_spte(5, 0, write=False)
        w.host_fault.kvm_release_page(pid, dirty=False)
    pfn = int(w.mem.pfn[pid])
    shadows: list[int] = []
    eviction = w.policy.workingset_eviction

    def spy_eviction(pfns: np.ndarray) -> np.ndarray:
        out = eviction(pfns)
        shadows.extend(out.tolist())
        return out

    w.policy.workingset_eviction = spy_eviction  # type: ignore[method-assign]
    _deactivate(w, 1)
    _scan(w, 1)
    if not clean:  # under write-out: still its frame, and the frame still knows it
        assert not shadows  # the shadow is taken when the folio is freed
        assert w.mem.has_frame(np.array([pid])).all()
        assert w.mem.pfn[pid] == pfn
        assert w.mem.frame_pid[pfn] == pid
        w.env.run(until=20_000_000)
        _scan(w, 1)  # the write ended; the next scan frees it
    assert len(shadows) == 1
    assert not w.mem.has_frame(np.array([pid])).any()
    assert w.mem.pfn[pid] == shadows[0]
    w.check()
    got: list[int | None] = []
    add = w.policy.folio_add_lru

    def spy_add(f: int, shadow: int | None) -> None:
        got.append(shadow)
        add(f, shadow)

    w.policy.folio_add_lru = spy_add  # type: ignore[method-assign]
    proc = w.env.process(w.host_fault.handle_mm_fault(pid, write=False))
    w.env.run(until=proc)
    assert got == [shadows[0]]
    assert w.mem.frame_pid[w.mem.pfn[pid]] == pid  # a pfn again
    w.check()


@pytest.mark.parametrize("dirty_on_map", [False, True])
def test_swapped_in_page_is_rewritten_only_if_dirty(dirty_on_map: bool) -> None:
    """A read swap-in keeps the swap copy; the page is dropped clean on the next eviction,
    unless KVM marked it dirty when it mapped it writable (kvm.dirty_on_map)."""
    w = World(tiny(kvm={"dirty_on_map": dirty_on_map}))
    v = w.vms[0]
    _fault_in(w, 0, [5])
    _deactivate(w, 1)
    _scan(w, 1)
    w.env.run(until=10_000_000)  # written out
    _scan(w, 1)  # frame freed
    pid = v.mm.pid_base + 5
    assert not w.mem.has_frame(np.array([pid])).any()  # pfn holds the shadow now
    proc = w.env.process(w.host_fault.handle_mm_fault(pid, write=False))  # read fault: swap-in
    w.env.run(until=proc)
    v.mmu.map_spte(5, 0, write=False)
    w.host_fault.kvm_release_page(pid, dirty=v.mmu.dirty_on_map)
    assert w.mem.flags[pid] & PG_SWAP  # a read swap-in keeps the swap copy
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 1}
    _deactivate(w, 1)
    pswpout, free = w.vmstat["pswpout"], w.mem.nr_free
    _scan(w, 1)
    assert w.vmstat["pswpout"] == pswpout + dirty_on_map  # clean: dropped without a write
    assert w.mem.nr_free == free + (not dirty_on_map)  # and its frame is free at once
    w.env.run(until=20_000_000)
    w.check()


def test_flush_on_age_flushes_for_young_pages_only() -> None:
    w = World(tiny(kvm={"flush_on_age": True}))
    _fault_in(w, 0, GFNS)
    sc = _deactivate(w, len(GFNS))  # every spte young after fault-in
    assert sc.nr_tlb_flushes == len(GFNS)
    _touch(w, 0, 1)
    sc = _scan(w, len(GFNS))
    # gfn 1 young (one aging flush); the other nine evicted (one invalidation flush each)
    assert sc.nr_tlb_flushes == 1 + 9


def test_ept_ad_off_ages_by_access_tracking() -> None:
    w = World(tiny(kvm={"ept_ad_bits": False}))
    v = w.vms[0]
    _fault_in(w, 0, [2])
    _deactivate(w, 1)
    assert v.mmu.spte[2] & SPTE_ACCESS_TRACKED  # parked, still present
    assert v.mmu.spte[2] & SPTE_PRESENT
    r = kvm_fault_nowait(
        v.mmu, w.host_fault, w.sc.costs, pid=v.mm.pid_base + 2, gfn=2, alias=0, write=False
    )
    assert r == (FaultKind.ACCESS_TRACKING, w.sc.costs.fast_fault_ns)
    assert not v.mmu.spte[2] & SPTE_ACCESS_TRACKED
    assert v.mmu.pf_fast == 1
    _scan(w, 1)  # the fast fault made it young again: kept
    assert _resident(w, 0, 2)


@pytest.mark.parametrize("ept", [True, False])
def test_access_tracking_faults_appear_only_without_ept_ad(ept: bool) -> None:
    w = World(tiny(duration_s=0.2, kvm={"ept_ad_bits": ept}))
    w.run()
    at = sum(v.stats.faults["access_tracking"] for v in w.vms)
    assert (at > 0) is (not ept)


def test_shadow_paging_walks_every_spte_in_the_rmap() -> None:
    w = World(tiny(kvm={"mmu": "shadow", "shadow_sptes_per_gfn": 3}))
    v = w.vms[0]
    assert _fault_in(w, 0, [4], alias=0) == [FaultKind.FIRST_TOUCH]
    assert _fault_in(w, 0, [4], alias=2) == [FaultKind.MINOR]  # host page already mapped
    assert v.mmu.rmap_count[4] == 2
    sc = _deactivate(w, 1)
    assert sc.nr_sptes_walked == 2  # both rmap entries aged
    _scan(w, 1)
    assert not (v.mmu.spte[12:15] & SPTE_PRESENT).any()  # all aliases zapped
    assert v.mmu.rmap_count[4] == 0
    w.check()


class _Recording:
    def __init__(self, young: bool) -> None:
        self.calls: list[str] = []
        self.young = young

    def age(self, start: np.ndarray, end: np.ndarray, work: object) -> np.ndarray:
        self.calls.append("age")
        return np.full(len(start), self.young)

    def start(self, start: np.ndarray, end: np.ndarray, work: object) -> None:
        self.calls.append("start")

    def end(self, start: np.ndarray, end: np.ndarray, work: object) -> None:
        self.calls.append("end")


def test_chain_ors_subscribers_without_short_circuit_and_skips_missing_ops() -> None:
    subs = MmuNotifierSubscriptions()
    a, b, c = _Recording(True), _Recording(False), _Recording(True)
    subs.register(MmuNotifierOps(clear_flush_young=a.age))
    subs.register(
        MmuNotifierOps(
            clear_flush_young=b.age, invalidate_range_start=b.start, invalidate_range_end=b.end
        )
    )
    subs.register(MmuNotifierOps())  # a subscriber with no aging ops is skipped
    subs.vmstat, subs.mm = VmEvents(1), 0
    sc = ScanControl(nr_to_reclaim=1)
    hva = np.array([0x1000, 0x2000], dtype=np.int64)
    young = subs.clear_flush_young(hva, hva + PAGE_SIZE, sc)
    assert young.tolist() == [True, True]
    assert a.calls == ["age"]
    assert b.calls == ["age"]  # called although a was young
    assert subs.vmstat.per_mm[0]["mmu_notifier_clear_flush_young"] == 4 == sc.nr_notifier_calls
    subs.invalidate_range_start(hva, hva + PAGE_SIZE, sc)
    subs.invalidate_range_end(hva, hva + PAGE_SIZE, sc)
    assert b.calls == ["age", "start", "end"]
    assert c.calls == []


def test_kvm_clear_young_never_flushes_and_test_young_has_no_side_effects() -> None:
    w = World(tiny(kvm={"flush_on_age": True}))
    v = w.vms[0]
    _fault_in(w, 0, [0, 1])
    ops = v.mm.notifiers.subscribers[0]
    hva = v.mm.hva(v.mm.pid_base + np.array([0, 1]))
    sc = ScanControl(nr_to_reclaim=1)
    assert ops.test_young(hva, hva + PAGE_SIZE, sc).tolist() == [True, True]
    assert ops.test_young(hva, hva + PAGE_SIZE, sc).tolist() == [True, True]  # nothing cleared
    assert ops.clear_young(hva, hva + PAGE_SIZE, sc).tolist() == [True, True]
    assert ops.clear_young(hva, hva + PAGE_SIZE, sc).tolist() == [False, False]
    assert sc.nr_tlb_flushes == 0  # clear_young never flushes, even before 6.13
    _touch(w, 0, 1)
    assert ops.clear_flush_young(hva, hva + PAGE_SIZE, sc).tolist() == [False, True]
    assert sc.nr_tlb_flushes == 1  # flush_on_age: one flush for the young range


def test_aging_ops_are_absent_without_notifiers() -> None:
    w = World(tiny(kvm={"mmu_notifiers": False}))
    ops = w.vms[0].mm.notifiers.subscribers[0]
    assert ops.clear_flush_young is None
    assert ops.clear_young is None
    assert ops.test_young is None
    assert ops.invalidate_range_start is not None  # correctness: zaps stay

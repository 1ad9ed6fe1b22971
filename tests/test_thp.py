"""THP-backed guest RAM (host.thp, sim/host/huge_memory.py): hand-worked numbers on tiny worlds.

Each world has an 8 MiB host (2,048 frames) and two 8 MiB guests (four 2 MiB blocks each);
the steps are driven by hand (faults through KVM's fault path, reclaim through
``shrink_folio_list``), and every invariant is checked after each one.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.core import general_path_reason
from sim.engine import World, build_world
from sim.host.huge_memory import THP_LARGE, THP_PMD
from sim.host.memory import PG_DIRTY, PG_RESIDENT, PG_SWAP, PG_WRITEBACK, PTE_PRESENT
from sim.host.vmscan import Outcome, ScanControl
from sim.kvm import spte as sp
from sim.kvm.fault import kvm_fault_nowait, kvm_page_fault
from tests.conftest import TINY, tiny


def _world(**changes: Any) -> World:
    changes.setdefault("host__thp", {})
    w = build_world(tiny(**changes), None)
    assert isinstance(w, World)
    return w


def _touch(w: World, vm: int, gfn: int, write: bool = False) -> str:
    """A guest access that faults, resolved through KVM's fault path (waiting if it must)."""
    v = w.vms[vm]
    pid = v.mm.pid_base + gfn
    quick = kvm_fault_nowait(v.mmu, w.host_fault, w.costs, pid=pid, gfn=gfn, alias=0, write=write)
    if quick is not None:
        return str(quick[0])
    proc = w.env.process(
        kvm_page_fault(v.mmu, v.mm, w.host_fault, w.costs, pid=pid, gfn=gfn, alias=0, write=write)
    )
    w.env.run(proc)
    return str(proc.value[0])


def _isolate(w: World, pfn: int) -> None:
    """Take the folio off its LRU list, as isolation does before ``shrink_folio_list``."""
    w.policy.folio_remove(np.array([pfn], dtype=np.int64))


def _shrink(w: World, pfn: int) -> tuple[Outcome, ScanControl]:
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    _isolate(w, pfn)
    out = w.vmscan.shrink_folio_list(np.array([pfn], dtype=np.int64), sc)
    outcome = Outcome(int(out[0]))
    if outcome != Outcome.FREED:
        w.policy.folio_putback(np.array([pfn], dtype=np.int64), active=False)
    return outcome, sc


def _stat(w: World, name: str) -> int:
    return int(w.vmstat.get(name, 0))


def test_first_touch_maps_a_thp_and_a_2mib_spte() -> None:
    w = _world()
    assert _touch(w, 0, 5, write=True) == "first_touch"
    blk = w.mem.thp
    assert blk is not None
    assert blk[0] == THP_LARGE | THP_PMD
    assert w.mem.nr_free == 2048 - 512
    assert (w.mem.flags[:512] & PTE_PRESENT).all()
    assert sp.is_present(w.vms[0].mmu.spte[:512]).all()  # the huge spte: all 512 gfns
    assert not sp.is_present(w.vms[0].mmu.spte[512:]).any()
    assert _stat(w, "thp_fault_alloc") == 1
    assert _stat(w, "pgfault") == 1
    # one LRU entry, the head's frame, and the list's size in pages: update_lru_size adds
    # folio_nr_pages = 512 (KVM's fault activated it: the active list)
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 512}
    assert len(w.policy.active) == 1
    # a later access anywhere in the block is a hit: nothing more to fault
    assert sp.is_hit(w.vms[0].mmu.spte[511])
    w.check()


def test_first_touch_falls_back_to_4k_below_the_low_watermark_plus_512() -> None:
    w = _world()
    low = w.mem.wmark.low
    # each THP takes 512 of the 2,048 frames; one more THP is allowed while
    # nr_free - 512 >= low afterwards
    blocks = 0
    gfn = 0
    while w.mem.nr_free - 512 >= low:
        _touch(w, 0 if gfn < 2048 else 1, gfn % 2048)
        gfn += 512
        blocks += 1
    assert _stat(w, "thp_fault_alloc") == blocks
    free = w.mem.nr_free
    _touch(w, 1, 1024 + 7)  # an untouched block, too little free memory for 512 frames
    assert _stat(w, "thp_fault_fallback") == 1
    assert w.mem.nr_free == free - 1  # one 4 KiB page
    assert w.mem.thp is not None
    assert w.mem.thp[(w.vms[1].mm.pid_base + 1024) >> 9] == 0
    # the block is a page table now: its next first touch is 4 KiB too, with no THP attempt
    _touch(w, 1, 1024 + 8)
    assert _stat(w, "thp_fault_fallback") == 1
    w.check()


def test_one_hot_subpage_keeps_the_whole_thp_young() -> None:
    w = _world()
    _touch(w, 0, 0)
    pfn = int(w.mem.pfn[0])
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    assert w.rmap.folio_referenced(np.array([pfn]), sc)[0]  # young from the fault
    assert sc.nr_sptes_walked == 512  # KVM aged every spte of the 2 MiB range in one call
    assert not w.rmap.folio_referenced(np.array([pfn]), sc)[0]  # cleared everywhere
    spte = w.vms[0].mmu.spte
    spte[300] = sp.touch(spte[300], False)  # the guest reads subpage 300 only
    assert w.rmap.folio_referenced(np.array([pfn]), sc)[0]
    assert not sp.is_young(spte[:512], True).any()
    w.check()


def test_a_cold_thp_is_swapped_out_whole_and_comes_back_4k_from_a_disk() -> None:
    w = _world()
    _touch(w, 0, 0, write=True)
    head = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([head]), ScanControl(nr_to_reclaim=32))  # now cold
    out, sc = _shrink(w, head)
    assert out == Outcome.KEEP  # its one 2 MiB write is in flight
    assert (_stat(w, "thp_swpout"), _stat(w, "pswpout")) == (1, 512)
    assert _stat(w, "thp_split_pmd") == 1  # TTU_SPLIT_HUGE_PMD
    assert sc.nr_pageout == 512
    f = w.mem.flags[:512]
    assert (
        (f & (PG_SWAP | PG_WRITEBACK | PG_RESIDENT)) == PG_SWAP | PG_WRITEBACK | PG_RESIDENT
    ).all()
    assert not (f & PTE_PRESENT).any()
    assert not sp.is_present(w.vms[0].mmu.spte[:512]).any()  # the 2 MiB spte zapped
    assert w.swap.nr_free_slots == w.swap.nr_slots - 512
    slots = w.swap.page_slot[:512]
    assert (np.diff(slots) == 1).all()
    assert slots[0] % 512 == 0  # one whole, aligned cluster
    w.check()
    w.env.run()  # the write ends: the folio is clean, at the inactive tail
    assert not (w.mem.flags[:512] & (PG_WRITEBACK | PG_DIRTY)).any()
    free = w.mem.nr_free
    out, sc = _shrink(w, head)
    assert out == Outcome.FREED
    assert w.mem.nr_free == free + 512
    assert sc.nr_reclaimed == 512
    assert w.mem.thp is not None
    assert w.mem.thp[0] == 0
    w.check()
    # swap-in from a disk: 4 KiB folios, each its own major fault and 4 KiB spte
    for gfn in range(512):
        assert _touch(w, 0, gfn) == "major"
    assert (_stat(w, "pgmajfault"), _stat(w, "pswpin")) == (512, 512)
    assert _stat(w, "thp_fault_alloc") == 1
    assert w.mem.thp[0] == 0  # small folios: KVM maps 4 KiB sptes here now
    assert w.policy.lru_sizes()["inactive"] + w.policy.lru_sizes()["active"] == 512
    w.check()


def test_without_a_free_swap_cluster_the_thp_is_split_and_reclaimed_4k() -> None:
    # 4 MiB of swap: 1,024 slots after the header (slot 0): cluster 0 has 511 free, cluster 1
    # is wholly free, cluster 2 holds one slot. The first THP takes cluster 1; the second
    # finds no wholly free cluster and falls back.
    w = _world(swap__size_mib=4, swap__device="zram")
    _touch(w, 0, 0, write=True)
    _touch(w, 0, 512, write=True)
    a, b = int(w.mem.pfn[0]), int(w.mem.pfn[512])
    for pfn in (a, b):
        w.rmap.folio_referenced(np.array([pfn]), ScanControl(nr_to_reclaim=32))
    out, _ = _shrink(w, a)
    assert out == Outcome.FREED  # zram: written before pageout returned, freed at once
    assert (_stat(w, "thp_swpout"), _stat(w, "thp_swpout_fallback")) == (1, 0)
    assert w.swap.page_slot[0] == 512
    out, sc = _shrink(w, b)
    assert (_stat(w, "thp_swpout"), _stat(w, "thp_swpout_fallback")) == (1, 1)
    assert (_stat(w, "thp_split_page"), _stat(w, "thp_split_pmd")) == (1, 2)
    assert out == Outcome.FREED  # the head, as a 4 KiB folio
    assert _stat(w, "pswpout") == 512 + 512  # 511 slots of cluster 0 and 1 of cluster 2
    assert sc.nr_reclaimed == 512  # every piece written and freed
    assert w.swap.nr_free_slots == 0
    assert w.mem.thp is not None
    assert w.mem.thp[1] == 0
    w.check()


def test_without_thp_swap_every_thp_is_split() -> None:
    w = _world(host__thp={"swap": False})
    _touch(w, 0, 0, write=True)
    pfn = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([pfn]), ScanControl(nr_to_reclaim=32))
    out, _ = _shrink(w, pfn)
    assert out == Outcome.KEEP
    assert (_stat(w, "thp_swpout"), _stat(w, "thp_swpout_fallback")) == (0, 1)
    assert _stat(w, "pswpout") == 512  # 512 writes of 4 KiB
    # the 511 tails went back on the inactive list, each on its own, their writes in flight
    assert w.policy.lru_sizes()["inactive"] == 512
    w.check()


def test_a_swap_cache_hit_on_a_thp_maps_the_whole_folio() -> None:
    w = _world()
    _touch(w, 0, 0, write=True)
    pfn = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([pfn]), ScanControl(nr_to_reclaim=32))
    _shrink(w, pfn)  # its write in flight: unmapped, in the swap cache
    assert _touch(w, 0, 77) == "minor"
    assert (w.mem.flags[:512] & PTE_PRESENT).all()  # do_swap_page maps the whole folio
    v = sp.is_present(w.vms[0].mmu.spte[:512])
    assert v[77]
    assert int(v.sum()) == 1  # by ptes: a 4 KiB spte
    w.check()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"reclaim": {"policy": "mglru"}}, "host.thp"),
        ({"kvm": {"mmu": "shadow"}}, "host.thp"),
        ({"vms": [{"name": "v", "memory_mib": 7, "workload": {"type": "uniform"}}]}, "vms[0]"),
    ],
)
def test_combinations_not_modelled_are_one_line_errors(changes: dict[str, Any], field: str) -> None:
    from sim.errors import ConfigError

    raw = copy.deepcopy(TINY) | changes
    raw["host"] = {"memory_mib": 8, "thp": {}}
    with pytest.raises(ConfigError) as err:
        parse_scenario(raw, "t")
    msg = str(err.value)
    assert "\n" not in msg
    assert field in msg


def test_khugepaged_limits_are_checked() -> None:
    from sim.errors import ConfigError

    raw = copy.deepcopy(TINY)
    raw["host"] = {"memory_mib": 8, "thp": {"khugepaged": {"max_ptes_none": 512}}}
    with pytest.raises(ConfigError, match=r"host\.thp\.khugepaged\.max_ptes_none"):
        parse_scenario(raw, "t")


def test_the_compiled_paths_hand_a_large_folio_to_the_general_path() -> None:
    """With host.thp the fused walk and the host core are built (the run note names no
    general path), refuse a batch holding a large folio having changed nothing, and take
    the 4 KiB folios a split leaves."""
    assert general_path_reason(tiny(host__thp={})) is None
    w = _world()
    core, shortcut = w.vmscan.core, w.rmap.shortcut
    assert core is not None
    assert shortcut is not None
    _touch(w, 0, 0, write=True)  # a THP over gfns 0-511
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    head = np.array([0], dtype=np.int32)
    flags, spte = w.mem.flags.copy(), w.vms[0].mmu.spte.copy()
    assert shortcut.folio_referenced(head, sc, flush=True) is None
    assert not shortcut.unmap(head, sc)
    assert core.shrink_folio_list(w.mem.pfn[head].astype(np.int64), sc) is None
    assert (w.mem.flags == flags).all()
    assert (w.vms[0].mmu.spte == spte).all()
    assert sc.nr_rmap_walked == sc.nr_notifier_calls == 0
    w.rmap.split_huge_pmd(0, sc)
    assert w.thp is not None
    w.thp.split_folio(0)
    young = shortcut.folio_referenced(np.array([5], dtype=np.int32), sc, flush=True)
    assert young is not None
    assert young.tolist() == [True]


def test_unset_thp_stays_out_of_dumps() -> None:
    assert "thp" not in tiny().model_dump()["host"]
    assert tiny(host__thp={}).model_dump()["host"]["thp"]["enabled"] == "always"


def test_a_thp_swapped_whole_to_zram_comes_back_as_one_large_folio() -> None:
    w = _world(swap__device="zram")
    _touch(w, 0, 0, write=True)
    pfn = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([pfn]), ScanControl(nr_to_reclaim=32))
    out, _ = _shrink(w, pfn)
    assert out == Outcome.FREED
    assert (_stat(w, "thp_swpout"), _stat(w, "pswpout")) == (1, 512)
    assert w.mem.nr_pool > 0  # the compressed copies hold zram's frames
    assert _touch(w, 0, 9) == "major"
    assert (_stat(w, "pgmajfault"), _stat(w, "pswpin")) == (1, 512)  # one fault, 512 pages
    assert (w.mem.nr_free, w.mem.nr_pool) == (2048 - 512, 0)  # the pool emptied with the slots
    assert w.mem.thp is not None
    assert w.mem.thp[0] == THP_LARGE  # a large folio mapped by ptes
    assert (w.mem.flags[:512] & PTE_PRESENT).all()
    assert not (w.mem.flags[:512] & PG_SWAP).any()  # zram's swap_free_nr
    assert w.swap.nr_free_slots == w.swap.nr_slots
    v = sp.is_present(w.vms[0].mmu.spte[:512])
    assert int(v.sum()) == 1  # a 4 KiB spte: the host maps it by ptes
    # one entry (the head's frame) of folio_nr_pages 512: the lists hold 512 pages
    assert w.policy.lru_sizes()["inactive"] + w.policy.lru_sizes()["active"] == 512
    assert len(w.policy.inactive) + len(w.policy.active) == 1
    w.check()
    # it is one folio still: aged over its range and swapped out whole again
    assert w.rmap.folio_referenced(np.array([w.mem.pfn[0]]), ScanControl(nr_to_reclaim=32))[0]
    out, _ = _shrink(w, int(w.mem.pfn[0]))
    assert out == Outcome.FREED
    assert (_stat(w, "thp_swpout"), _stat(w, "thp_split_pmd")) == (2, 1)  # no PMD to split
    w.check()


def _khugepaged(w: World) -> Any:
    k = w.khugepaged
    assert k is not None
    return k


def test_khugepaged_collapses_a_demoted_block_with_a_young_pte() -> None:
    # a THP swapped out whole and read back 4 KiB at a time from the disk: 512 small folios
    # mapped by ptes, 4 KiB sptes; khugepaged puts them back into one THP
    w = _world(host__thp={"khugepaged": {"pages_to_scan": 512, "scan_sleep_ms": 1}})
    _touch(w, 0, 0, write=True)
    head = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([head]), ScanControl(nr_to_reclaim=32))
    _shrink(w, head)
    w.env.run()
    _shrink(w, head)
    for gfn in range(0, 448):  # 64 pages left in swap: max_ptes_swap's limit
        _touch(w, 0, gfn)
    w.check()
    k = _khugepaged(w)
    assert k.scan_pmd(0)
    free = w.mem.nr_free
    busy_ns = k.collapse(0, int(w.env.now))
    assert busy_ns > 512 * w.costs.clear_page_ns  # it waited for the 64 reads
    assert _stat(w, "thp_collapse_alloc") == 1
    assert (_stat(w, "pswpin"), _stat(w, "pgmajfault")) == (512, 512)  # 448 faults + 64 reads
    assert w.mem.nr_free == free - 64  # 448 small folios' frames for 512 new ones
    assert w.mem.thp is not None
    assert w.mem.thp[0] == THP_LARGE | THP_PMD
    assert not (w.mem.flags[:512] & PG_SWAP).any()
    assert not sp.is_present(w.vms[0].mmu.spte[:512]).any()  # the 4 KiB sptes were zapped
    # the 448 small folios left the lists; the new THP's head went on the inactive list
    # (folio_add_lru, no mark_accessed from khugepaged): one entry, 512 pages
    assert w.policy.lru_sizes() == {"inactive": 512, "active": 0}
    assert len(w.policy.inactive) == 1
    w.check()
    _touch(w, 0, 3)  # KVM's next fault maps the 2 MiB spte (the host PMD-maps the block)
    assert sp.is_present(w.vms[0].mmu.spte[:512]).all()
    w.check()


def test_khugepaged_leaves_blocks_over_its_limits_or_not_young() -> None:
    w = _world(host__thp={"enabled": "never", "khugepaged": {"max_ptes_none": 500}})
    k = w.khugepaged
    assert k is None  # THP off: nothing to collapse into
    w = _world(host__thp={"khugepaged": {"max_ptes_none": 500}})
    k = _khugepaged(w)
    w.host_fault.thp = None  # 4 KiB first touches, to make a pte-mapped block
    for gfn in range(11):
        _touch(w, 0, gfn)
    assert not k.scan_pmd(0)  # 501 empty ptes: one more than max_ptes_none
    _touch(w, 0, 11)
    assert k.scan_pmd(0)  # 500: allowed, and the ptes are young from their faults
    w.mem.flags[:512] &= ~np.uint8(0x02)  # the host pte young bits cleared
    spte = w.vms[0].mmu.spte
    spte[:512] = sp.age(spte[:512], True)  # and the sptes' accessed bits
    assert not k.scan_pmd(0)  # nothing young, not even by KVM's test_young
    spte[5] = sp.touch(spte[5], False)
    assert k.scan_pmd(0)
    assert sp.is_young(spte[5], True)  # test_young does not clear it


def test_activate_locked_frees_a_large_folios_whole_swap_copy() -> None:
    # 6 MiB of swap: 1,536 slots; clusters 1 and 2 are wholly free
    w = _world(swap__size_mib=6, host__thp={"khugepaged": {"enabled": False}})
    for gfn in (0, 512):
        _touch(w, 0, gfn, write=True)
        w.rmap.folio_referenced(np.array([w.mem.pfn[gfn]]), ScanControl(nr_to_reclaim=32))
    a, b = int(w.mem.pfn[0]), int(w.mem.pfn[512])
    _shrink(w, a)
    w.env.run()  # written: a clean folio in the swap cache, 512 of 1,536 slots used
    assert _touch(w, 0, 3) == "minor"  # mapped again, keeping its swap copy (swap not full)
    assert (w.mem.flags[:512] & PG_SWAP).all()
    _shrink(w, b)  # 1,024 slots used: vm_swap_full
    assert w.swap.vm_swap_full()
    w.vmscan.activate_locked(np.array([a], dtype=np.int64))
    assert not (w.mem.flags[:512] & PG_SWAP).any()  # all 512 slots freed, not the head's only
    assert (w.mem.flags[:512] & PG_DIRTY).all()
    assert w.swap.nr_free_slots == 1536 - 512
    w.check()


def test_no_thp_over_a_block_with_a_fault_in_flight() -> None:
    w = _world()
    w.host_fault._inflight[7] = None  # page 7's fault waits for a frame (do_anonymous_page)
    assert _touch(w, 0, 100) == "first_touch"
    assert _stat(w, "thp_fault_alloc") == 0  # the PMD is a page table being filled
    assert w.mem.thp is not None
    assert w.mem.thp[0] == 0
    assert w.mem.nr_free == 2048 - 1

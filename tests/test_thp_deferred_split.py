"""Partial unmaps of THPs and the deferred split queue (sim/host/deferred_split.py): hand-worked
numbers on tiny worlds.

Each world has an 8 MiB host (2,048 frames) and two 8 MiB guests with a guest kernel and a
balloon (the VMs' discards are QEMU's ``ram_block_discard_range``, driven by hand here through
``Machine.discard``); the first guest touch of a block maps a THP of 512 frames.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from sim.config import parse_scenario
from sim.engine import World, build_world
from sim.host.deferred_split import DeferredSplit
from sim.host.huge_memory import THP_LARGE, THP_PARTIAL, THP_QUEUED
from sim.host.memory import PG_SWAP, PTE_PRESENT
from sim.host.vmscan import Outcome, ScanControl
from sim.kvm import spte as sp
from tests.conftest import TINY, tiny
from tests.test_thp import _shrink, _stat, _touch


def _world(**changes: Any) -> World:
    changes.setdefault("host__thp", {})
    changes.setdefault("reclaim__policy", "two_list")
    changes.setdefault("vms__0__guest", {"footprint_mib": 6})
    changes.setdefault("vms__0__balloon", {"enabled": True})
    w = build_world(tiny(**changes), None)
    assert isinstance(w, World)
    return w


def _deferred(w: World) -> DeferredSplit:
    assert w.deferred is not None
    return w.deferred


def _thp(w: World) -> int:
    """A THP over the first block of VM 0 (a write fault on gfn 5); returns its head's pfn."""
    assert _touch(w, 0, 5, write=True) == "first_touch"
    assert w.mem.nr_free == 2048 - 512
    return int(w.mem.pfn[w.vms[0].mm.pid_base])


def test_inflating_pages_inside_a_thp_splits_its_pmd_and_queues_it_once() -> None:
    w = _world()
    _thp(w)
    d = _deferred(w)
    assert w.discard(0, np.arange(10, 13)) == 0  # 3 pages: no frame freed yet
    assert _stat(w, "thp_split_pmd") == 1
    assert _stat(w, "thp_deferred_split_page") == 1
    assert d.queue_len() == 1
    assert w.mem.thp is not None
    assert w.mem.thp[0] == THP_LARGE | THP_PARTIAL | THP_QUEUED
    f = w.mem.flags[:512]
    assert not (f[10:13] & PTE_PRESENT).any()
    assert int(np.count_nonzero(f & PTE_PRESENT)) == 509
    assert not sp.is_present(w.vms[0].mmu.spte[:512]).any()  # KVM zapped the 2 MiB spte
    assert w.vms[0].stats.pages_discarded == 3
    # a second inflate in the same folio: no PMD left to split, queued already
    assert w.discard(0, np.array([100])) == 0
    assert _stat(w, "thp_split_pmd") == 1
    assert _stat(w, "thp_deferred_split_page") == 1
    assert d.queue_len() == 1
    assert w.mem.nr_free == 2048 - 512  # the folio holds all 512 frames
    # still one folio on the active list, its head's entry: 512 pages (folio_nr_pages of a
    # queued, partially mapped folio is 512 until it is split)
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 512}
    assert len(w.policy.active) == 1
    w.check()


def test_the_shrinker_splits_a_queued_thp_only_as_do_shrink_slab_sizes_it() -> None:
    w = _world()
    _thp(w)
    d = _deferred(w)
    w.discard(0, np.arange(10, 14))  # N = 4 pages inflated
    # one queued folio: (1 >> priority) * 4 / 2 is 0 above priority 0, so nothing is scanned
    for prio in range(12, 0, -1):
        d.shrink(ScanControl(nr_to_reclaim=32, priority=prio, vmstat=w.vmstat))
    assert d.queue_len() == 1
    assert _stat(w, "thp_split_page") == 0
    assert d.nr_deferred[0] == 0
    # priority 0: delta 2 >= the queue's 1 folio: one batch, the folio split
    d.shrink(ScanControl(nr_to_reclaim=32, priority=0, vmstat=w.vmstat))
    assert _stat(w, "thp_split_page") == 1
    assert d.queue_len() == 0
    assert d.nr_deferred[0] == 0  # min(max(0 + 2 - 2, 0), 2)
    assert w.mem.nr_free == 2048 - 512 + 4  # the 4 unmapped pages' frames
    assert w.mem.thp is not None
    assert w.mem.thp[0] == 0
    # 508 base folios on the list the THP was on
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 508}
    w.check()


def test_discarding_the_whole_block_frees_the_thp_without_a_split() -> None:
    w = _world()
    _thp(w)
    assert w.discard(0, np.arange(512)) == 512  # zap_huge_pmd
    assert _stat(w, "thp_split_pmd") == 0
    assert _stat(w, "thp_deferred_split_page") == 0
    assert w.mem.nr_free == 2048
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 0}
    w.check()


def test_the_last_mapped_page_going_frees_a_queued_thp_and_takes_it_off_the_queue() -> None:
    w = _world()
    _thp(w)
    d = _deferred(w)
    w.discard(0, np.array([10]))
    assert d.queue_len() == 1
    rest = np.setdiff1d(np.arange(512), [10])
    assert w.discard(0, rest) == 512
    assert d.queue_len() == 0
    assert _stat(w, "thp_split_page") == 0
    assert w.mem.nr_free == 2048
    w.check()


def test_reclaim_splits_a_queued_thp_right_away_and_frees_its_unmapped_pages() -> None:
    w = _world()
    head = _thp(w)
    d = _deferred(w)
    w.discard(0, np.arange(10, 13))
    out, sc = _shrink(w, head)
    assert _stat(w, "thp_split_page") == 1
    assert _stat(w, "thp_swpout") == 0
    assert _stat(w, "thp_swpout_fallback") == 0  # not a failed add_to_swap
    assert d.queue_len() == 0
    assert sc.nr_pageout == 509  # the mapped pages go on as 4 KiB folios, written out
    assert out == Outcome.KEEP
    assert w.mem.nr_free == 2048 - 512 + 3
    w.check()


def test_a_guest_touch_of_an_inflated_page_splits_the_thp_first() -> None:
    w = _world()
    _thp(w)
    d = _deferred(w)
    w.discard(0, np.arange(10, 13))
    assert not w.host_fault.is_refault(w.vms[0].mm.pid_base + 11)  # as never touched
    assert _touch(w, 0, 11, write=True) == "first_touch"  # a 4 KiB page, after the split
    assert _stat(w, "thp_split_page") == 1
    assert d.queue_len() == 0
    assert w.mem.nr_free == 2048 - 512 + 3 - 1
    assert w.mem.thp is not None
    assert w.mem.thp[0] == 0
    w.check()


def test_a_thp_whose_head_is_inflated_is_split_without_its_head() -> None:
    w = _world()
    _thp(w)
    d = _deferred(w)
    w.discard(0, np.arange(0, 2))
    d.shrink(ScanControl(nr_to_reclaim=32, priority=0, vmstat=w.vmstat))
    assert w.mem.nr_free == 2048 - 512 + 2
    assert w.policy.lru_sizes() == {"inactive": 0, "active": 510}
    w.check()


def test_thp_is_accepted_with_guest_kernels_balloons_and_mom() -> None:
    raw: dict[str, Any] = {
        **TINY,
        "host": {"memory_mib": 8, "thp": {}},
        "reclaim": {"policy": "two_list"},
        "mom": {"enabled": True},
        "vms": [
            {
                **TINY["vms"][0],
                "guest": {"footprint_mib": 6},
                "balloon": {"enabled": True, "free_page_reporting": {"enabled": True}},
            }
        ],
    }
    sc = parse_scenario(raw)
    assert sc.host.thp is not None


def test_a_thp_world_without_a_balloon_has_no_split_queue() -> None:
    w = build_world(tiny(host__thp={}, reclaim__policy="two_list"), None)
    assert isinstance(w, World)
    assert w.deferred is None
    host = w.summary(0.0)["host"]
    assert "thp_fault_alloc" in host["vmstat"]
    assert "thp_deferred_split_page" not in host["vmstat"]
    assert "thp_deferred_split_queue" not in host


def test_the_summary_reads_the_queue_length() -> None:
    w = _world()
    _thp(w)
    w.discard(0, np.array([7]))
    host = w.summary(0.0)["host"]
    assert host["thp_deferred_split_queue"] == 1
    assert host["vmstat"]["thp_deferred_split_page"] == 1


def test_thp_takes_a_guest_disk_image_in_the_host_page_cache() -> None:
    """The host page cache beside THPs (tests/test_thp_combos.py runs it)."""
    raw = copy.deepcopy(TINY)
    raw["host"] = {"memory_mib": 8, "thp": {}}
    raw["reclaim"] = {"policy": "two_list"}
    raw["vms"][0]["guest"] = {"footprint_mib": 6, "disk_cache": "writeback"}
    sc = parse_scenario(raw)
    assert sc.host.thp is not None


def test_with_memcgs_each_vm_has_its_queue_and_limit_reclaim_scans_its_own() -> None:
    w = _world(vms__0__memcg={"max_mib": 8})
    _thp(w)
    d = _deferred(w)
    w.discard(0, np.arange(10, 13))
    assert d.queue_len(0) == 1
    assert d.queue_len(1) == 0
    assert int(w.mem.nr_resident[0]) == 512  # memory.current: the folio's 512 frames
    d.shrink(ScanControl(nr_to_reclaim=32, priority=0, target_memcg=1))  # the other VM's
    assert d.queue_len(0) == 1
    d.shrink(ScanControl(nr_to_reclaim=32, priority=0, target_memcg=0))
    assert d.queue_len() == 0
    assert _stat(w, "thp_split_page") == 1
    assert int(w.mem.nr_resident[0]) == 509  # the 3 unmapped pages uncharged
    w.check()


def test_a_swap_cache_thp_whose_head_is_inflated_is_unmapped_and_freed_whole() -> None:
    w = _world()
    head = _thp(w)
    w.rmap.folio_referenced(np.array([head]), ScanControl(nr_to_reclaim=32))  # now cold
    assert _shrink(w, head)[0] == Outcome.KEEP  # swapped out whole, its write in flight
    w.env.run(until=w.env.now + 50_000_000)  # the write ends
    assert _touch(w, 0, 77) == "minor"  # a swap-cache hit maps the whole folio by ptes
    w.discard(0, np.arange(0, 2))  # the head's pte goes; the folio stays in the swap cache
    assert _stat(w, "thp_deferred_split_page") == 0  # deferred_split_folio skips it
    assert _deferred(w).queue_len() == 0
    w.check()
    out, sc = _shrink(w, head)  # still mapped by 510 ptes: unmapped, written whole again
    assert out == Outcome.KEEP  # (KVM dirtied the page it mapped)
    assert sc.nr_pageout == 512
    assert not (w.mem.flags[:512] & PTE_PRESENT).any()
    assert not sp.is_present(w.vms[0].mmu.spte[:512]).any()
    w.check()
    w.env.run(until=w.env.now + 50_000_000)
    assert _shrink(w, head)[0] == Outcome.FREED
    assert w.mem.nr_free == 2048
    assert (w.mem.flags[2:512] == PG_SWAP).all()  # in swap, with its copy
    assert not w.mem.flags[:2].any()  # the inflated pages: as never touched, no slot
    assert w.swap.nr_slots - w.swap.nr_free_slots == 510
    w.check()

"""THP-backed guest RAM in a memcg per VM (host.thp with vms[].memcg): hand-worked numbers.

The tiny world of tests/test_thp.py (an 8 MiB host of 2,048 frames, two 8 MiB guests of four
2 MiB blocks each) with a memcg on the first VM; a THP is charged 512 pages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.engine import World
from sim.host.huge_memory import THP_LARGE, THP_PMD
from sim.host.memory import MAX_RECLAIM_RETRIES, PG_SWAP
from sim.host.vmscan import Outcome, ScanControl
from tests.test_thp import _khugepaged, _shrink, _stat, _touch, _world

MIB = 1 << 20


def _memcg_world(memcg: dict[str, Any], **changes: Any) -> World:
    return _world(vms__0__memcg=memcg, **changes)


def _memcg(w: World) -> Any:
    assert w.memcg is not None
    return w.memcg


def test_a_thp_is_charged_512_pages_and_counted_in_memory_stat() -> None:
    w = _memcg_world({"max_mib": 8})
    assert _touch(w, 0, 5, write=True) == "first_touch"
    assert _touch(w, 0, 512 + 5) == "first_touch"
    m = _memcg(w)
    assert m.usage(0) == 1024  # two THPs
    st = m.stat(0)
    assert st["current_pages"] == 1024
    assert st["thp"] == {
        "anon_thp": 2 * 2 * MIB,  # two PMD-mapped THPs
        "thp_fault_alloc": 2,
        "thp_collapse_alloc": 0,
        "thp_swpout": 0,
        "thp_swpout_fallback": 0,
    }
    assert _stat(w, "thp_fault_fallback_charge") == 0
    w.check()


def test_a_vm_at_memory_max_charging_a_thp_falls_back_to_4k() -> None:
    # memory.max 3 MiB = 768 pages, memory.swap.max 0: nothing the memcg holds can be
    # reclaimed. The second THP's charge (512 + 512 > 768) reclaims in vain: the first try
    # and MAX_RECLAIM_RETRIES more, each a memory.events max, then no OOM (a costly order):
    # the fault takes a 4 KiB page, which fits (513 <= 768).
    w = _memcg_world({"max_mib": 3, "swap_max_mib": 0})
    _touch(w, 0, 0, write=True)
    free = w.mem.nr_free
    assert _touch(w, 0, 512 + 7) == "first_touch"
    assert (_stat(w, "thp_fault_fallback"), _stat(w, "thp_fault_fallback_charge")) == (1, 1)
    assert _stat(w, "thp_fault_alloc") == 1
    m = _memcg(w)
    st = m.stat(0)
    assert st["events"]["max"] == 1 + MAX_RECLAIM_RETRIES
    assert (st["events"]["oom"], st["events"]["oom_kill"]) == (0, 0)
    assert st["current_pages"] == 513
    assert w.mem.nr_free == free - 1
    assert w.mem.thp is not None
    assert w.mem.thp[1] == 0  # the block is a page table now
    assert not w.vms[0].mm.dead
    w.check()


def test_limit_reclaim_swaps_a_thp_out_whole_to_make_room_for_another() -> None:
    # memory.max 3 MiB = 768 pages: the second THP's charge needs 1,024; limit reclaim
    # (nr_to_reclaim 512) swaps the first THP out whole to zram (synchronous: freed at once),
    # memory.current drops by 512 to 0, and the second THP is charged: 512 again.
    w = _memcg_world({"max_mib": 3}, swap__device="zram")
    _touch(w, 0, 0, write=True)
    m = _memcg(w)
    assert m.usage(0) == 512
    assert _touch(w, 0, 512 + 7) == "first_touch"
    assert (_stat(w, "thp_swpout"), _stat(w, "pswpout")) == (1, 512)
    assert (_stat(w, "thp_swpout_fallback"), _stat(w, "thp_fault_fallback")) == (0, 0)
    st = m.stat(0)
    assert st["events"]["max"] == 1
    assert (st["current_pages"], st["swap_current_pages"]) == (512, 512)
    assert st["thp"]["thp_swpout"] == 1  # its memcg's memory.stat too
    assert st["thp"]["thp_fault_alloc"] == 2
    assert st["thp"]["anon_thp"] == 2 * MIB  # the second; the first's PMD was split
    assert w.mem.thp is not None
    assert (w.mem.thp[0], w.mem.thp[1]) == (0, THP_LARGE | THP_PMD)
    assert (w.mem.flags[:512] == PG_SWAP).all()  # only in swap, all 512
    w.check()


def test_memory_swap_max_refuses_a_thps_512_slots_and_it_is_split() -> None:
    # memory.swap.max 1 MiB = 256 slots: the THP's cluster cannot be charged
    # (memory.swap.events max once), so it is split (thp_swpout_fallback); of its 512 base
    # folios the first 256 get a slot each and the other 256 are refused, one event each.
    w = _memcg_world({"swap_max_mib": 1})
    _touch(w, 0, 0, write=True)
    head = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([head]), ScanControl(nr_to_reclaim=32))  # now cold
    out, _ = _shrink(w, head)
    assert out == Outcome.KEEP  # the head's 4 KiB write is in flight
    assert (_stat(w, "thp_swpout"), _stat(w, "thp_swpout_fallback")) == (0, 1)
    assert _stat(w, "thp_split_page") == 1
    assert _stat(w, "pswpout") == 256
    st = _memcg(w).stat(0)
    assert st["events"]["swap_max"] == 1 + 256
    assert st["swap_current_pages"] == 256
    assert st["thp"]["anon_thp"] == 0
    assert st["thp"]["thp_swpout_fallback"] == 1
    w.check()


def _demoted(max_mib: int) -> World:
    """Block 0 of VM 0 as khugepaged finds it after a THP was swapped out whole to the disk
    and 448 of its pages were read back 4 KiB at a time (64 still in swap)."""
    w = _memcg_world({"max_mib": max_mib}, host__thp={"khugepaged": {"scan_sleep_ms": 1}})
    _touch(w, 0, 0, write=True)
    head = int(w.mem.pfn[0])
    w.rmap.folio_referenced(np.array([head]), ScanControl(nr_to_reclaim=32))
    _shrink(w, head)
    w.env.run()
    _shrink(w, head)
    for gfn in range(448):
        _touch(w, 0, gfn)
    assert _memcg(w).usage(0) == 448
    assert _khugepaged(w).scan_pmd(0)
    return w


def test_khugepaged_collapses_only_what_memory_max_has_room_for() -> None:
    # memory.max 3 MiB = 768 pages: the new THP's 512 would make 960 while the old 448 are
    # still charged, so the collapse is skipped (SCAN_CGROUP_CHARGE_FAIL, not an allocation
    # failure: khugepaged does not sleep for it) and nothing is read in.
    w = _demoted(3)
    assert _khugepaged(w).collapse(0, int(w.env.now)) == 0
    assert (_stat(w, "thp_collapse_alloc"), _stat(w, "thp_collapse_alloc_failed")) == (0, 0)
    assert _memcg(w).usage(0) == 448
    assert _stat(w, "pswpin") == 448
    w.check()
    # 4 MiB = 1,024 pages: 448 + 512 fit; after the collapse the memcg holds the THP only
    w = _demoted(4)
    assert _khugepaged(w).collapse(0, int(w.env.now)) > 0
    st = _memcg(w).stat(0)
    assert st["current_pages"] == 512
    assert (st["thp"]["thp_collapse_alloc"], st["thp"]["anon_thp"]) == (1, 2 * MIB)
    w.check()


def test_a_memcg_full_of_thps_it_cannot_reclaim_ooms_on_the_4k_fallback() -> None:
    # memory.max 2 MiB = 512 pages, one THP, nothing reclaimable (memory.swap.max 0). The next
    # block's THP charge fails without an OOM (17 memory.events max); its 4 KiB fallback's
    # charge (513 > 512) fails the same 17 times and then OOM-kills the VM, whose THP is freed.
    w = _memcg_world({"max_mib": 2, "swap_max_mib": 0})
    _touch(w, 0, 0, write=True)
    _touch(w, 0, 512)
    st = _memcg(w).stat(0)
    assert st["events"]["max"] == 2 * (1 + MAX_RECLAIM_RETRIES)
    assert (st["events"]["oom"], st["events"]["oom_kill"]) == (1, 1)
    assert _stat(w, "thp_fault_fallback_charge") == 1
    assert w.vms[0].mm.dead
    assert (st["current_pages"], st["thp"]["anon_thp"]) == (0, 0)
    assert not w.vms[1].mm.dead
    w.check()


def test_a_large_zram_swapin_charges_512_pages_reclaiming_the_memcg() -> None:
    # memory.max 3 MiB = 768 pages, zram. Limit reclaim swaps THP A (block 0) out whole; THP B
    # (block 1) is faulted in: 512 charged. A fault on A's block would read it back as one
    # large folio: 512 + 512 > 768, so the charge (mem_cgroup_swapin_charge_folio) reclaims
    # the memcg, which swaps B out whole; then A comes back whole (pswpin 512) and the memcg
    # holds it only.
    w = _memcg_world({"max_mib": 3}, swap__device="zram")
    _touch(w, 0, 0, write=True)
    m = _memcg(w)
    proc = w.env.process(m.try_to_free_mem_cgroup_pages(0, 512))  # memory.reclaim, as it were
    w.env.run(proc)
    assert proc.value == 512
    _touch(w, 0, 512, write=True)
    assert (m.usage(0), int(m.swap_usage[0])) == (512, 512)
    assert _touch(w, 0, 9) == "major"
    assert (_stat(w, "thp_swpout"), _stat(w, "pswpin"), _stat(w, "pgmajfault")) == (2, 512, 1)
    st = m.stat(0)
    assert st["events"]["max"] == 1
    assert (st["current_pages"], st["swap_current_pages"]) == (512, 512)  # A in, B out
    assert w.mem.thp is not None
    assert (w.mem.thp[0], w.mem.thp[1]) == (THP_LARGE, 0)  # A by ptes, B only in swap
    w.check()

"""The guest TLB model (sim/guest/tlb.py): hand-worked walks, flushes, and worlds with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import build_world
from sim.errors import ConfigError
from sim.guest.tlb import NO_ROWS, GuestTlbs, TlbGeometry, tlb_first_fault, tlb_touch
from sim.guest.touch import ept_touch
from sim.kvm.spte import SPTE_ACCESS_TRACKED, SPTE_ACCESSED, SPTE_DIRTY, SPTE_PRESENT
from tests.conftest import tiny
from tests.test_invariants import scenarios

P, A, D, T = SPTE_PRESENT, SPTE_ACCESSED, SPTE_DIRTY, SPTE_ACCESS_TRACKED
_STAMPS = np.empty(0, dtype=np.uint32)
_WRITTEN = np.empty(0, dtype=np.uint8)  # no KSM


def _walk(
    tlbs: GuestTlbs, spte: np.ndarray, pages: list[int], writes: list[bool] | None = None
) -> int:
    idx = np.array(pages, dtype=np.int64)
    w = np.array(writes if writes is not None else [False] * len(pages), dtype=np.bool_)
    return int(
        tlb_touch(
            spte, idx, idx, w, _STAMPS, 0, 0, 0, len(pages), NO_ROWS, 0,
            tlbs.tags, tlbs.used, tlbs.dirty, tlbs.st, _WRITTEN,
        )
    )  # fmt: skip


def test_a_cached_translation_sets_no_accessed_bit() -> None:
    """Page 0 is filled (accessed set), aging clears the bit, the next access hits the TLB
    and leaves it clear; after a flush the access walks again and sets it."""
    tlbs = GuestTlbs([TlbGeometry(4, 2, 0)])
    spte = np.full(8, P, dtype=np.uint8)
    assert _walk(tlbs, spte, [0]) == 1
    assert spte[0] == P | A
    spte[0] = P  # clear_young, no flush
    _walk(tlbs, spte, [0, 0])
    assert spte[0] == P
    assert tlbs.totals(range(1)) == {"hits": 2, "fills": 1, "flushes": 0}
    tlbs.flush(range(1))
    _walk(tlbs, spte, [0])
    assert spte[0] == P | A
    assert tlbs.totals(range(1)) == {"hits": 2, "fills": 2, "flushes": 1}


def test_a_write_through_a_clean_entry_walks_for_the_dirty_bit() -> None:
    tlbs = GuestTlbs([TlbGeometry(4, 2, 0)])
    spte = np.full(8, P, dtype=np.uint8)
    _walk(tlbs, spte, [3])  # a read fills a clean entry
    spte[3] = P
    _walk(tlbs, spte, [3], [True])  # the write walks: accessed and dirty set
    assert spte[3] == P | A | D
    spte[3] = P | D
    _walk(tlbs, spte, [3], [True])  # the entry holds the dirty bit now: no walk
    assert spte[3] == P | D


def test_least_recently_used_way_is_replaced() -> None:
    """Two sets of two ways: pages 0, 2, 4 share set 0. After 0, 2, 0 the LRU way holds 2, so
    4 replaces it; 0 still hits, 2 walks again."""
    tlbs = GuestTlbs([TlbGeometry(4, 2, 0)])
    spte = np.full(8, P, dtype=np.uint8)
    _walk(tlbs, spte, [0, 2, 0, 4])
    spte[:] = P
    _walk(tlbs, spte, [0, 2])
    assert spte[0] == P  # hit
    assert spte[2] == P | A  # evicted by 4: walked
    assert tlbs.totals(range(1))["fills"] == 4


def test_context_switches_flush_every_so_many_accesses() -> None:
    tlbs = GuestTlbs([TlbGeometry(4, 4, 3)])
    spte = np.full(8, P, dtype=np.uint8)
    _walk(tlbs, spte, [1] * 7)  # flushes before the 4th and 7th accesses
    assert tlbs.totals(range(1)) == {"hits": 4, "fills": 3, "flushes": 2}


def test_faults_stop_the_walk_and_a_row_without_a_tlb_walks_every_access() -> None:
    tlbs = GuestTlbs([TlbGeometry(0, 1, 0)])
    spte = np.array([P, P, 0, P], dtype=np.uint8)
    ref = spte.copy()
    assert _walk(tlbs, spte, [0, 1, 2, 3]) == 2
    idx = np.arange(4, dtype=np.int64)
    assert (
        ept_touch(ref, idx, idx, np.zeros(4, np.bool_), _STAMPS, 0, 0, 0, 4, np.zeros(0, np.uint8))
        == 2
    )
    assert (spte == ref).all()
    assert tlbs.totals(range(1)) == {"hits": 0, "fills": 0, "flushes": 0}


def test_a_cached_translation_hides_access_tracking_but_not_a_zap() -> None:
    """Without EPT A/D bits aging parks the spte (access-tracked) without a flush: a cached
    translation still works. A zapped spte (not present) faults whatever the TLB holds."""
    tlbs = GuestTlbs([TlbGeometry(4, 2, 0)])
    spte = np.full(4, P, dtype=np.uint8)
    _walk(tlbs, spte, [0, 1])
    spte[0] = P | T
    spte[1] = 0
    assert _walk(tlbs, spte, [0]) == 1
    assert _walk(tlbs, spte, [1]) == 0
    idx = np.array([0, 1], dtype=np.int64)
    assert tlb_first_fault(spte, idx, 0, 2, 0, tlbs.tags, tlbs.st) == 1


def test_entries_must_fill_whole_sets() -> None:
    raw = tiny().model_dump()
    raw["vms"][0]["guest_tlb"] = {"entries": 10, "ways": 4}
    with pytest.raises(ConfigError, match=r"vms\[0\]\.guest_tlb: entries \(10\) is not a multiple"):
        parse_scenario(raw)


def _tlb_world(raw: dict[str, Any], entries: int, ways: int) -> dict[str, Any]:
    for vm in raw["vms"]:
        vm["guest_tlb"] = {"entries": entries, "ways": ways, "context_switch_us": 0}
    return raw


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from([(4, 1), (16, 4), (64, 64)]))
def test_no_entry_outlives_its_spte(raw: dict[str, Any], geo: tuple[int, int]) -> None:
    """In random worlds with a TLB per vCPU, every cached translation is of a present spte
    when the run ends, and the world's invariants hold."""
    w = build_world(parse_scenario(_tlb_world(raw, *geo)), None)
    w.run()
    assert w.tlbs is not None
    for vm in w.vms:
        w.tlbs.check(vm.mmu.spte, vm.tlb_rows)
    w.check()


@pytest.mark.parametrize("trigger", [pytest.param("demand", marks=pytest.mark.slow), "watermark"])
def test_every_access_hits_or_fills_and_the_oracles_do_not_move(trigger: str) -> None:
    """Each access either used a cached translation or walked and filled one (a faulting
    access fills when it retries), so hits + fills = accesses per VM (the vCPU world also
    counts the accesses of runs cut short, done again after the cut); the reference string
    does not depend on the TLB, so exact LRU's and OPT's misses on it do not move."""
    hot = {"name": "hot", "memory_mib": 8, "working_set_mib": 2, "vcpus": 2}
    scan = {"name": "scan", "memory_mib": 16, "workload": {"type": "uniform"}}
    base = {
        "name": "tlb",
        "seed": 3,
        "duration_s": 0.05,
        "host": {"memory_mib": 12},
        "reclaim": {"policy": "two_list", "trigger": trigger},
        "vms": [hot, scan],
    }
    quality = []
    for tlb in (None, {"entries": 64, "ways": 4, "context_switch_us": 100}):
        vms = [vm | ({"guest_tlb": tlb} if tlb and vm is hot else {}) for vm in (hot, scan)]
        w = build_world(parse_scenario(base | {"vms": vms}), None)
        w.run()
        s = w.summary(0.0)
        quality.append(
            {k: s.get("quality", {}).get(k) for k in ("opt_faults", "lru_faults", "frames")}
        )
        if tlb is None:
            assert all("guest_tlb" not in v for v in s["vms"])
            continue
        t = s["vms"][0]["guest_tlb"]
        assert t["hits"] > 0
        assert t["flushes"] > 0
        done = w.vms[0].stats.accesses
        if trigger == "demand":
            assert t["hits"] + t["fills"] == done
        else:  # a run cut short by a revoked spte walked accesses it then took back
            assert done <= t["hits"] + t["fills"] <= done * 1.05
        assert "guest_tlb" not in s["vms"][1]
    assert quality[0] == quality[1]


def _guest_world(tlb: bool, vcpus: int = 1) -> Any:
    """A VM with a guest kernel of 4 MiB RAM whose process has written 900 of its pages
    (every gfn backed by a present spte), not started: the test drives it by hand (its
    first vCPU's accesses)."""

    from tests.test_guest import _raw

    raw = _raw(host_mib=32, ram_mib=4, footprint_mib=8)
    raw["vms"][0]["vcpus"] = vcpus
    if tlb:
        raw["vms"][0]["guest_tlb"] = {"entries": 64, "ways": 4, "context_switch_us": 0}
    w = build_world(parse_scenario(raw), None)
    g = w.vms[0].guest
    for v in range(900):
        assert g.fault.fault_nowait(v, True) is not None
    w.vms[0].mmu.spte[:] = P
    return w


def _guest_access(w: Any, v: int) -> None:
    """The vCPU reads guest page ``v``: through its TLB (combined translations) if it has
    one, else the walk of every access (guest pte, then spte)."""
    from sim.guest.tlb import tlb_guest_touch
    from sim.guest.touch import guest_mark, guest_translate

    vm, g = w.vms[0], w.vms[0].guest
    vp = np.array([v], dtype=np.int64)
    gfns = np.zeros(1, dtype=np.int64)
    rd = np.zeros(1, dtype=np.bool_)
    if w.tlbs is None:
        assert guest_translate(g.mem.flags, g.mem.pfn, vp, gfns, 0, 1, g.nr_anon) == 1
        assert (
            ept_touch(vm.mmu.spte, gfns, gfns, rd, _STAMPS, 0, 0, 0, 1, np.zeros(0, np.uint8)) == 1
        )
        guest_mark(g.mem.flags, vp, rd, 0, 1, g.nr_anon)
        return
    t = w.tlbs
    got = tlb_guest_touch(
        g.mem.flags, g.mem.pfn, vp, NO_ROWS, 1, g.nr_anon, vm.mmu.spte, gfns, gfns, rd,
        _STAMPS, 0, 0, 0, 1, vm.tlb_rows.start, t.tags, t.sidx, t.used, t.dirty, t.st,
    )  # fmt: skip
    assert got == 1


@pytest.mark.parametrize("tlb", [False, True])
def test_a_page_hot_in_the_tlb_looks_idle_to_the_guests_lru(tlb: bool) -> None:
    """Page 0 is read before every pass of the guest's direct reclaim (a small one: priority
    3); the other 899 pages are never used again. Walked each time (no TLB), its guest pte is
    young whenever reclaim looks, so it stays while idle pages are swapped out. Cached in the
    TLB, only its first read walks: the guest's ``ptep_clear_flush_young`` clears the young
    bit without a flush, the reads hit and set nothing, and it is evicted as an idle page.
    (One vCPU: reclaim does not defer its flushes, so each page it unmaps is one INVLPG,
    which leaves page 0's entry alone.)"""
    from sim.host.memory import PTE_PRESENT, PTE_YOUNG
    from sim.host.vmscan import ScanControl

    w = _guest_world(tlb)
    vm = w.vms[0]
    g = vm.guest
    for _ in range(100):
        _guest_access(w, 0)
        sc = ScanControl(nr_to_reclaim=32, priority=3, direct=True, vmstat=g.vmstat)
        for _ in g.policy.shrink_node(sc, g.vmscan):
            pass
        w.env.run(until=w.env.now + 1_000_000)  # the swap writes complete
        if not g.mem.flags[0] & PTE_PRESENT:
            break
        if tlb:  # after the first pass, page 0 never looks young again
            assert not g.mem.flags[0] & PTE_YOUNG
    assert g.vmstat["pswpout"] > 0
    if not tlb:
        assert g.mem.flags[0] & PTE_PRESENT  # kept
        return
    assert not g.mem.flags[0] & PTE_PRESENT  # evicted, though read before every pass
    t = w.tlbs.totals(vm.tlb_rows, guest=True)
    assert t["fills"] == 1
    assert t["hits"] > 10
    assert t["guest_flushes"] == t["invlpg"] >= g.vmstat["pswpout"]  # one INVLPG a page
    assert t["flushes"] == 0
    w.tlbs.check_guest(vm.mmu.spte, vm.tlb_rows, g.mem.flags, g.mem.pfn, g.nr_anon, 1)
    assert (w.tlbs.tags == -1).all()  # page 0's entry went with its pte


def test_guest_flushes_invalidate_pages_up_to_the_ceiling_and_flush_all_beyond() -> None:
    """``flush_tlb_mm_range``: 33 pages are 33 INVLPGs on each vCPU; 34 flush everything."""
    from sim.guest.tlb import GuestShootdown

    tlbs = GuestTlbs([TlbGeometry(64, 4, 0)] * 3)
    sd = GuestShootdown(tlbs, range(1, 3))
    v = np.arange(64)
    for r in range(3):  # every row caches pages 0..63: page v in set v % 16, way v // 16
        tlbs.tags[r * 64 + (v % 16) * 4 + v // 16] = v
    sd.flush_range(np.arange(33))
    assert (tlbs.tags[:64] >= 0).all()  # row 0 is another VM's
    for r in (1, 2):
        row = tlbs.tags[r * 64 : (r + 1) * 64]
        assert sorted(row[row >= 0].tolist()) == list(range(33, 64))
    assert tlbs.totals(range(1, 3), guest=True) == {
        "hits": 0, "fills": 0, "flushes": 0, "guest_flushes": 2, "invlpg": 66,
    }  # fmt: skip
    sd.flush_range(np.arange(34))
    assert (tlbs.tags[64:] == -1).all()
    assert tlbs.totals(range(1, 3), guest=True)["flushes"] == 2
    sd.forget(np.arange(64))  # a page-cache drop: entries go, no flush counted
    assert tlbs.totals(range(1, 3), guest=True)["guest_flushes"] == 4


def test_a_guest_of_several_vcpus_flushes_them_all_per_reclaim_batch() -> None:
    """Two vCPUs run the process: reclaim defers its flushes (``should_defer_flush``) to one
    ``arch_tlbbatch_flush`` per batch, which empties both vCPUs' TLBs, so the next read of a
    page hot in them walks again and sets its guest young bit."""
    from sim.host.memory import PTE_PRESENT, PTE_YOUNG
    from sim.host.vmscan import ScanControl

    w = _guest_world(True, vcpus=2)
    vm = w.vms[0]
    g = vm.guest
    _guest_access(w, 0)
    passes = 0
    while g.vmstat["pswpout"] == 0:
        sc = ScanControl(nr_to_reclaim=32, priority=3, direct=True, vmstat=g.vmstat)
        for _ in g.policy.shrink_node(sc, g.vmscan):
            pass
        w.env.run(until=w.env.now + 1_000_000)
        passes += 1
        assert passes < 100
    t = w.tlbs.totals(vm.tlb_rows, guest=True)
    assert t["guest_flushes"] == t["flushes"] == 2  # one batch unmapped: both vCPUs flushed
    assert t["invlpg"] == 0
    assert (w.tlbs.tags == -1).all()
    v = int(np.flatnonzero(g.mem.flags[:900] & PTE_PRESENT)[0])  # a page still mapped
    g.mem.flags[v] &= ~np.uint8(PTE_YOUNG)
    _guest_access(w, v)
    assert g.mem.flags[v] & PTE_YOUNG  # walked: a fill
    assert w.tlbs.totals(vm.tlb_rows)["fills"] == 2

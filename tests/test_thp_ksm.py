"""KSM with THP-backed guest RAM (host/ksm.py with host/huge_memory.py): merging a subpage
splits its THP first (``try_to_merge_one_page`` -> ``split_huge_page``), and only then; two
twins in one THP split it without merging; a COW after the merge takes a 4 KiB page;
khugepaged's scan counts KSM's ptes as ``hpage_collapse_scan_pmd`` does and a collapse
unmerges them; random worlds keep every invariant."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ConfigError, parse_scenario
from sim.engine import World
from sim.host.huge_memory import HPAGE_PMD_NR, THP_LARGE, THP_PMD
from sim.host.ksm import UNIQUE, ZERO
from sim.host.memory import PG_RESIDENT, PTE_PRESENT
from sim.kvm import spte as sp
from sim.kvm.fault import kvm_fault_nowait
from tests.conftest import run_checked, tiny


def _world(**ksm: Any) -> World:
    """Two idle VMs of one 2 MiB block each with KSM and THP on, on a roomy host; khugepaged
    is there but never woken (its scan is called by hand)."""
    raw: dict[str, Any] = {
        "name": "thp-ksm",
        "seed": 3,
        "duration_s": 0.01,
        "host": {
            "memory_mib": 64,
            "ksm": {"pages_to_scan": 2 * HPAGE_PMD_NR, **ksm},
            "thp": {"khugepaged": {"scan_sleep_ms": 3_600_000}},
        },
        "vms": [
            {
                "name": "vm",
                "count": 2,
                "memory_mib": 2,
                "content": {"image_share": 1.0, "image_mib": 2},
            }
        ],
    }
    return World(parse_scenario(raw))


def _keys(w: World, shared: dict[int, int], vms: tuple[int, ...] = (0, 1)) -> None:
    """Content keys by hand: gfn ``g`` of each VM in ``vms`` holds ``shared[g]``; the rest
    are unique."""
    w.ksm.key[:] = UNIQUE
    for i in vms:
        for gfn, key in shared.items():
            w.ksm.key[w.vms[i].mm.pid_base + gfn] = key


def _touch(w: World, vm: int, gfn: int, write: bool = False) -> None:
    """A guest access resolved through KVM's fault path (nothing here waits)."""
    v = w.vms[vm]
    pid = v.mm.pid_base + gfn
    got = kvm_fault_nowait(v.mmu, w.host_fault, w.costs, pid=pid, gfn=gfn, alias=0, write=write)
    assert got is not None


def _thps(w: World) -> None:
    """Each VM's first touch (a read: a write would make gfn 0's content its own) maps its
    block with a THP and KVM with a 2 MiB spte."""
    for vm in range(2):
        _touch(w, vm, 0)
    assert (w.mem.thp == THP_LARGE | THP_PMD).all()
    assert _stat(w, "thp_fault_alloc") == 2


def _scan(w: World, passes: int = 1) -> None:
    for _ in range(passes):
        w.ksm.ksm_do_scan(len(w.ksm.order))


def _stat(w: World, name: str) -> int:
    return int(w.vmstat.get(name, 0))


def _entries(w: World) -> int:
    """Folios on the LRU lists (a THP is one entry)."""
    return len(w.policy.inactive) + len(w.policy.active)


def test_merging_a_subpage_splits_its_thp_first_then_merges() -> None:
    w = _world()
    _keys(w, {0: 1})
    _thps(w)
    assert _entries(w) == 2
    _scan(w)  # the checksum gate: every page recorded, none split
    assert _stat(w, "thp_split_page") == 0
    _scan(w)  # vm0's gfn 0 in the unstable tree, vm1's finds it: both THPs split, one merge
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (1, 1)
    assert (_stat(w, "thp_split_pmd"), _stat(w, "thp_split_page")) == (2, 2)
    assert s.thp_splits == 2
    assert (w.mem.thp == 0).all()  # both blocks now hold base folios
    for vm in w.vms:  # the 2 MiB sptes were zapped with the PMDs (then the merged 4 KiB)
        assert not sp.is_present(vm.mmu.spte).any()
    # 512 base folios on the LRU for each THP, less vm0's merged page, whose frame was freed
    # (vm1's became the KSM folio and stays on the list)
    assert _entries(w) == 2 * HPAGE_PMD_NR - 1
    assert sum(w.policy.lru_sizes().values()) == 2 * HPAGE_PMD_NR - 1
    a, b = w.vms[0].mm.pid_base, w.vms[1].mm.pid_base
    assert w.mem.pfn[a] == w.mem.pfn[b]
    assert (w.mem.flags[a + 1 : a + HPAGE_PMD_NR] & PG_RESIDENT).all()  # the rest own theirs
    w.check()
    _scan(w, 2)  # nothing more to merge, nothing more to split
    assert _stat(w, "thp_split_page") == 2
    w.check()
    k = w.summary(0.0)["host"]["ksm"]
    assert (k["thp_splits"], k["thp_pmd_mapped_end"], k["huge_sptes_end"]) == (2, 0, 0)


def test_a_thp_with_no_duplicate_is_never_split() -> None:
    w = _world()
    _keys(w, {})
    _thps(w)
    _scan(w, 4)
    assert w.ksm.stats.pages_scanned == 4 * 2 * HPAGE_PMD_NR
    assert (_stat(w, "thp_split_pmd"), _stat(w, "thp_split_page")) == (0, 0)
    assert (w.mem.thp == THP_LARGE | THP_PMD).all()
    for vm in w.vms:
        assert sp.is_present(vm.mmu.spte).all()  # the 2 MiB sptes stay
    assert w.ksm.stats.pages_shared == 0
    w.check()
    k = w.summary(0.0)["host"]["ksm"]
    assert (k["thp_splits"], k["thp_pmd_mapped_end"], k["huge_sptes_end"]) == (0, 2, 2)


def test_twins_in_one_thp_split_it_without_merging_then_merge_next_pass() -> None:
    w = _world()
    _keys(w, {0: 1, 1: 1}, vms=(0,))
    _thps(w)
    _scan(w, 2)  # gfn 1 meets gfn 0 of its own THP: the split fails with both pinned
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (0, 0)
    assert _stat(w, "thp_split_page") == 1  # cmp_and_merge_page splits it afterwards
    assert w.mem.thp[0] == 0
    assert w.mem.thp[1] == THP_LARGE | THP_PMD
    w.check()
    _scan(w)  # now two base folios: they merge
    assert (s.pages_shared, s.pages_sharing) == (1, 1)
    assert _stat(w, "thp_split_page") == 1
    w.check()


def test_use_zero_pages_splits_then_maps_the_zero_page() -> None:
    w = _world(use_zero_pages=True)
    _keys(w, {7: ZERO}, vms=(1,))
    _thps(w)
    _scan(w, 2)
    assert w.ksm.stats.ksm_zero_pages == 1
    assert _stat(w, "thp_split_page") == 1
    assert w.mem.thp[0] == THP_LARGE | THP_PMD
    assert w.mem.thp[1] == 0
    w.check()


def test_cow_after_the_merge_takes_a_4k_page_in_the_split_block() -> None:
    w = _world()
    _keys(w, {0: 1})
    _thps(w)
    _scan(w, 2)
    a = w.vms[0].mm.pid_base
    kpfn = int(w.mem.pfn[a])
    free = w.mem.nr_free
    _touch(w, 0, 0, write=True)  # do_wp_page on the KSM page
    s = w.ksm.stats
    assert s.cow_ksm == 1
    assert (s.pages_shared, s.pages_sharing) == (1, 0)
    assert w.mem.nr_free == free - 1  # one 4 KiB copy, no THP
    assert w.mem.pfn[a] != kpfn
    assert w.mem.flags[a] & PG_RESIDENT
    assert w.mem.thp[0] == 0  # the block stays split
    _touch(w, 0, 9)  # another page of the block: a 4 KiB spte, not 2 MiB
    spte = w.vms[0].mmu.spte
    assert sp.is_present(spte[9])
    assert not sp.is_present(spte[10])
    assert _stat(w, "thp_fault_alloc") == 2
    w.check()


def test_khugepaged_counts_ksm_ptes_and_a_collapse_unmerges_them() -> None:
    w = _world()
    _keys(w, {g: 1 + g for g in range(HPAGE_PMD_NR)})  # every page has its twin
    _thps(w)
    _scan(w, 3)  # the last pair meets after the unstable tree's reset at the wrap
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (HPAGE_PMD_NR, HPAGE_PMD_NR)
    k = w.khugepaged
    assert k is not None
    assert not k.scan_pmd(0)  # 512 shared ptes: over max_ptes_shared (256)
    for gfn in range(HPAGE_PMD_NR):  # vm1 writes every page: each KSM page mapped once
        _touch(w, 1, gfn, write=True)
    assert s.cow_ksm == HPAGE_PMD_NR
    assert not k.scan_pmd(0)  # vm0's block maps KSM pages only, read-only: SCAN_PAGE_RO
    _touch(w, 0, 3, write=True)  # one writable page
    assert k.scan_pmd(0)
    free = w.mem.nr_free
    k.collapse(0, int(w.env.now))
    assert _stat(w, "thp_collapse_alloc") == 1
    assert w.mem.thp[0] == THP_LARGE | THP_PMD
    # the 511 KSM pages left with their last sharer: their frames and vm0's copy are freed
    assert (s.pages_shared, s.pages_sharing) == (0, 0)
    assert w.mem.nr_free == free  # 511 KSM frames and one copy freed, 512 taken
    assert (w.mem.ksm_node[:HPAGE_PMD_NR] == -1).all()
    w.check()


def test_khugepaged_collapses_over_few_shared_ksm_pages() -> None:
    w = _world()
    _keys(w, {g: 1 + g for g in range(300)})
    _thps(w)
    _scan(w, 2)
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (300, 300)
    k = w.khugepaged
    assert k is not None
    assert not k.scan_pmd(0)  # 300 shared ptes: SCAN_EXCEED_SHARED_PTE
    for gfn in range(44):  # vm1 writes 44 of them: 256 left mapped twice
        _touch(w, 1, gfn, write=True)
    assert k.scan_pmd(0)  # 256 shared ptes (max_ptes_shared), 212 writable pages
    k.collapse(0, int(w.env.now))
    assert (s.pages_shared, s.pages_sharing) == (256, 0)  # vm1 still maps 256 KSM pages
    assert s.cow_ksm == 44  # vm1's writes only: a collapse's copy is no COW fault
    w.check()


def test_no_thp_over_a_block_of_swapped_ksm_sharers() -> None:
    w = _world()
    thp = w.thp
    assert thp is not None
    pid = w.vms[0].mm.pid_base + 5
    assert thp.huge_candidate(pid)
    w.mem.ksm_node[pid] = 0  # a sharer whose KSM folio is in swap: no flags, no frame
    assert not thp.huge_candidate(pid)
    assert thp.huge_fault(pid + 1) == -1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"reclaim": {"policy": "mglru"}}, "reclaim.policy: two_list"),
        ({"kvm": {"mmu": "shadow"}}, "kvm.mmu: tdp or legacy_tdp"),
    ],
)
def test_combinations_not_modelled_are_one_line_errors(changes: dict[str, Any], field: str) -> None:
    raw: dict[str, Any] = {
        "name": "x",
        "duration_s": 0.01,
        "host": {"memory_mib": 64, "ksm": {}, "thp": {}},
        "vms": [{"name": "vm", "memory_mib": 2, "content": {"image_share": 0.5}}],
        **changes,
    }
    with pytest.raises((ConfigError, ValueError)) as e:
        parse_scenario(raw)
    msg = str(e.value)
    assert field in msg
    assert "host.thp" in msg
    assert "\n" not in msg.strip()


@settings(max_examples=20)
@given(
    seed=st.integers(0, 2**16),
    host_mib=st.sampled_from([12, 16, 20]),
    zero=st.sampled_from([0.0, 0.3]),
    image=st.sampled_from([0.2, 0.7]),
    use_zero=st.booleans(),
    write_ratio=st.sampled_from([0.0, 0.2]),
    memcg=st.sampled_from([None, {"max_mib": 6}]),
    swap=st.sampled_from([{}, {"zswap": {"enabled": True}}, {"device": "zram"}]),
    thp_swap=st.booleans(),
)
def test_random_thp_ksm_worlds_keep_every_invariant(
    seed: int,
    host_mib: int,
    zero: float,
    image: float,
    use_zero: bool,
    write_ratio: float,
    memcg: dict[str, int] | None,
    swap: dict[str, Any],
    thp_swap: bool,
) -> None:
    """Random worlds with KSM and THP (two 8 MiB guests on 12 to 20 MiB: swapping, or with
    room for khugepaged to collapse what ksmd split; whole and split swap-outs, memcgs or
    not, a disk, zswap or zram) keep World.check, and ksmd's splits are among the splits
    vmstat counts."""
    extra: dict[str, Any] = {} if memcg is None else {"vms__0__memcg": memcg}
    extra.update({f"swap__{k}": v for k, v in swap.items()})
    sc = tiny(
        **extra,
        seed=seed,
        duration_s=0.02,
        host__memory_mib=host_mib,
        host__ksm={"pages_to_scan": 1000, "sleep_ms": 0.5, "use_zero_pages": use_zero},
        host__thp={
            "swap": thp_swap,
            "khugepaged": {"pages_to_scan": 2048, "scan_sleep_ms": 1},
        },
        vms__0__write_ratio=write_ratio,
        vms__0__content={"zero_share": zero, "image_share": image, "image_mib": 2},
    )
    w = World(sc)
    run_checked(w, every_ns=2_000_000)
    s = w.ksm.stats
    assert s.pages_scanned > 0
    assert s.thp_splits <= _stat(w, "thp_split_page")
    present = (w.mem.flags & PTE_PRESENT) != 0
    assert int(present[w.mem.ksm_node >= 0].sum()) <= s.pages_shared + s.pages_sharing

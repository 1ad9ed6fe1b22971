"""KSM (sim/host/ksm.py): merging by hand-counted content, the checksum gate, COW, the rmap
walk over every sharer, the zero page, the config's errors and the invariants of random runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import ConfigError, parse_scenario
from sim.engine import World
from sim.guest.tlb import NO_ROWS, GuestTlbs, TlbGeometry, tlb_touch
from sim.host.ksm import UNIQUE, ZERO
from sim.host.memory import NO_PFN, PG_RESIDENT, PG_SWAP, PTE_PRESENT, PTE_YOUNG
from sim.host.vmscan import Outcome, ScanControl
from sim.kvm.fault import FaultKind, kvm_fault_nowait
from sim.kvm.spte import (
    SPTE_ACCESSED,
    SPTE_DIRTY,
    SPTE_PRESENT,
    SPTE_WRITE_PROTECTED,
    is_write_protected,
)
from sim.reclaim.mglru import LRU_REFS_MASK, PG_REFERENCED, PG_WORKINGSET
from tests.conftest import TINY, drive, run_checked, tiny

PAGES = 256  # pages of each 1 MiB VM


def _world(
    count: int = 2,
    memcg: dict[str, Any] | None = None,
    policy: str = "two_list",
    swap: dict[str, Any] | None = None,
    kvm: dict[str, Any] | None = None,
    **ksm: Any,
) -> World:
    """``count`` idle 1 MiB VMs with KSM on, on a roomy host (no reclaim); with ``memcg`` each
    VM in a memcg of those settings; ``swap`` and ``kvm``: those sections."""
    raw: dict[str, Any] = {
        "name": "ksm",
        "seed": 3,
        "duration_s": 0.01,
        "host": {"memory_mib": 64, "ksm": {"pages_to_scan": 2 * PAGES, **ksm}},
        "vms": [
            {
                "name": "vm",
                "count": count,
                "memory_mib": 1,
                "content": {"image_share": 1.0, "image_mib": 1},
            }
        ],
    }
    if memcg is not None:
        raw["vms"][0]["memcg"] = memcg
    raw["reclaim"] = {"policy": policy}
    if swap is not None:
        raw["swap"] = swap
    if kvm is not None:
        raw["kvm"] = kvm
    return World(parse_scenario(raw))


def _fault_all(w: World, write: bool = False) -> None:
    """Every guest page faulted in through KVM (read faults map sptes writable)."""
    for vm in w.vms:
        for gfn in range(vm.mm.nr_pages):
            pid = vm.mm.pid_base + gfn
            got = kvm_fault_nowait(
                vm.mmu, w.host_fault, w.costs, pid=pid, gfn=gfn, alias=0, write=write
            )
            assert got is not None


def _keys(w: World, shared: dict[int, int]) -> None:
    """Content keys by hand: gfn ``g`` of every VM holds ``shared[g]``; the rest are unique."""
    w.ksm.key[:] = UNIQUE
    for vm in w.vms:
        for gfn, key in shared.items():
            w.ksm.key[vm.mm.pid_base + gfn] = key


def _scan(w: World, passes: int = 1) -> None:
    """``passes`` full scans of every VM's pages."""
    for _ in range(passes):
        w.ksm.ksm_do_scan(len(w.ksm.order))


def test_two_vms_of_one_image_merge_as_counted_by_hand() -> None:
    w = _world()
    _keys(w, {0: 1, 1: 2, 2: 3, 3: 4})
    _fault_all(w)
    free = w.mem.nr_free
    _scan(w)  # first visit: checksums recorded, nothing merges (the gate)
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing, s.pages_unshared) == (0, 0, 0)
    assert s.pages_volatile == 2 * PAGES
    _scan(w)  # vm0's pages enter the unstable tree; vm1's gfns 0-3 find them
    assert (s.pages_shared, s.pages_sharing) == (4, 4)
    assert s.pages_unshared == 2 * (PAGES - 4)  # the unique pages sit in the unstable tree
    assert s.full_scans == 2
    assert w.mem.nr_free == free + 4  # one frame saved per pair
    assert s.work.nr_tlb_flushes == 8  # each merged page's spte zapped and flushed
    a, b = w.vms[0].mm.pid_base, w.vms[1].mm.pid_base
    assert w.mem.pfn[a] == w.mem.pfn[b]  # both map the KSM frame
    node = w.mem.frame_pid[w.mem.pfn[a]]
    assert node >= w.ksm.node_base  # owned by the stable node, not by either page
    assert w.mem.flags[b] & ~np.uint8(PTE_PRESENT | PTE_YOUNG) == 0
    assert w.vms[0].mmu.spte[0] == 0  # zapped by the merge
    w.check()
    _scan(w)  # nothing more to merge
    assert (s.pages_shared, s.pages_sharing) == (4, 4)
    w.check()


def test_a_pool_with_no_free_node_merges_on_a_later_pass() -> None:
    """Nodes are provided for every mergeable page; should every one still be a folio under
    write-out, the pair waits in the unstable tree for a later pass instead of failing."""
    w = _world()
    assert w.ksm.nr_nodes == 2 * PAGES  # image_share 1.0: every page of both VMs mergeable
    _keys(w, {0: 1, 1: 2})
    _fault_all(w)
    _scan(w)  # the checksum gate
    kept = w.ksm._free_nodes[0][:]
    w.ksm._free_nodes[0].clear()
    _scan(w)
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (0, 0)
    w.check()
    w.ksm._free_nodes[0][:] = kept
    _scan(w)
    assert (s.pages_shared, s.pages_sharing) == (2, 2)
    w.check()


def test_the_checksum_gate_delays_a_written_page_one_pass() -> None:
    w = _world()
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w)
    w.mem.written[w.vms[1].mm.pid_base] = 1  # the guest wrote vm1's gfn 0: now unique
    _scan(w)
    assert w.ksm.stats.pages_shared == 0
    assert w.ksm.key[w.vms[1].mm.pid_base] == UNIQUE


def test_max_page_sharing_starts_another_node() -> None:
    w = _world(count=5, max_page_sharing=2)
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (2, 2)  # 2 + 2 sharers; the fifth waits
    w.check()


def test_a_guest_write_breaks_the_sharing_with_a_copy() -> None:
    w = _world()
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    vm = w.vms[1]
    pid = vm.mm.pid_base
    r = kvm_fault_nowait(vm.mmu, w.host_fault, w.costs, pid=pid, gfn=0, alias=0, write=False)
    assert r is not None
    assert r[0] == FaultKind.MINOR
    assert is_write_protected(vm.mmu.spte[0])  # a read maps the KSM page read-only
    kpfn = w.mem.pfn[pid]
    free = w.mem.nr_free
    r = kvm_fault_nowait(vm.mmu, w.host_fault, w.costs, pid=pid, gfn=0, alias=0, write=True)
    assert r is not None
    assert r[1] == w.costs.first_touch_ns
    s = w.ksm.stats
    assert s.cow_ksm == 1
    assert w.mem.nr_free == free - 1  # the copy's frame
    assert w.mem.pfn[pid] != kpfn
    assert w.mem.frame_pid[w.mem.pfn[pid]] == pid
    assert w.mem.flags[pid] & PG_RESIDENT
    assert not vm.mmu.spte[0] & SPTE_WRITE_PROTECTED
    assert (s.pages_shared, s.pages_sharing) == (1, 0)  # the node keeps its other sharer
    w.check()
    a = w.vms[0].mm.pid_base  # its last sharer's write frees the KSM page
    free = w.mem.nr_free
    kvm_fault_nowait(w.vms[0].mmu, w.host_fault, w.costs, pid=a, gfn=0, alias=0, write=True)
    assert s.pages_shared == 0
    assert w.mem.nr_free == free
    w.check()


def test_aging_a_ksm_folio_walks_every_sharer() -> None:
    n = 3
    w = _world(count=n)
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    assert w.ksm.stats.pages_sharing == n - 1
    kpfn = np.array([w.mem.pfn[w.vms[0].mm.pid_base]], dtype=np.int64)
    pids = [vm.mm.pid_base for vm in w.vms]
    w.mem.flags[pids] |= np.uint8(PTE_YOUNG)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    young = w.vmscan.folio_referenced(kpfn, sc)
    assert young.tolist() == [True]
    assert sc.nr_rmap_walked == n  # rmap_walk_ksm: one mapping per sharer
    assert sc.nr_notifier_calls == n  # and a notifier call (KVM rmap walk) for each
    assert not (w.mem.flags[pids] & PTE_YOUNG).any()
    assert w.vmscan.multi_referenced(kpfn).tolist() == [True]  # referenced_ptes > 1
    other = np.array([w.mem.pfn[w.vms[0].mm.pid_base + 1]], dtype=np.int64)
    w.vmscan.folio_referenced(other, ScanControl(nr_to_reclaim=32, vmstat=w.vmstat))
    assert w.vmscan.multi_referenced(kpfn).tolist() == [False]  # that batch's answer only
    w.mem.flags[pids] |= np.uint8(PTE_YOUNG)
    w.vmscan.folio_referenced(kpfn, ScanControl(nr_to_reclaim=32, vmstat=w.vmstat))
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    assert w.vmscan.folio_referenced(kpfn, sc).tolist() == [False]
    assert w.vmscan.multi_referenced(kpfn).tolist() == [False]
    w.check()


def _evicted(n: int, memcg: dict[str, Any] | None = None) -> tuple[World, int, ScanControl]:
    """``n`` VMs sharing one KSM page, which reclaim then takes: (world, node pid, pass)."""
    w = _world(count=n, memcg=memcg)
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    for vm in w.vms:  # each sharer's spte read-only, as after a read fault
        pid = vm.mm.pid_base
        kvm_fault_nowait(vm.mmu, w.host_fault, w.costs, pid=pid, gfn=0, alias=0, write=False)
    kpfn = np.array([w.mem.pfn[w.vms[0].mm.pid_base]], dtype=np.int64)
    npid = int(w.mem.frame_pid[kpfn[0]])
    used = w.swap.nr_slots - w.swap.nr_free_slots
    w.policy.folio_remove(kpfn)  # isolated, as shrink_inactive_list hands it over
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    out = w.vmscan.shrink_folio_list(kpfn, sc)
    assert out.tolist() == [Outcome.KEEP]  # its write started (a disk: asynchronous)
    assert w.swap.nr_slots - w.swap.nr_free_slots == used + 1  # one slot for N sharers
    return w, npid, sc


def test_evicting_a_ksm_folio_zaps_every_sharer_and_takes_one_slot() -> None:
    n = 3
    w, npid, sc = _evicted(n)
    assert sc.nr_rmap_walked == n  # try_to_unmap walked every sharer
    assert sc.nr_tlb_flushes == n  # a zap and a flush in each VM
    for vm in w.vms:
        assert vm.mmu.spte[0] == 0
        assert w.mem.flags[vm.mm.pid_base] == 0  # a swap entry to the folio's slot
    assert w.ksm.stats.pages_shared == 1  # still in the swap cache: still a KSM page
    w.policy.folio_add_lru(int(w.mem.pfn[npid]), None)  # kept: back on the LRU
    w.check()
    vm = w.vms[1]  # a fault while it is in the swap cache maps it again, still KSM
    r = kvm_fault_nowait(
        vm.mmu, w.host_fault, w.costs, pid=vm.mm.pid_base, gfn=0, alias=0, write=False
    )
    assert r is not None
    assert r[0] == FaultKind.MINOR
    assert is_write_protected(vm.mmu.spte[0])
    assert w.mem.pfn[vm.mm.pid_base] == w.mem.pfn[npid]
    w.check()


def test_a_swapped_ksm_folio_is_read_once_and_copied_for_the_others() -> None:
    n = 3
    w, npid, _ = _evicted(n)
    w.policy.folio_add_lru(int(w.mem.pfn[npid]), None)
    w.env.run(until=w.env.now + 50_000_000)  # the write ends
    kpfn = np.array([w.mem.pfn[npid]], dtype=np.int64)
    w.policy.folio_remove(kpfn)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    assert w.vmscan.shrink_folio_list(kpfn, sc).tolist() == [Outcome.FREED]
    s = w.ksm.stats
    assert s.pages_shared == 0  # pruned from the stable tree: its page is gone
    assert s.pages_sharing == 0
    assert w.mem.flags[npid] & PG_SWAP
    w.check()
    used = w.swap.nr_slots - w.swap.nr_free_slots
    kinds = []
    for vm in w.vms:
        pid = vm.mm.pid_base
        proc = w.env.process(w.host_fault.handle_mm_fault(pid, False))
        w.env.run(until=proc)
        kinds.append(proc.value)
        w.check()
    assert [str(k) for k in kinds] == ["major", "swapcache", "swapcache"]
    assert s.ksm_swpin_copy == n - 1
    assert w.swap.nr_slots - w.swap.nr_free_slots == used - 1  # the last reference freed it
    assert w.mem.flags[npid] == 0
    assert [w.ksm.key[vm.mm.pid_base] for vm in w.vms] == [1] * n  # read back, same content
    w.check()


def test_use_zero_pages_maps_the_zero_page() -> None:
    w = _world(use_zero_pages=True)
    _keys(w, {0: ZERO, 1: ZERO})
    _fault_all(w)
    free = w.mem.nr_free
    _scan(w, 2)
    s = w.ksm.stats
    assert s.ksm_zero_pages == 4
    assert s.pages_shared == 0
    assert w.mem.nr_free == free + 4
    pid = w.vms[0].mm.pid_base
    assert w.mem.pfn[pid] == NO_PFN
    assert w.mem.flags[pid] & PTE_PRESENT
    w.check()
    vm = w.vms[0]
    kvm_fault_nowait(vm.mmu, w.host_fault, w.costs, pid=pid, gfn=0, alias=0, write=True)
    assert s.ksm_zero_pages == 3
    assert s.cow_ksm == 0
    w.check()


def test_oom_exit_leaves_the_ksm_pages() -> None:
    w = _world()
    _keys(w, {0: 1, 1: 2})
    _fault_all(w)
    _scan(w, 2)
    w.oom.kill(w.vms[1].mm)
    s = w.ksm.stats
    assert (s.pages_shared, s.pages_sharing) == (2, 0)
    w.check()
    w.oom.kill(w.vms[0].mm)
    assert s.pages_shared == 0
    assert s.rmap_items == 0
    assert s.pages_unshared == 0
    w.check()


def _raw(**host: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "duration_s": 0.01,
        "host": {"memory_mib": 64, "ksm": {}, **host},
        "vms": [{"name": "a", "memory_mib": 4, "content": {"zero_share": 0.5}}],
    }
    return raw


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r["vms"][0]["content"].update(image_share=0.6), "exceed 1"),
        (lambda r: r["host"].pop("ksm"), "content: needs host.ksm"),
        (lambda r: r["vms"][0].update(prefault=True), "host.ksm: KSM is modelled so far only with"),
        (
            lambda r: r.update(reclaim={"policy": "mglru", "notifier_walk": False}),
            "reclaim.notifier_walk: true",
        ),
        (lambda r: r.update(reclaim={"policy": "clock"}), "reclaim.policy clock replays"),
        (
            lambda r: r.update(reclaim={"policy": "opt", "trigger": "demand"}),
            "reclaim.trigger demand replays accesses",
        ),
        (lambda r: r["host"]["ksm"].update(max_page_sharing=1), "max_page_sharing"),
        (
            lambda r: r["vms"].append({"name": "b", "memory_mib": 4, "content": {"image_mib": 8}}),
            "image_mib",
        ),
    ],
)
def test_config_errors_are_one_line(change: Any, needle: str) -> None:
    raw = _raw()
    change(raw)
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    assert needle in str(e.value)
    assert "\n" not in str(e.value).strip()


def test_off_by_default_leaves_dumps_and_hashes_alone() -> None:
    sc = tiny()
    assert "ksm" not in sc.model_dump()["host"]
    assert "content" not in sc.model_dump()["vms"][0]
    on = tiny(host__ksm={})
    assert on.config_hash() != sc.config_hash()


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 1000),
    zero=st.floats(0.0, 0.5),
    image=st.floats(0.0, 0.5),
    use_zero=st.booleans(),
    sharing=st.integers(2, 8),
    write_ratio=st.sampled_from([0.0, 0.3]),
    ept_ad=st.booleans(),
    memcg=st.sampled_from([None, {}, {"max_mib": 3}, {"max_mib": 3, "swap_max_mib": 1}]),
    policy=st.sampled_from(["two_list", "mglru"]),
    swap=st.sampled_from(
        [{}, {"zswap": {"enabled": True}}, {"device": "zram"}, {"rotational": True}]
    ),
    shadow=st.booleans(),
    files=st.booleans(),
    tlb=st.booleans(),
)
def test_random_ksm_worlds_keep_every_invariant(
    seed: int,
    zero: float,
    image: float,
    use_zero: bool,
    sharing: int,
    write_ratio: float,
    ept_ad: bool,
    memcg: dict[str, int] | None,
    policy: str,
    swap: dict[str, Any],
    shadow: bool,
    files: bool,
    tlb: bool,
) -> None:
    """Random KSM worlds, two-list or MGLRU, with or without a memcg per VM (limit reclaim
    and memory.swap.max taking KSM folios charged to one VM and mapped by the other), on a
    disk (rotational or not), behind zswap or on zram, with TDP or shadow paging, with or
    without a host page cache and guest TLBs, keep World.check."""
    extra: dict[str, Any] = {} if memcg is None else {"vms__0__memcg": memcg}
    extra.update({f"swap__{k}": v for k, v in swap.items()})
    if shadow:
        extra["kvm__mmu"] = "shadow"
    if files:
        extra["host_files"] = {"size_mib": 2, "access_rate_per_s": 20000}
    if tlb:
        extra["vms__0__guest_tlb"] = {"entries": 64, "ways": 4}
    sc = tiny(
        **extra,
        reclaim={"policy": policy},
        seed=seed,
        duration_s=0.02,
        host__ksm={
            "pages_to_scan": 500,
            "sleep_ms": 0.5,
            "use_zero_pages": use_zero,
            "max_page_sharing": sharing,
        },
        kvm__ept_ad_bits=ept_ad,
        vms__0__write_ratio=write_ratio,
        vms__0__content={"zero_share": zero, "image_share": image, "image_mib": 2},
    )
    w = World(sc)
    run_checked(w, every_ns=2_000_000)
    assert w.ksm.stats.pages_scanned > 0
    assert TINY["vms"][0]["count"] == 2


def test_same_config_and_seed_give_the_same_run() -> None:
    def run() -> tuple[dict[str, int], dict[str, int]]:
        sc = tiny(
            duration_s=0.03,
            host__ksm={"pages_to_scan": 800, "sleep_ms": 0.5},
            vms__0__content={"zero_share": 0.2, "image_share": 0.6, "image_mib": 2},
        )
        w = World(sc)
        w.run()
        return w.ksm.stats.summary(), dict(w.vmstat.items())

    assert run() == run()


# -- memcgs ----------------------------------------------------------------------------------
def _usage(w: World) -> list[int]:
    """Each VM memcg's memory.current, in pages."""
    assert w.memcg is not None
    return [w.memcg.usage(vm.index) for vm in w.vms]


def test_a_ksm_folio_stays_charged_to_the_memcg_of_the_page_it_was_made_of() -> None:
    w = _world(memcg={})
    _keys(w, {0: 1, 1: 2})
    _fault_all(w)
    assert _usage(w) == [PAGES, PAGES]
    _scan(w, 2)  # vm1's gfns 0-1 find vm0's in the unstable tree: the nodes are vm1's frames
    assert (w.ksm.stats.pages_shared, w.ksm.stats.pages_sharing) == (2, 2)
    assert _usage(w) == [PAGES - 2, PAGES]  # vm0's two frames freed (uncharged); vm1 keeps its
    assert [w.ksm.charged(0), w.ksm.charged(1)] == [0, 2]
    st0, st1 = w.memcg.stat(0), w.memcg.stat(1)
    assert (st0["ksm_pages"], st0["ksm_merging_pages"]) == (0, 2)
    assert (st1["ksm_pages"], st1["ksm_merging_pages"]) == (2, 2)
    w.check()
    vm1, vm0 = w.vms[1], w.vms[0]
    p1, p0 = vm1.mm.pid_base, vm0.mm.pid_base
    kvm_fault_nowait(vm1.mmu, w.host_fault, w.costs, pid=p1, gfn=0, alias=0, write=True)
    assert w.ksm.stats.cow_ksm == 1
    assert _usage(w) == [PAGES - 2, PAGES + 1]  # the copy is vm1's; the folio still charged
    w.check()
    kvm_fault_nowait(vm0.mmu, w.host_fault, w.costs, pid=p0, gfn=0, alias=0, write=True)
    assert _usage(w) == [PAGES - 1, PAGES]  # vm0's copy charged; the freed folio uncharged
    assert [w.ksm.charged(0), w.ksm.charged(1)] == [0, 1]
    assert [int(w.ksm.merging[0]), int(w.ksm.merging[1])] == [1, 1]
    w.check()


def test_reclaiming_a_ksm_folio_walks_the_other_memcg_and_charges_its_own_swap() -> None:
    w, npid, sc = _evicted(3, memcg={})
    assert w.memcg is not None
    owner = w.ksm.node_mm[npid - w.ksm.node_base]
    # vm1's page found vm0's in the unstable tree (the node is vm1's frame); vm2's joined it
    assert owner == 1
    assert w.memcg.memcgs_of(np.array([npid])).tolist() == [1]
    assert sc.nr_rmap_walked == 3
    assert w.ksm.stats.rmap_walked_other_memcg == 2  # vm0's and vm2's sharers
    assert w.memcg.swap_usage.tolist() == [0, 1, 0]  # its one slot, charged as its folio is
    pfn = int(w.mem.pfn[npid])
    w.policy.folio_add_lru(pfn, None)
    assert w.policy._lruvec(pfn) is w.policy.lruvecs[1]  # on its memcg's lruvec
    w.check()


def test_a_swapped_ksm_folio_is_charged_to_each_faulting_memcg() -> None:
    w, npid, _ = _evicted(3, memcg={})
    assert w.memcg is not None
    w.policy.folio_add_lru(int(w.mem.pfn[npid]), None)
    w.env.run(until=w.env.now + 50_000_000)  # the write ends
    kpfn = np.array([w.mem.pfn[npid]], dtype=np.int64)
    w.policy.folio_remove(kpfn)
    before = _usage(w)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat, target_memcg=1)
    assert w.vmscan.shrink_folio_list(kpfn, sc).tolist() == [Outcome.FREED]
    assert _usage(w) == [before[0], before[1] - 1, before[2]]  # the folio's memcg uncharged
    w.check()
    for k, vm in enumerate(w.vms):
        proc = w.env.process(w.host_fault.handle_mm_fault(vm.mm.pid_base, False))
        w.env.run(until=proc)
        after = [u + (1 if i <= k else 0) for i, u in enumerate(before)]
        after[1] -= 1
        assert _usage(w) == after  # each sharer's page charged to its own memcg
        w.check()
    assert w.memcg.swap_usage.tolist() == [0, 0, 0]  # the slot left with the last sharer


def test_limit_reclaim_of_one_memcg_takes_its_ksm_folio_from_every_sharer() -> None:
    w = _world(count=3, memcg={})
    assert w.memcg is not None
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    npid = w.ksm.node_of(w.vms[0].mm.pid_base)
    assert w.ksm.node_mm[npid - w.ksm.node_base] == 1
    proc = w.env.process(w.memcg.try_to_free_mem_cgroup_pages(1, 2 * PAGES))
    w.env.run(until=proc)
    assert not (w.mem.flags[[vm.mm.pid_base for vm in w.vms]] & PTE_PRESENT).any()
    assert w.mem.flags[npid] & PG_SWAP
    assert w.ksm.stats.rmap_walked_other_memcg >= 2  # vm0's and vm2's mappings unmapped
    assert w.memcg.swap_usage[[0, 2]].tolist() == [0, 0]  # nothing of theirs swapped
    w.check()


# -- MGLRU -----------------------------------------------------------------------------------
def _mglru_shared(memcg: dict[str, Any] | None = None) -> tuple[World, int, list[int]]:
    """Three MGLRU VMs sharing gfn 0's KSM folio, every pte old and no folio with refs:
    (world, the folio's pfn, the sharers' pids)."""
    w = _world(count=3, memcg=memcg, policy="mglru")
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    pol = w.policy
    lruvecs = pol.lruvecs if memcg is not None else [pol]
    for lv in lruvecs:
        lv._lru_add_drain()
    ptes = w.vmscan.walk_mm()
    pfns = w.vmscan.pte_pfns(ptes)
    w.vmscan.clear_young_ptes(ptes, pfns, ScanControl(nr_to_reclaim=32, vmstat=w.vmstat))
    for lv in lruvecs:
        lv.fl[:] &= np.uint8(~(PG_REFERENCED | PG_WORKINGSET | LRU_REFS_MASK) & 0xFF)
    sharers = [vm.mm.pid_base for vm in w.vms]
    return w, int(w.mem.pfn[sharers[0]]), sharers


def _age_mglru(w: World, lv: Any, reclaim: Any) -> int:
    """One aging walk of lruvec ``lv`` to completion; returns the walk's max_seq."""
    seq = lv.max_seq
    sc = ScanControl(nr_to_reclaim=32, priority=1, vmstat=w.vmstat)
    assert drive(lv._try_to_inc_max_seq(seq, sc, reclaim, lv.cfg.swappiness)) is True
    return seq


def test_mglru_walk_meets_a_ksm_folio_once_per_sharer_pte() -> None:
    w, kpfn, sharers = _mglru_shared()
    ptes = w.vmscan.walk_mm()
    npid = int(w.mem.frame_pid[kpfn])
    assert npid not in ptes.tolist()  # the stable node is no pte
    assert int(np.count_nonzero(w.vmscan.pte_pfns(ptes) == kpfn)) == 3
    w.mem.flags[[sharers[0], sharers[2]]] |= np.uint8(PTE_YOUNG)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    three = np.array(sharers, dtype=np.int64)
    young = w.vmscan.clear_young_ptes(three, w.vmscan.pte_pfns(three), sc)
    assert young.tolist() == [True, False, True]  # each pte alone, not the folio's rmap
    assert (sc.nr_rmap_walked, sc.nr_notifier_calls) == (3, 3)
    pol = w.policy
    w.mem.flags[[sharers[0]]] |= np.uint8(PTE_YOUNG)  # one young pte: a first sighting
    walk_young = w.vmstat["mglru_walk_young"]
    seq = _age_mglru(w, pol, w.vmscan)
    assert w.vmstat["mglru_walk_young"] - walk_young == 1
    assert pol.fl[kpfn] & PG_REFERENCED
    assert pol.seq[kpfn] < seq
    pol.fl[kpfn] &= np.uint8(~PG_REFERENCED & 0xFF)
    w.mem.flags[[sharers[0], sharers[2]]] |= np.uint8(PTE_YOUNG)  # two: a second sighting
    seq = _age_mglru(w, pol, w.vmscan)
    assert w.vmstat["mglru_walk_young"] - walk_young == 3
    assert pol.seq[kpfn] == seq  # promoted to the walk's max_seq
    assert pol.fl[kpfn] & PG_WORKINGSET
    w.check()


def test_mglru_memcg_walk_meets_a_ksm_folio_only_through_its_own_memcgs_pte() -> None:
    w, kpfn, sharers = _mglru_shared(memcg={})
    assert w.ksm.node_mm[int(w.mem.frame_pid[kpfn]) - w.ksm.node_base] == 1
    pol = w.policy
    met = []
    for m in range(3):  # get_pfn_folio skips a folio of another memcg
        view = pol._reclaimer(m, w.vmscan)
        ptes = view.walk_mm()
        met.append([int(p) for p in ptes[w.vmscan.pte_pfns(ptes) == kpfn]])
    assert met == [[], [sharers[1]], []]
    w.mem.flags[[sharers[0]]] |= np.uint8(PTE_YOUNG)  # vm0's pte: no memcg's walk sees it
    _age_mglru(w, pol.lruvecs[1], pol._reclaimer(1, w.vmscan))
    assert not pol.lruvecs[1].fl[kpfn] & (PG_REFERENCED | PG_WORKINGSET)
    assert w.mem.flags[sharers[0]] & PTE_YOUNG
    w.check()


@pytest.mark.parametrize(("memcg", "around"), [(None, 63), ({}, 0)])
def test_mglru_look_around_a_ksm_folio_runs_around_its_young_ptes(
    memcg: dict[str, Any] | None, around: int
) -> None:
    """vm0's young pte of the folio: its 63 neighbours in vm0's PMD window are looked at,
    unless memcgs put them (vm0's own folios) in another memcg than the folio (vm1's)."""
    w, kpfn, sharers = _mglru_shared(memcg=memcg)
    w.mem.flags[[sharers[0]]] |= np.uint8(PTE_YOUNG)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    assert w.vmscan.clear_young(np.array([kpfn], dtype=np.int64), sc).tolist() == [True]
    assert sc.nr_rmap_walked == 3  # the centre folio: rmap_walk_ksm over every sharer
    near = w.vmscan.lookaround(kpfn)
    assert len(near) == around
    if around:
        assert near.tolist() == list(range(sharers[0] + 1, sharers[0] + 64))
    w.check()


# -- zswap and zram --------------------------------------------------------------------------
@pytest.mark.parametrize("swap", [{"zswap": {"enabled": True}}, {"device": "zram"}])
def test_a_ksm_folio_is_compressed_once_for_all_its_sharers(swap: dict[str, Any]) -> None:
    w = _world(count=3, swap=swap)
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    kpfn = np.array([w.mem.pfn[w.vms[0].mm.pid_base]], dtype=np.int64)
    npid = int(w.mem.frame_pid[kpfn[0]])
    pool = w.swap.zpool
    assert pool is not None
    first = w.vms[1].mm.pid_base  # the page the folio was made of
    assert pool.obj_bytes[npid] == pool.obj_bytes[first]  # its content, its compressed size
    before = dict(w.vmstat.items())
    w.policy.folio_remove(kpfn)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    assert w.vmscan.shrink_folio_list(kpfn, sc).tolist() == [Outcome.FREED]  # done at once
    assert pool.nr_stored == 1  # one object for three sharers
    assert pool.total_bytes == int(pool.obj_bytes[first])
    assert sc.nr_compressed == 1
    zswap = "zswap" in swap
    out = "zswpout" if zswap else "pswpout"
    assert w.vmstat[out] - before.get(out, 0) == 1
    w.check()
    kinds = []
    for vm in w.vms:
        proc = w.env.process(w.host_fault.handle_mm_fault(vm.mm.pid_base, False))
        w.env.run(until=proc)
        kinds.append(str(proc.value))
        w.check()
    assert kinds == ["major", "swapcache", "swapcache"]  # one read, two ksm_swpin_copy
    assert w.ksm.stats.ksm_swpin_copy == 2
    read = "zswpin" if zswap else "pswpin"
    assert w.vmstat[read] - before.get(read, 0) == 1
    assert w.vmstat["pswpin"] - before.get("pswpin", 0) == (0 if zswap else 1)  # no disk
    assert pool.nr_stored == 0  # freed with the slot, with the last sharer


# -- shadow paging ---------------------------------------------------------------------------
def test_shadow_sptes_of_a_ksm_page_are_write_protected_and_a_write_zaps_every_alias() -> None:
    """Two shadow sptes per gfn (two guest page tables map it): each maps the KSM page
    read-only; a write through one copies the page (``cow_ksm``), and the copy's invalidation
    zaps both (the shadow rmap holds every spte of the gfn)."""
    w = _world(kvm={"mmu": "shadow", "shadow_sptes_per_gfn": 2})
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    assert w.ksm.stats.pages_sharing == 1
    vm = w.vms[0]
    pid = vm.mm.pid_base
    for alias in (0, 1):
        got = kvm_fault_nowait(
            vm.mmu, w.host_fault, w.costs, pid=pid, gfn=0, alias=alias, write=False
        )
        assert got is not None
        assert is_write_protected(vm.mmu.spte[alias])
    w.check()
    got = kvm_fault_nowait(vm.mmu, w.host_fault, w.costs, pid=pid, gfn=0, alias=1, write=True)
    assert got is not None
    assert got[0] == FaultKind.MINOR  # a copy, no I/O
    assert w.ksm.stats.cow_ksm == 1
    assert vm.mmu.spte[0] == 0  # alias 0 zapped by the copy's invalidation
    assert vm.mmu.spte[1]  # alias 1 maps the copy, writable
    assert not is_write_protected(vm.mmu.spte[1])
    w.check()


# -- guest TLBs ------------------------------------------------------------------------------
def test_a_write_through_a_cached_read_only_translation_faults() -> None:
    """A vCPU's TLB caches a KSM page's read-only translation on a read; a later write hits
    the entry but faults (the entry holds the spte's permission), and a write to an ordinary
    page through its entry completes and marks the page written (its content changed)."""
    tlbs = GuestTlbs([TlbGeometry(4, 2, 0)])
    ro = SPTE_PRESENT | SPTE_WRITE_PROTECTED
    spte = np.array([ro, SPTE_PRESENT], dtype=np.uint8)
    written = np.zeros(2, dtype=np.uint8)
    stamps = np.empty(0, dtype=np.uint32)

    def walk(pages: list[int], writes: list[bool]) -> int:
        idx = np.array(pages, dtype=np.int64)
        w = np.array(writes, dtype=np.bool_)
        return int(
            tlb_touch(
                spte, idx, idx, w, stamps, 0, 0, 0, len(pages), NO_ROWS, 0,
                tlbs.tags, tlbs.used, tlbs.dirty, tlbs.st, written,
            )
        )  # fmt: skip

    assert walk([0, 1], [False, False]) == 2  # both filled by reads
    assert tlbs.totals(range(1)) == {"hits": 0, "fills": 2, "flushes": 0}
    assert walk([0, 0], [False, True]) == 1  # the read hits; the write faults
    assert tlbs.totals(range(1))["hits"] == 1
    assert written.tolist() == [0, 0]
    assert walk([1], [True]) == 1  # the ordinary page: a hit that walks for its dirty bit
    assert written.tolist() == [0, 1]
    assert spte[1] & SPTE_DIRTY
    assert spte[0] == ro | SPTE_ACCESSED  # the read-only spte: never dirtied


# -- rotational swap -------------------------------------------------------------------------
def test_cluster_readahead_skips_a_ksm_folios_slot() -> None:
    """A KSM folio and vm0's gfn 1 are swapped to slots of one readahead block (page_cluster
    2: four slots); the fault on gfn 1 reads its block but not the KSM slot, which the first
    sharer's fault then reads (the others copy that page)."""
    w = _world(count=3, swap={"rotational": True, "page_cluster": 2})
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    other = w.vms[0].mm.pid_base + 1
    npid = w.ksm.node_of(w.vms[0].mm.pid_base)
    pfns = np.array([w.mem.pfn[npid], w.mem.pfn[other]], dtype=np.int64)
    w.policy.folio_remove(pfns)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    assert w.vmscan.shrink_folio_list(pfns, sc).tolist() == [Outcome.KEEP] * 2
    w.env.run(until=w.env.now + 50_000_000)  # the writes end
    assert w.vmscan.shrink_folio_list(pfns, sc).tolist() == [Outcome.FREED] * 2
    slots = [int(w.swap.page_slot[npid]), int(w.swap.page_slot[other])]
    assert slots[0] // 4 == slots[1] // 4  # one aligned block of four slots
    w.check()
    assert w.host_fault.cluster_ra is not None
    w.host_fault.cluster_ra.hits = 2  # swapin_nr_pages: hits + 2 = the whole block of four
    proc = w.env.process(w.host_fault.handle_mm_fault(other, False))
    w.env.run(until=proc)
    assert str(proc.value) == "major"
    assert w.mem.flags[npid] == PG_SWAP  # not read ahead
    assert w.vmstat["swap_ra"] == 0
    w.check()
    kinds = []
    for vm in w.vms:
        proc = w.env.process(w.host_fault.handle_mm_fault(vm.mm.pid_base, False))
        w.env.run(until=proc)
        kinds.append(str(proc.value))
    assert kinds == ["major", "swapcache", "swapcache"]
    assert w.mem.flags[npid] == 0  # its slot went with the last sharer
    w.check()

"""The rmap-off counterfactuals: host.rmap none (every walk scans every mm's page tables) and
kvm.shadow_rmap false (every shadow notifier call scans the VM's sptes). Same decisions as with
the rmap, counted and priced work only."""

from __future__ import annotations

import copy
import types
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings

from sim.config import parse_scenario
from sim.core import general_path_reason
from sim.costs import CostModel, CostsConfig
from sim.engine import build_world
from sim.errors import ConfigError
from sim.host.memory import NO_PFN, PG_SWAP, PTE_PRESENT, PTE_YOUNG
from sim.host.vmscan import ScanControl
from tests.conftest import TINY, tiny
from tests.test_invariants import scenarios

TIMING = {"kswapd_busy_ns"}


def _map(w: Any, pids: list[int]) -> np.ndarray:
    """Fault pages in by hand: a frame and a present, young host pte each; their pfns."""
    pfns = [w.mem.alloc_frame(p) for p in pids]
    w.mem.flags[pids] |= np.uint8(PTE_PRESENT | PTE_YOUNG)
    return np.array(pfns, dtype=np.int64)


@pytest.mark.parametrize("rmap", ["anon_vma", "none"])
def test_ptes_scanned_per_walk_are_the_populated_page_tables(rmap: str) -> None:
    # two 8 MiB VMs: 2048 pages, four 512-entry page tables each
    w = build_world(tiny(host__rmap=rmap), None)
    base = int(w.mem.pid_base[1])
    # VM 0 touches pages 0, 1 (table 0) and 600 (table 1); VM 1 its last page (table 3)
    pfns = _map(w, [0, 1, 600, base + 2047])
    sc = ScanControl(nr_to_reclaim=32)
    w.rmap.folio_referenced(pfns[:2], sc)
    per_walk = 3 * 512  # three populated page tables, whatever their pages
    want = 2 * per_walk if rmap == "none" else 0
    assert sc.nr_ptes_scanned == want
    assert w.vmstat.get("rmap_pte_scans", 0) == want
    assert sc.nr_rmap_walked == 2  # the decisions' walk is the same either way
    w.rmap.try_to_unmap(pfns[3:], sc)
    want += per_walk if rmap == "none" else 0
    assert sc.nr_ptes_scanned == want
    # the unmapped page's table stays (page tables of anon memory live until munmap/exit)
    if rmap == "none":
        assert w.rmap.ptes_per_walk() == per_walk


def test_a_dead_mm_has_no_page_tables_to_scan() -> None:
    w = build_world(tiny(host__rmap="none"), None)
    base = int(w.mem.pid_base[1])
    _map(w, [0, base])
    assert w.rmap.ptes_per_walk() == 2 * 512
    w.rmap.mms[1].dead = True
    assert w.rmap.ptes_per_walk() == 512


def test_after_the_first_count_only_pages_given_a_frame_are_looked_at() -> None:
    w = build_world(tiny(host__rmap="none"), None)
    base = int(w.mem.pid_base[1])
    _map(w, [0])
    w.mem.flags[base + 700] = PG_SWAP  # built in swap (as prefault places pages): no frame
    assert w.rmap.ptes_per_walk() == 2 * 512  # the first count looks at every page
    assert w.mem.assigned == []
    _map(w, [1, 513, base + 1536])  # table 0 again, VM 0's table 1, VM 1's table 3
    assert w.mem.assigned == [1, 513, base + 1536]
    w.rmap.check()
    assert w.rmap.ptes_per_walk() == 4 * 512
    assert w.mem.assigned == []
    w.mem.free_frame(int(w.mem.pfn[513]))  # the page goes, its table stays
    w.mem.flags[513] = 0
    pfn = w.mem.alloc_frame(1030)  # VM 0's table 2: given a frame, gone before the next walk
    w.mem.free_frame(pfn)
    w.mem.flags[1030] = 0
    assert w.rmap.ptes_per_walk() == 4 * 512
    w.rmap.check()
    w.mem.assigned_max = 1  # more given than are kept: the next count looks at every page
    _map(w, [1540, base + 1])
    assert w.mem.assigned is None
    assert w.rmap.ptes_per_walk() == 6 * 512
    assert w.mem.assigned == []
    w.mem.flags[1500] = PG_SWAP  # touched without a frame: not how a run touches a page
    with pytest.raises(AssertionError, match="without a frame"):
        w.rmap.check()


def _run(**changes: Any) -> dict[str, Any]:
    if changes.get("reclaim", {}).get("trigger") == "demand":
        changes.setdefault("duration_s", 0.004)  # the general path: a few thousand evictions
    w = build_world(tiny(**changes), None)
    w.run()
    w.check()
    s: dict[str, Any] = w.summary(0.0)
    return s


def _same(a: dict[str, Any], b: dict[str, Any], new: set[str]) -> None:
    va, vb = a["host"]["vmstat"], b["host"]["vmstat"]
    assert {k: v for k, v in va.items() if k not in new} == {
        k: v for k, v in vb.items() if k not in new
    }
    assert [v["faults"] for v in a["vms"]] == [v["faults"] for v in b["vms"]]
    assert [v["refaults"] for v in a["vms"]] == [v["refaults"] for v in b["vms"]]


@pytest.mark.parametrize("policy", ["two_list", "mglru", "clock"])
def test_host_rmap_off_makes_the_same_decisions_in_demand_mode(policy: str) -> None:
    demand = {"policy": policy, "trigger": "demand"}  # no time: nothing priced can differ
    on = _run(reclaim=demand)
    off = _run(reclaim=demand, host__rmap="none")
    _same(on, off, {"rmap_pte_scans", "kvm_spte_scans"})
    assert "rmap_pte_scans" not in on["host"]["vmstat"]  # today's vmstat lists no new key
    walks = off["host"]["vmstat"]["rmap_walked"]
    assert walks > 0
    # every walk scanned at least one page table and at most all of both VMs'
    assert 512 * walks <= off["host"]["vmstat"]["rmap_pte_scans"] <= 2 * 2048 * walks


def test_shadow_rmap_off_scans_every_present_spte_per_gfn() -> None:
    demand = {"policy": "two_list", "trigger": "demand"}
    on = _run(reclaim=demand, kvm__mmu="shadow")
    off = _run(reclaim=demand, kvm__mmu="shadow", kvm__shadow_rmap=False)
    _same(on, off, {"rmap_pte_scans", "kvm_spte_scans", "kvm_sptes_walked"})
    vs = off["host"]["vmstat"]
    assert vs["kvm_sptes_walked"] == 0 < on["host"]["vmstat"]["kvm_sptes_walked"]
    assert vs["kvm_spte_scans"] > on["host"]["vmstat"]["kvm_sptes_walked"]


def test_shadow_rmap_off_counts_by_hand() -> None:
    w = build_world(tiny(kvm__mmu="shadow", kvm__shadow_rmap=False), None)
    mmu = w.vms[0].mmu
    mmu.map_sptes(np.arange(10, dtype=np.int64))  # 10 gfns, alias 0: 10 present sptes
    sc = ScanControl(nr_to_reclaim=32)
    hva = w.vms[0].mm.hva(np.array([3, 4], dtype=np.int64))
    young = mmu.age_hva_ranges(hva, hva + 4096, sc, clear=True)
    assert young.shape == (2,)
    assert sc.nr_ptes_scanned == 2 * 10  # two gfns, each a scan of the 10 present sptes
    assert sc.nr_sptes_walked == 0
    assert w.vmstat.per_mm[0]["kvm_spte_scans"] == 20


def test_tdp_ignores_shadow_rmap() -> None:
    demand = {"policy": "two_list", "trigger": "demand"}
    on = _run(reclaim=demand)
    off = _run(reclaim=demand, kvm__shadow_rmap=False)
    _same(on, off, {"rmap_pte_scans", "kvm_spte_scans"})
    assert off["host"]["vmstat"]["kvm_spte_scans"] == 0


def test_the_cost_model_prices_each_pte_scanned() -> None:
    sc = ScanControl(nr_to_reclaim=32)
    model = CostModel(CostsConfig(pte_scan_ns=3))
    before = model.reclaim_ns(sc)
    sc.nr_ptes_scanned = 1000
    assert model.reclaim_ns(sc) - before == 3000


def test_rmap_off_makes_kswapd_slower_per_page() -> None:
    on = _run()
    off = _run(host__rmap="none", costs={"pte_scan_ns": 5})
    assert off["host"]["vmstat"]["rmap_pte_scans"] > 0

    def per_page(s: dict[str, Any]) -> float:
        return float(s["host"]["kswapd_busy_ns"]) / s["host"]["vmstat"]["pgscan_kswapd"]

    assert per_page(off) > per_page(on)


def test_rmap_off_takes_the_general_path_and_says_why() -> None:
    assert general_path_reason(tiny()) is None
    reason = general_path_reason(tiny(host__rmap="none"))
    assert reason is not None
    assert "host.rmap: none" in reason
    w = build_world(tiny(host__rmap="none"), None)
    assert w.rmap.shortcut is None


def test_unset_fields_leave_dumps_and_hashes_unchanged() -> None:
    raw = copy.deepcopy(TINY)
    plain = parse_scenario(raw, "t").model_dump(mode="json")
    raw["host"]["rmap"] = "anon_vma"
    raw["kvm"] = {"shadow_rmap": True}
    raw["costs"] = {"pte_scan_ns": 1}
    assert parse_scenario(raw, "t").model_dump(mode="json") == plain
    raw["host"]["rmap"] = "none"
    assert parse_scenario(raw, "t").model_dump(mode="json")["host"]["rmap"] == "none"


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("host", "rmap"), "off", "host.rmap"),
        (("kvm", "shadow_rmap"), "maybe", "kvm.shadow_rmap"),
        (("costs", "pte_scan_ns"), -1, "costs.pte_scan_ns"),
    ],
)
def test_bad_values_are_one_line_errors(path: tuple[str, str], value: Any, needle: str) -> None:
    raw = copy.deepcopy(TINY)
    raw.setdefault(path[0], {})[path[1]] = value
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw, "t")
    msg = str(e.value)
    assert needle in msg
    assert "Traceback" not in msg


def test_a_ksm_folio_is_found_by_one_scan_of_every_mm() -> None:
    from sim.engine import World
    from tests.test_ksm import _fault_all, _keys, _scan

    n = 3  # three 1 MiB VMs: 256 pages, one page table each
    raw = {
        "name": "ksm",
        "seed": 3,
        "duration_s": 0.01,
        "host": {"memory_mib": 64, "rmap": "none", "ksm": {"pages_to_scan": 512}},
        "vms": [
            {
                "name": "vm",
                "count": n,
                "memory_mib": 1,
                "content": {"image_share": 1.0, "image_mib": 1},
            }
        ],
    }
    w = World(parse_scenario(raw))
    _keys(w, {0: 1})
    _fault_all(w)
    _scan(w, 2)
    assert w.ksm is not None
    assert w.ksm.stats.pages_sharing == n - 1
    kpfn = np.array([w.mem.pfn[w.vms[0].mm.pid_base]], dtype=np.int64)
    sc = ScanControl(nr_to_reclaim=32, vmstat=w.vmstat)
    w.vmscan.folio_referenced(kpfn, sc)
    assert sc.nr_rmap_walked == n  # the sharers' mappings, as with the rmap
    assert sc.nr_ptes_scanned == n * 512  # but one scan of the three page tables finds them
    w.check()


def _recount(rmap: Any) -> int:
    """The table count the long way: every page of every live mm looked at, each call."""
    mem, n = rmap.mem, 0
    for mm, tables in zip(rmap.mms, rmap._tables, strict=True):
        if mm.dead:
            continue
        touched = np.zeros(len(tables) * 512, dtype=np.bool_)
        sl = slice(mm.pid_base, mm.pid_base + mm.nr_pages)
        touched[: mm.nr_pages] = (mem.pfn[sl] != NO_PFN) | (mem.flags[sl] != 0)
        tables |= touched.reshape(-1, 512).any(axis=1)
        n += int(np.count_nonzero(tables)) * 512
    return n


def test_the_kept_table_count_equals_a_recount_every_walk() -> None:
    """Random worlds without an rmap: the kept count (tables looked at only while empty, not
    at all while no frame was given) scans what a recount of every page at every walk does;
    most of the worlds reclaim."""
    scanned: list[bool] = []

    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(scenarios())
    def check(raw: dict[str, Any]) -> None:
        scanned.append(_kept_equals_recount(raw))

    check()
    assert sum(scanned) >= len(scanned) // 2


def test_page_cache_pages_given_frames_count_in_no_mm() -> None:
    """A host page cache's pages get frames too, but lie in no VM's mm (their pids come after
    the guests'): the kept count leaves them out, as a recount does."""
    raw = copy.deepcopy(TINY)
    raw["host_files"] = {"size_mib": 1, "workload": {"type": "uniform"}}
    raw["reclaim"] = {"policy": "two_list"}
    assert _kept_equals_recount(raw)


def _kept_equals_recount(raw: dict[str, Any]) -> bool:
    raw = copy.deepcopy(raw)
    raw["host"]["rmap"] = "none"
    try:
        sc = parse_scenario(raw)
    except ConfigError:
        assume(False)
        raise
    kept, full = build_world(sc, None), build_world(sc, None)
    full.rmap.ptes_per_walk = types.MethodType(_recount, full.rmap)
    for w in (kept, full):
        w.run(steps=4)
    kept.check()
    assert kept.vmstat == full.vmstat
    assert kept.summary(0.0) == full.summary(0.0)
    return kept.vmstat.get("rmap_pte_scans", 0) > 0

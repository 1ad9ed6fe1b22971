"""The page cache per memcg under MGLRU (sim/reclaim/memcg.py's ``MemcgMglru`` with
``host_files``): every memcg's lruvec has both types, a file folio lands on the lruvec of the
memcg its file is charged to, root page cache on a root lruvec that is one more memcg of the
memcg LRU, limit reclaim evicts by that memcg's ``get_swappiness``. Hand-worked unit cases,
then whole worlds."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.config import parse_scenario
from sim.engine import World
from sim.host.memcontrol import MemcgConfig, MemcgLimits
from sim.host.memory import HostMemory, setup_per_zone_wmarks
from sim.host.vmscan import ScanControl
from sim.host.vmstat import new_vmstat
from sim.reclaim.memcg import MEMCG_LRU_TAIL, MemcgMglru
from sim.reclaim.mglru import ANON, FILE, FL_FILE, MglruConfig
from sim.reclaim.two_list import FILE_EVENTS
from tests.conftest import run_checked
from tests.test_memcg_pagecache import _raw

NR = 64
VM0, VM1, ROOT = 0, 1, 2


def _policy(
    swappiness: int = 60, cfgs: tuple[MemcgConfig | None, ...] = (None, None)
) -> tuple[MemcgMglru, HostMemory, list[int]]:
    """Two VMs of 16 pages (pids 0-15, 16-31), a 16-page file charged to VM 0 (pids 32-47)
    and one of no memcg, the root's (48-63); limits in pages (1 page per MiB). The third
    value is each memcg's swap usage, read at scan time."""
    mem = HostMemory(NR, NR, setup_per_zone_wmarks(NR), [0, 16, 32, 48], file_base=32)
    lim = MemcgLimits.from_configs(list(cfgs), 1.0, [VM0, None])
    swap = [0, 0]
    pol = MemcgMglru(
        MglruConfig(swappiness=swappiness),
        NR,
        new_vmstat(lim.nr_memcgs, FILE_EVENTS),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: swap[i],
        file=True,
    )
    return pol, mem, swap


def _on_lru(mem: HostMemory) -> np.ndarray:
    return mem.frame_pid >= 0


class _Host:
    """What a scan of page-cache folios asks of the host: swap room, no ptes to walk, no
    dirty or write-back folios; a clean folio dropped through ``__remove_mapping`` (its
    shadow from its own lruvec, the frame freed, ``pgsteal`` in the reclaim's memcg)."""

    def __init__(self, pol: MemcgMglru, mem: HostMemory) -> None:
        self.pol, self.mem = pol, mem
        self.removed: list[int] = []

    def can_swap(self) -> bool:
        return True

    def nr_swap_pages(self) -> int:
        return 1 << 20

    def walk_mm(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def now(self) -> int:
        return 0

    def free_and_high(self) -> tuple[int, int]:
        return 0, 1 << 20

    def folio_test_dirty(self, pfns: np.ndarray) -> np.ndarray:
        return np.zeros(len(pfns), dtype=np.bool_)

    def folio_test_writeback(self, pfns: np.ndarray) -> np.ndarray:
        return np.zeros(len(pfns), dtype=np.bool_)

    def remove_file_folios(self, pfns: np.ndarray, sc: ScanControl) -> None:
        self.pol.workingset_eviction(pfns)
        for p in pfns.tolist():
            self.mem.free_frame(p)
        self.removed.extend(pfns.tolist())
        sc.freed(len(pfns), file=True)


def test_root_comes_online_first_and_every_memcg_is_on_the_memcg_lru() -> None:
    """``lru_gen_online_memcg``: the root memcg at boot, then the VMs', each at the tail of a
    random bin of generation 0. default_rng(0) draws 6, 5, 4: the root gets 6."""
    pol, mem, _ = _policy()
    assert pol.bin == [5, 4, 6]
    assert pol.fifo[0][6] == [ROOT]
    assert pol.fifo[0][5] == [VM0]
    assert pol.fifo[0][4] == [VM1]
    assert pol.nr_memcgs == [3, 0, 0]
    assert all(lv.file and lv.memcg == i for i, lv in enumerate(pol.lruvecs))
    pol.check(_on_lru(mem))


def test_a_file_folio_lands_on_its_memcgs_lruvec_in_that_lruvecs_generation() -> None:
    """VM 0's lruvec has aged to max_seq 5 (min_seq 2 for both types); the root's and VM 1's
    are new (max_seq 3, min_seq 0). ``lru_gen_folio_seq`` of a read (not PG_active):
    ``max(max_seq - 3, min_seq[file])`` on the folio's own lruvec: VM 0's file folio joins
    generation 2, the root's generation 0; a faulted-in anon folio of VM 0 joins max_seq - 1
    = 4. A refault of VM 0's file with a recent PG_workingset shadow (min_seq 3 at eviction:
    |5 - 3| < 4) joins max_seq - 2 = 3 and counts in VM 0's memory.stat and VM 0's file
    controller (tier 3), nowhere else."""
    pol, mem, _ = _policy()
    lv0, lv1, root = pol.lruvecs
    lv0.max_seq = 5
    lv0.types[ANON].min_seq = lv0.types[FILE].min_seq = 2
    f0 = mem.alloc_frame(32)
    pol.file_add_lru(f0, None, True)
    fr = mem.alloc_frame(48)
    pol.file_add_lru(fr, None, True)
    a0 = mem.alloc_frame(0)
    pol.folio_add_lru(a0, None)
    shadow = (1 << 31) | (3 << 2)  # PG_workingset | min_seq 3 | refs - 1 = 0
    f1 = mem.alloc_frame(33)
    pol.file_add_lru(f1, shadow, True)
    for lv in pol.lruvecs:
        lv._lru_add_drain()
    assert (lv0.seq[f0], lv0.seq[a0], lv0.seq[f1]) == (2, 4, 3)
    assert lv0.types[FILE].nr_pages.tolist() == [0, 0, 1, 1]  # by seq % 4
    assert lv0.types[ANON].nr_pages.tolist() == [1, 0, 0, 0]  # seq 4
    assert root.seq[fr] == 0
    assert root.types[FILE].nr_pages.tolist() == [1, 0, 0, 0]
    assert root.fl[fr] & FL_FILE
    assert not lv0.fl[fr]
    assert not lv1.fl[fr]
    assert lv1.types[FILE].nr_pages.sum() == lv1.types[ANON].nr_pages.sum() == 0
    assert lv0.types[FILE].refaulted == [0, 0, 0, 1]
    assert root.types[FILE].refaulted == [0, 0, 0, 0]
    vs = pol.vmstat
    assert vs.per_mm[VM0]["workingset_refault_file"] == 1  # type: ignore[attr-defined]
    assert vs.per_mm[VM0]["workingset_restore_file"] == 1  # type: ignore[attr-defined]
    assert vs["workingset_refault_file"] == 1
    assert vs.per_mm[ROOT]["workingset_refault_file"] == 0  # type: ignore[attr-defined]
    assert vs["workingset_activate_file"] == 0  # a read is not a fault
    pol.check(_on_lru(mem))


def test_protection_counts_the_page_cache_and_never_the_root() -> None:
    """memory.min 2 pages on VM 0: with 2 anon pages it is below (``mem_cgroup_below_min``
    reads ``memory.current``); one file page charged to it lifts it to 3, above. The root is
    never below (``mem_cgroup_unprotected``), not even empty."""
    pol, mem, _ = _policy(cfgs=(MemcgConfig(min_mib=2, low_mib=2), None))
    for pid in (0, 1):
        mem.alloc_frame(pid)
    assert pol._below_min(VM0)
    assert pol._below_low(VM0)
    mem.alloc_frame(32)
    assert not pol._below_min(VM0)
    assert not pol._below_low(VM0)
    assert not pol._below_min(ROOT)
    assert not pol._below_low(ROOT)


def test_get_swappiness_is_per_memcg() -> None:
    """``get_swappiness`` wants MIN_LRU_BATCH (64) swap slots left to the lruvec
    (``mem_cgroup_get_nr_swap_pages``): VM 0 at its memory.swap.max (0 pages) gets 0, so only
    file is evictable on its lruvec; VM 1 with swap.max 100 pages gets 60 while it uses 36
    (64 left) and 0 at 37 (63 left); the root, with no swap.max, keeps 60."""
    pol, mem, swap = _policy(cfgs=(MemcgConfig(swap_max_mib=0), MemcgConfig(swap_max_mib=100)))
    host = _Host(pol, mem)

    def swappiness() -> list[int]:
        return [lv._get_swappiness(pol._reclaimer(i, host)) for i, lv in enumerate(pol.lruvecs)]  # type: ignore[arg-type]

    swap[VM1] = 36
    assert swappiness() == [0, 60, 60]
    swap[VM1] = 37
    assert swappiness() == [0, 0, 60]
    assert list(pol.lruvecs[VM0]._evictable_types(0)) == [FILE]


def _load(pol: MemcgMglru, mem: HostMemory, pids: list[int], seq: int) -> list[int]:
    """Folios of ``pids`` straight into generation ``seq`` of their memcgs' lruvecs."""
    pfns = []
    for pid in pids:
        pfn = mem.alloc_frame(pid)
        lv = pol._lruvec(pfn)
        lv.fl[pfn] = FL_FILE if pid >= 32 else 0
        lv._add(np.array([pfn]), np.array([seq]))
        pfns.append(pfn)
    return pfns


def test_limit_reclaim_at_swap_max_evicts_only_the_memcgs_own_clean_file() -> None:
    """Swappiness 200 would scan anon first, but VM 0 is at memory.swap.max: its
    ``get_swappiness`` is 0, file only. Limit reclaim of VM 0 at priority 0: no aging is due
    (file's min_seq 0 + 2 < max_seq 3), the budget is file's 8 folios; all 8 clean ones in
    generation 0 are isolated and dropped; VM 0's 8 anon folios in the same generation, VM
    1's anon and the root's file stay. Then file's emptied generations 0 and 1 are skipped
    (min_seq 2). pgscan/pgsteal_direct count in VM 0's memory.stat only (cgroup reclaim), the
    host's by type (pgscan_file) too."""
    pol, mem, _ = _policy(200, cfgs=(MemcgConfig(swap_max_mib=0), None))
    anon0 = _load(pol, mem, list(range(8)), 0)
    file0 = _load(pol, mem, list(range(32, 40)), 0)
    others = _load(pol, mem, [16, 17, 48, 49, 50, 51], 0)
    host = _Host(pol, mem)
    sc = ScanControl(nr_to_reclaim=32, priority=0, direct=True, target_memcg=VM0)
    sc.vmstat = pol.vmstat  # type: ignore[assignment]
    for _ in pol.shrink_node(sc, host):  # type: ignore[arg-type]
        pass
    assert sorted(host.removed) == sorted(file0)
    lv0 = pol.lruvecs[VM0]
    assert (lv0.seq[anon0] == 0).all()
    assert lv0.types[ANON].nr_pages.tolist() == [8, 0, 0, 0]
    assert lv0.types[FILE].nr_pages.sum() == 0
    assert lv0.types[FILE].min_seq == 2
    assert all(pol._lruvec(p).seq[p] == 0 for p in others)
    vs = pol.vmstat
    pm = vs.per_mm  # type: ignore[attr-defined]
    assert pm[VM0]["pgscan_file"] == pm[VM0]["pgsteal_file"] == pm[VM0]["pgscan_direct"] == 8
    assert vs["pgscan_file"] == vs["pgsteal_file"] == 8
    assert vs["pgscan_direct"] == vs["pgsteal_direct"] == 0
    assert vs["pgscan_anon"] == 0
    assert pm[VM1]["pgscan_direct"] == pm[ROOT]["pgscan_direct"] == 0
    assert pol.lruvecs[VM0].types[FILE].evicted == [8, 0, 0, 0]
    pol.check(_on_lru(mem))
    vs.check()  # type: ignore[attr-defined]


def test_root_page_cache_is_shrunk_in_its_turn_on_the_memcg_lru() -> None:
    """Global reclaim (``shrink_many``) at priority 0 with the root's 4 clean file folios in
    its oldest generation and nothing evictable elsewhere: the VMs' anon sits in max_seq - 1
    with empty oldest generations, so each VM lruvec's scan finds nothing and is rotated
    (too small -> tail); the root's lruvec gives its 4 folios, counted in the root's
    breakdown. The root is no first stop: the walk starts at a random bin."""
    pol, mem, _ = _policy()
    rootf = _load(pol, mem, [48, 49, 50, 51], 0)
    _load(pol, mem, [0, 1, 16, 17], 2)
    host = _Host(pol, mem)
    sc = ScanControl(nr_to_reclaim=32, priority=0)
    sc.vmstat = pol.vmstat  # type: ignore[assignment]
    for _ in pol.shrink_node(sc, host):  # type: ignore[arg-type]
        pass
    assert sorted(host.removed) == sorted(rootf)
    pm = pol.vmstat.per_mm  # type: ignore[attr-defined]
    assert pm[ROOT]["pgsteal_kswapd"] == pm[ROOT]["pgsteal_file"] == 4
    assert pm[VM0]["pgscan_kswapd"] == pm[VM1]["pgscan_kswapd"] == 0
    assert pol.seg[ROOT] == MEMCG_LRU_TAIL  # emptied: too small, one retry
    pol.check(_on_lru(mem))


# -- whole worlds -------------------------------------------------------------------------------
def _mglru(swappiness: int = 0, **vm_a: Any) -> dict[str, Any]:
    raw = _raw(swappiness, **vm_a)
    raw["reclaim"]["policy"] = "mglru"
    return raw


def test_page_cache_over_memory_max_drops_only_that_memcgs_clean_file() -> None:
    """tests/test_memcg_pagecache.py's world under MGLRU: VM a's cache pushes it past
    memory.max 12 MiB (3072 pages); its limit reclaim takes only a's file folios, all clean,
    so all dropped; a's guest keeps its 2048 pages; nobody else is scanned; kswapd never
    runs. memory.current = a's 2048 anon + its file pages."""
    w = World(parse_scenario(_mglru(60)))
    assert run_checked(w, every_ns=10_000_000) >= 10
    s = w.summary(0.0)
    a, b = s["vms"]
    root = w.vmstat.per_mm[ROOT]
    assert a["memcg"]["events"]["max"] > 0
    assert a["vmstat"]["pgscan_file"] == a["vmstat"]["pgsteal_file"] > 0
    assert a["vmstat"].get("pgscan_anon", 0) == 0
    assert w.vmstat["pswpout"] == 0
    assert a["faults"]["major"] == 0
    assert a["resident_pages"] == 2048
    mc = a["memcg"]
    assert mc["current_pages"] == 2048 + mc["file_pages"]
    assert 3072 - 32 <= mc["current_pages"] <= 3072 + 2
    assert b["vmstat"].get("pgscan_file", 0) + b["vmstat"].get("pgscan_anon", 0) == 0
    assert b["memcg"]["file_pages"] == 0
    assert root["pgscan_direct"] + root["pgscan_kswapd"] == 0
    assert s["host"]["kswapd_scanned"] == 0
    rm = s["host"]["root_memcg"]
    assert rm["current_pages"] == rm["file_pages"] == int(w.mem.nr_resident[3]) > 0
    assert w.vmstat["pgscan_file"] == a["vmstat"]["pgscan_file"]


def test_swap_max_keeps_limit_reclaim_off_anon_at_swappiness_200() -> None:
    """memory.max 6 MiB (1536 pages) under a's 8 MiB busy guest and its cache, swappiness
    200: limit reclaim drops a's cache and, once aging has given anon an evictable
    generation, swaps the guest out. With memory.swap.max 0 a's ``get_swappiness`` is 0:
    anon is never evictable (no anon isolated, so no failed swap-out either), only file is
    dropped, and with the guest alone above memory.max the 16 retries end in the memcg OOM
    killing a."""
    runs = {}
    for swap_max in (None, 0):
        raw = _mglru(200)
        raw["vms"][0]["memcg"]["max_mib"] = 6
        if swap_max is not None:
            raw["vms"][0]["memcg"]["swap_max_mib"] = swap_max
        w = World(parse_scenario(raw))
        run_checked(w, every_ns=50_000_000)
        runs[swap_max] = w.summary(0.0)["vms"][0]
    free = runs[None]
    assert free["vmstat"]["pgscan_anon"] > 0
    assert free["vmstat"]["pgsteal_anon"] > 0
    assert free["vmstat"]["pgscan_file"] == free["vmstat"]["pgsteal_file"] > 0
    assert free["memcg"]["swap_current_pages"] > 0
    assert not free["oom_killed"]
    capped = runs[0]
    assert capped["vmstat"].get("pgscan_anon", 0) == 0
    assert capped["vmstat"]["pgscan_file"] == capped["vmstat"]["pgsteal_file"] > 0
    assert capped["memcg"]["swap_current_pages"] == 0
    assert capped["memcg"]["events"]["swap_max"] == 0
    assert capped["memcg"]["events"]["oom_kill"] == 1
    assert capped["oom_killed"]


def test_root_page_cache_is_reclaimed_by_global_reclaim() -> None:
    """A 32 MiB host, two VMs in unlimited memcgs keeping 8 MiB each busy, and a 64 MiB host
    file of no memcg read at 200 k pages/s: the root's cache fills the host, kswapd reclaims,
    and the file folios it frees are all the root's (``host.root_memcg``); the breakdowns add
    up (checked every 10 ms)."""
    vm = {"memory_mib": 8, "access_rate_per_s": 200_000, "workload": {"type": "uniform"}}
    raw = {
        "name": "rootpc",
        "seed": 3,
        "duration_s": 0.3,
        "host": {"memory_mib": 32},
        "reclaim": {"policy": "mglru"},
        "swap": {"size_mib": 64},
        "vms": [{"name": n, "memcg": {}, **vm} for n in ("a", "b")],
        "host_files": {"size_mib": 64, "access_rate_per_s": 200_000, "read_latency_us": 5},
    }
    w = World(parse_scenario(raw))
    assert run_checked(w, every_ns=10_000_000) >= 10
    s = w.summary(0.0)
    rm = s["host"]["root_memcg"]
    assert s["host"]["kswapd_reclaimed"] > 0
    assert rm["vmstat"]["pgsteal_file"] == w.vmstat["pgsteal_file"] > 0
    assert rm["vmstat"]["pgscan_kswapd"] > 0
    assert all(v["memcg"]["file_pages"] == 0 for v in s["vms"])
    assert rm["current_pages"] == rm["file_pages"] == int(w.mem.nr_resident[2])


def test_mglru_memcg_page_cache_worlds_are_deterministic() -> None:
    """Same config and seed, page cache in a VM's memcg and the root's: the same summary."""
    runs = []
    for _ in range(2):
        w = World(parse_scenario(_mglru(60) | {"duration_s": 0.1}))
        w.run()
        runs.append(w.summary(0.0))
    assert runs[0] == runs[1]
    assert runs[0]["vms"][0]["memcg"]["file_pages"] > 0
    assert runs[0]["host"]["root_memcg"]["file_pages"] > 0

"""memory.zswap.writeback 0 (``vms[].memcg.zswap_writeback: false``): zswap keeps the memcg's
pages, the swap device never gets them.

The kernel's rules (mm/zswap.c ``zswap_compress``, ``shrink_memcg``; mm/page_io.c
``swap_writeout``; mm/vmscan.c ``pageout``): a page that does not compress below a page is
stored as it is only for a memcg that lets zswap write back, else the store fails; a page
zswap did not take is re-dirtied and activated (``AOP_WRITEPAGE_ACTIVATE``), never written,
with zswap or without; the shrink worker writes back no entry of such a memcg.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.core import general_path_reason
from sim.engine import World
from sim.errors import ConfigError
from sim.host.memory import HAS_FRAME, PG_SWAP, HostMemory, setup_per_zone_wmarks
from sim.host.vmstat import VmEvents
from sim.host.zpool import Zpool
from sim.host.zswap import ZSWAP_REJECT_COMPRESS_FAIL, Zswap, ZswapConfig
from tests.conftest import TINY, run_checked

FAIL = ZSWAP_REJECT_COMPRESS_FAIL


def _pool(as_is: bool = True) -> tuple[Zswap, VmEvents]:
    """100 host frames, a pool of at most 10 accepting again at 9; pages 0-39 compress 2:1
    (page owner 0 below 32, owner 1 from 32), page 40 (owner 1) and page 41 (owner 0) not at
    all; owner 0's memcg has write-back off."""
    mem = HostMemory(100, 64, setup_per_zone_wmarks(100), [0])
    sizes = np.full(64, 2048, dtype=np.uint32)
    sizes[40] = sizes[41] = 4096
    vs = VmEvents(2)
    cfg = ZswapConfig(enabled=True, max_pool_percent=10, store_incompressible=as_is)
    zs = Zswap(cfg, Zpool(mem, sizes, track_lru=True), 100, vs)
    zs.no_writeback = np.array([True, False])
    return zs, vs


def _owners(pids: np.ndarray) -> np.ndarray:
    return (np.asarray(pids) >= 32).astype(np.intp) * (np.asarray(pids) != 41)


def test_an_incompressible_page_is_stored_as_is_only_where_writeback_is_on() -> None:
    zs, vs = _pool()
    pids = np.array([41, 40, 3], dtype=np.int32)
    stored, compressed, full = zs.store(pids, _owners(pids))
    # page 41 (write-back off) fails zswap_compress with -EINVAL: a compression failure;
    # page 40 (on) is kept as it is, page 3 compressed
    assert stored.tolist() == [False, True, True]
    assert (compressed, full) == (3, False)
    assert (vs[FAIL], vs["zswap_reject_compress_poor"], vs["zswpout"]) == (1, 0, 2)
    assert zs.pool.nr_incompressible() == 1


def test_before_6_18_the_rejection_is_poor_compression_whatever_the_memcg() -> None:
    zs, vs = _pool(as_is=False)
    pids = np.array([41, 40], dtype=np.int32)
    stored, _, _ = zs.store(pids, _owners(pids))
    assert stored.tolist() == [False, False]
    assert (vs[FAIL], vs["zswap_reject_compress_poor"]) == (0, 2)


def test_a_large_folio_fails_whole_on_one_incompressible_page_where_writeback_is_off() -> None:
    zs, vs = _pool()
    folio = np.array([41, *range(7)], dtype=np.int64)
    assert zs.store_folio(folio, 0) == (False, 1, False)
    assert (vs[FAIL], zs.pool.nr_stored) == (1, 0)
    assert zs.store_folio(np.array([40, 32, 33], dtype=np.int64), 1)[0]  # write-back on


def test_shrink_writes_back_only_the_memcgs_that_allow_it() -> None:
    zs, vs = _pool()
    # owner 0's pages 0-9 first (the oldest), then owner 1's 32-39: 18 x 2 KiB = 9 frames
    pids = np.array([*range(10), *range(32, 40)], dtype=np.int32)
    zs.store(pids, _owners(pids))
    more = np.array([10, 11], dtype=np.int32)  # 19 objects: 10 frames, the limit
    stored, _, full = zs.store(more, _owners(more))
    assert stored.tolist() == [True, False]
    assert full
    back = zs.shrink(_owners)
    # down to 9 frames (18 objects): the oldest entry owner 1 has, none of owner 0's older ones
    assert back == [32]
    assert zs.pool.lru_order() == [*range(10), *range(33, 40), 10]
    assert zs.pool.frames_needed() == zs.accept_thr_pages


def _world(zswap: dict[str, Any], ratio: float = 1.0, cv: float = 0.0, **kw: Any) -> World:
    """The tiny host with two VMs: ``a`` in a memcg with write-back off, ``b`` in one with
    it on; every page compresses ``ratio``:1."""
    raw = copy.deepcopy(TINY)
    vm = raw["vms"][0] | {"count": 1, "compress_ratio": ratio, "compress_ratio_cv": cv}
    raw["vms"] = [
        vm | {"name": "a", "memcg": {"zswap_writeback": False}},
        vm | {"name": "b", "memcg": {}},
    ]
    raw["swap"]["zswap"] = zswap
    raw.update(kw)
    return World(parse_scenario(raw, "wb"))


def _on_device(w: World, vm: int) -> int:
    """Pages of VM ``vm`` that left memory and are not in the zswap pool: on the device."""
    mem, mm = w.mem, w.mms[vm]
    pids = np.arange(mm.pid_base, mm.pid_base + mm.nr_pages)
    out = pids[((mem.flags[pids] & HAS_FRAME) == 0) & ((mem.flags[pids] & PG_SWAP) != 0)]
    zs = w.swap.zswap
    return len(out) if zs is None else int(np.count_nonzero(~zs.pool.stored[out]))


def test_incompressible_pages_of_a_writeback_off_vm_are_activated_not_written() -> None:
    w = _world({"enabled": True})
    run_checked(w)
    a, b = w.vmstat.per_mm[0], w.vmstat.per_mm[1]
    # a's pages are all rejected by zswap_compress and activated (PAGE_ACTIVATE): no write,
    # nothing in the pool, nothing left memory; b's are stored as they are
    assert a["pswpout"] == a["zswpout"] == 0
    assert a["pgactivate"] > 0
    assert w.vmstat[FAIL] > 0
    assert w.vmstat["zswap_reject_compress_poor"] == 0
    assert int(w.mem.nr_swapped[0]) == 0
    assert b["zswpout"] > 0
    # every write started was b's: a store (zswpout) or a device write not a write-back
    vs = w.vmstat
    assert vs["nr_vmscan_write"] == vs["zswpout"] + vs["pswpout"] - vs["zswpwb"]
    assert vs["pswpout"] == b["pswpout"]


def test_a_full_pool_activates_and_writes_back_only_the_other_memcgs_entries() -> None:
    w = _world({"enabled": True, "max_pool_percent": 5}, ratio=2.0)
    run_checked(w)
    a, b = w.vmstat.per_mm[0], w.vmstat.per_mm[1]
    assert w.vmstat["zswap_pool_limit_hit"] > 0
    assert a["zswpout"] > 0
    assert a["pgactivate"] > 0
    assert a["zswpwb"] == a["pswpout"] == 0  # never written back, never written
    assert b["zswpwb"] > 0
    assert b["pswpout"] >= b["zswpwb"]
    assert _on_device(w, 0) == 0
    assert _on_device(w, 1) > 0


def test_without_zswap_a_writeback_off_vm_never_swaps() -> None:
    w = _world({"enabled": False})
    run_checked(w)
    a, b = w.vmstat.per_mm[0], w.vmstat.per_mm[1]
    assert a["pswpout"] == 0
    assert int(w.mem.nr_swapped[0]) == 0
    assert a["pgactivate"] > 0  # its reclaimed folios came back activated
    mm = w.mms[0]
    pids = np.arange(mm.pid_base, mm.pid_base + mm.nr_pages)
    touched = (w.mem.flags[pids] != 0).sum()
    assert int(w.mem.nr_resident[0]) == touched  # every page it touched is still resident
    assert b["pswpout"] > 0
    assert int(w.mem.nr_swapped[1]) > 0


def test_the_compiled_core_declines_and_says_why() -> None:
    w = _world({"enabled": True})
    assert w.vmscan.core is None
    reason = general_path_reason(w.sc)
    assert reason is not None
    assert "zswap_writeback" in reason
    assert general_path_reason(parse_scenario(copy.deepcopy(TINY), "t")) is None


def test_prefault_with_writeback_off_is_refused() -> None:
    raw = copy.deepcopy(TINY)
    raw["vms"][0] |= {"prefault": True, "memcg": {"zswap_writeback": False}}
    with pytest.raises(ConfigError, match=r"vms\[0\]\.memcg\.zswap_writeback: .*prefault"):
        parse_scenario(raw, "t")


def test_the_default_keeps_the_config_hash() -> None:
    raw = copy.deepcopy(TINY)
    raw["vms"][0]["memcg"] = {"max_mib": 6}
    h = parse_scenario(copy.deepcopy(raw), "t").config_hash()
    raw["vms"][0]["memcg"]["zswap_writeback"] = True
    assert parse_scenario(copy.deepcopy(raw), "t").config_hash() == h
    raw["vms"][0]["memcg"]["zswap_writeback"] = False
    assert parse_scenario(raw, "t").config_hash() != h


def test_same_config_same_results() -> None:
    runs = []
    for _ in range(2):
        w = _world({"enabled": True, "max_pool_percent": 5}, ratio=2.0, cv=0.8)
        w.run()
        runs.append(json.dumps(w.summary(0.0), sort_keys=True, default=str))
    assert runs[0] == runs[1]


@settings(max_examples=6, deadline=None)
@given(
    zswap=st.booleans(),
    pool=st.sampled_from([5, 20]),
    as_is=st.booleans(),
    ratio=st.sampled_from([1.0, 2.0]),
    off=st.sampled_from([(True, False), (True, True), (False, True)]),
    policy=st.sampled_from(["two_list", "mglru"]),
    thp=st.booleans(),
)
def test_no_page_of_a_writeback_off_memcg_reaches_the_device(
    zswap: bool,
    pool: int,
    as_is: bool,
    ratio: float,
    off: tuple[bool, bool],
    policy: str,
    thp: bool,
) -> None:
    """Any swap set-up, either policy, THPs or not: a memcg with write-back off has nothing on
    the device and no write counted; every invariant holds all along."""
    raw = copy.deepcopy(TINY)
    vm = raw["vms"][0] | {"count": 1, "compress_ratio": ratio, "compress_ratio_cv": 0.5}
    names = ("a", "b")
    raw["vms"] = [
        vm | {"name": n, "memcg": {"zswap_writeback": not o}}
        for n, o in zip(names, off, strict=True)
    ]
    raw["swap"]["zswap"] = {
        "enabled": zswap,
        "max_pool_percent": pool,
        "store_incompressible": as_is,
    }
    raw["reclaim"] = {"policy": "two_list" if thp else policy}  # THP: two-list only
    raw["duration_s"] = 0.03
    if thp:
        raw["host"]["thp"] = {}
    w = World(parse_scenario(raw, "wb"))
    run_checked(w, every_ns=5_000_000)
    for i, o in enumerate(off):
        if o:
            m = w.vmstat.per_mm[i]
            assert m["pswpout"] == m["zswpwb"] == 0
            assert _on_device(w, i) == 0


@pytest.mark.parametrize("zswap", [True, False], ids=["zswap", "disk"])
def test_a_thp_of_a_writeback_off_vm_is_activated_whole(zswap: bool) -> None:
    """``zswap_store`` of a large folio failing (a page that does not compress), or no zswap:
    the THP goes back activated, whole, never written; the other VM's THPs are written whole
    (``thp_swpout``)."""
    w = _world({"enabled": zswap}, host={"memory_mib": 8, "thp": {}})
    run_checked(w)
    a, b = w.vmstat.per_mm[0], w.vmstat.per_mm[1]
    assert a["thp_swpout"] == a["pswpout"] == a["zswpout"] == 0
    assert a["pgactivate"] > 0
    assert int(w.mem.nr_swapped[0]) == 0
    if zswap:
        assert b["zswpout"] > 0
    else:
        assert b["thp_swpout"] > 0

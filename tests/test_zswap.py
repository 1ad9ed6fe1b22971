"""zswap: the accept/reject/write-back rules on a small pool, and a world that uses them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.host.memory import HostMemory, setup_per_zone_wmarks
from sim.host.vmstat import VmEvents
from sim.host.zpool import Zpool
from sim.host.zswap import Zswap, ZswapConfig
from tests.conftest import run_checked, tiny


def _small_pool(as_is: bool = True) -> tuple[Zswap, HostMemory, VmEvents]:
    """100 host frames, a pool limited to 10 % (10 frames) accepting again at 90 % (9);
    pages 0-39 compress 2:1, page 40 not at all; ``as_is``: 6.18's zswap, which stores a page
    that does not compress as it is (False: the zswap before, which rejects it)."""
    mem = HostMemory(100, 64, setup_per_zone_wmarks(100), [0])
    sizes = np.full(64, 2048, dtype=np.uint32)
    sizes[40] = 4096
    vs = VmEvents(1)
    pool = Zpool(mem, sizes, track_lru=True)
    cfg = ZswapConfig(enabled=True, max_pool_percent=10, store_incompressible=as_is)
    return Zswap(cfg, pool, 100, vs), mem, vs


def _pids(*p: int) -> np.ndarray:
    return np.array(p, dtype=np.int32)


def test_store_rejects_incompressible_pages_before_6_18_and_a_full_pool() -> None:
    zs, mem, vs = _small_pool(as_is=False)
    assert (zs.max_pages, zs.accept_thr_pages) == (10, 9)
    pids = _pids(40, *range(20))
    stored, compressed, full = zs.store(pids, np.zeros(len(pids), dtype=np.intp))
    # page 40 is compressed and rejected (4096 bytes: no smaller than a page); pages 0-18 fill
    # ceil(19 / 2) = 10 frames; page 19 finds the pool at its limit and is not even compressed
    assert stored.tolist() == [False] + [True] * 19 + [False]
    assert (compressed, full) == (20, True)
    assert (vs["zswpout"], vs["zswap_reject_compress_poor"], vs["zswap_pool_limit_hit"]) == (
        19,
        1,
        1,
    )
    assert vs.per_mm[0]["zswpout"] == 19
    zs.pool.fit()
    assert (mem.nr_pool, mem.nr_free) == (10, 90)
    assert zs.pool.nr_incompressible() == 0


def test_store_keeps_an_incompressible_page_as_it_is_since_6_18() -> None:
    zs, mem, vs = _small_pool()
    pids = _pids(40, *range(20))
    stored, compressed, full = zs.store(pids, np.zeros(len(pids), dtype=np.intp))
    # page 40 is stored as it is, a page-sized object; with pages 0-16 (17 x 2 KiB) the pool
    # needs ceil(9.5) = 10 frames, its limit: pages 17, 18 and 19 each find it full
    assert stored.tolist() == [True] * 18 + [False] * 3
    assert (compressed, full) == (18, True)
    assert (vs["zswpout"], vs["zswap_reject_compress_poor"], vs["zswap_pool_limit_hit"]) == (
        18,
        0,
        3,
    )
    zs.pool.fit()
    assert (mem.nr_pool, zs.pool.total_bytes) == (10, 4096 + 17 * 2048)
    assert zs.pool.nr_incompressible() == 1
    assert zs.pool.lru_order()[0] == 40  # in the LRU in store order: written back first
    zs.pool.free([40])
    assert zs.pool.nr_incompressible() == 0


def test_shrink_writes_the_oldest_back_to_the_accept_threshold_then_the_pool_accepts() -> None:
    zs, mem, vs = _small_pool()
    zs.store(_pids(*range(20)), np.zeros(20, dtype=np.intp))
    zs.pool.fit()
    assert zs.reached_full
    assert zs.shrink() == [0]  # 19 x 2 KiB = 10 frames; without page 0, 9: the threshold
    assert (mem.nr_pool, mem.nr_free) == (9, 91)
    stored, _, full = zs.store(_pids(19), np.zeros(1, dtype=np.intp))
    assert stored.tolist() == [True]  # 9 <= 9 frames: full no more
    assert not full
    zs.pool.fit()
    stored, _, full = zs.store(_pids(20), np.zeros(1, dtype=np.intp))
    assert stored.tolist() == [False]  # pages 1-19: 9.5 -> 10 frames, at the limit again
    assert full
    assert vs["zswap_pool_limit_hit"] == 2
    assert zs.pool.lru_order()[:2] == [1, 2]  # oldest first; 19 went to the end
    assert zs.pool.lru_order()[-1] == 19
    zs.pool.check()
    mem.check()


def test_load_takes_the_page_out_of_the_pool() -> None:
    zs, _, vs = _small_pool()
    zs.store(_pids(3, 5), np.zeros(2, dtype=np.intp))
    zs.pool.fit()
    assert zs.load(5, 0)
    assert not zs.load(5, 0)  # gone: exclusive load
    assert not zs.load(7, 0)  # never stored: the caller reads the device
    assert vs["zswpin"] == 1
    assert zs.pool.nr_stored == 1
    assert zs.pool.lru_order() == [3]


def test_a_world_with_a_small_pool_stores_loads_and_writes_back() -> None:
    w = World(tiny(swap__zswap={"enabled": True, "max_pool_percent": 5}))
    run_checked(w)
    s = w.summary(0.0)
    vs = s["host"]["vmstat"]
    for key in ("zswpout", "zswpin", "zswpwb", "zswap_pool_limit_hit"):
        assert vs[key] > 0, key
    # every major fault is read from the pool (zswpin) or the device (pswpin; at most one per
    # vCPU still in flight at the end), never both
    vcpus = sum(v["vcpus"] for v in s["vms"])
    assert 0 <= vs["pswpin"] + vs["zswpin"] - vs["pgmajfault"] <= vcpus
    # every write-back is a device write; stored pages are not
    assert vs["pswpout"] >= vs["zswpwb"]
    assert vs["nr_vmscan_write"] == vs["zswpout"] + vs["pswpout"] - vs["zswpwb"]
    zs = w.swap.zswap
    assert zs is not None
    assert s["host"]["swap"]["pool_frames_end"] == w.mem.nr_pool == zs.pool.nr_frames
    assert w.mem.nr_pool <= zs.max_pages + 32  # one reclaim batch past the limit at most


def test_zswap_with_zram_is_refused(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["swap"] = {"device": "zram", "zswap": {"enabled": True}}
    with pytest.raises(ConfigError, match="swap.zswap.enabled: .*compresses twice"):
        parse_scenario(tiny_raw)


def test_lru_survives_compaction_and_rewrites_in_store_order() -> None:
    """The queue behind the LRU is compacted and grown as entries come and go; what it yields
    is always the stored pages, oldest store first (a rewritten page counts as new)."""
    mem = HostMemory(4096, 3000, setup_per_zone_wmarks(4096), [0])
    pool = Zpool(mem, np.full(3000, 1000, dtype=np.uint32), track_lru=True)
    rng = np.random.default_rng(1)
    ref: list[int] = []
    for _ in range(300):
        pids = rng.choice(3000, size=int(rng.integers(1, 40)), replace=False)
        if rng.random() < 0.5:
            pool.store(pids)
            pool.fit()
            ref = [p for p in ref if p not in set(pids.tolist())] + pids.tolist()
        else:
            pool.free(pids)
            ref = [p for p in ref if p not in set(pids.tolist())]
        assert pool.lru_order() == ref
        assert pool.lru_oldest() == (ref[0] if ref else None)
    pool.check()

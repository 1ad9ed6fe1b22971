"""zram: a compressed RAM swap device (SWP_SYNCHRONOUS_IO) whose memory is host frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.costs import CostModel, CostsConfig
from sim.engine import World
from sim.errors import ConfigError
from sim.host.memory import HAS_FRAME, PG_SWAP, HostMemory, setup_per_zone_wmarks
from sim.host.vmscan import ScanControl
from sim.host.zpool import Zpool, compressed_sizes
from tests.conftest import run_checked, tiny


def test_compressed_sizes_for_given_ratios() -> None:
    rng = np.random.default_rng(0)
    assert compressed_sizes(3, 4.0, 0.0, rng).tolist() == [1024] * 3
    assert compressed_sizes(2, 3.0, 0.0, rng).tolist() == [1366] * 2  # ceil(4096 / 3)
    assert compressed_sizes(1, 0.5, 0.0, rng).tolist() == [4096]  # no shrink: stored whole
    spread = compressed_sizes(20_000, 1.5, 1.0, rng)
    assert spread.max() == 4096  # ratios drawn below 1: stored whole
    assert (spread >= 4096 // 100).all()


def test_pool_frames_follow_the_compressed_bytes() -> None:
    """Frames held = ceil(bytes / 4096), taken from and given back to the host's free frames."""
    mem = HostMemory(16, 8, setup_per_zone_wmarks(16), [0])
    sizes = np.array([1024, 1024, 1024, 1024, 1024, 4096, 2000, 100], dtype=np.uint32)
    pool = Zpool(mem, sizes)
    pool.store(np.arange(5))
    pool.fit()
    assert (pool.total_bytes, pool.nr_frames, mem.nr_pool, mem.nr_free) == (5120, 2, 2, 14)
    pool.store(np.array([5]))  # incompressible: a whole page
    pool.fit()
    assert (pool.total_bytes, pool.nr_frames, mem.nr_free) == (9216, 3, 13)
    assert pool.free([0, 1, 7]) == 2  # page 7 was never stored
    assert (pool.total_bytes, pool.nr_frames, mem.nr_free) == (7168, 2, 14)
    pool.store(np.array([2]))  # a page written again replaces its old object
    pool.fit()
    assert pool.total_bytes == 7168
    pool.check()
    mem.check()
    assert pool.free(np.arange(8)) == 4
    assert (pool.total_bytes, pool.nr_frames, mem.nr_pool, mem.nr_free) == (0, 0, 0, 16)


def test_compression_is_charged_to_the_reclaimer() -> None:
    sc = ScanControl(nr_to_reclaim=32, nr_compressed=10)
    assert CostModel(CostsConfig(), compress_ns=6000).reclaim_ns(sc) == 60_000


def _zram_world(**changes: object) -> World:
    w = World(tiny(swap__device="zram", **changes))
    run_checked(w)
    return w


def test_swap_in_skips_the_swap_cache_and_readahead() -> None:
    """do_swap_page on SWP_SYNCHRONOUS_IO: every swap-in is a major fault that decompresses the
    page and frees its slot and compressed copy; no readahead, no device queue, no page ever
    waits in the swap cache (a written page is freed in the pass that compressed it)."""
    w = _zram_world(swap__page_cluster=3)
    s = w.summary(0.0)
    vs, h = s["host"]["vmstat"], s["host"]
    assert vs["pswpout"] > 0
    assert vs["pgmajfault"] > 0
    vcpus = sum(v["vcpus"] for v in s["vms"])
    assert 0 <= vs["pswpin"] - vs["pgmajfault"] <= vcpus  # reads still decompressing at the end
    assert vs["swap_ra"] == 0
    assert vs["swap_ra_hit"] == 0
    assert vs["nr_vmscan_write"] == vs["pgsteal_kswapd"] + vs["pgsteal_direct"]
    assert h["swap"]["device_busy_ns"] == 0
    assert h["swap"]["queue_wait_ns"] == 0
    f = w.mem.flags
    assert not ((f & HAS_FRAME != 0) & (f & PG_SWAP != 0)).any()  # no swap-cache folio
    pool = w.swap.zpool
    assert pool is not None
    assert pool.nr_stored == h["swap"]["used_end"] > 0
    assert w.mem.nr_pool == h["swap"]["pool_frames_end"] == -(-pool.total_bytes // 4096)


def test_zram_memory_is_taken_from_the_host_in_proportion_to_the_ratio() -> None:
    """The same run with pages that compress 8:1 and 2:1: the pool holds about 1/8 and 1/2 of
    a frame per stored page."""
    per_page = []
    for ratio in (8.0, 2.0):
        w = _zram_world(vms__0__compress_ratio=ratio, vms__0__compress_ratio_cv=0.0)
        pool = w.swap.zpool
        assert pool is not None
        vm0 = w.mms[0]
        stored0 = pool.stored[vm0.pid_base : vm0.pid_base + vm0.nr_pages]
        assert (pool.obj_bytes[vm0.pid_base : vm0.pid_base + vm0.nr_pages] == 4096 / ratio).all()
        per_page.append(pool.nr_frames / max(pool.nr_stored, 1))
        assert int(stored0.sum()) > 0
    assert per_page[0] < per_page[1]


def test_zram_in_demand_mode_is_refused(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["swap"] = {"device": "zram"}
    tiny_raw["reclaim"] = {"policy": "lru", "trigger": "demand"}
    with pytest.raises(ConfigError, match="swap.device: zram .* use swap.device: disk"):
        parse_scenario(tiny_raw)

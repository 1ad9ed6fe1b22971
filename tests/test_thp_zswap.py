"""THP behind zswap: a large folio is stored whole or written to the device whole (zswap_store
of a large folio, since 6.13), and its pages come back 4 KiB at a time. Hand-worked numbers on
the tiny world: an 8 MiB host (2048 frames), a THP of 512 pages whose compressed pages are set
to 1,000 bytes each (125 pool frames for a whole THP)."""

from __future__ import annotations

import numpy as np

from sim.engine import World
from sim.host.memory import PAGE_SIZE, PG_RESIDENT, PG_SWAP, PG_WRITEBACK
from sim.host.vmscan import Outcome, ScanControl
from tests.test_thp import _shrink, _stat, _touch, _world


def _zswap_world(max_pool_percent: int = 50, as_is: bool = True) -> World:
    w = _world(
        swap__zswap={
            "enabled": True,
            "max_pool_percent": max_pool_percent,
            "store_incompressible": as_is,
        }
    )
    assert w.swap.zswap is not None
    w.swap.zswap.pool.obj_bytes[:] = 1000
    return w


def _cold_thp(w: World, gfn: int) -> int:
    """A THP first-touched at ``gfn`` (written), aged once: cold. Its head frame."""
    _touch(w, 0, gfn, write=True)
    head = int(w.mem.pfn[gfn])
    w.rmap.folio_referenced(np.array([head]), ScanControl(nr_to_reclaim=32))
    return head


def test_a_thp_is_stored_whole_and_comes_back_4k_from_the_pool() -> None:
    w = _zswap_world()
    out, sc = _shrink(w, _cold_thp(w, 0))
    assert out == Outcome.FREED  # stored before pageout returned: clean, freed at once
    assert (_stat(w, "zswpout"), _stat(w, "pswpout"), _stat(w, "thp_swpout")) == (512, 0, 0)
    assert _stat(w, "thp_split_pmd") == 1
    assert sc.nr_compressed == 512
    assert w.swap.zswap is not None
    assert w.swap.zswap.pool.stored[:512].all()
    assert w.mem.nr_pool == 125  # ceil(512 x 1000 / 4096)
    assert ((w.mem.flags[:512] & (PG_SWAP | PG_RESIDENT)) == PG_SWAP).all()
    w.check()
    assert _touch(w, 0, 5) == "major"  # zswap_load: decompressed, no read, a 4 KiB folio
    assert (_stat(w, "zswpin"), _stat(w, "pswpin"), _stat(w, "pgmajfault")) == (1, 0, 1)
    assert w.mem.thp is not None
    assert w.mem.thp[0] == 0
    w.check()


def test_one_incompressible_page_is_stored_as_it_is_with_the_rest_of_the_thp() -> None:
    w = _zswap_world()
    assert w.swap.zswap is not None
    w.swap.zswap.pool.obj_bytes[300] = PAGE_SIZE  # does not shrink: kept as it is (6.18+)
    out, sc = _shrink(w, _cold_thp(w, 0))
    assert out == Outcome.FREED
    assert _stat(w, "zswap_reject_compress_poor") == 0
    assert (_stat(w, "zswpout"), _stat(w, "thp_swpout"), _stat(w, "pswpout")) == (512, 0, 0)
    assert sc.nr_compressed == 512
    assert w.swap.zswap.pool.stored[:512].all()
    assert w.swap.zswap.pool.nr_incompressible() == 1
    assert w.mem.nr_pool == -(-(511 * 1000 + PAGE_SIZE) // PAGE_SIZE)
    w.check()


def test_before_6_18_one_poorly_compressing_page_sends_the_whole_thp_to_the_device() -> None:
    w = _zswap_world(as_is=False)
    assert w.swap.zswap is not None
    w.swap.zswap.pool.obj_bytes[300] = PAGE_SIZE  # does not shrink: zswap_store_page fails
    head = _cold_thp(w, 0)
    out, sc = _shrink(w, head)
    assert out == Outcome.KEEP  # written as one 2 MiB request, in flight
    assert _stat(w, "zswap_reject_compress_poor") == 1
    assert (_stat(w, "zswpout"), _stat(w, "thp_swpout"), _stat(w, "pswpout")) == (0, 1, 512)
    assert sc.nr_compressed == 301  # pages 0..300 compressed before the folio failed
    assert not w.swap.zswap.pool.stored.any()  # what was stored of it went again
    assert w.mem.nr_pool == 0
    assert (w.mem.flags[:512] & PG_WRITEBACK).all()
    w.check()
    w.env.run()  # the write ends; the clean folio is freed whole
    out, _ = _shrink(w, head)
    assert out == Outcome.FREED
    w.check()


def test_a_full_pool_refuses_the_thp_and_its_shrink_worker_writes_back_to_the_threshold() -> None:
    # max_pool_percent 1: 20 frames (2048 // 100), accept threshold 90%: 18 frames
    w = _zswap_world(max_pool_percent=1)
    out, _ = _shrink(w, _cold_thp(w, 0))
    assert out == Outcome.FREED  # the limit is checked once per folio: 125 frames stored
    assert w.mem.nr_pool == 125
    out, _ = _shrink(w, _cold_thp(w, 512))
    assert out == Outcome.KEEP  # 125 >= 20: refused whole, written to the device
    assert _stat(w, "zswap_pool_limit_hit") == 1
    assert _stat(w, "thp_swpout") == 1
    # the shrink worker writes the oldest entries back until ceil(n x 1000 / 4096) <= 18,
    # n <= 73: 439 of the first THP's 512 pages
    assert _stat(w, "zswpwb") == 439
    assert _stat(w, "pswpout") == 512 + 439
    assert w.mem.nr_pool == 18
    w.check()


def test_khugepaged_takes_the_pages_still_in_the_pool_from_it() -> None:
    w = _world(
        swap__zswap={"enabled": True, "max_pool_percent": 50},
        host__thp={"khugepaged": {"pages_to_scan": 512, "scan_sleep_ms": 1}},
    )
    assert w.swap.zswap is not None
    w.swap.zswap.pool.obj_bytes[:] = 1000
    _shrink(w, _cold_thp(w, 0))  # stored whole: 512 pages in the pool
    for gfn in range(448):  # 64 left in the pool: max_ptes_swap's limit
        _touch(w, 0, gfn)
    assert _stat(w, "zswpin") == 448
    k = w.khugepaged
    assert k is not None
    assert k.scan_pmd(0)
    busy_ns = k.collapse(0, int(w.env.now))
    # __collapse_huge_page_swapin: the 64 come from the pool, decompressed, with no read
    assert (_stat(w, "zswpin"), _stat(w, "pswpin"), _stat(w, "pgmajfault")) == (512, 0, 512)
    assert busy_ns == 64 * w.swap.decompress_ns + 512 * w.costs.clear_page_ns
    assert _stat(w, "thp_collapse_alloc") == 1
    assert not w.swap.zswap.pool.stored.any()
    assert w.mem.nr_pool == 0
    w.check()

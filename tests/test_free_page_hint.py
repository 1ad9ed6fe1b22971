"""Free page hinting: the blocks the driver takes, the shrinker's arithmetic worked by hand,
and a migration's effect on a guest that needs its memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import simpy

from sim.config import parse_scenario
from sim.errors import ConfigError
from sim.guest.free_page_hint import FreePageHintConfig, FreePageHinting
from sim.host.memory import PG_RESIDENT, PTE_PRESENT, HostMemory, Watermarks
from sim.host.vmscan import ScanControl
from tests.test_guest import _raw, _world

FRAMES = 4096  # four hint blocks of 1024 4 KiB pages


def _hinting(min_pages: int) -> tuple[HostMemory, FreePageHinting]:
    """A 16 MiB zone whose first 10 frames are in use, and a driver whose kernel pages are
    pseudo-pages from pid FRAMES on (unmapped, like a guest's balloon pages)."""
    mem = HostMemory(
        FRAMES,
        2 * FRAMES,
        Watermarks(min_pages, min_pages + 1, min_pages + 2, 0),
        [0, FRAMES],
        file_base=FRAMES,
    )
    for pid in range(10):
        mem.alloc_frame(pid)
        mem.flags[pid] |= PTE_PRESENT  # mapped anon pages
    slots = iter(range(FRAMES, 2 * FRAMES))

    def take(gfns: np.ndarray) -> None:
        mem.take_free(gfns, np.array([next(slots) for _ in gfns], dtype=np.int64))

    env = simpy.Environment()
    h = FreePageHinting(env, mem, take, mem.free_frames, FreePageHintConfig(enabled=True))
    return mem, h


@pytest.mark.parametrize(("min_pages", "blocks"), [(100, [1, 2, 3]), (1500, [1, 2])])
def test_the_driver_takes_whole_free_blocks_while_the_zone_stays_above_min(
    min_pages: int, blocks: list[int]
) -> None:
    mem, h = _hinting(min_pages)
    h.send_free_pages()
    assert h.held == blocks  # block 0 holds frames in use: not a free order-10 block
    assert mem.nr_free == FRAMES - 10 - 1024 * len(blocks)
    assert (mem.frame_pid[h.hinted_gfns()] >= FRAMES).all()
    mem.check()
    assert h.return_free_pages(len(h.held)) == len(blocks)
    assert mem.nr_free == FRAMES - 10
    mem.check()


def test_the_shrinker_gives_blocks_back_only_when_reclaim_is_desperate() -> None:
    """do_shrink_slab with 2 blocks held (freeable 2048, seeks 2, batch 128)."""
    mem, h = _hinting(1500)
    h.send_free_pages()
    assert len(h.held) == 2
    sc = ScanControl(nr_to_reclaim=32)
    sc.priority = 12  # delta (2048 >> 12) * 4 / 2 = 0
    h.shrink(sc)
    assert (len(h.held), h.nr_deferred, sc.nr_reclaimed) == (2, 0, 0)
    sc.priority = 6  # delta 64: under a batch, deferred
    h.shrink(sc)
    assert (len(h.held), h.nr_deferred) == (2, 64)
    h.shrink(sc)  # (64 >> 6) + 64 = 65: still under a batch; deferred 128
    assert (len(h.held), h.nr_deferred) == (2, 128)
    sc.priority = 2  # (128 >> 2) + 1024 = 1056: batches of 128, each a whole block
    h.shrink(sc)
    assert h.held == []
    assert sc.nr_reclaimed == 2048
    assert h.counts.hint_shrunk_blocks == 2
    assert h.counts.hint_shrinker_calls == 2
    mem.check()


def _migrating(migrations: list[float]) -> dict[str, Any]:
    raw = _raw(host_mib=128, ram_mib=32, footprint_mib=24)
    raw["duration_s"] = 0.3
    raw["vms"][0]["workload"] = {"type": "uniform"}
    hint = {"enabled": bool(migrations), "migrations_s": migrations, "precopy_s": 0.15}
    raw["vms"][0]["balloon"] = {"enabled": True, "stats_interval_s": 0, "free_page_hint": hint}
    return raw


def test_a_migration_lends_free_memory_and_the_guest_reclaims_meanwhile() -> None:
    """A 24 MiB process in 32 MiB of guest RAM never reclaims; while a migration holds the
    guest's free blocks its kswapd scans, and at the end every block is back. The host keeps
    the hinted pages backed (hinting discards nothing)."""
    quiet = _world(_migrating([])).summary(0.0)["vms"][0]
    assert quiet["guest"]["pgscan_kswapd"] == 0
    raw = _migrating([0.05])
    w = _world(raw)
    s = w.summary(0.0)["vms"][0]
    b = s["balloon"]
    assert b["hint_migrations"] == 1
    assert b["hint_blocks"] >= 1
    assert b["hint_pages"] == 1024 * b["hint_blocks"]
    assert s["guest"]["pgscan_kswapd"] > 0
    assert s["guest_memory"]["hinted"] == 0  # DONE gave back what the shrinker had not


def test_hinted_gfns_stay_backed_on_the_host_during_the_migration() -> None:
    from sim.engine import build_world

    w = build_world(parse_scenario(_migrating([0.05])), None)
    w.start()
    w.env.run(until=60_000_000)  # mid-migration
    w.check()
    g, vm = w.vms[0].guest, w.vms[0]
    hinted = np.flatnonzero(g.hinted)
    assert len(hinted) > 0
    # hinting discards nothing: a gfn still lent 40 ms later has the host state it had (a
    # fresh guest's free blocks were never touched, so the host backs none of them yet)
    before = w.mem.flags[vm.mm.pid_base + hinted].copy()
    w.env.run(until=100_000_000)
    still = g.hinted[hinted]
    assert still.any()
    assert (w.mem.flags[vm.mm.pid_base + hinted][still] == before[still]).all()
    assert not (before & PG_RESIDENT).any()


@pytest.mark.parametrize(
    ("hint", "match"),
    [
        ({"enabled": True, "migrations_s": [0.0, 0.05], "precopy_s": 0.1}, "starts before"),
        ({"enabled": True, "migrations_s": [-1.0]}, ">= 0"),
    ],
)
def test_bad_hint_sections_are_one_line_errors(hint: dict[str, Any], match: str) -> None:
    raw = _migrating([])
    raw["vms"][0]["balloon"]["free_page_hint"] = hint
    with pytest.raises(ConfigError, match=match):
        parse_scenario(raw)


def test_hinting_needs_the_balloon_device() -> None:
    raw = _migrating([0.05])
    raw["vms"][0]["balloon"]["enabled"] = False
    with pytest.raises(ConfigError, match="needs the balloon device"):
        parse_scenario(raw)


def test_a_balloon_without_hinting_dumps_as_before() -> None:
    raw = _migrating([])
    raw["vms"][0]["balloon"]["free_page_hint"] = {"enabled": False}
    sc = parse_scenario(raw)
    raw["vms"][0]["balloon"].pop("free_page_hint")
    assert sc.config_hash() == parse_scenario(raw).config_hash()
    assert "free_page_hint" not in sc.model_dump(mode="json")["vms"][0]["balloon"]

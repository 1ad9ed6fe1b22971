"""The host page cache (sim/host/filemap.py, two_list's file lists): a host file workload
reading through its own LRU lists, reclaimed without I/O, balanced against anon by swappiness."""

from __future__ import annotations

from typing import Any

import pytest

from sim.config import ConfigError, parse_scenario
from sim.engine import World
from sim.host.memory import PG_DIRTY
from tests.conftest import run_checked


def _raw(swappiness: int = 60, **files: Any) -> dict[str, Any]:
    """A 16 MiB host: one guest keeping 12 MiB busy, a 16 MiB file read by Zipf popularity."""
    return {
        "name": "pc",
        "seed": 3,
        "duration_s": 0.3,
        "host": {"memory_mib": 16},
        "reclaim": {"policy": "two_list", "swappiness": swappiness},
        "swap": {"size_mib": 32},
        "vms": [
            {
                "name": "g",
                "memory_mib": 16,
                "working_set_mib": 12,
                "access_rate_per_s": 400_000,
                "workload": {"type": "uniform"},
            }
        ],
        "host_files": {
            "size_mib": 16,
            "access_rate_per_s": 400_000,
            "read_latency_us": 5,
            "workload": {"type": "zipf", "alpha": 0.8},
        }
        | files,
    }


def _run(raw: dict[str, Any]) -> World:
    w = World(parse_scenario(raw))
    assert run_checked(w, every_ns=20_000_000) >= 10
    return w


def test_page_cache_is_read_reclaimed_without_io_and_refaults() -> None:
    w = _run(_raw())
    vs, mem = w.vmstat, w.mem
    page_kib = 4
    # every miss read a page from the device; every resident file page was read once at least
    assert vs["pgpgin"] >= page_kib * int(mem.nr_resident[-1])
    assert vs["pgpgin"] % page_kib == 0
    # file folios were scanned and every one freed (clean: no write, no swap slot)
    assert vs["pgscan_file"] > 0
    assert vs["pgsteal_file"] == vs["pgscan_file"]
    assert vs["pswpout"] + vs["zswpout"] <= vs["pgscan_anon"]
    # a freed file page read again is a refault, some within the workingset (activated)
    assert 0 < vs["workingset_activate_file"] <= vs["workingset_refault_file"]
    assert vs["workingset_refault_file"] * page_kib <= vs["pgpgin"]
    lru = w.policy.lru_sizes()
    assert lru["inactive_file"] + lru["active_file"] == int(mem.nr_resident[-1])


def _dirty_file_pages(w: World) -> int:
    mem = w.mem
    return int(((mem.flags[mem.file_base :] & PG_DIRTY) != 0).sum())


def test_reclaim_never_drops_a_dirty_file_folio() -> None:
    """With the flusher's period longer than the run, every folio dirtied is still dirty at
    the end or was written (background write-back, reclaim's wake-ups and kswapd's own
    writes): reclaim never freed one dirty; it marked the dirty ones it met and activated
    them."""
    w = _run(_raw(write_ratio=0.5, dirty_writeback_ms=10_000))
    vs = w.vmstat
    assert vs["nr_dirtied"] > 0
    assert vs["nr_vmscan_immediate_reclaim"] > 0
    assert vs["nr_dirtied"] == _dirty_file_pages(w) + vs["pgpgout"] // 4
    assert vs["pgsteal_file"] < vs["pgscan_file"]


def test_the_flusher_writes_expired_dirty_folios() -> None:
    """Every PG_dirty the flusher cleared was one write (pgpgout); the rest is still dirty;
    written folios that reclaim had marked were rotated and freed."""
    w = _run(_raw(write_ratio=0.5, dirty_writeback_ms=20, dirty_expire_ms=10))
    vs, page_kib = w.vmstat, 4
    written = vs["pgpgout"] // page_kib
    assert 0 < vs["nr_written"] <= written
    assert written - vs["nr_written"] == w.mem.nr_writeback  # the rest is in flight
    assert vs["nr_dirtied"] == _dirty_file_pages(w) + written
    assert vs["pgrotated"] > vs["nr_vmscan_write"]  # more than anon writes: file rotated too


def test_swappiness_moves_the_scan_balance() -> None:
    """swappiness 0 scans no anon while file is not tiny; higher swappiness scans less file
    and reclaims more anon."""
    runs = {}
    for s in (0, 60, 200):
        vs = _run(_raw(swappiness=s)).vmstat
        runs[s] = (vs["pgscan_anon"], vs["pgscan_file"], vs["pgsteal_anon"])
    assert runs[0][0] == runs[0][2] == 0
    assert runs[0][1] > runs[60][1] > runs[200][1]
    assert runs[60][2] < runs[200][2]
    share = {s: a / (a + f) for s, (a, f, _) in runs.items()}
    assert share[0] < share[60] < share[200]


def test_no_host_files_keeps_the_counters_as_they_were() -> None:
    raw = _raw()
    del raw["host_files"]
    w = _run(raw)
    assert "workingset_refault_file" not in w.vmstat
    assert w.vmstat["pgscan_file"] == 0  # by type in every run: all anon here
    assert w.vmstat["pgscan_anon"] == w.vmstat["pgscan_kswapd"] + w.vmstat["pgscan_direct"]
    assert "inactive_file" not in w.policy.lru_sizes()
    assert len(w.mem.nr_resident) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"reclaim": {"policy": "clock"}}, "host_files"),
        ({"host_files": {"size_mib": 0}}, "host_files.size_mib"),
        ({"host_files": {"size_mib": 4, "read_latency_us": 0}}, "host_files.read_latency_us"),
    ],
)
def test_bad_host_files_is_one_line_naming_the_field(change: dict[str, Any], field: str) -> None:
    raw = _raw() | change
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    msg = str(e.value)
    assert field in msg
    assert "\n" not in msg.strip()

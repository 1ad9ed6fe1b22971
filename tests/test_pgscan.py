"""Where reclaim's scans and steals are counted, as ``shrink_inactive_list`` counts them:
``pgscan_kswapd``/``_direct`` (and ``pgsteal_*``) in /proc/vmstat for global reclaim only, in a
memcg's memory.stat for all reclaim of its lruvec; ``pgscan_anon``/``_file`` (and
``pgsteal_*``) in /proc/vmstat for every reclaim, by LRU type."""

from __future__ import annotations

from typing import Any

import pytest

from sim.config import parse_scenario
from sim.engine import World
from sim.host.vmscan import ScanControl
from tests.conftest import run_checked


def _raw(*, memcg: dict[str, Any] | None, files: bool = False) -> dict[str, Any]:
    """Two 32 MiB guests keeping 24 MiB busy each on a 36 MiB host: global reclaim (kswapd
    and direct); ``memcg`` limits VM a too (limit reclaim as well); ``files`` adds a 16 MiB
    disk image read by the host (page cache on the file lists)."""
    vm = {
        "memory_mib": 32,
        "working_set_mib": 24,
        "access_rate_per_s": 400_000,
        "workload": {"type": "uniform"},
    }
    raw: dict[str, Any] = {
        "name": "pgscan",
        "seed": 3,
        "duration_s": 0.3,
        "host": {"memory_mib": 36},
        "reclaim": {"policy": "two_list"},
        "swap": {"size_mib": 128},
        "vms": [{"name": "a", **vm, **({"memcg": memcg} if memcg else {})}, {"name": "b", **vm}],
    }
    if files:
        raw["host_files"] = [
            {
                "size_mib": 16,
                "access_rate_per_s": 100_000,
                "read_latency_us": 5,
                "workload": {"type": "uniform"},
            }
        ]
    return raw


def _sum(vs: Any, kind: str, *parts: str) -> int:
    return sum(vs[f"{kind}_{p}"] for p in parts)


def test_global_reclaim_counts_every_scan_as_anon_and_by_reclaimer() -> None:
    """No memcg: every reclaim is global, so the by-type and by-reclaimer counts agree."""
    w = World(parse_scenario(_raw(memcg=None)))
    run_checked(w)
    vs = w.vmstat
    assert vs["pgscan_kswapd"] > 0
    assert vs["pgscan_direct"] > 0
    for kind in ("pgscan", "pgsteal"):
        assert vs[f"{kind}_anon"] == _sum(vs, kind, "kswapd", "direct") > 0
        assert vs[f"{kind}_file"] == 0
    h = w.summary(0.0)["host"]
    assert h["scanned"] == h["kswapd_scanned"] + h["direct_scanned"] == vs["pgscan_anon"]
    assert h["reclaimed"] == h["kswapd_reclaimed"] + h["direct_reclaimed"]


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_page_cache_splits_anon_and_file(policy: str) -> None:
    """A page cache on the file lists: reclaim scans and frees both types, each counted once
    by type; every file folio scanned is clean and unmapped, so the file split is the page
    cache's share of the reclaimers' counts."""
    raw = _raw(memcg=None, files=True)
    raw["reclaim"]["policy"] = policy
    w = World(parse_scenario(raw))
    run_checked(w)
    vs = w.vmstat
    for kind in ("pgscan", "pgsteal"):
        assert vs[f"{kind}_anon"] > 0
        assert vs[f"{kind}_file"] > 0
        assert _sum(vs, kind, "anon", "file") == _sum(vs, kind, "kswapd", "direct")


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_limit_reclaim_is_out_of_the_hosts_reclaimer_counts_not_its_memcgs(policy: str) -> None:
    """Global reclaim and VM a's limit reclaim together: the host's pgscan_direct and
    pgscan_kswapd sum the memcgs' global reclaim only, VM a's memory.stat counts its limit
    reclaim as direct on top, and pgscan_anon counts it all."""
    raw = _raw(memcg={"max_mib": 16})
    raw["reclaim"]["policy"] = policy
    w = World(parse_scenario(raw))
    run_checked(w)
    vs = w.vmstat
    a, b = vs.per_mm
    assert vs["memcg_max"] > 0  # limit reclaim ran
    for kind in ("pgscan", "pgsteal"):
        host = _sum(vs, kind, "kswapd", "direct")
        memcgs = _sum(a, kind, "kswapd", "direct") + _sum(b, kind, "kswapd", "direct")
        assert vs[f"{kind}_kswapd"] == a[f"{kind}_kswapd"] + b[f"{kind}_kswapd"]
        assert vs[f"{kind}_direct"] < a[f"{kind}_direct"] + b[f"{kind}_direct"]
        assert host < memcgs == vs[f"{kind}_anon"]
        assert vs[f"{kind}_file"] == 0


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_pgscan_by_type_is_every_folio_any_reclaim_scanned(policy: str, monkeypatch: Any) -> None:
    """pgscan_anon + pgscan_file (pgsteal_*) add up to the folios every reclaim pass, global
    or memcg, isolated (freed), as the passes themselves count them (``sc.nr_scanned``)."""
    scanned, freed = [0], [0]
    isolated, was_freed = ScanControl.isolated, ScanControl.freed

    def isolated_spy(self: ScanControl, n: int, file: bool = False) -> None:
        scanned[0] += n
        isolated(self, n, file)

    def freed_spy(self: ScanControl, n: int, file: bool = False) -> None:
        freed[0] += n
        was_freed(self, n, file)

    monkeypatch.setattr(ScanControl, "isolated", isolated_spy)
    monkeypatch.setattr(ScanControl, "freed", freed_spy)
    raw = _raw(memcg={"max_mib": 16}, files=True)
    raw["host_files"][0]["memcg"] = "a"
    raw["reclaim"]["policy"] = policy
    w = World(parse_scenario(raw))
    run_checked(w)
    vs = w.vmstat
    assert vs["memcg_max"] > 0
    assert vs["pgscan_direct"] + vs["pgscan_kswapd"] > 0
    assert _sum(vs, "pgscan", "anon", "file") == scanned[0] > vs["pgscan_direct"]
    assert _sum(vs, "pgsteal", "anon", "file") == freed[0] > 0

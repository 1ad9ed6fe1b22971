"""The timeline's optional columns: per-VM memcg columns when some VM has a memcg, page-cache
columns when the host has one; read from vmstat and MemCgroups, matching the summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sim.config import parse_scenario
from sim.engine import build_world
from sim.record import (
    TIMELINE_FILE_COLUMNS,
    TIMELINE_HOST_COLUMNS,
    TIMELINE_MEMCG_COLUMNS,
    TIMELINE_VM_COLUMNS,
)
from tests.test_pagecache import _raw as pagecache_raw

VM: dict[str, Any] = {
    "memory_mib": 32,
    "access_rate_per_s": 400_000,
    "workload": {"type": "hotcold", "hot_fraction": 0.5, "hot_access_fraction": 0.95},
}


def _memcg_raw(policy: str = "two_list") -> dict[str, Any]:
    return {
        "name": "tl",
        "seed": 5,
        "duration_s": 0.2,
        "host": {"memory_mib": 48},
        "swap": {"size_mib": 128},
        "reclaim": {"policy": policy},
        "engine": {"sample_interval_ms": 10.0},
        "vms": [
            {"name": "a", **VM, "memcg": {"max_mib": 8, "high_mib": 12, "swap_max_mib": 64}},
            {"name": "b", **VM},
        ],
    }


def _timeline(raw: dict[str, Any], tmp: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run ``raw``, take one more sample at the end, and return the timeline and summary."""
    w = build_world(parse_scenario(raw), tmp)
    w.run()
    w.sample(int(w.env.now))
    summary = w.summary(0.0)
    assert w.recorder is not None
    w.recorder.close()
    return pd.read_parquet(tmp / "timeline.parquet"), summary


def test_plain_runs_keep_the_plain_columns(tmp_path: Path) -> None:
    raw = _memcg_raw()
    del raw["vms"][0]["memcg"]
    tl, _ = _timeline(raw, tmp_path)
    assert list(tl.columns) == ["t_ns", "vm", *TIMELINE_VM_COLUMNS, *TIMELINE_HOST_COLUMNS]


def test_memcg_columns_read_the_summarys_counts(tmp_path: Path) -> None:
    for policy in ("two_list", "mglru"):
        out = tmp_path / policy
        out.mkdir()
        tl, s = _timeline(_memcg_raw(policy), out)
        want = ["t_ns", "vm", *TIMELINE_VM_COLUMNS, *TIMELINE_MEMCG_COLUMNS]
        assert list(tl.columns) == want + TIMELINE_HOST_COLUMNS
        end = tl[tl.t_ns == tl.t_ns.max()]
        end = end.set_index(end.vm.astype(str))
        for v in s["vms"]:
            row, vs = end.loc[v["name"]], Counter(v["vmstat"])
            assert row.memory_current_pages == v["resident_pages"]
            assert row.pgscan == vs["pgscan_kswapd"] + vs["pgscan_direct"]
            assert row.pgsteal == vs["pgsteal_kswapd"] + vs["pgsteal_direct"]
            assert row.workingset_refault_anon == vs["workingset_refault_anon"]
            assert row.inactive_anon_pages + row.active_anon_pages <= row.memory_current_pages
            if "memcg" in v:
                cg = v["memcg"]
                assert row.memory_swap_current_pages == cg["swap_current_pages"]
                assert row.memory_events_max == cg["events"]["max"] > 0
                assert row.memory_events_high == cg["events"]["high"]
                assert row.memory_events_low == cg["events"]["low"]
                assert row.memory_events_oom_kill == cg["events"]["oom_kill"]
                assert row.memory_current_pages <= cg["max_pages"] + 1
        assert end.pgscan.sum() > 0
        assert end.workingset_refault_anon.sum() > 0
        # the lruvecs together are the host's lists
        host = end.iloc[0]
        assert end.inactive_anon_pages.sum() == host.lru_inactive
        assert end.active_anon_pages.sum() == host.lru_active
        # memory.current never passes memory.max by more than the VM's one vCPU
        a = tl[tl.vm.astype(str) == "a"]
        assert (a.memory_current_pages <= 8 * 256 + 1).all()
        assert a.pgscan.is_monotonic_increasing


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_page_cache_columns(tmp_path: Path, policy: str) -> None:
    raw = pagecache_raw(write_ratio=0.5, dirty_expire_ms=20, dirty_writeback_ms=10)
    raw["reclaim"]["policy"] = policy
    raw["engine"] = {"sample_interval_ms": 5.0}
    tl, s = _timeline(raw, tmp_path)
    assert list(tl.columns) == [
        "t_ns",
        "vm",
        *TIMELINE_VM_COLUMNS,
        *TIMELINE_HOST_COLUMNS,
        *TIMELINE_FILE_COLUMNS,
    ]
    assert (tl.lru_inactive_file + tl.lru_active_file > 0).any()
    assert (tl.file_dirty_pages > 0).any()
    assert (tl.file_writeback_pages > 0).any()
    assert (tl.file_writeback_pages <= tl.writeback_pages).all()
    # dirty or under write-back: no more than the file folios on the lists
    lists = tl.lru_inactive_file + tl.lru_active_file
    assert (tl.file_dirty_pages + tl.file_writeback_pages <= lists).all()


def test_parquet_schema_is_int64_for_every_new_column(tmp_path: Path) -> None:
    _timeline(_memcg_raw(), tmp_path)
    schema = pq.read_schema(tmp_path / "timeline.parquet")
    for c in TIMELINE_MEMCG_COLUMNS:
        assert str(schema.field(c).type) == "int64"


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_memcg_page_cache_columns(tmp_path: Path, policy: str) -> None:
    """With memcgs and a page cache charged to VM "a": its row's memory.current is its guest
    RAM plus ``file_pages``, which its lruvec's file lists hold; "b" has none."""
    raw = _memcg_raw(policy)
    raw["host_files"] = [{"size_mib": 16, "memcg": "a", "access_rate_per_s": 200_000}]
    tl, s = _timeline(raw, tmp_path)
    assert list(tl.columns)[-len(TIMELINE_FILE_COLUMNS) :] == TIMELINE_FILE_COLUMNS
    end = tl[tl.t_ns == tl.t_ns.max()]
    end = end.set_index(end.vm.astype(str))
    a, b = end.loc["a"], end.loc["b"]
    vms = {v["name"]: v for v in s["vms"]}
    assert a.file_pages == vms["a"]["memcg"]["file_pages"] > 0
    assert a.memory_current_pages == vms["a"]["resident_pages"] + a.file_pages
    assert a.inactive_file_pages + a.active_file_pages == a.file_pages
    assert b.file_pages == b.inactive_file_pages + b.active_file_pages == 0

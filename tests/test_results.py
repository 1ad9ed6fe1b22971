"""``sim.results``: the flat rows every table reads, manifests that say what a directory is,
and names that are safe as directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from sim.cli import main
from sim.config import Scenario
from sim.engine import run_scenario
from sim.results import (
    NAME_PATTERN,
    check_name,
    host_row,
    is_temp_name,
    kind_of,
    metric_row,
    read_manifest,
    temp_name,
    vm_rows,
)
from sim.sweep import run_sweep
from tests.conftest import TINY, tiny

RUNS_COLUMNS = [
    "policy",
    "overcommit",
    "accesses",
    "faults_first_touch",
    "faults_minor",
    "faults_major",
    "faults_access_tracking",
    "misses",
    "major_faults_per_s",
    "refaults",
    "stall_fraction",
    "major_latency_p99_ns",
    "pswpin",
    "pswpout",
    "tlb_flushes",
    "notifier_calls",
    "oom_kills",
    "warmup_ns",
    "sim_time_ns",
    "wall_s",
]


def test_metric_row_is_the_runs_parquet_row(tmp_path: Path) -> None:
    s = run_scenario(tiny(duration_s=0.05), None).summary
    row = metric_row(s)
    assert list(row) == RUNS_COLUMNS
    assert row["faults_major"] == sum(v["faults"]["major"] for v in s["vms"])
    assert row["notifier_calls"] == sum(s["host"]["notifier"].values())
    assert row["misses"] == row["faults_first_touch"] + row["faults_major"]
    assert row["major_latency_p99_ns"] == s["host"]["fault_latency_ns"]["major"]["p99"]
    demand = run_scenario(
        tiny(duration_s=0.003, reclaim={"policy": "clock", "trigger": "demand"}), None
    ).summary
    assert list(metric_row(demand)) == [
        *RUNS_COLUMNS,
        "opt_faults",
        "lru_faults",
        "opt_gap",
        "lru_gap",
    ]


def test_flat_rows_spell_nested_counters_with_prefixes() -> None:
    s = run_scenario(tiny(duration_s=0.02), None).summary
    vms = vm_rows(s)
    assert [v["name"] for v in vms] == [v["name"] for v in s["vms"]]
    assert vms[0]["faults_first_touch"] == s["vms"][0]["faults"]["first_touch"]
    assert not [k for v in vms for k, x in v.items() if isinstance(x, dict)]
    h = host_row(s)
    assert h["notifier_clear_flush_young"] == s["host"]["notifier"]["clear_flush_young"]
    assert h["swap_exhausted"] is s["host"]["swap"]["exhausted"]
    assert h["wmark_low"] == s["host"]["wmark"]["low"]
    assert h["oom_kills"] == s["host"]["oom_kills"]


def test_the_cli_table_reads_the_flat_rows(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "duration_s": 0.02}))
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert "vm0" in r.stdout
    assert f"kswapd scanned {s['host']['kswapd_scanned']:,}" in r.stdout


def test_the_cli_table_gives_the_compressed_pool(tmp_path: Path) -> None:
    """A run behind zswap says what went in and out of the pool and what it held at the end,
    read from the summary (the one count)."""
    cfg = tmp_path / "cfg.yaml"
    raw = {**TINY, "duration_s": 0.05, "swap": {**TINY["swap"], "zswap": {"enabled": True}}}
    cfg.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "res" / "summary.json").read_text())
    vs, swap = s["host"]["vmstat"], s["host"]["swap"]
    assert vs["zswpout"] > 0
    text = " ".join(r.stdout.split())  # the caption wraps
    assert f"zswap: zswpout {vs['zswpout']:,} zswpin {vs['zswpin']:,}" in text
    assert f"pool {swap['pool_frames_end']:,} frames" in text
    assert f"({swap['pool_incompressible_end']:,} pages as they are)" in text


def test_sweep_rows_match_the_run_summaries(tmp_path: Path) -> None:
    spec = {"base": {**TINY, "duration_s": 0.02}, "seeds": [1, 2]}
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(spec))
    out, df = run_sweep(path, tmp_path / "out", workers=1)
    for row in pd.read_parquet(out / "runs.parquet").itertuples():
        s = json.loads((out / "runs" / row.run / "summary.json").read_text())
        assert {k: getattr(row, k) for k in RUNS_COLUMNS} == metric_row(s)


def test_every_result_directory_says_what_it_is(tmp_path: Path) -> None:
    run_scenario(tiny(duration_s=0.02), tmp_path / "run", command=["memsim", "run"])
    m = read_manifest(tmp_path / "run")
    assert m is not None
    assert kind_of(m) == "run"
    assert {"config_hash", "seed", "command", "versions", "platform", "started_unix"} <= set(m)
    assert {"wall_s", "rows", "files"} <= set(m)
    legacy = {k: v for k, v in m.items() if k not in ("memsim", "files")}
    assert kind_of(legacy) == "run"  # written before manifests had the marker
    assert kind_of({"name": "x"}) is None
    assert kind_of({"memsim": {"kind": "nonsense"}}) is None


def test_names_and_temporaries() -> None:
    for bad in ["", ".", "..", "../x", "/x", "a/b", ".hidden", "x\n", "x" * 201]:
        with pytest.raises(Exception, match="name"):
            check_name(bad, "f.yaml")
        with pytest.raises(ValidationError, match="names a directory under results"):
            Scenario.model_validate({"name": bad, "vms": []})  # the config has the same rule
        assert not re.fullmatch(NAME_PATTERN, bad) or len(bad) > 200
    assert check_name("sweep_overcommit-2.0", "f.yaml") == "sweep_overcommit-2.0"
    t = temp_name("results")
    assert is_temp_name(t)
    assert not is_temp_name("results")
    assert not is_temp_name(".results.tmp-123")  # the old pattern is nobody's business now
    assert not re.fullmatch(NAME_PATTERN, t)  # no valid name is ever a temporary


MEMCG_COLUMNS = [
    "memcg_low",
    "memcg_high",
    "memcg_max",
    "memcg_oom",
    "memcg_swap_max",
    "memcg_worst_vm",
    "memcg_worst_stall_fraction",
    "memcg_worst_major_faults_per_s",
    "memcg_worst_pgscan",
    "memcg_worst_pgsteal",
    "memcg_worst_high",
    "memcg_worst_max",
]


def test_memcg_columns_sum_events_and_pick_the_most_stalled_memcg_vm() -> None:
    """By hand: events are the host's after-warm-up totals; the worst VM is the memcg VM with
    the highest stall fraction (``c``, not the unlimited ``b`` that stalls more), read from its
    after-warm-up breakdown (pgscan 30 + 5, pgsteal 20 + 4)."""
    from sim.results import memcg_columns

    def vm(name: str, stall: float, memcg: dict | None) -> dict:
        v = {"name": name, "stall_fraction": stall, "major_faults_per_s": stall * 100}
        v["vmstat"] = {"pgscan_kswapd": 999}  # whole-run: not read when the block has its own
        return v | ({"memcg": memcg} if memcg is not None else {})

    after = {"pgscan_kswapd": 30, "pgscan_direct": 5, "pgsteal_kswapd": 20, "pgsteal_direct": 4}
    s = {
        "vms": [
            vm("a", 0.1, {"vmstat_after_warmup": {"memcg_max": 1}}),
            vm("b", 0.9, None),
            vm("c", 0.5, {"vmstat_after_warmup": {**after, "memcg_max": 7, "memcg_high": 2}}),
        ]
    }
    host = {"vmstat_after_warmup_memcg_max": 8, "vmstat_after_warmup_memcg_high": 2}
    cols = memcg_columns(s, host, "vmstat_after_warmup_")
    assert list(cols) == MEMCG_COLUMNS
    assert cols == {
        "memcg_low": 0,
        "memcg_high": 2,
        "memcg_max": 8,
        "memcg_oom": 0,
        "memcg_swap_max": 0,
        "memcg_worst_vm": "c",
        "memcg_worst_stall_fraction": 0.5,
        "memcg_worst_major_faults_per_s": 50.0,
        "memcg_worst_pgscan": 35,
        "memcg_worst_pgsteal": 24,
        "memcg_worst_high": 2,
        "memcg_worst_max": 7,
    }
    assert memcg_columns({"vms": [vm("b", 0.9, None)]}, host, "vmstat_after_warmup_") == {}


def test_memcg_sweep_rows_count_from_the_warm_up(tmp_path: Path) -> None:
    """A sweep over memory.max: every row has the memcg columns, equal to its summary's; the
    capped VM's after-warm-up reclaim is its whole-run breakdown less the warm-up's."""
    base = {**TINY, "duration_s": 0.06, "warmup_s": 0.02}
    base["vms"] = [
        {**TINY["vms"][0], "count": 1, "name": "capped", "memcg": {"max_mib": 4}},
        {**TINY["vms"][0], "count": 1, "name": "free"},
    ]
    spec = {"base": base, "grid": {"vms.0.memcg.max_mib": [1, 3]}}
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(spec))
    out, _ = run_sweep(path, tmp_path / "out", workers=1)
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(MEMCG_COLUMNS) <= set(runs.columns)
    for row in runs.itertuples():
        s = json.loads((out / "runs" / row.run / "summary.json").read_text())
        assert {k: getattr(row, k) for k in [*RUNS_COLUMNS, *MEMCG_COLUMNS]} == metric_row(s)
        cg = s["vms"][0]["memcg"]
        assert row.memcg_max == s["host"]["vmstat_after_warmup"]["memcg_max"] > 0
        assert cg["events"]["max"] >= cg["vmstat_after_warmup"]["memcg_max"]
    tight = runs.sort_values("vms.0.memcg.max_mib")
    assert tight.memcg_max.iloc[0] > tight.memcg_max.iloc[-1]

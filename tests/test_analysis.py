"""The analysis package reads result directories and draws the README's figure."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from analysis.figures import main as figures_main
from analysis.load import fault_rate, load_run
from analysis.plots import stall_windows
from sim.engine import run_scenario
from tests.conftest import TINY, tiny


def test_figure_from_two_runs(tmp_path: Path) -> None:
    run_scenario(tiny(duration_s=0.1), tmp_path / "on")
    run_scenario(tiny(duration_s=0.1, kvm={"mmu_notifiers": False}), tmp_path / "off")
    on = load_run(tmp_path / "on")
    rate = fault_rate(on, "first_touch", bin_ms=10)
    total = on.table("faults").kind.eq("first_touch").sum()
    assert rate.rate_per_s.sum() * 0.01 == pytest.approx(total)  # each fault in one bin
    out = tmp_path / "fig.png"
    assert (
        figures_main(["notifiers", str(tmp_path / "on"), str(tmp_path / "off"), "-o", str(out)])
        == 0
    )
    assert out.stat().st_size > 10_000


def test_figure_on_a_missing_run_is_exit_2(tmp_path: Path) -> None:
    assert figures_main(["notifiers", str(tmp_path / "a"), str(tmp_path / "b")]) == 2


def test_quality_metrics_on_a_demand_run(tmp_path: Path) -> None:
    from analysis.quality import (
        oracle_gaps,
        premature_evictions,
        quality,
        refault_distances,
        residence_times,
    )

    sc = tiny(duration_s=0.003, reclaim={"policy": "clock", "trigger": "demand"})
    run_scenario(sc, tmp_path / "r")
    run = load_run(tmp_path / "r")
    gaps = oracle_gaps(run)
    assert gaps["opt_gap"] >= 1.0
    assert gaps["opt_faults"] <= gaps["lru_faults"] or gaps["lru_gap"] >= 1.0
    ev = run.table("evictions")
    res = residence_times(run)
    assert len(res) == len(ev)
    assert (res.dropna() >= 0).all()
    assert 0.0 <= premature_evictions(run) <= 1.0
    assert premature_evictions(run, window_ns=float("inf")) == ev.refault.mean()
    rd = refault_distances(run)
    assert len(rd) == int(ev.refault.sum())
    assert (rd >= 0).all()
    q = quality(run)
    assert q["evictions"] == len(ev)
    assert 0.0 <= q["idle_rank_mean"] <= 1.0


def test_overcommit_figure_from_a_runs_table(tmp_path: Path) -> None:
    import pandas as pd

    rows = [
        {
            "status": "ok",
            "seed": seed,
            "overcommit": oc,
            "policy": policy,
            "kvm.mmu_notifiers": on,
            "major_faults_per_s": 1000 * (oc - 1) * (1 if on else 2) + seed,
            "stall_fraction": 0.1 * (oc - 1) + 0.001 * seed,
        }
        for seed in (1, 2)
        for oc in (1.0, 1.5, 2.0)
        for policy in ("two_list", "clock")
        for on in (True, False)
    ]
    (tmp_path / "sw").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "sw" / "runs.parquet")
    out = tmp_path / "oc.png"
    assert figures_main(["overcommit", str(tmp_path / "sw"), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
    pd.DataFrame(rows).drop(columns="overcommit").to_parquet(tmp_path / "sw" / "runs.parquet")
    assert figures_main(["overcommit", str(tmp_path / "sw"), "-o", str(out)]) == 2


def test_time_axes_shade_the_warmup(tmp_path: Path) -> None:
    """Every figure over simulated time marks the warm-up its summary leaves out."""
    import matplotlib.pyplot as plt

    from analysis.plots import compare_runs
    from analysis.report_figures import fault_figure, free_memory_figure, kswapd_figure

    run_scenario(tiny(duration_s=0.05, warmup_s=0.02), tmp_path / "w")
    run = load_run(tmp_path / "w")
    tl = run.table("timeline")
    figs = [
        fault_figure(tl, "w", 0.02),
        free_memory_figure(tl, "w", 1 / 256, 0.02),
        kswapd_figure(tl, "w", 0.02),
        compare_runs([("w", run)]),
    ]
    for fig in figs:
        for ax in fig.axes:
            spans = [p for p in ax.patches if p.get_label() == "warm-up"]
            assert len(spans) == 1, fig
            assert spans[0].get_x() == 0.0
            assert spans[0].get_width() == pytest.approx(0.02)
        plt.close(fig)
    plain = fault_figure(tl, "w")
    assert not [p for ax in plain.axes for p in ax.patches if p.get_label() == "warm-up"]
    plt.close(plain)


def test_stall_windows_add_up_and_the_protection_figure_draws(tmp_path: Path) -> None:
    """Each VM's stall per window, times the window and its vCPUs, adds up to its stall over
    the windows (the timeline is sampled every millisecond here, windows are 10 ms)."""
    sc = tiny(duration_s=0.1, engine={"batch_accesses": 128, "sample_interval_ms": 1.0})
    run_scenario(sc, tmp_path / "a")
    run_scenario(tiny(duration_s=0.1, kvm={"mmu_notifiers": False}), tmp_path / "b")
    a = load_run(tmp_path / "a")
    w = stall_windows(a, window_ms=10)
    tl = a.table("timeline")
    for v in a.summary["vms"]:
        mine = w[w.vm == v["name"]]
        last = tl[(tl.vm.astype(str) == v["name"]) & (tl.t_ns % 10_000_000 == 0)].stall_ns.max()
        assert (mine.stall * 0.01e9 * v["vcpus"]).sum() == pytest.approx(last)
        assert mine.stall.between(0, 1).all()
    out = tmp_path / "p.png"
    args = ["protection", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)]
    assert figures_main(args) == 0
    assert out.stat().st_size > 10_000
    assert figures_main([*args, "--labels", "only-one"]) == 2


def _sweep(tmp_path: Path, name: str, base: dict[str, Any], body: dict[str, Any]) -> Path:
    import yaml
    from click.testing import CliRunner

    from sim.cli import main

    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "base": base, **body}))
    out = tmp_path / name
    r = CliRunner().invoke(main, ["sweep", str(spec), "--workers", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_swap_target_figure_splits_device_reads_from_decompressions(tmp_path: Path) -> None:
    from analysis.host_figures import swap_target_table, sweep_runs

    variants = [
        {"label": "disk", "set": {"swap.device": "disk"}},
        {"label": "zswap", "set": {"swap.zswap.enabled": True}},
        {"label": "zram", "set": {"swap.device": "zram"}},
    ]
    d = _sweep(tmp_path, "zs", copy.deepcopy(TINY), {"variants": variants})
    t = swap_target_table(sweep_runs(d)).set_index("run")
    runs = dict(sweep_runs(d))
    for label in ("disk", "zswap", "zram"):  # every swap-in is read or decompressed
        vs = runs[label].summary["host"]["vmstat"]
        got = t.loc[label, ["read from the device", "decompressed in RAM"]].sum()
        assert got == vs["pswpin"] + vs.get("zswpin", 0) > 0
    assert t.loc["disk", "decompressed in RAM"] == 0
    assert t.loc["zram", "read from the device"] == 0
    assert t.loc["zram", "decompressed in RAM"] > 0
    assert t.loc["disk", "pool (MiB)"] == 0 < t.loc["zram", "pool (MiB)"]
    out = tmp_path / "zswap.png"
    assert figures_main(["zswap", str(d), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_swappiness_figure_reads_reclaim_per_type(tmp_path: Path) -> None:
    from analysis.host_figures import swappiness_table, sweep_runs

    base = copy.deepcopy(TINY)
    base["host"] = {"memory_mib": 12}
    base["reclaim"] = {"policy": "two_list"}
    base["host_files"] = {"size_mib": 8, "access_rate_per_s": 2_000_000}
    d = _sweep(tmp_path, "sw", base, {"grid": {"reclaim.swappiness": [200, 0]}})
    t = swappiness_table(sweep_runs(d)).set_index("swappiness")
    assert list(t.index) == [0, 200]  # sorted
    assert t.loc[0, "guest RAM (anon)"] < t.loc[200, "guest RAM (anon)"]
    assert t.loc[0, "page cache (file)"] > t.loc[200, "page cache (file)"]
    out = tmp_path / "swappiness.png"
    assert figures_main(["swappiness", str(d), "-o", str(out)]) == 0
    assert figures_main(["swappiness", str(_sweep(tmp_path, "nf", copy.deepcopy(TINY), {}))]) == 2


def test_double_paging_figure_reads_both_levels(tmp_path: Path) -> None:
    from analysis.guest_figures import double_paging_table
    from analysis.host_figures import sweep_runs

    base = copy.deepcopy(TINY)
    base["host"] = {"memory_mib": 6}
    base["duration_s"] = 0.08
    base["vms"] = [
        {
            "name": "app",
            "memory_mib": 8,
            "access_rate_per_s": 1_000_000,
            "workload": {"type": "zipf", "alpha": 0.6},
            "guest": {"footprint_mib": 12},
        }
    ]
    variants = [
        {"label": "host only", "set": {"vms.0.memory_mib": 12}},
        {"label": "both", "set": {"vms.0.memory_mib": 8}},
    ]
    d = _sweep(tmp_path, "dp", base, {"variants": variants})
    t = double_paging_table(sweep_runs(d)).set_index("variant")
    runs = dict(sweep_runs(d))
    for label in ("host only", "both"):
        s = runs[label].summary
        g = s["vms"][0]["guest"]
        assert t.loc[label, "guest swap-outs"] == g["pswpout"]
        assert t.loc[label, "host swap-ins"] == s["host"]["vmstat"]["pswpin"]
    assert t.loc["host only", "guest swap-outs"] == 0 == t.loc["host only", "double_paging"]
    assert t.loc["both", "double_paging"] > 0
    out = tmp_path / "dp.png"
    assert figures_main(["double_paging", str(d), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert (
        figures_main(["double_paging", str(_sweep(tmp_path, "ng", copy.deepcopy(TINY), {}))]) == 2
    )


def test_balloon_figure_reads_the_managers_records(tmp_path: Path) -> None:
    from analysis.guest_figures import balloon_series, balloon_table
    from analysis.host_figures import sweep_runs

    base = copy.deepcopy(TINY)
    base["host"] = {"memory_mib": 8}
    base["duration_s"] = 3.0
    base["vms"] = [
        {
            "name": "app",
            "memory_mib": 8,
            "access_rate_per_s": 500_000,
            "workload": {"type": "zipf", "alpha": 0.6},
            "guest": {"footprint_mib": 3},
            "balloon": {"enabled": True, "stats_interval_s": 1},
        },
        {"name": "other", "memory_mib": 8, "access_rate_per_s": 500_000},
    ]
    mom = {"enabled": True, "interval_s": 1, "monitor_interval_s": 1, "sample_history_length": 1}
    variants = [{"label": "none", "set": {}}, {"label": "mom", "set": {"mom": mom}}]
    d = _sweep(tmp_path, "bl", base, {"variants": variants})
    runs = dict(sweep_runs(d))
    assert balloon_series(runs["none"]).empty
    s = balloon_series(runs["mom"])
    assert len(s)
    assert (s["vm"] == "app").all()
    t = balloon_table(sweep_runs(d)).set_index(["variant", "vm"])
    assert t.loc[("none", "app"), "balloon MiB at end"] == 0
    assert t.loc[("mom", "app"), "balloon MiB at end"] > 0
    out = tmp_path / "balloon.png"
    assert figures_main(["balloon", str(d), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_ksm_figure_reads_savings_and_reclaim_work(tmp_path: Path) -> None:
    from analysis.host_figures import ksm_table, sweep_runs

    base = copy.deepcopy(TINY)
    base["host"] = {"memory_mib": 8, "ksm": {"pages_to_scan": 1000, "sleep_ms": 0.5}}
    base["duration_s"] = 0.05
    base["vms"][0]["content"] = {"image_share": 0.0, "image_mib": 2}
    d = _sweep(tmp_path, "ksm", base, {"grid": {"vms.0.content.image_share": [0.9, 0.0]}})
    t = ksm_table(sweep_runs(d)).set_index("image share")
    assert list(t.index) == [0.0, 0.9]  # sorted
    assert t.loc[0.0, "saved (MiB)"] == 0 < t.loc[0.9, "saved (MiB)"]
    assert t.loc[0.9, "reclaimed"] > 0
    assert t.loc[0.9, "rmap walked / reclaimed"] > 0
    out = tmp_path / "ksm.png"
    assert figures_main(["ksm", str(d), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert figures_main(["ksm", str(_sweep(tmp_path, "nk", copy.deepcopy(TINY), {}))]) == 2


def test_rmap_off_figure_reads_walks_and_scans(tmp_path: Path) -> None:
    from analysis.host_figures import rmap_off_table, sweep_runs

    base = copy.deepcopy(TINY)
    base["duration_s"] = 0.03
    d = _sweep(tmp_path, "rmap", base, {"grid": {"host.rmap": ["none", "anon_vma"]}})
    t = rmap_off_table(sweep_runs(d)).set_index("rmap")
    assert list(t.index) == ["anon_vma", "none"]
    # a walk visits one mapping with the rmap; without, at least a page table (512 ptes)
    assert 0 < t.loc["anon_vma", "entries / reclaimed"] < 512 < t.loc["none", "entries / reclaimed"]
    out = tmp_path / "rmap_off.png"
    assert figures_main(["rmap_off", str(d), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_thp_figure_reads_residency_and_swap_granularity(tmp_path: Path) -> None:
    from analysis.host_figures import sweep_runs, thp_table

    base = copy.deepcopy(TINY)
    base["host"] = {"memory_mib": 8, "thp": {}}
    base["duration_s"] = 0.03
    variants = [
        {"label": "THP", "set": {}},
        {"label": "4 KiB", "set": {"host.thp.enabled": "never"}},
    ]
    d = _sweep(tmp_path, "thp", base, {"variants": variants})
    t = thp_table(sweep_runs(d))
    assert list(t["backing"].unique()) == ["THP", "4 KiB"]
    assert len(t) == 4  # two VMs in each run
    four_k = t[t.backing == "4 KiB"]
    assert (four_k["written in THPs (MiB)"] == 0).all()
    (_, run), _ = sweep_runs(d)
    vs = run.summary["host"]["vmstat"]
    thp = t[t.backing == "THP"]
    assert list(thp["resident (MiB)"]) == [v["resident_pages"] / 256 for v in run.summary["vms"]]
    assert (thp["written in THPs (MiB)"] == vs["thp_swpout"] * 2).all()  # 2 MiB each
    assert (thp["written 4 KiB (MiB)"] == (vs["pswpout"] - 512 * vs["thp_swpout"]) / 256).all()
    out = tmp_path / "thp.png"
    assert figures_main(["thp", str(d), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000

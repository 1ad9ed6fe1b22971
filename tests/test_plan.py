"""Capacity plans: a known answer on the real engine, the search logic on a scripted runner,
the t interval, and one-line errors for bad plan files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from sim.cli import main
from sim.errors import ConfigError, UserError
from sim.host.memory import setup_per_zone_wmarks
from sim.plan import judge, load_plan, search, split
from sim.stats import t_interval, t_quantile
from sim.sweep import Point

HOST_MIB = 16
VM_MIB = 3  # each guest touches all of its 3 MiB uniformly


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def _known_answer_spec() -> dict[str, Any]:
    return {
        "name": "fit",
        "base": {
            "duration_s": 0.02,
            "host": {"memory_mib": HOST_MIB},
            "swap": {"size_mib": 64, "latency_cv": 0.0},
            "vms": [],
            "engine": {"batch_accesses": 128, "sample_interval_ms": 1.0},
            "output": {"evictions": False, "faults": False},
        },
        "profile": {
            "name": "vm",
            "memory_mib": VM_MIB,
            "access_rate_per_s": 2_000_000,
            "workload": {"type": "uniform"},
        },
        "search": {"variable": "vms", "low": 1, "high": 10},
        "slo": {"metric": "major_faults_per_s", "max": 1},
        "seeds": [1, 2],
    }


def test_finds_the_number_of_working_sets_that_fit(tmp_path: Path) -> None:
    """K guests whose pages all fit above the high watermark never swap; K + 1 exceed the host
    itself, so they must: the plan answers K."""
    frames = HOST_MIB * 256
    wm = setup_per_zone_wmarks(frames)
    ws = VM_MIB * 256
    k = (frames - wm.high) // ws
    assert (k + 1) * ws > frames  # no ambiguity about the watermarks in between
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main, ["plan", str(_write(tmp_path, _known_answer_spec())), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert f"fits {k} VMs" in r.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["answer"] == k
    by_value = {e["value"]: e for e in plan["evaluated"]}
    assert by_value[k]["status"] == "pass"
    assert by_value[k + 1]["status"] != "pass"
    runs = pd.read_parquet(out / "plan.parquet")
    assert len(runs) == 2 * len(plan["evaluated"])  # every evaluated value ran every seed
    assert (runs[runs.vms <= k].major_faults_per_s == 0).all()
    assert (out / "capacity.png").stat().st_size > 0
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 0, r.output
    page = (out / "report" / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 1  # the capacity curve
    assert f"fits {k} VMs" in (out / "report" / "report.md").read_text()


# -- the search on a scripted runner ------------------------------------------------------------


def _scripted(metric: Any) -> Any:
    """A runner that writes a summary.json per point whose stall fraction is
    ``metric(scenario, seed)``, and records the keyword arguments it was given."""
    calls: list[dict[str, Any]] = []

    def runner(points: list[Point], target: Path, **kwargs: Any) -> pd.DataFrame:
        calls.append({"n": len(points), **kwargs})
        rows = []
        for p in points:
            d = target / "runs" / p.run_name
            d.mkdir(parents=True, exist_ok=True)
            x = metric(p.scenario, p.params["seed"])
            vms = [
                {"name": n, "stall_fraction": x, "major_faults_per_s": 0.0}
                for n, _ in p.scenario.vm_list()
            ]
            (d / "summary.json").write_text(json.dumps({"vms": vms, "host": {"oom_kills": []}}))
            rows.append({"index": p.index, "label": p.label, **p.params, "run": p.run_name})
            rows[-1]["status"] = "ok"
        return pd.DataFrame(rows)

    runner.calls = calls  # type: ignore[attr-defined]
    return runner


def _spec(**search: Any) -> dict[str, Any]:
    return {
        "base": {"duration_s": 1.0, "host": {"memory_mib": 64}, "vms": []},
        "profile": {"name": "vm", "memory_mib": 8},
        "search": search,
        "slo": {"metric": "stall_mean_p99_vms", "max": 0.05},
        "seeds": [1, 2, 3],
    }


def test_uncertain_values_are_reported_between_the_answer_and_the_first_failure(
    tmp_path: Path,
) -> None:
    def metric(sc: Any, seed: int) -> float:
        n = len(sc.vm_list())
        if n <= 5:
            return 0.01
        if n == 6:  # one seed in three misses the SLO: neither a pass nor a fail
            return 0.2 if seed == 2 else 0.01
        return 0.5

    runner = _scripted(metric)
    plan = load_plan(_write(tmp_path, _spec(variable="vms", low=1, high=40)))
    res = search(plan, tmp_path / "out", runner=runner, workers=7, values_per_round=1)
    assert plan.values[res.answer] == 5
    assert plan.values[res.not_failing] == 6
    assert res.outcomes[5].status == "uncertain"
    assert res.outcomes[5].n_meet == 2
    text = res.statement()
    assert "fits 5 VMs" in text
    assert "6 uncertain (6: 2/3 seeds meet it)" in text
    assert "7 fails" in text
    assert len(res.outcomes) < 12  # bisection, not a scan of 40 candidates
    assert all(c["workers"] == 7 for c in runner.calls)  # runner kwargs are passed through
    assert all(c["n"] % 3 == 0 for c in runner.calls)  # every value runs all seeds at once


def test_memory_search_finds_the_smallest_host(tmp_path: Path) -> None:
    """Less memory is harder: the answer is the smallest host meeting the SLO."""
    runner = _scripted(lambda sc, seed: 0.0 if sc.host.memory_mib >= 88 else 0.3)
    spec = _spec(variable="host.memory_mib", low=32, high=256, step=8, vms=4)
    plan = load_plan(_write(tmp_path, spec))
    assert plan.values[0] == 256
    assert plan.values[-1] == 32
    res = search(plan, tmp_path / "out", runner=runner)
    assert plan.values[res.answer] == 88
    assert "needs 88 MiB of host memory" in res.statement()


def test_nothing_passes(tmp_path: Path) -> None:
    runner = _scripted(lambda sc, seed: 0.9)
    plan = load_plan(_write(tmp_path, _spec(variable="vms", low=1, high=8)))
    res = search(plan, tmp_path / "out", runner=runner)
    assert res.answer is None
    assert "no candidate meets" in res.statement()


def test_a_reused_run_without_tails_is_refused_for_a_tail_metric(tmp_path: Path) -> None:
    """Default configs keep their hashes, so a plan may find runs an older memsim wrote: their
    summaries have no windows, and a windowed SLO on them is an error, never a silent 0."""
    runner = _scripted(lambda sc, seed: 0.0)  # summaries as older memsim wrote them
    spec = {**_spec(variable="vms", low=1, high=8), "slo": {"metric": "stall_window_p99", "max": 1}}
    plan = load_plan(_write(tmp_path, spec))
    with pytest.raises(UserError, match="summary.json predates stall_window_p99"):
        search(plan, tmp_path / "out", runner=runner)
    mean = {**spec, "slo": {"metric": "stall_mean_p99_vms", "max": 0.05}}
    res = search(load_plan(_write(tmp_path, mean)), tmp_path / "out2", runner=runner)
    assert res.answer is not None


def test_mix_is_split_by_weight() -> None:
    mix = [({"name": "a"}, 2.0), ({"name": "b"}, 1.0)]
    assert [split(n, mix) for n in (1, 2, 3, 4, 5, 7)] == [
        [1, 0],
        [1, 1],
        [2, 1],
        [3, 1],
        [3, 2],
        [5, 2],
    ]


def test_mix_weights_near_the_float_maximum_split_like_small_ones() -> None:
    huge = [({"name": "a"}, 1e308), ({"name": "b"}, 1e308)]
    assert split(5, huge) == split(5, [({"name": "a"}, 1.0), ({"name": "b"}, 1.0)]) == [3, 2]


def test_overcommit_sets_host_memory_from_the_guests(tmp_path: Path) -> None:
    spec = _spec(variable="overcommit", low=1.0, high=2.0, step=0.5, vms=4)
    plan = load_plan(_write(tmp_path, spec))
    assert [plan.scenario(v, 1).host.memory_mib for v in plan.values] == [32, 21, 16]


def test_judge_and_t_interval() -> None:
    assert t_quantile(0.95, 2) == pytest.approx(2.919986, abs=1e-5)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-5)
    assert t_quantile(0.05, 4) == pytest.approx(-2.131847, abs=1e-5)
    mean, lo, hi = t_interval([1.0, 2.0, 3.0], 0.9)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - 2.919986 / 3**0.5, 2.0 + 2.919986 / 3**0.5))
    assert judge(1, "x", [0.01, 0.02, 0.03], 0.05, 0.9).status == "pass"
    assert judge(1, "x", [0.02, 0.05, 0.08], 0.05, 0.9).status == "uncertain"
    assert judge(1, "x", [0.2, 0.3, 0.25], 0.05, 0.9).status == "fail"
    assert judge(1, "x", [0.01, float("inf")], 0.05, 0.9).status == "uncertain"  # an OOM kill
    assert judge(1, "x", [float("inf")] * 2, 0.05, 0.9).status == "fail"


# -- bad plan files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"colour": 1}, "colour: unknown key"),
        ({"search": None}, "search"),
        ({"search": {"variable": "cpus", "low": 1, "high": 4}}, "search.variable"),
        ({"search": {"variable": "vms", "low": 5, "high": 4}}, "low < high"),
        ({"search": {"variable": "vms", "low": 1}}, "search.high"),
        ({"search": {"variable": "vms", "low": 1, "high": 4, "speed": 1}}, "speed"),
        ({"search": {"variable": "host.memory_mib", "low": 8, "high": 64}}, "search.step"),
        ({"slo": {"metric": "latency", "max": 1}}, "slo.metric"),
        ({"slo": {"metric": "stall_mean_p99_vms", "max": "low"}}, "slo.max"),
        ({"confidence": 1.5}, "confidence"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"warmup_s": 5.0}, "warmup_s"),
        ({"profile": {"name": "vm", "memory_mib": 8, "count": 2}}, "profile.count"),
        ({"profile": {"name": "vm", "memory_mib": -8}}, "vms[0].memory_mib"),
        ({"mix": [{"vm": {"name": "a", "memory_mib": 8}, "weight": 0}]}, "mix[0].weight"),
        ({"base": 3}, "base"),
    ],
)
def test_bad_plan_is_one_line_exit_2(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    spec = {**_spec(variable="vms", low=1, high=4), **change}
    if "mix" in change:
        del spec["profile"]
    r = CliRunner().invoke(main, ["plan", str(_write(tmp_path, spec)), "--out", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "runs").exists()


def test_validate_checks_a_plan_without_running_it(tmp_path: Path) -> None:
    path = _write(tmp_path, _known_answer_spec())
    r = CliRunner().invoke(main, ["validate", str(path)])
    assert r.exit_code == 0, r.output
    assert "ok: plan fit: 10 candidate(s) x 2 seed(s)" in r.output
    bad = _write(tmp_path, {**_known_answer_spec(), "confidence": 2})
    r = CliRunner().invoke(main, ["validate", str(bad)])
    assert r.exit_code == 2
    assert "confidence" in r.output
    assert not list(tmp_path.glob("results*"))


def test_warmup_excludes_the_fault_in(tmp_path: Path) -> None:
    """Guests whose pages fit stall only while faulting them in; measured after a warm-up,
    their stall is zero, while over the whole run it is not. Overcommitted, they keep
    swapping after the warm-up too."""
    from sim.engine import run_scenario
    from sim.plan import run_metrics

    spec = {**_known_answer_spec(), "warmup_s": 0.01}
    plan = load_plan(_write(tmp_path, spec))
    fits = plan.scenario(2, 1)
    assert fits.warmup_s == 0.01  # the plan's warm-up is the scenario's
    cold = fits.model_copy(update={"warmup_s": 0.0})
    whole = run_metrics(cold, run_scenario(cold, tmp_path / "cold", command=[]).summary)
    after = run_metrics(fits, run_scenario(fits, tmp_path / "fits", command=[]).summary)
    assert whole["stall_max"] > 0.01
    assert after["stall_max"] == 0.0
    assert after["stall_window_max"] == 0.0  # no window after the warm-up stalls either
    assert whole["stall_window_max"] > 0.01  # the fault-in, in its window
    over = plan.scenario(8, 1)
    res = run_scenario(over, tmp_path / "over", command=[])
    after = run_metrics(over, res.summary)
    assert after["major_faults_per_s"] > 1000
    assert after["stall_mean_p99_vms"] > 0.1
    assert after["major_latency_p99_ms"] > 0
    assert after["promotion_rate_per_min"] == pytest.approx(
        after["major_faults_per_s"] * 60 / (VM_MIB * 256)
    )


def test_more_values_per_round_take_fewer_rounds(tmp_path: Path) -> None:
    plan = load_plan(_write(tmp_path, _spec(variable="vms", low=1, high=64)))
    rounds = {}
    for width in (1, 4):
        runner = _scripted(lambda sc, seed: 0.01 if len(sc.vm_list()) <= 37 else 0.5)
        res = search(plan, tmp_path / f"w{width}", runner=runner, values_per_round=width)
        assert plan.values[res.answer] == 37
        assert plan.values[res.not_failing] == 37
        assert max(c["n"] for c in runner.calls) <= 3 * max(width, 2)  # bracket: 2 values
        rounds[width] = len(runner.calls)
    assert rounds[4] < rounds[1]


@pytest.mark.slow
def test_plan_runs_on_dask_local_with_the_same_answer(tmp_path: Path) -> None:
    spec = _known_answer_spec()
    spec["search"]["high"] = 7
    path = _write(tmp_path, spec)
    answers = []
    for extra in ([], ["--dask", "local", "--workers", "2"]):
        out = tmp_path / f"out{len(answers)}"
        r = CliRunner().invoke(main, ["plan", str(path), "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        answers.append(json.loads((out / "plan.json").read_text())["answer"])
    assert answers[0] == answers[1]


def test_plan_takes_set_and_seeds(tmp_path: Path) -> None:
    path = _write(tmp_path, _spec(variable="vms", low=1, high=4))
    plan = load_plan(path, ["duration_s=0.5", "reclaim.policy=clock"], [7, 8])
    assert plan.seeds == [7, 8]
    sc = plan.scenario(2, 7)
    assert (sc.duration_s, sc.reclaim.policy, sc.seed) == (0.5, "clock", 7)
    for bad, needle in (
        ("vms.0.count=3", r"sets vms itself \(profile/mix\)"),
        ("seed=3", "use --seeds"),
        ("name=x", "sets name itself"),
    ):
        with pytest.raises(ConfigError, match=needle):
            load_plan(path, [bad])
    mem = _write(tmp_path, _spec(variable="host.memory_mib", low=32, high=64, step=8, vms=2))
    with pytest.raises(ConfigError, match=r"sets host.memory_mib itself \(search.variable"):
        load_plan(mem, ["host.memory_mib=10"])
    r = CliRunner().invoke(main, ["validate", str(path), "--set", "duration_s=0.5", "--seeds", "4"])
    assert r.exit_code == 0, r.output
    assert "x 1 seed(s)" in r.output


@pytest.mark.parametrize(
    ("search", "needle"),
    [
        ({"variable": "vms", "low": 1.5, "high": 4}, "search.low: expected an integer for vms"),
        (
            {"variable": "overcommit", "low": 1e-300, "high": 1e300, "step": 1e-300, "vms": 2},
            "candidates; at most 10,000",
        ),
        ({"variable": "vms", "low": 1, "high": 4, "vms": 2}, "search.vms: only for"),
        ({"variable": "vms", "low": ".nan", "high": 4}, "search.low"),
    ],
)
def test_bad_search_ranges_are_refused_before_building_candidates(
    tmp_path: Path, search: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_plan(_write(tmp_path, {**_spec(variable="vms", low=1, high=4), "search": search}))


def test_warmup_nan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(_spec(variable="vms", low=1, high=4)) + "warmup_s: .nan\n")
    with pytest.raises(ConfigError, match="warmup_s: Input should be a finite number"):
        load_plan(path)


# -- memory cgroups -----------------------------------------------------------------------------

WS_MIB = 3  # the capped guest touches 3 of its 8 MiB uniformly


def _memcg_spec(**change: Any) -> dict[str, Any]:
    spec = _known_answer_spec()
    spec["name"] = "cap"
    spec["base"] = {**spec["base"], "duration_s": 0.03, "reclaim": {"policy": "two_list"}}
    spec["profile"] = {**spec["profile"], "memory_mib": 8, "working_set_mib": WS_MIB}
    spec["search"] = {"variable": "memcg.max_mib", "low": 1, "high": 8, "step": 1, "vms": 1}
    spec["warmup_s"] = 0.01
    return {**spec, **change}


def test_finds_the_smallest_memory_max_that_holds_the_working_set(tmp_path: Path) -> None:
    """A memory.max at or above the working set never reclaims once it is faulted in; one page
    size below it, the VM reclaims its own pages and faults them back all the time: the plan
    answers the working set, on a host with room for everything (only the memcg reclaims)."""
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["plan", str(_write(tmp_path, _memcg_spec())), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"needs a memory.max of {WS_MIB} MiB per VM" in r.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["answer"] == WS_MIB
    assert plan["direction"] == "smaller is harder"
    by_value = {e["value"]: e for e in plan["evaluated"]}
    assert by_value[WS_MIB - 1]["status"] == "fail"
    runs = pd.read_parquet(out / "plan.parquet")
    assert (runs[runs["memcg.max_mib"] >= WS_MIB].major_faults_per_s == 0).all()
    assert (runs[runs["memcg.max_mib"] < WS_MIB].major_faults_per_s > 1000).all()
    # the flat rows' memcg columns (after the warm-up) say the same without the summaries
    assert (runs[runs["memcg.max_mib"] >= WS_MIB].memcg_max == 0).all()
    assert (runs[runs["memcg.max_mib"] < WS_MIB].memcg_max > 0).all()
    assert (runs[runs["memcg.max_mib"] < WS_MIB].memcg_worst_pgsteal > 0).all()
    for run in runs.run:  # each run's memcg has the candidate's memory.max, in pages
        summary = json.loads((out / "runs" / run / "summary.json").read_text())
        value = int(runs[runs.run == run]["memcg.max_mib"].iloc[0])
        (vm,) = summary["vms"]
        assert vm["memcg"]["max_pages"] == value * 256, vm["memcg"]
    assert (out / "capacity.png").stat().st_size > 0


def test_memory_max_search_limits_the_named_profiles_and_keeps_other_settings(
    tmp_path: Path,
) -> None:
    base = _memcg_spec()["base"]
    vm = {"name": "capped", "memory_mib": 8, "memcg": {"low_mib": 2, "swap_max_mib": 16}}
    base = {**base, "vms": [vm, {"name": "free", "count": 2, "memory_mib": 8}]}
    spec = _memcg_spec(base=base, profile=None)
    spec["search"] = {"variable": "memcg.max_mib", "low": 2, "high": 8, "step": 2}
    spec["search"]["apply_to"] = ["capped"]
    plan = load_plan(_write(tmp_path, spec))
    assert plan.values == [8, 6, 4, 2]
    sc = plan.scenario(4, 1)
    capped, free = sc.vms
    assert (capped.memcg.max_mib, capped.memcg.low_mib, capped.memcg.swap_max_mib) == (4, 2, 16)
    assert free.memcg is None
    del spec["search"]["apply_to"]
    plan = load_plan(_write(tmp_path, spec))
    assert [vm.memcg.max_mib for vm in plan.scenario(6, 1).vms] == [6, 6]
    assert plan.scenario(6, 1).vms[0].memcg.low_mib == 2
    with pytest.raises(ConfigError, match=r"sets vms.0.memcg.max_mib itself"):
        load_plan(_write(tmp_path, spec), ["vms.0.memcg.max_mib=8"])
    low = load_plan(_write(tmp_path, spec), ["vms.0.memcg.low_mib=4"])  # not the searched key
    assert [(vm.memcg.low_mib, vm.memcg.max_mib) for vm in low.scenario(6, 1).vms] == [
        (4, 6),
        (None, 6),
    ]


@pytest.mark.parametrize("variable", ["overcommit", "vms"])
def test_vms_and_overcommit_searches_keep_the_profiles_memory_low(
    tmp_path: Path, variable: str
) -> None:
    """Guests with memory.low plan under that protection: every candidate keeps it, and the
    runs' summaries show it on every VM."""
    spec = _known_answer_spec()
    spec["base"] = {**spec["base"], "reclaim": {"policy": "two_list"}}
    spec["profile"] = {**spec["profile"], "memcg": {"low_mib": 2}}
    spec["seeds"] = [1]
    if variable == "overcommit":
        spec["search"] = {"variable": "overcommit", "low": 1.0, "high": 2.0, "step": 0.5, "vms": 3}
    else:
        spec["search"] = {"variable": "vms", "low": 1, "high": 4}
    plan = load_plan(_write(tmp_path, spec))
    for v in plan.values:
        sc = plan.scenario(v, 1)
        assert all(vm.memcg is not None and vm.memcg.low_mib == 2 for vm in sc.vms)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["plan", str(_write(tmp_path, spec)), "--out", str(out)])
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "plan.parquet")
    for run in runs.run:
        summary = json.loads((out / "runs" / run / "summary.json").read_text())
        assert {vm["memcg"]["low_pages"] for vm in summary["vms"]} == {2 * 256}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"search": {"variable": "memcg.max_mib", "low": 1, "high": 9, "step": 1, "vms": 1}},
            "search.high: memcg.max_mib 9 exceeds the memory of VM profile vm (8 MiB",
        ),
        (
            {"base": {**_memcg_spec()["base"], "reclaim": {"policy": "clock"}}},
            "vms[0].memcg: per-memcg reclaim is modelled for reclaim.policy two_list and mglru",
        ),
        (
            {
                "search": {
                    "variable": "memcg.max_mib",
                    "low": 1,
                    "high": 8,
                    "step": 1,
                    "vms": 1,
                    "apply_to": ["db"],
                }
            },
            "search.apply_to: no VM profile named 'db'",
        ),
        (
            {"search": {"variable": "vms", "low": 1, "high": 4, "apply_to": ["vm"]}},
            "search.apply_to: only for memcg.max_mib",
        ),
        (
            {"profile": {"name": "vm", "memory_mib": 8, "memcg": {"max_mib": 4}}},
            "profile.memcg.max_mib: the plan searches it",
        ),
        (
            {"search": {"variable": "memcg.max_mib", "low": 1, "high": 8, "step": 1}},
            "search.vms: required with a profile",
        ),
        (
            {"search": {"variable": "memcg.max_mib", "low": 1, "high": 8.5, "step": 1, "vms": 1}},
            "search.high: expected an integer",
        ),
    ],
)
def test_bad_memcg_plan_is_one_line_exit_2(
    tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    r = CliRunner().invoke(
        main, ["plan", str(_write(tmp_path, _memcg_spec(**change))), "--out", str(tmp_path)]
    )
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "runs").exists()


def test_oom_kills_is_a_count_and_every_other_metric_fails(tmp_path: Path) -> None:
    """A memcg with 1 MiB of memory.max and no swap kills its VM: ``oom_kills`` counts it (so
    ``{metric: oom_kills, max: 0}`` fails) while every other metric is infinite."""
    from sim.config import parse_scenario
    from sim.engine import run_scenario
    from sim.plan import METRICS, run_metrics

    raw = {
        "name": "oom",
        "duration_s": 0.1,
        "host": {"memory_mib": 64},
        "swap": {"size_mib": 64},
        "vms": [{"name": "a", "memory_mib": 16}, {"name": "b", "memory_mib": 16}],
    }
    sc = parse_scenario(raw)
    alive = run_metrics(sc, run_scenario(sc, tmp_path / "alive", command=[]).summary)
    assert alive["oom_kills"] == 0.0
    assert set(alive) == set(METRICS)
    raw["vms"][0]["memcg"] = {"max_mib": 1, "swap_max_mib": 0}
    sc = parse_scenario(raw)
    killed = run_metrics(sc, run_scenario(sc, tmp_path / "killed", command=[]).summary)
    assert killed["oom_kills"] == 1.0
    assert all(math.isinf(v) for k, v in killed.items() if k != "oom_kills")


def test_ksm_plan_file_gives_every_candidate_ksm_and_the_mix_content() -> None:
    """configs/plan_ksm.yaml validates, and the mix passes each VM's content through to every
    candidate (VMs of one image, ksmd on)."""
    path = Path(__file__).resolve().parent.parent / "configs" / "plan_ksm.yaml"
    r = CliRunner().invoke(main, ["validate", str(path)])
    assert r.exit_code == 0, r.output
    assert "ok: plan plan_ksm: 13 candidate(s) x 3 seed(s)" in r.output
    plan = load_plan(path)
    for v in plan.values:
        sc = plan.scenario(v, 1)
        assert sc.host.ksm is not None
        assert sum(vm.count for vm in sc.vms) == v
        assert {(vm.content.image, vm.content.image_share) for vm in sc.vms} == {("guest-os", 0.5)}


def test_a_ksm_plan_of_guests_of_one_image_merges_their_pages(tmp_path: Path) -> None:
    """The known-answer plan with ksmd on and read-only guests of one image: the mix's content
    reaches every run, every run merges pages (no write breaks them), and merging never costs
    memory, so at least the K guests that fit without KSM still fit."""
    frames = HOST_MIB * 256
    k = (frames - setup_per_zone_wmarks(frames).high) // (VM_MIB * 256)
    spec = _known_answer_spec()
    spec["base"] = {
        **spec["base"],
        "host": {"memory_mib": HOST_MIB, "ksm": {"pages_to_scan": 4096, "sleep_ms": 1}},
        "reclaim": {"policy": "two_list"},
    }
    spec["profile"] = {
        **spec["profile"],
        "write_ratio": 0.0,
        "content": {"zero_share": 0.1, "image_share": 0.5, "image_mib": 1},
    }
    spec["search"] = {"variable": "vms", "low": 1, "high": 6}
    spec["seeds"] = [1]
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["plan", str(_write(tmp_path, spec)), "--out", str(out)])
    assert r.exit_code == 0, r.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["answer"] >= k
    runs = pd.read_parquet(out / "plan.parquet")
    for run in runs.run:
        ksm = json.loads((out / "runs" / run / "summary.json").read_text())["host"]["ksm"]
        assert ksm["merges"] > 0
        assert ksm["pages_sharing"] > 0
        assert ksm["cow_ksm"] == 0  # nothing writes

"""Sweep files expand, validate every point first, and resume without recomputing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from sim.errors import ConfigError, UserError
from sim.sweep import WALL_CLOCK_COLUMNS, _sweep_lock, load_sweep, run_points, run_sweep
from tests.conftest import TINY


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_expansion(tmp_path: Path) -> None:
    spec = {
        "base": {**TINY, "duration_s": 0.01},
        "grid": {"kvm.mmu_notifiers": [True, False], "vms.0.vcpus": [1, 2]},
        "variants": [{"label": "a", "set": {"reclaim.policy": "fifo"}}, {"label": "b"}],
        "seeds": [1, 2],
    }
    name, points = load_sweep(_write(tmp_path, spec))
    assert name == "sweep"
    assert len(points) == 2 * 2 * 2 * 2
    assert len({p.run_name for p in points}) == len(points)
    a = [p for p in points if p.label == "a"]
    assert all(p.scenario.reclaim.policy == "fifo" for p in a)
    assert {(p.params["kvm.mmu_notifiers"], p.params["seed"]) for p in a} == {
        (True, 1),
        (True, 2),
        (False, 1),
        (False, 2),
    }


def test_base_file_is_relative_to_the_sweep(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "duration_s": 0.01}))
    _, points = load_sweep(_write(tmp_path, {"base": "base.yaml"}))
    assert len(points) == 1
    assert points[0].scenario.duration_s == 0.01


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"grid": {"host.memory_mib": [8, -1]}}, "point 1"),
        ({"grid": {"kvm.nonsense": [1]}}, "kvm.nonsense"),
        ({"grid": {"host.memory_mib": []}}, "grid"),
        ({"colour": 1}, "unknown key"),
        ({"seeds": [-1]}, "seeds"),
    ],
)
def test_bad_points_are_reported_before_anything_runs(
    tmp_path: Path, spec: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_sweep(_write(tmp_path, {"base": {**TINY, "duration_s": 0.01}, **spec}))
    assert not (tmp_path / "results").exists()


def test_run_then_resume_from_cache(tmp_path: Path) -> None:
    spec = {"base": {**TINY, "duration_s": 0.02}, "grid": {"reclaim.policy": ["fifo", "clock"]}}
    path = _write(tmp_path, spec)
    out, df = run_sweep(path, tmp_path / "out", workers=1)
    assert list(df.status) == ["ok", "ok"]
    assert (out / "runs.parquet").exists()
    assert len(list((out / "runs").iterdir())) == 2
    _, again = run_sweep(path, tmp_path / "out", workers=1)
    assert list(again.status) == ["cached", "cached"]
    cols = ["misses", "pswpout", "faults_major"]
    assert again[cols].equals(df[cols])


# --------------------------------------------------------------------------------------------
# zip and random axes


def test_zip_and_random_expand_in_order(tmp_path: Path) -> None:
    spec = {
        "base": {**TINY, "duration_s": 0.01},
        "grid": {"reclaim.policy": ["fifo", "clock"]},
        "zip": {"host.memory_mib": [8, 16], "vms.0.count": [2, 3]},
        "random": {
            "n": 3,
            "seed": 5,
            "keys": {
                "swap.read_latency_us": {"low": 10, "high": 1000, "log": True},
                "vms.0.vcpus": {"low": 1, "high": 4, "int": True},
                "kvm.ept_ad_bits": [True, False],
            },
        },
        "seeds": [1, 2],
    }
    _, points = load_sweep(_write(tmp_path, spec))
    assert len(points) == 2 * 2 * 3 * 2
    # zip rows move together
    assert {(p.scenario.host.memory_mib, p.scenario.vms[0].count) for p in points} == {
        (8, 2),
        (16, 3),
    }
    samples = [
        (p.params["swap.read_latency_us"], p.params["vms.0.vcpus"], p.params["kvm.ept_ad_bits"])
        for p in points
    ]
    # random samples are the innermost axis but one (seeds replicate each sample)
    assert samples[0] == samples[1]
    assert len(set(samples)) == 3
    assert all(10 <= lat <= 1000 and 1 <= v <= 4 and isinstance(v, int) for lat, v, _ in samples)
    assert all(p.scenario.vms[0].vcpus == p.params["vms.0.vcpus"] for p in points)
    # the same file gives the same points; another random.seed gives other samples
    _, again = load_sweep(_write(tmp_path, spec))
    assert [p.run_name for p in again] == [p.run_name for p in points]
    spec["random"]["seed"] = 6
    _, other = load_sweep(_write(tmp_path, spec))
    assert {p.params["swap.read_latency_us"] for p in other}.isdisjoint(
        {p.params["swap.read_latency_us"] for p in points}
    )


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (
            {"zip": {"host.memory_mib": [8, 16], "vms.0.count": [2]}},
            r"zip: lists must have equal lengths \(host.memory_mib has 2, vms.0.count has 1\)",
        ),
        ({"zip": {"host.memory_mib": 8}}, "zip.host.memory_mib: Input should be a valid list"),
        ({"zip": {"host.memory_mib": [8, -1]}}, "point 1 .*host.memory_mib"),
        (
            {"grid": {"host.memory_mib": [8]}, "zip": {"host.memory_mib": [16]}},
            "host.memory_mib is in both grid and zip",
        ),
        ({"random": {"n": 0, "keys": {"vms.0.vcpus": [1]}}}, "random.n: must be at least 1"),
        ({"random": {"n": 2, "colour": 1}}, "random.colour: unknown key"),
        ({"random": {"n": 2, "keys": {}}}, "random.keys: Dictionary should have at least 1 item"),
        (
            {"random": {"n": 2, "keys": {"swap.read_latency_us": {"low": 5, "high": 1}}}},
            "random.keys.swap.read_latency_us: needs numbers low <= high",
        ),
        (
            {"random": {"n": 2, "keys": {"swap.read_latency_us": {"low": 0, "high": 1, "log": 1}}}},
            "random.keys.swap.read_latency_us: log: true needs low > 0",
        ),
        (
            {"random": {"n": 2, "keys": {"swap.read_latency_us": {"min": 0}}}},
            r"read_latency_us.min: unknown key.*\(valid keys: high, int, log, low\)",
        ),
        ({"random": {"n": 4, "keys": {"kvm.nonsense": [1, 2]}}}, "point 0 .*kvm.nonsense"),
    ],
)
def test_bad_zip_and_random_are_one_line_errors(
    tmp_path: Path, spec: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_sweep(_write(tmp_path, {"base": {**TINY, "duration_s": 0.01}, **spec}))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# running: identical results whatever runs them, failures as rows, crash safety


def _small_sweep(tmp_path: Path) -> Path:
    return _write(
        tmp_path,
        {
            "base": {**TINY, "duration_s": 0.01},
            "grid": {"reclaim.policy": ["fifo", "clock"]},
            "zip": {"host.memory_mib": [8, 12]},
        },
    )


def _content(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in WALL_CLOCK_COLUMNS if c in df.columns])


def test_one_and_two_workers_give_the_same_runs_parquet(tmp_path: Path) -> None:
    path = _small_sweep(tmp_path)
    one, _ = run_sweep(path, tmp_path / "w1", workers=1)
    two, _ = run_sweep(path, tmp_path / "w2", workers=2)
    a = pd.read_parquet(one / "runs.parquet")
    b = pd.read_parquet(two / "runs.parquet")
    assert len(a) == 4
    assert set(a.status) == {"ok"}
    assert list(a.overcommit.round(3)) == [2.0, 1.333] * 2
    pd.testing.assert_frame_equal(_content(a), _content(b))


@pytest.mark.slow  # starting a LocalCluster takes 10-30 s
def test_dask_local_gives_the_same_runs_parquet(tmp_path: Path) -> None:
    path = _small_sweep(tmp_path)
    one, _ = run_sweep(path, tmp_path / "w1", workers=1)
    dask, df = run_sweep(path, tmp_path / "dask", workers=2, dask="local")
    assert set(df.status) == {"ok"}
    pd.testing.assert_frame_equal(
        _content(pd.read_parquet(one / "runs.parquet")),
        _content(pd.read_parquet(dask / "runs.parquet")),
    )
    for run in df.run:  # the files shipped back from the workers are the same bytes
        for f in ("faults.parquet", "evictions.parquet", "timeline.parquet"):
            assert (one / "runs" / run / f).read_bytes() == (dask / "runs" / run / f).read_bytes()
    assert not [p for p in (dask / "runs").iterdir() if p.name.startswith(".")]


def test_unreachable_scheduler_is_a_one_line_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sim.cli import main

    path = str(_small_sweep(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, ["sweep", path, "--dask", "nonsense", "--out", str(empty)])
    assert r.exit_code == 2
    error = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "--dask nonsense: not a scheduler address" in error[0]
    assert not list(empty.iterdir())  # an empty directory is left empty
    fresh = tmp_path / "fresh"  # a directory the failed sweep created is not left behind
    r = CliRunner().invoke(main, ["sweep", path, "--dask", "nonsense", "--out", str(fresh)])
    assert r.exit_code == 2
    assert not fresh.exists()


def test_failed_run_is_a_row_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """A run that fails although its point validated (here its trace vanishes after the
    expansion checked it) becomes a row with its error, and is retried on the next start."""
    trace = tmp_path / "t.npy"
    np.save(trace, np.arange(64, dtype=np.int64))
    spec = {
        "base": {**TINY, "duration_s": 0.01},
        "variants": [
            {"label": "good"},
            {"label": "bad", "set": {"vms.0.workload": {"type": "trace", "path": "t.npy"}}},
        ],
    }
    path = _write(tmp_path, spec)
    _, points = load_sweep(path)
    trace.unlink()
    df = run_points(points, tmp_path / "out", workers=1)
    assert list(df.status) == ["ok", "failed"]
    assert "t.npy" in df.error[1]
    assert [p.name for p in (tmp_path / "out" / "runs").iterdir()] == [df.run[0]]
    again = run_points(points, tmp_path / "out", workers=1)
    assert list(again.status) == ["cached", "failed"]  # failed runs are retried on resume
    with pytest.raises(ConfigError, match="t.npy: cannot read"):  # and now caught up front
        load_sweep(path)


def test_same_config_twice_runs_once(tmp_path: Path) -> None:
    spec = {
        "base": {**TINY, "duration_s": 0.01},
        "variants": [{"label": "a"}, {"label": "b", "set": {"reclaim.policy": "two_list"}}],
    }
    out, df = run_sweep(_write(tmp_path, spec), tmp_path / "out", workers=2)
    assert list(df.label) == ["a", "b"]
    assert df.run[0] == df.run[1]
    assert len(list((out / "runs").iterdir())) == 1


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    path = _small_sweep(tmp_path)
    (tmp_path / "out").mkdir()
    with _sweep_lock(tmp_path / "out"), pytest.raises(UserError, match="another sweep"):
        run_sweep(path, tmp_path / "out", workers=1)


RUN_FILES = {
    "summary.json",
    "config.yaml",
    "manifest.json",
    "faults.parquet",
    "evictions.parquet",
    "timeline.parquet",
}


def test_sigkill_halfway_then_resume(tmp_path: Path) -> None:
    spec = {
        "base": {**TINY, "duration_s": 0.03},
        "grid": {"reclaim.policy": ["fifo", "clock", "two_list"]},
        "seeds": [1, 2],
    }
    path = _write(tmp_path, spec)
    out = tmp_path / "out"
    runs = out / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "sweep", str(path), "--workers", "1", "--out", str(out)],
        start_new_session=True,  # its own process group, killed as a whole
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while len([p for p in runs.glob("[!.]*/summary.json")]) < 2:  # not in temp dirs
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no two runs finished in 300 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    visible = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert all(set(os.listdir(p)) == RUN_FILES for p in visible)  # nothing half-written
    done = {p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir()} for p in visible}
    assert 2 <= len(done) < 6
    assert not (out / "runs.parquet").exists()

    _, df = run_sweep(path, out, workers=1)
    assert len(df) == 6
    assert {r.run: r.status for r in df.itertuples()} == {
        r: "cached" if r in done else "ok" for r in df.run
    }
    for name, mtimes in done.items():  # finished runs were not recomputed
        assert {f.name: f.stat().st_mtime_ns for f in (runs / name).iterdir()} == mtimes
    assert sorted(os.listdir(runs)) == sorted(df.run)  # no temp dirs left
    assert all(set(os.listdir(runs / r)) == RUN_FILES for r in df.run)


# --------------------------------------------------------------------------------------------
# the sweep file model, --set and --seeds


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (
            {
                "grid": {"reclaim.policy": ["fifo"]},
                "variants": [{"label": "x", "set": {"reclaim.policy": "lru"}}],
            },
            r"variants\[0\].set: reclaim.policy is also swept by grid \(reclaim.policy\)",
        ),
        (
            {"grid": {"reclaim.policy": ["fifo"]}, "variants": [{"set": {"reclaim": {}}}]},
            r"variants\[0\].set: reclaim is also swept by grid \(reclaim.policy\)",
        ),
        (
            {"grid": {"kvm": [{}]}, "zip": {"kvm.mmu_notifiers": [True]}},
            "kvm and kvm.mmu_notifiers overlap",
        ),
        ({"grid": {"a..b": [1]}}, "'a..b' is not a dotted key"),
        ({"grid": {"kvm.mmu_notifiers": [True] * 101}, "seeds": list(range(100))}, "10,100 points"),
        ({"random": {"n": 10001, "keys": {"kvm.mmu_notifiers": [1]}}}, "random.n: must be at most"),
        ({"grid": {"seed": [1, 2]}}, "grid: seed: every run's seed comes from seeds"),
        ({"variants": [{"set": {"seed": 3}}]}, r"variants\[0\].set: seed: every run's seed"),
        ({"name": ".."}, "name: '..': expected letters"),
        ({"base": 3}, "base: expected a scenario file name"),
        ({"variants": [{"label": "x", "sett": {}}]}, r"variants\[0\].sett: unknown key"),
        ({"name": "../x"}, "it names a directory under results"),
    ],
)
def test_sweep_file_rules(tmp_path: Path, spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_sweep(_write(tmp_path, {"base": {**TINY, "duration_s": 0.01}, **spec}))
    assert "\n" not in str(info.value)


def test_parse_seeds() -> None:
    from sim.sweep import parse_seeds

    assert parse_seeds("1,2,3") == [1, 2, 3]
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert parse_seeds(" 5 ") == [5]
    for bad in ("", "x", "3-1", "1,1", "-1", "1-99999999999", "1.5"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_mixed_parameter_types_still_make_a_runs_table(tmp_path: Path) -> None:
    """A key swept over values of different types (pydantic accepts "12" for 12) or over
    mappings becomes a text column, so runs.parquet can always be written."""
    spec = {
        "base": {**TINY, "duration_s": 0.005},
        "grid": {
            "host.memory_mib": [8, "12"],
            "vms.0.workload": [{"type": "uniform"}],
        },
    }
    _, points = load_sweep(_write(tmp_path, spec))
    assert [p.params["host.memory_mib"] for p in points] == ["8", "12"]
    assert points[0].params["vms.0.workload"] == '{"type": "uniform"}'
    df = run_points(points, tmp_path / "out", workers=1)
    assert list(df.status) == ["ok", "ok"]
    assert pd.read_parquet(tmp_path / "out" / "runs.parquet")["host.memory_mib"].tolist() == [
        "8",
        "12",
    ]


def test_cli_sweep_takes_set_and_seeds(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sim.cli import main

    path = _write(tmp_path, {"base": {**TINY, "duration_s": 0.005}, "seeds": [1]})
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out), "--workers", "1"]
    r = CliRunner().invoke(main, [*args, "--set", "reclaim.policy=fifo", "--seeds", "2-3"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "runs.parquet")
    assert list(df.seed) == [2, 3]
    assert set(df.policy) == {"fifo"}
    r = CliRunner().invoke(main, [*args, "--seeds", "x"])
    assert r.exit_code == 2
    assert "--seeds 'x'" in r.output

"""File paths in configs resolve against the file that names them, and validation opens every
trace a config names (bounded), whatever names it: a scenario, a sweep, a plan, ``--set``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sim.checks import check_traces
from sim.cli import main
from sim.config import load_scenario
from sim.errors import ConfigError, TraceError
from sim.plan import load_plan
from sim.sweep import load_sweep
from tests.conftest import TINY


def _trace_vm(path: str, memory_mib: int = 1) -> dict[str, Any]:
    return {"name": "tr", "memory_mib": memory_mib, "workload": {"type": "trace", "path": path}}


def _scenario(path: str) -> dict[str, Any]:
    return {**TINY, "duration_s": 0.01, "vms": [_trace_vm(path)]}


def _dump(p: Path, raw: Any) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conf/t.npy beside conf/*.yaml; the current directory is somewhere else."""
    conf = tmp_path / "conf"
    conf.mkdir()
    np.save(conf / "t.npy", np.arange(100, dtype=np.int64))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return conf


def test_scenario_trace_paths_are_relative_to_the_scenario_file(layout: Path) -> None:
    cfg = _dump(layout / "run.yaml", _scenario("t.npy"))
    sc = load_scenario(cfg)
    assert sc.vms[0].workload.path == str(layout / "t.npy")  # recorded resolved
    assert yaml.safe_load(sc.to_yaml())["vms"][0]["workload"]["path"] == str(layout / "t.npy")
    absolute = load_scenario(_dump(layout / "abs.yaml", _scenario(str(layout / "t.npy"))))
    assert absolute.vms[0].workload.path == str(layout / "t.npy")
    r = CliRunner().invoke(main, ["validate", str(cfg)])
    assert r.exit_code == 0, r.output


def test_set_paths_are_relative_to_the_current_directory(layout: Path) -> None:
    cfg = _dump(layout / "run.yaml", _scenario("t.npy"))
    os.chdir(layout.parent)
    sc = load_scenario(cfg, ["vms.0.workload.path=conf/t.npy"])
    assert sc.vms[0].workload.path == str(layout / "t.npy")


def test_sweep_paths_follow_the_file_that_names_them(layout: Path, tmp_path: Path) -> None:
    """A base file's paths are relative to the base file, everything written in the sweep
    file (an inline base, a variant, an axis) to the sweep file."""
    _dump(layout / "base.yaml", _scenario("t.npy"))
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    shutil.copy(layout / "t.npy", sweeps / "other.npy")
    spec = {
        "base": "../conf/base.yaml",
        "variants": [{"label": "own"}, {"label": "v", "set": {"vms.0.workload.path": "other.npy"}}],
    }
    _, points = load_sweep(_dump(sweeps / "s.yaml", spec))
    assert [p.scenario.vms[0].workload.path for p in points] == [
        str(layout / "t.npy"),
        str(sweeps / "other.npy"),
    ]
    inline = {"base": _scenario("other.npy"), "grid": {"vms.0.memory_mib": [1, 2]}}
    _, points = load_sweep(_dump(sweeps / "i.yaml", inline))
    assert {p.scenario.vms[0].workload.path for p in points} == {str(sweeps / "other.npy")}


def test_plan_profile_paths_are_relative_to_the_plan(layout: Path) -> None:
    spec = {
        "base": {**TINY, "duration_s": 0.01, "vms": []},
        "profile": _trace_vm("t.npy"),
        "search": {"variable": "vms", "low": 1, "high": 2},
        "slo": {"metric": "stall_mean_p99_vms", "max": 0.05},
    }
    plan = load_plan(_dump(layout / "p.yaml", spec))
    assert plan.scenario(2, 1).vms[0].workload.path == str(layout / "t.npy")


def test_config_hash_covers_trace_contents_not_its_location(layout: Path, tmp_path: Path) -> None:
    a = load_scenario(_dump(layout / "run.yaml", _scenario("t.npy")))
    moved = tmp_path / "moved"
    shutil.copytree(layout, moved)
    b = load_scenario(moved / "run.yaml")
    assert a.vms[0].workload.path != b.vms[0].workload.path
    assert a.config_hash() == b.config_hash()  # same bytes, same runs: a sweep resumes
    np.save(moved / "t.npy", np.arange(101, dtype=np.int64))
    assert load_scenario(moved / "run.yaml").config_hash() != a.config_hash()


BAD_TRACES: list[tuple[str, bytes | None, str]] = [
    ("missing.npy", None, "cannot read"),
    ("empty.lackey", b"", "no accesses"),
    ("garbage.lackey", b"hello world\n", "unrecognised line"),
    ("nul.lackey", b"\0" * 20000, "line longer than 4096 bytes"),
    ("big.npy", None, "touches 300 distinct pages but the VM has 256"),
    ("fifo.npy", None, "is a FIFO"),
    ("huge.npy", None, "the header claims 1,099,511,627,776 entries"),
]


@pytest.mark.parametrize(("name", "data", "needle"), BAD_TRACES, ids=[b[0] for b in BAD_TRACES])
def test_validate_opens_every_trace(
    layout: Path, name: str, data: bytes | None, needle: str
) -> None:
    import io

    p = layout / name
    if data is not None:
        p.write_bytes(data)
    elif name == "big.npy":
        np.save(p, np.arange(300, dtype=np.int64))
    elif name == "fifo.npy":
        os.mkfifo(p)
    elif name == "huge.npy":
        buf = io.BytesIO()
        header = {"descr": "<i8", "fortran_order": False, "shape": (2**40,)}
        np.lib.format.write_array_header_1_0(buf, header)
        p.write_bytes(buf.getvalue() + b"\0" * 64)
    cfg = _dump(layout / "run.yaml", _scenario(name))
    sweep = _dump(layout / "s.yaml", {"base": "run.yaml", "seeds": [1, 2]})
    for target in (cfg, sweep):
        r = CliRunner().invoke(main, ["validate", str(target)])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert needle in r.output, r.output
        assert "vms[0].workload.path" in r.output
    sc = load_scenario(cfg)
    with pytest.raises(TraceError, match=needle):  # and run refuses it before it starts
        check_traces(sc, "run", full=True)


def test_validate_checks_a_long_trace_by_its_start(layout: Path, monkeypatch: Any) -> None:
    """Beyond CHECK_BYTES, validate reads the start only; a trace whose start already
    exceeds the VM is refused, and ``run``'s full load catches the rest."""
    monkeypatch.setattr("sim.checks.CHECK_BYTES", 4096)
    np.save(layout / "long.npy", np.arange(5000, dtype=np.int64) % 200)
    cfg = _dump(layout / "run.yaml", _scenario("long.npy"))
    r = CliRunner().invoke(main, ["validate", str(cfg)])
    assert r.exit_code == 0, r.output  # 4 KiB hold 496 accesses over 200 pages
    np.save(layout / "long.npy", np.arange(5000, dtype=np.int64))
    r = CliRunner().invoke(main, ["validate", str(cfg)])
    assert r.exit_code == 2
    assert "distinct pages in its first" in r.output


def test_sweep_set_applies_to_the_base(layout: Path) -> None:
    _dump(layout / "base.yaml", {**TINY, "duration_s": 0.01})
    path = _dump(layout / "s.yaml", {"base": "base.yaml", "grid": {"reclaim.policy": ["fifo"]}})
    r = CliRunner().invoke(main, ["validate", str(path), "--set", "host.memory_mib=12"])
    assert r.exit_code == 0, r.output
    _, points = load_sweep(path, ["host.memory_mib=12"], [4, 5])
    assert [(p.scenario.host.memory_mib, p.scenario.seed) for p in points] == [(12, 4), (12, 5)]
    with pytest.raises(ConfigError, match="sets reclaim.policy itself \\(grid\\)"):
        load_sweep(path, ["reclaim.policy=clock"])
    with pytest.raises(ConfigError, match="sets reclaim.policy itself"):
        load_sweep(path, ["reclaim={policy: clock}"])  # a section holding a swept key
    with pytest.raises(ConfigError, match="use --seeds"):
        load_sweep(path, ["seed=3"])

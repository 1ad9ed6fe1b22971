"""``memsim report``: one embedded image per figure, markdown beside its PNGs, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from analysis.report import write_report
from sim.cli import main
from sim.config import parse_scenario
from sim.engine import run_scenario
from sim.sweep import run_sweep
from tests.conftest import TINY, tiny

IMG = '<img src="data:image/png;base64,'


def _check(report_dir: Path, expected: set[str]) -> None:
    """Every expected figure is embedded exactly once in the HTML and saved beside the md."""
    page = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="(\w+)"', page)
    assert page.count(IMG) == len(embedded) == len(expected)
    assert {alt for _, alt in embedded} == expected
    assert all(len(b64) > 1000 for b64, _ in embedded)  # a real picture, not an empty one
    for name in expected:
        assert f"![{name}]({name}.png)" in md
        assert (report_dir / f"{name}.png").stat().st_size > 1000
    assert not list(report_dir.parent.glob(".*tmp*"))


def test_run_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_scenario(tiny(duration_s=0.05), run, command=[])
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 0, r.output
    _check(run / "report", {"faults", "free_memory", "kswapd", "idle_age"})
    md = (run / "report" / "report.md").read_text()
    assert "| vm0 |" in md  # the per-VM table
    assert "demand mode only" in md  # says why the quality figure is absent


def test_memcg_run_report_draws_memory_current(tmp_path: Path) -> None:
    run = tmp_path / "run"
    raw: dict[str, Any] = {**TINY, "duration_s": 0.05}
    raw["vms"] = [
        {**TINY["vms"][0], "count": 1, "name": "capped", "memcg": {"max_mib": 4, "high_mib": 3}},
        {**TINY["vms"][0], "count": 1, "name": "free"},
    ]
    run_scenario(parse_scenario(raw), run, command=[])
    target, figures = write_report(run, tmp_path / "rep")
    assert "memcg" in figures
    _check(target, set(figures))
    plain = tmp_path / "plain"
    run_scenario(tiny(duration_s=0.05), plain, command=[])
    assert "memcg" not in write_report(plain, tmp_path / "rep2")[1]


def test_demand_mode_run_report_has_quality(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_scenario(
        tiny(duration_s=0.003, reclaim={"policy": "clock", "trigger": "demand"}), run, command=[]
    )
    target, figures = write_report(run, tmp_path / "rep")
    assert "quality" in figures
    _check(target, set(figures))


def test_sweep_report(tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "base": {**TINY, "duration_s": 0.02},
        "grid": {"vms.0.vcpus": [1, 2]},
        "seeds": [1, 2],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out, _ = run_sweep(path, tmp_path / "sw", workers=1)
    r = CliRunner().invoke(main, ["report", str(out), "-o", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    _check(tmp_path / "rep", {"sweep"})
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "vms.0.vcpus" in md
    assert "memcg_max" not in md  # no memcgs, no memcg columns


def test_memcg_sweep_report_shows_the_memcg_columns(tmp_path: Path) -> None:
    base: dict[str, Any] = {**TINY, "duration_s": 0.03}
    base["vms"] = [{**TINY["vms"][0], "count": 1, "name": "capped", "memcg": {"max_mib": 1}}]
    spec = {"base": base, "grid": {"vms.0.memcg.max_mib": [1, 8]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out, _ = run_sweep(path, tmp_path / "sw", workers=1)
    target, figures = write_report(out, tmp_path / "rep")
    _check(target, set(figures))
    md = (target / "report.md").read_text()
    assert "memcg_max" in md
    assert "memcg_worst_stall_fraction" in md


def test_not_a_result_dir_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for target in (tmp_path, tmp_path / "missing"):
        r = CliRunner().invoke(main, ["report", str(target)])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert "run, sweep or plan" in r.output
    assert not (tmp_path / "report").exists()

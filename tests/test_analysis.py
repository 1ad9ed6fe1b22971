"""The analysis package reads result directories and draws the README's figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.figures import main as figures_main
from analysis.load import fault_rate, load_run
from sim.engine import run_scenario
from tests.conftest import tiny


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

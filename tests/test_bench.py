"""The benchmark harness: ``python -m bench --quick --json -`` runs and its rows are well formed.

No timing assertions: only that every expected figure is present, typed and consistent (ratio
equals value / baseline, ``met`` is set exactly when there is a target). The naive model is
run briefly on its own.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import ROW_KEYS, Target, row
from bench.__main__ import discover, select

REPO = Path(__file__).resolve().parent.parent

EXPECTED = {
    ("hit path", "guest accesses/s, all resident"),
    ("full model ~1%", "guest accesses/s"),
    ("full model ~1%", "guest accesses/s, host core vs general path"),
    ("full model ~1%", "guest accesses/s, compiled fault vs without it"),
    ("full model ~1%", "faults handled/s"),
    ("full model ~1%", "fault rate (faults/access)"),
    ("full model ~5%", "guest accesses/s"),
    ("full model ~5%", "guest accesses/s, host core vs general path"),
    ("full model ~5%", "guest accesses/s, compiled fault vs without it"),
    ("full model ~5%", "faults handled/s"),
    ("full model ~5%", "fault rate (faults/access)"),
    ("memcg two-list ~1%", "guest accesses/s, host core vs general path"),
    ("guest kernel ~1%", "guest accesses/s, with a guest kernel vs without"),
    ("replay", "lru accesses/s"),
    ("replay", "opt accesses/s vs our lru"),
    ("replay", "opt accesses/s"),
    ("replay", "clock accesses/s"),
    ("replay", "fifo accesses/s"),
    ("replay", "lru accesses/s vs per-request API"),
    ("mrc", "exact LRU MRC, all sizes, accesses/s"),
    ("memory", "state bytes per simulated 4 KiB page"),
    ("memory", "state bytes per simulated 4 KiB page, mglru"),
    ("calibrate", "memsim two_list accesses/s vs lru"),
    ("calibrate", "memsim two_list accesses/s vs demand replay"),
    ("calibrate", "real guest accesses/s (guest time)"),  # skipped without root and KVM
    ("calibrate", "memsim wall time / real guest time"),
    ("realsize", "wall s per simulated s, steady state"),
    ("realsize", "wall time, 10 simulated s"),
    ("realsize", "batch 1024 vs batch 1: major faults, relative difference"),
    ("realsize", "batch 1024 vs batch 1: pswpout, relative difference"),
}


def check_row(r: dict[str, Any]) -> None:
    """One row follows the protocol."""
    for k in ROW_KEYS:
        assert k in r, (k, r)
    assert isinstance(r["bench"], str)
    assert isinstance(r["metric"], str)
    assert r["value"] is None or (isinstance(r["value"], int | float) and math.isfinite(r["value"]))
    if r["value"] is None:
        assert r["note"].startswith("skipped"), r
    if r["ratio"] is not None:
        assert r["baseline"]
        assert r["baseline_value"]
        v, b = r["value"], r["baseline_value"]
        assert r["ratio"] in (pytest.approx(v / b, rel=1e-2), pytest.approx(b / v, rel=1e-2))
    assert (r["met"] is None) == (r["target"] is None)
    assert isinstance(r.get("details", {}), dict)


def test_row_and_target() -> None:
    """Ratios, targets and ``met`` as the protocol defines them."""
    r = row("b", "m", 30.0, "acc/s", baseline="x", baseline_value=10.0, target=Target(20, None, 4))
    assert r["ratio"] == 3.0
    assert r["met"] is False
    assert r["target"] == ">= 20 acc/s, >= 4x"
    r = row("b", "m", 12.0, "B/page", target=Target(max_value=16))
    assert r["met"] is True
    assert r["ratio"] is None
    assert row("b", "m", 1.0, "")["met"] is None
    check_row(r)


def test_discover_and_select() -> None:
    """Every bench_*.py is found; --only takes short or full names."""
    names = discover()
    assert {"bench_model", "bench_replay", "bench_memory", "bench_fastpath"} <= set(names)
    assert select(names, ["model", "bench_replay"]) == ["bench_model", "bench_replay"]
    with pytest.raises(SystemExit):
        select(names, ["nope"])


def test_naive_model_runs_the_workload() -> None:
    """On a host that holds the working sets the naive model takes only first-touch faults."""
    from bench.bench_model import run_naive, scenario

    sc = scenario(512, quick=True, duration_s=0.02)
    w = run_naive(sc, budget_s=60.0, warm_ns=0)
    assert w.accesses > 0
    assert w.faults <= 2 * 16 * 256  # at most the working sets' pages, each faulted once


def test_realsize_quick_rows() -> None:
    """The real-size module at 1/64 size: well-formed rows, a host that swaps, and fidelity
    rows that are the relative difference of the two worlds' counts."""
    from bench.bench_realsize import run

    rows = {r["metric"]: r for r in run(quick=True)}
    for r in rows.values():
        check_row(r)
    steady = rows["wall s per simulated s, steady state"]["details"]
    assert steady["steady_rates"]["pgmajfault"] > 0
    assert steady["steady_rates"]["pswpout"] > 0
    for what in ("major faults", "pswpout"):
        d = rows[f"batch 1024 vs batch 1: {what}, relative difference"]["details"]
        assert d["batch1_value"] > 500
        got = rows[f"batch 1024 vs batch 1: {what}, relative difference"]["value"]
        assert got == abs(d["batch_value"] - d["batch1_value"]) / d["batch1_value"]


@pytest.mark.slow
def test_quick_run_json() -> None:
    """``python -m bench --quick --json -`` prints every expected row, well formed."""
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "-", "--no-pin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["errors"] == []
    for key in ("cpu", "cores", "python", "numpy", "numba", "date_utc"):
        assert key in out["machine"]
    rows = out["rows"]
    for r in rows:
        check_row(r)
    got = {(r["bench"], r["metric"]) for r in rows}
    missing = EXPECTED - got
    assert not missing, missing
    assert any(r["metric"].startswith("peak RSS") for r in rows)

"""The CLI: a run writes its result directory; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from sim.cli import main
from sim.engine import run_scenario
from tests.conftest import TINY, tiny

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_run_writes_every_file_and_pandas_reads_them(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {**TINY, "duration_s": 0.1})
    out = tmp_path / "res"
    r = _invoke("run", str(cfg), "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert names == {
        "evictions.parquet",
        "faults.parquet",
        "timeline.parquet",
        "summary.json",
        "config.yaml",
        "manifest.json",
    }
    ev = pd.read_parquet(out / "evictions.parquet")
    assert list(ev.columns) == [
        "t_ns",
        "vm",
        "gfn",
        "pfn",
        "policy",
        "dirty",
        "last_access_ns",
        "idle_ns",
        "scans_survived",
        "idle_rank",
        "next_access_ns",
        "refault",
    ]
    assert len(ev) > 0
    assert (ev.idle_ns >= 0).all()
    assert ev.idle_rank.between(0, 1).all()
    assert (ev.refault == ev.next_access_ns.notna()).all()
    assert (ev.next_access_ns.dropna() > ev.t_ns[ev.refault]).all()
    faults = pd.read_parquet(out / "faults.parquet")
    assert set(faults.kind.unique()) <= {"first_touch", "minor", "major", "access_tracking"}
    assert (faults.latency_ns > 0).all()
    tl = pd.read_parquet(out / "timeline.parquet")
    assert {"t_ns", "vm", "free_pages", "resident_pages", "wmark_low"} <= set(tl.columns)
    s = json.loads((out / "summary.json").read_text())
    assert {"vms", "host", "sim_time_ns", "wall_s"} <= set(s)
    for v in s["vms"]:
        assert {"name", "accesses", "faults", "refaults", "stall_ns"} <= set(v)
        assert set(v["faults"]) == {"first_touch", "minor", "major", "access_tracking"}
    h = s["host"]
    assert {
        "kswapd_scanned",
        "kswapd_reclaimed",
        "direct_reclaims",
        "pswpin",
        "pswpout",
        "tlb_flushes",
        "rmap_walked",
        "notifier",
    } <= set(h)
    assert {"clear_flush_young", "clear_young", "test_young", "invalidate_range_start"} <= set(
        h["notifier"]
    )
    # refaults in the summary are exactly the evictions whose page came back
    assert sum(v["refaults"] for v in s["vms"]) == int(ev.refault.sum())
    assert len(faults[faults.kind == "major"]) == sum(v["faults"]["major"] for v in s["vms"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == TINY["seed"]
    assert "numpy" in manifest["versions"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["kvm"]["mmu_notifiers"] is True  # defaults filled in


def test_set_and_seed_override_the_config(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {**TINY, "duration_s": 0.05})
    out = tmp_path / "res"
    r = _invoke(
        "run",
        str(cfg),
        "--out",
        str(out),
        "-q",
        "--seed",
        "3",
        "--set",
        "kvm.mmu_notifiers=false",
        "--set",
        "vms.0.vcpus=1",
    )
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["seed"] == 3
    assert resolved["kvm"]["mmu_notifiers"] is False
    assert resolved["vms"][0]["vcpus"] == 1


def test_default_outdir_is_named_by_config_hash(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _write(tmp_path, {**TINY, "duration_s": 0.02}, name="mine.yaml")
    r = _invoke("run", str(cfg), "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "results" / f"tiny-{tiny(duration_s=0.02).config_hash()}").is_dir()


BAD: list[tuple[str, Any, str]] = [
    ("unknown top-level key", {"colour": "red"}, "colour: unknown key"),
    (
        "typo with suggestion",
        {"vms": [{**TINY["vms"][0], "memroy_mib": 8}]},
        "did you mean 'memory_mib'",
    ),
    ("wrong type", {"host": {"memory_mib": "lots"}}, "host.memory_mib"),
    ("negative size", {"vms": [{**TINY["vms"][0], "memory_mib": -5}]}, "vms[0].memory_mib"),
    ("watermarks above memory", {"host": {"memory_mib": 1, "min_free_kbytes": 4096}}, "watermarks"),
    (
        "working set above memory",
        {"vms": [{**TINY["vms"][0], "working_set_mib": 64}]},
        "working_set_mib",
    ),
    (
        "unknown workload",
        {"vms": [{**TINY["vms"][0], "workload": {"type": "zigzag"}}]},
        "vms[0].workload",
    ),
    ("unknown policy", {"reclaim": {"policy": "magic"}}, "reclaim.policy"),
    ("duplicate VM names", {"vms": [TINY["vms"][0], TINY["vms"][0]]}, "duplicate"),
    ("missing host", {"host": None}, "host"),
]


@pytest.mark.parametrize(("why", "change", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, why: str, change: dict[str, Any], needle: str
) -> None:
    raw = {**TINY, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    cfg = _write(tmp_path, raw)
    out = tmp_path / "res"
    for cmd in (("run", str(cfg), "--out", str(out), "-q"), ("validate", str(cfg))):
        r = _invoke(*cmd)
        assert r.exit_code == 2, (why, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1, r.output
        assert "Traceback" not in r.output
        assert needle in r.output, r.output
    assert list(tmp_path.iterdir()) == [cfg]  # no result dir, no temp dir


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--set", "vms.5.count=2"), "no list item"),
        (("--set", "kvm.mmu_notifiers"), "expected dotted.key=value"),
        (("--set", "kvm.ept_ad_bits=[unclosed"), "cannot parse"),
        (("--set", "kvm.nonsense=1"), "kvm.nonsense: unknown key"),
        (("--seed", "-1"), "--seed"),
    ],
)
def test_bad_flags_are_exit_2(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    cfg = _write(tmp_path, TINY)
    r = _invoke("run", str(cfg), "--out", str(tmp_path / "res"), "-q", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert not (tmp_path / "res").exists()


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("name: x\nhost:\n  memory_mib: [1, 2\nvms: []\n")
    r = _invoke("validate", str(cfg))
    assert r.exit_code == 2
    assert "line 4" in r.output
    assert "started on line 3" in r.output
    assert "invalid YAML" in r.output


def test_missing_config_file(tmp_path: Path) -> None:
    r = _invoke("run", str(tmp_path / "nope.yaml"), "-q")
    assert r.exit_code == 2
    assert "cannot read" in r.output


def test_validate_ok_prints_one_line(tmp_path: Path) -> None:
    r = _invoke("validate", str(_write(tmp_path, TINY)))
    assert r.exit_code == 0
    assert r.output.startswith("ok: tiny: 2 VM(s)")


def test_interrupted_run_leaves_no_directory(tmp_path: Path) -> None:
    def boom(frac: float) -> None:
        if frac > 0.3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenario(tiny(duration_s=0.05), tmp_path / "res", progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_the_old_result_atomically(tmp_path: Path) -> None:
    first = run_scenario(tiny(duration_s=0.02), tmp_path / "res")
    (tmp_path / "res" / "summary.json").write_text("{}")  # the old result, damaged
    second = run_scenario(tiny(duration_s=0.02), tmp_path / "res")
    assert json.loads((tmp_path / "res" / "summary.json").read_text()) == second.summary
    assert first.outdir == second.outdir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_python_dash_m_sim_is_the_same_cli(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {**TINY, "host": {"memory_mib": 0}})
    r = subprocess.run(
        [sys.executable, "-m", "sim", "validate", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "host.memory_mib" in r.stderr


def test_shipped_configs_validate() -> None:
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        r = _invoke("validate", str(cfg))
        assert r.exit_code == 0, (cfg, r.output)

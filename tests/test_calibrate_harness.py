"""memsim calibrate's logic without the kernel: config, fit, profile, comparison, CLI refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sim.calibrate import fit, harness, report
from sim.calibrate.config import CalibrationConfig, load
from sim.calibrate.harness import Phase, Run
from sim.cli import main
from sim.config import parse_scenario
from sim.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "calibrate.yaml"


def small_cfg(**over: object) -> CalibrationConfig:
    raw = {
        "repetitions": 3,
        "swapfile_mib": 64,
        "scenarios": [
            {
                "name": "a",
                "use": "fit",
                "mem_mib": 8,
                "limit_mib": 5,
                "workload": {"type": "hotcold", "hot_fraction": 0.1, "hot_access_fraction": 0.9},
                "accesses": 20000,
            },
            {
                "name": "b",
                "mem_mib": 8,
                "limit_mib": 4,
                "memsw_limit_mib": 6,
                "workload": {"type": "uniform"},
                "accesses": 5000,
            },
        ],
    }
    raw.update(over)
    return CalibrationConfig.model_validate(raw)


def test_shipped_config_loads_and_has_enough_scenarios() -> None:
    cfg = load(CONFIG)
    assert len(cfg.scenarios) >= 8
    assert {s.use for s in cfg.scenarios} == {"fit", "check"}
    assert any(s.memsw_limit_mib for s in cfg.scenarios)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"repetitions": 0}, "repetitions"),
        ({"scenarios": []}, "scenarios"),
        ({"polices": ["lru"]}, "polices"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, patch: dict, needle: str) -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(patch)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load(p)
    assert "\n" not in str(e.value)
    assert needle in str(e.value)


def test_scenario_checks() -> None:
    with pytest.raises(ValueError, match="memsw_limit_mib"):
        small_cfg(
            scenarios=[
                {
                    "name": "x",
                    "use": "fit",
                    "limit_mib": 40,
                    "memsw_limit_mib": 30,
                    "workload": {"type": "uniform"},
                    "accesses": 10,
                }
            ]
        )
    with pytest.raises(ValueError, match="use: fit"):
        small_cfg(scenarios=[small_cfg().scenarios[1].model_dump()])
    two = [small_cfg().scenarios[0].model_dump()] * 2
    with pytest.raises(ValueError, match="unique"):
        small_cfg(scenarios=two)


def test_stream_is_fill_then_run() -> None:
    sc = small_cfg().scenarios[0]
    g, w = harness.stream_arrays(sc)
    assert len(g) == sc.pages + sc.accesses
    assert (g[: sc.pages] == np.arange(sc.pages)).all()
    assert w[: sc.pages].all()
    g2, _ = harness.stream_arrays(sc)
    assert (g == g2).all()


def test_nnls_recovers_known_costs() -> None:
    rng = np.random.default_rng(1)
    truth = np.array([8.0, 3000.0, 60000.0, 12000.0])
    a = rng.integers(0, 100000, size=(12, 4)).astype(float)
    b = a @ truth
    assert np.allclose(fit.nnls(a, b), truth)
    # a cost that would come out negative is held at zero
    b2 = a @ np.array([8.0, 3000.0, 60000.0, 0.0]) - a[:, 3] * 5
    assert (fit.nnls(a, b2) >= 0).all()


def _phase_rows() -> list[dict]:
    rows = []
    for acc, ft, maj, out in [
        (15872, 15872, 0, 4000),
        (200000, 0, 6000, 6200),
        (15872, 15872, 0, 0),
        (2000000, 0, 0, 0),
        (100000, 0, 20000, 21000),
        (50000, 0, 48000, 30000),
    ]:
        t = acc * 10 + ft * 4000 + maj * 70000 + out * 9000
        rows.append(
            {"accesses": acc, "first_touch": ft, "pgmajfault": maj, "pswpout": out, "time_ns": t}
        )
    return rows


def test_fit_and_profile_map_to_memsim_fields(tmp_path: Path) -> None:
    f = fit.fit(_phase_rows())
    assert f.costs["access_ns"] == pytest.approx(10, rel=1e-6)
    assert f.costs["swap_in_round_trip_ns"] == pytest.approx(70000, rel=1e-6)
    assert f.r2 == pytest.approx(1.0)
    prof = fit.profile(f, 2.0, {"host": "h"})
    assert prof["costs"]["first_touch_ns"] == 4000
    assert prof["swap"]["read_latency_us"] == pytest.approx(58.0)  # 70 us - 2 us - 10 us
    path = tmp_path / "profile.yaml"
    path.write_text(report.profile_text(prof))
    raw = {
        "duration_s": 0.01,
        "host": {"memory_mib": 64},
        "swap": {"size_mib": 16, "write_latency_us": 5.0},
        "costs": {"profile": str(path), "first_touch_ns": 123},
        "vms": [{"name": "v", "memory_mib": 16}],
    }
    sc = parse_scenario(raw)
    assert sc.costs.first_touch_ns == 123  # the scenario's own value wins
    assert sc.costs.reclaim_page_ns == prof["costs"]["reclaim_page_ns"]
    assert sc.swap.read_latency_us == pytest.approx(58.0)
    assert sc.swap.write_latency_us == 5.0


def test_bad_profile_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("costs: {first_touch_ns: 1}\nwhatever: 1\n")
    raw = {"costs": {"profile": str(path)}, "vms": [{"name": "v", "memory_mib": 16}]}
    with pytest.raises(ConfigError, match="unknown section 'whatever'"):
        parse_scenario(raw)
    with pytest.raises(ConfigError):
        parse_scenario({**raw, "costs": {"profile": str(tmp_path / "missing.yaml")}})


def _run(name: str, side: str, rep: int, majors: int, t: int, oom: bool = False) -> Run:
    c = dict.fromkeys(harness.COUNTERS, 0)
    c.update(pgmajfault=majors, pswpout=majors, pgscan=3 * majors, pgsteal=majors)
    phases = [] if oom else [Phase(100, 1000, dict(c), 100), Phase(1000, t, c, 0)]
    return Run(name, side, rep, oom, phases)


def test_comparison_rows_and_verdict(tmp_path: Path) -> None:
    cfg = small_cfg(policies=["two_list", "lru"])
    kernel = [_run("a", "kernel", i, m, 1_000_000) for i, m in enumerate([990, 1000, 5000])]
    kernel += [_run("b", "kernel", i, 0, 0, oom=i < 2) for i in range(3)]
    sims = [
        _run("a", "two_list", 0, 1020, 0),
        _run("a", "lru", 0, 1500, 0),
        _run("b", "two_list", 0, 0, 0, oom=True),
        _run("b", "lru", 0, 0, 0, oom=True),
    ]
    timed = [_run("a", "two_list+profile", 0, 1020, 1_100_000)]
    table = report.rows(cfg, kernel, sims, timed)
    a, b = table
    assert a["kernel_pgmajfault"] == 1000  # the median of the repetitions
    assert a["majors_err"] == pytest.approx(0.02)
    assert a["lru_pgmajfault"] == 1500
    assert a["time_err"] == pytest.approx(0.1)
    assert b["kernel_oom"]
    assert b["kernel_oom_killed"] == 2
    assert b["oom_match"]
    v = report.verdict(table)
    assert v["majors_within_3pct"] == 1
    assert v["oom_matches"] == 2
    assert v["check_scenarios_timed"] == 0  # a is a fit scenario: its time checks nothing
    md = report.markdown(cfg, table)
    assert md.count("\n") == 4
    assert "+2.0%" in md
    report.figure(cfg, table, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_fit_rows_use_only_fit_scenarios() -> None:
    from sim.calibrate.run import fit_rows

    cfg = small_cfg()
    kernel = [_run("a", "kernel", 0, 100, 5000), _run("b", "kernel", 0, 7, 5000)]
    rows, ratio = fit_rows(cfg, kernel)
    assert len(rows) == 2
    assert all(r["pgmajfault"] in (0, 100) for r in rows)
    assert ratio == 3.0


def test_cli_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["calibrate", str(CONFIG), "--only", "nope"])
    assert r.exit_code == 2
    assert "no such scenario" in r.output
    r = runner.invoke(main, ["calibrate", str(CONFIG), "--only", "hotcold-40"])
    assert r.exit_code == 2
    assert "use: fit" in r.output
    bad = tmp_path / "kernel"
    bad.mkdir()
    r = runner.invoke(
        main, ["calibrate", str(CONFIG), "--from", str(bad), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2
    assert "not a calibration result" in r.output
    assert not (tmp_path / "o").exists()


def test_from_dir_round_trips_kernel_runs(tmp_path: Path) -> None:
    from dataclasses import asdict

    from sim.calibrate.run import load_kernel

    runs = [_run("a", "kernel", 0, 10, 500), _run("b", "kernel", 0, 0, 0, oom=True)]
    (tmp_path / "kernel.json").write_text(json.dumps([asdict(r) for r in runs]))
    (tmp_path / "host.json").write_text('{"overhead_kib": {"8": 1500}, "swap_rotational": true}')
    back, facts = load_kernel(tmp_path)
    assert back == runs
    assert facts.overhead_kib == {8: 1500}
    assert facts.swap_rotational


def test_preflight_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sim.calibrate import host, run, vmm

    monkeypatch.setattr(vmm, "kvm_usable", lambda: True)
    monkeypatch.setattr(vmm, "compiler", lambda: "cc")
    cg = tmp_path / "memory"
    cg.mkdir()
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "swaps").write_text("Filename Type Size Used Priority\n")
    h = host.Host(cgroup_root=cg, proc=proc, is_root=lambda: False)
    with pytest.raises(vmm.CalibrateError, match="root"):
        run.preflight(h)
    h.is_root = lambda: True
    with pytest.raises(vmm.CalibrateError, match="cgroup v1"):
        run.preflight(h)
    (cg / "memory.limit_in_bytes").write_text("max\n")
    (proc / "swaps").write_text("Filename Type Size Used Priority\n/swapfile file 1024 0 -2\n")
    with pytest.raises(vmm.CalibrateError, match="swap is already active"):
        run.preflight(h)
    (proc / "swaps").write_text("Filename Type Size Used Priority\n")
    run.preflight(h)
    monkeypatch.setattr(vmm, "kvm_usable", lambda: False)
    with pytest.raises(vmm.CalibrateError, match="/dev/kvm"):
        run.preflight(h)


def test_stats_flusher_reads_until_stopped(tmp_path: Path) -> None:
    import time

    stat = tmp_path / "memory.stat"
    stat.write_text("cache 0\n")
    with harness.stats_flusher(stat, 1.0):
        time.sleep(0.05)
        stat.unlink()  # a vanished cgroup is not an error
        time.sleep(0.01)
    with harness.stats_flusher(stat, None):
        pass


def test_swap_rotational_reads_the_devices_queue(tmp_path: Path) -> None:
    import os

    f = tmp_path / "swapfile"
    f.write_bytes(b"")
    st = f.stat()
    dev = tmp_path / "sys" / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert not harness.swap_rotational(f, tmp_path / "sys")  # unknown: not rotational
    (dev / "queue").mkdir(parents=True)
    (dev / "queue" / "rotational").write_text("1\n")
    assert harness.swap_rotational(f, tmp_path / "sys")
    (dev / "queue" / "rotational").write_text("0\n")
    assert not harness.swap_rotational(f, tmp_path / "sys")


def test_real_runs_survive_a_failure_on_memsims_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's measurements are published before memsim runs: a failure after minutes of
    real runs leaves them in OUT, and --from OUT redoes the rest."""
    from sim.calibrate import run
    from sim.calibrate.vmm import CalibrateError

    cfg = small_cfg()
    kernel = [_run("a", "kernel", i, 100, 5000) for i in range(3)]
    kernel += [_run("b", "kernel", i, 0, 0, oom=True) for i in range(3)]
    facts = harness.HostFacts({8: 1500}, False)
    monkeypatch.setattr(run, "preflight", lambda: None)
    monkeypatch.setattr(harness, "run_kernel_all", lambda *a: (kernel, facts))

    def broken(*a: object, **k: object) -> None:
        raise ConfigError("memsim refused the matching scenario")

    monkeypatch.setattr(harness, "run_sim_all", broken)
    out = tmp_path / "cal"
    with pytest.raises(CalibrateError, match="kept in .*--from"):
        run.calibrate(cfg, out, lambda s: None)
    back, facts2 = run.load_kernel(out)
    assert back == kernel
    assert facts2 == facts
    manifest = json.loads((out / "manifest.json").read_text())
    assert "kernel measurements only" in manifest["stage"]

"""The calibration's result directory: kernel against memsim, per scenario, with a figure.

Files
    ``kernel.json`` (every real run, every phase: what was measured), ``host.json`` (what
    memsim's matching mode needs of the host: the VMM's charged overhead per guest size, whether
    the swap device is rotational), ``memsim.json`` (every prediction), ``comparison.csv`` and
    ``comparison.md`` (one row per scenario: the median of the real repetitions against
    memsim), ``profile.yaml`` (the fitted cost profile),
    ``calibrate.png`` (predicted against measured), ``config.yaml`` (the calibration file as
    validated) and ``manifest.json`` (versions, kernel, command), published atomically.

What is compared
    Counters of the run phase (after the fill), where the scenarios differ; the fill phase is
    in the JSON files. Time: memsim with the fitted profile against the kernel, for every
    scenario, marked fit or check (only check rows test the profile). OOM: memsim predicts a
    kill if it kills the guest; the kernel "kills" a scenario if most repetitions were killed
    (all counts are reported).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from sim.calibrate.config import CalibrationConfig
from sim.calibrate.harness import COUNTERS, HostFacts, Run, median_run
from sim.results import write_atomic

MAJOR_TOLERANCE = 0.03
SCAN_TOLERANCE = 0.20
TIME_TOLERANCE = 0.20


def _err(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None:
        return None
    if real == 0:
        return 0.0 if sim == 0 else None
    return (sim - real) / real


def rows(
    cfg: CalibrationConfig,
    kernel: list[Run],
    sims: list[Run],
    timed: list[Run],
) -> list[dict[str, Any]]:
    """One row per scenario: kernel medians, memsim per policy, memsim timed with the profile."""
    out = []
    held = cfg.policies[0]
    for sc in cfg.scenarios:
        k = median_run([r for r in kernel if r.scenario == sc.name])
        kr = k.get("run", {})
        row: dict[str, Any] = {
            "scenario": sc.name,
            "use": sc.use,
            "limit_mib": sc.limit_mib,
            "memsw_limit_mib": sc.memsw_limit_mib,
            "kernel_runs": k["runs"],
            "kernel_oom_killed": k["oom_killed"],
            "kernel_oom": k["oom_killed"] * 2 > k["runs"],
        }
        for c in COUNTERS:
            row[f"kernel_{c}"] = kr.get(c)
        row["kernel_time_ms"] = kr["time_ns"] / 1e6 if kr else None
        for r in sims:
            if r.scenario != sc.name:
                continue
            ph = r.phase("run")
            row[f"{r.side}_oom"] = r.oom_killed
            row[f"{r.side}_pgmajfault"] = ph.counters["pgmajfault"] if ph else None
            if r.side == held:
                for c in COUNTERS:
                    row[f"memsim_{c}"] = ph.counters[c] if ph else None
        t = next((r for r in timed if r.scenario == sc.name), None)
        tph = t.phase("run") if t else None
        row["memsim_time_ms"] = tph.time_ns / 1e6 if tph else None
        row["oom_match"] = row["kernel_oom"] == row.get(f"{held}_oom")
        row["majors_err"] = _err(row.get("memsim_pgmajfault"), row["kernel_pgmajfault"])
        row["pgscan_err"] = _err(row.get("memsim_pgscan"), row["kernel_pgscan"])
        row["pgsteal_err"] = _err(row.get("memsim_pgsteal"), row["kernel_pgsteal"])
        row["time_err"] = _err(row["memsim_time_ms"], row["kernel_time_ms"])
        out.append(row)
    return out


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


def _n(x: Any) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if isinstance(x, (int, float)) else str(x)


def markdown(cfg: CalibrationConfig, table: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table (the README shows one)."""
    pols = cfg.policies
    head = (
        ["scenario", "use", "limit", "kernel majors", f"memsim ({pols[0]})", "err"]
        + [p for p in pols[1:]]
        + ["pgscan k/m", "pgsteal k/m", "OOM k/m", "time k/m (ms)", "err"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        lim = f"{r['limit_mib']}" + (f"/{r['memsw_limit_mib']}sw" if r["memsw_limit_mib"] else "")
        predicted = "yes" if r.get(f"{pols[0]}_oom") else "no"
        oom = f"{r['kernel_oom_killed']}/{r['kernel_runs']} / {predicted}"
        cells = [
            r["scenario"],
            r["use"],
            lim,
            _n(r["kernel_pgmajfault"]),
            _n(r.get("memsim_pgmajfault")),
            _pct(r["majors_err"]),
            *[_n(r.get(f"{p}_pgmajfault")) for p in pols[1:]],
            f"{_n(r['kernel_pgscan'])} / {_n(r.get('memsim_pgscan'))}",
            f"{_n(r['kernel_pgsteal'])} / {_n(r.get('memsim_pgsteal'))}",
            oom,
            f"{_n(r['kernel_time_ms'])} / {_n(r['memsim_time_ms'])}",
            _pct(r["time_err"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(table: list[dict[str, Any]]) -> dict[str, Any]:
    """How many scenarios meet each tolerance (majors 3%, pgscan/pgsteal 20%, held-out time
    20%, OOM exactly)."""
    live = [r for r in table if not r["kernel_oom"] and r["majors_err"] is not None]
    check = [r for r in live if r["use"] == "check" and r["time_err"] is not None]
    return {
        "scenarios": len(table),
        "majors_within_3pct": sum(abs(r["majors_err"]) <= MAJOR_TOLERANCE for r in live),
        "not_oom_killed": len(live),
        "pgscan_within_20pct": sum(
            r["pgscan_err"] is not None and abs(r["pgscan_err"]) <= SCAN_TOLERANCE for r in live
        ),
        "pgsteal_within_20pct": sum(
            r["pgsteal_err"] is not None and abs(r["pgsteal_err"]) <= SCAN_TOLERANCE for r in live
        ),
        "oom_matches": sum(bool(r["oom_match"]) for r in table),
        "check_time_within_20pct": sum(abs(r["time_err"]) <= TIME_TOLERANCE for r in check),
        "check_scenarios_timed": len(check),
    }


def figure(cfg: CalibrationConfig, table: list[dict[str, Any]], path: Path) -> None:
    """The comparison's figure (drawn by ``analysis``: the simulator never plots)."""
    from analysis.calibrate_figure import draw

    draw(table, list(cfg.policies), MAJOR_TOLERANCE, path)


def write(
    directory: Path,
    cfg: CalibrationConfig,
    kernel: list[Run],
    sims: list[Run],
    timed: list[Run],
    profile: dict[str, Any],
    facts: HostFacts,
) -> dict[str, Any]:
    """Write every file but the manifest into ``directory``; return the verdict."""
    table = rows(cfg, kernel, sims, timed)
    v = verdict(table)

    write_kernel(directory, cfg, kernel, facts)
    write_atomic(directory / "memsim.json", _dump(sims + timed))
    import pandas as pd

    pd.DataFrame(table).to_csv(directory / "comparison.csv", index=False)
    md = markdown(cfg, table)
    md += "\n" + "\n".join(f"- {k}: {val}" for k, val in v.items()) + "\n"
    write_atomic(directory / "comparison.md", md)
    write_atomic(directory / "profile.yaml", profile_text(profile))
    figure(cfg, table, directory / "calibrate.png")
    return v


def _dump(runs: list[Run]) -> str:
    return json.dumps([asdict(r) for r in runs], indent=1) + "\n"


def write_kernel(
    directory: Path, cfg: CalibrationConfig, kernel: list[Run], facts: HostFacts
) -> None:
    """What the real runs measured: ``kernel.json``, ``host.json`` and the ``config.yaml``
    they ran (all ``--from`` needs)."""
    write_atomic(directory / "kernel.json", _dump(kernel))
    write_atomic(directory / "host.json", json.dumps(facts.to_json(), indent=1) + "\n")
    write_atomic(
        directory / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )


def profile_text(profile: dict[str, Any]) -> str:
    """The profile file: a comment saying what made it, then the YAML."""
    head = (
        "# memsim cost profile, fitted by `memsim calibrate` on "
        f"{platform.node()} ({platform.release()}).\n"
        "# Include it in a scenario with  costs: {profile: THIS_FILE}  (the scenario's own\n"
        "# costs and swap values win). `measured` is the fit itself, for the record.\n"
    )
    return head + yaml.safe_dump(profile, sort_keys=False)

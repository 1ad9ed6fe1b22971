"""The calibration's result directory: kernel against memsim, per scenario, with a figure.

Files
    ``kernel.json`` (every real run, every phase: what was measured), ``memsim.json`` (every
    prediction), ``comparison.csv`` and ``comparison.md`` (one row per scenario: the median of
    the real repetitions against memsim), ``profile.yaml`` (the fitted cost profile),
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
from sim.calibrate.harness import COUNTERS, Run, median_run
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
    """Three panels: memsim's major faults against the kernel's (every policy), their relative
    error per scenario with the 3% band, and the run-phase time with the fitted profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.ticker import NullFormatter

    recs = []
    for r in table:
        if r["kernel_oom"] or not r["kernel_pgmajfault"]:
            continue
        for p in cfg.policies:
            v = r.get(f"{p}_pgmajfault")
            if v:
                k = r["kernel_pgmajfault"]
                recs.append(
                    {
                        "scenario": r["scenario"],
                        "kernel": k,
                        "memsim": v,
                        "policy": p,
                        "error %": 100 * (v - k) / k,
                    }
                )
    majors = pd.DataFrame(recs)
    times = pd.DataFrame(
        [
            {"kernel": r["kernel_time_ms"], "memsim": r["memsim_time_ms"], "use": r["use"]}
            for r in table
            if r["kernel_time_ms"] and r["memsim_time_ms"]
        ]
    )
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=100)
    for ax, data, hue, what, log in (
        (axes[0], majors, "policy", "major faults", False),
        (axes[2], times, "use", "run-phase time (ms)", True),
    ):
        if not data.empty:
            sns.scatterplot(data=data, x="kernel", y="memsim", hue=hue, style=hue, ax=ax, s=60)
            lo = float(min(data["kernel"].min(), data["memsim"].min())) * (0.8 if log else 0)
            hi = float(max(data["kernel"].max(), data["memsim"].max())) * 1.1
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, zorder=0)
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"kernel {what}, median of runs")
        ax.set_ylabel(f"memsim {what}")
    ax = axes[1]
    if not majors.empty:
        sns.stripplot(
            data=majors, y="scenario", x="error %", hue="policy", ax=ax, size=6, jitter=False
        )
        ax.axvspan(-100 * MAJOR_TOLERANCE, 100 * MAJOR_TOLERANCE, color="tab:green", alpha=0.15)
        ax.axvline(0, color="grey", lw=1)
        ax.legend_.remove() if ax.legend_ else None
    ax.set_title("major faults: memsim vs kernel, % (band: 3%)")
    axes[0].set_title("major faults per run phase")
    axes[2].set_title("time with the fitted cost profile")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(
    directory: Path,
    cfg: CalibrationConfig,
    kernel: list[Run],
    sims: list[Run],
    timed: list[Run],
    profile: dict[str, Any],
    overhead: dict[int, int],
) -> dict[str, Any]:
    """Write every file but the manifest into ``directory``; return the verdict."""
    table = rows(cfg, kernel, sims, timed)
    v = verdict(table)

    def dump(runs: list[Run]) -> str:
        return json.dumps([asdict(r) for r in runs], indent=1) + "\n"

    write_atomic(directory / "kernel.json", dump(kernel))
    write_atomic(directory / "memsim.json", dump(sims + timed))
    write_atomic(
        directory / "overhead.json",
        json.dumps({str(k): v for k, v in overhead.items()}, indent=1) + "\n",
    )
    import pandas as pd

    pd.DataFrame(table).to_csv(directory / "comparison.csv", index=False)
    md = markdown(cfg, table)
    md += "\n" + "\n".join(f"- {k}: {val}" for k, val in v.items()) + "\n"
    write_atomic(directory / "comparison.md", md)
    write_atomic(directory / "profile.yaml", profile_text(profile))
    write_atomic(
        directory / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    figure(cfg, table, directory / "calibrate.png")
    return v


def profile_text(profile: dict[str, Any]) -> str:
    """The profile file: a comment saying what made it, then the YAML."""
    head = (
        "# memsim cost profile, fitted by `memsim calibrate` on "
        f"{platform.node()} ({platform.release()}).\n"
        "# Include it in a scenario with  costs: {profile: THIS_FILE}  (the scenario's own\n"
        "# costs and swap values win). `measured` is the fit itself, for the record.\n"
    )
    return head + yaml.safe_dump(profile, sort_keys=False)

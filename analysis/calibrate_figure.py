"""The figure of a ``memsim calibrate`` result: memsim against the kernel.

Three panels: memsim's major faults against the kernel's per run phase (every policy), their
relative error per scenario with the tolerance band, and the run-phase time with the fitted
cost profile. ``memsim calibrate`` draws it into its result directory; this module redraws it
from a result directory's ``comparison.csv``:

    python -m analysis.calibrate_figure RESULT_DIR [-o docs/calibrate.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

TOLERANCE = 0.03


def draw(table: list[dict[str, Any]], policies: list[str], tolerance: float, path: Path) -> None:
    """Three panels: memsim's major faults against the kernel's (every policy), their relative
    error per scenario with the tolerance band, and the run-phase time with the fitted profile."""
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
        for p in policies:
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
        ax.axvspan(-100 * tolerance, 100 * tolerance, color="tab:green", alpha=0.15)
        ax.axvline(0, color="grey", lw=1)
        ax.legend_.remove() if ax.legend_ else None
    ax.set_title(f"major faults: memsim vs kernel, % (band: {100 * tolerance:.0f}%)")
    axes[0].set_title("major faults per run phase")
    axes[2].set_title("time with the fitted cost profile")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Redraw ``calibrate.png`` from a calibration result directory."""
    ap = argparse.ArgumentParser(prog="python -m analysis.calibrate_figure", description=__doc__)
    ap.add_argument("result_dir", type=Path)
    ap.add_argument("-o", "--out", type=Path, help="PNG (default: RESULT_DIR/calibrate.png)")
    args = ap.parse_args(argv)
    import pandas as pd

    try:
        df = pd.read_csv(args.result_dir / "comparison.csv")
        policies = yaml.safe_load((args.result_dir / "config.yaml").read_text())["policies"]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        print(f"error: {args.result_dir}: not a calibration result ({exc})", file=sys.stderr)
        return 2
    table = df.astype(object).where(df.notna(), None).to_dict("records")
    out = args.out or args.result_dir / "calibrate.png"
    draw(table, policies, TOLERANCE, out)
    print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

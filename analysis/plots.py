"""Seaborn figures from run directories."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.load import Run, fault_rate  # noqa: E402


def compare_runs(runs: Sequence[tuple[str, Run]], bin_ms: float = 100.0) -> plt.Figure:
    """Free memory against the watermarks, and major faults per second, for labelled runs."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_free, ax_major) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    frames, rates = [], []
    for label, run in runs:
        tl = run.table("timeline").drop_duplicates("t_ns")
        page_mib = 4096 / 2**20
        frames.append(
            pd.DataFrame(
                {
                    "t_s": tl.t_ns / 1e9,
                    "free MiB": tl.free_pages * page_mib,
                    "run": label,
                }
            )
        )
        r = fault_rate(run, "major", bin_ms).groupby("t_s", as_index=False).rate_per_s.sum()
        r["run"] = label
        rates.append(r)
        wm = tl.iloc[-1]
    sns.lineplot(data=pd.concat(frames), x="t_s", y="free MiB", hue="run", ax=ax_free, lw=1)
    for name, style in (("wmark_min", ":"), ("wmark_low", "--"), ("wmark_high", "-.")):
        ax_free.axhline(
            wm[name] * page_mib,
            color="grey",
            ls=style,
            lw=1,
            label=name.replace("wmark_", "") + " watermark",
        )
    ax_free.set(
        xlabel="simulated time (s)",
        ylabel="free host memory (MiB)",
        title="Free memory against the watermarks",
        ylim=(0, 2.5 * wm["wmark_high"] * page_mib),
    )
    ax_free.legend(fontsize="small")
    sns.lineplot(data=pd.concat(rates), x="t_s", y="rate_per_s", hue="run", ax=ax_major, lw=1)
    ax_major.set(
        xlabel="simulated time (s)", ylabel="major faults / s (all VMs)", title="Guest major faults"
    )
    return fig

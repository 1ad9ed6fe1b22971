"""Figures about the guest's side: what two levels of reclaim cost each other.

They read a sweep directory: the variants from ``runs.parquet``, every count from each run's
``summary.json`` (the host's ``vmstat_after_warmup``, each VM's ``guest`` counts: the guest's
own vmstat and memsim's VSwapper counters, all from the warm-up's end).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.load import Run  # noqa: E402

VSWAPPER = ("double_paging", "stale_swap_reads", "false_swap_reads")


def double_paging_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run: the guests' accesses per second, swap I/O at each level, and the host
    swap-ins the two levels caused each other (VSwapper's counters), all after the warm-up."""
    rows = []
    for label, run in runs:
        s = run.summary
        vs = s["host"].get("vmstat_after_warmup", s["host"]["vmstat"])
        vms = s["vms"]
        if not any("guest" in vm for vm in vms):
            raise ValueError(f"{run.path}: no guest kernel in this run (set vms[].guest)")
        secs = max(s["sim_time_ns"] - round(run.config.get("warmup_s", 0) * 1e9), 1) / 1e9

        def guest(key: str, vms: list = vms) -> int:
            return sum(vm.get("guest", {}).get(key, 0) for vm in vms)

        rows.append(
            {
                "variant": label,
                "seed": int(run.config.get("seed", 0)),
                "accesses/s": sum(vm["accesses"] for vm in vms) / secs,
                "host swap-ins": vs["pswpin"],
                "host swap-outs": vs["pswpout"],
                "guest swap-ins": guest("pswpin"),
                "guest swap-outs": guest("pswpout"),
                **{k: guest(k) for k in VSWAPPER},
            }
        )
    t = pd.DataFrame(rows)
    t["swap I/O, both levels"] = t[
        ["host swap-ins", "host swap-outs", "guest swap-ins", "guest swap-outs"]
    ].sum(axis=1)
    return t


def double_paging_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """Throughput, swap I/O by level, and the host swap-ins one level caused the other, per
    variant (mean over seeds, with their 95% CI)."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = double_paging_table(runs)
    order = list(dict.fromkeys(t["variant"]))
    fig, (ax_a, ax_io, ax_w) = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    sns.barplot(data=t, x="variant", y="accesses/s", order=order, ax=ax_a, color="#4c72b0")
    ax_a.set(xlabel="", title="Guest throughput")
    io = t.groupby("variant", sort=False)[
        ["host swap-ins", "host swap-outs", "guest swap-ins", "guest swap-outs"]
    ].mean()
    io.loc[order].plot.bar(
        stacked=True,
        ax=ax_io,
        rot=0,
        width=0.7,
        color=["#c44e52", "#e8a0a2", "#55a868", "#a6d6b0"],
    )
    ax_io.set(xlabel="", ylabel="pages (mean over seeds)", title="Swap I/O by level")
    ax_io.legend(fontsize="small")
    w = t.groupby("variant", sort=False)[list(VSWAPPER)].mean().loc[order]
    w.columns = ["double paging", "stale swap reads", "false swap reads"]
    w.plot.bar(ax=ax_w, rot=0, width=0.7, color=["#8172b2", "#ccb974", "#64b5cd"])
    ax_w.set(xlabel="", ylabel="host swap-ins (mean over seeds)", title="Work one level")
    ax_w.set_title("Host swap-ins the guest caused")
    ax_w.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig

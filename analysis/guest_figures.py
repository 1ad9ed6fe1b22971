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
from analysis.report_figures import PAGE_MIB  # noqa: E402

IO = [
    "host swap-ins",
    "host swap-outs",
    "guest swap-ins",
    "guest swap-outs",
    "guest page-cache reads",
]
VSWAPPER = ("double_paging", "stale_swap_reads", "false_swap_reads", "silent_swap_writes")


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
                "guest page-cache reads": guest("pgpgin") // 4,
                **{k: guest(k) for k in VSWAPPER},
            }
        )
    t = pd.DataFrame(rows)
    t["I/O, both levels"] = t[IO].sum(axis=1)
    return t


def double_paging_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """Throughput, swap I/O by level, and the host swap-ins one level caused the other, per
    variant (mean over seeds, with their 95% CI)."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = double_paging_table(runs)
    t["variant"] = (
        t["variant"].str.replace(", one slow device", "\n1 slow disk").str.replace(", ", "\n")
    )
    order = list(dict.fromkeys(t["variant"]))
    wide = 13 if len(order) <= 3 else 17
    fig, (ax_a, ax_io, ax_w) = plt.subplots(1, 3, figsize=(wide, 4.6), constrained_layout=True)
    sns.barplot(data=t, x="variant", y="accesses/s", order=order, ax=ax_a, color="#4c72b0")
    ax_a.set(xlabel="", title="Guest throughput")
    io = t.groupby("variant", sort=False)[IO].mean()
    io.loc[order].plot.bar(
        stacked=True,
        ax=ax_io,
        rot=0,
        width=0.7,
        color=["#c44e52", "#e8a0a2", "#55a868", "#a6d6b0", "#8fbcd4"],
    )
    ax_io.set(xlabel="", ylabel="pages (mean over seeds)", title="Disk I/O by level")
    ax_io.legend(fontsize="small")
    w = t.groupby("variant", sort=False)[list(VSWAPPER)].mean().loc[order]
    w.columns = ["double paging", "stale swap reads", "false swap reads", "silent swap writes"]
    w.plot.bar(ax=ax_w, rot=0, width=0.7, color=["#8172b2", "#ccb974", "#64b5cd", "#937860"])
    ax_w.set(xlabel="", ylabel="host I/O (mean over seeds)")
    ax_w.set_title("Host I/O the two levels cause each other")
    ax_w.legend(fontsize="small")
    for ax in (ax_a, ax_io, ax_w):
        ax.tick_params(axis="x", labelsize="small")
    ax_io.legend(fontsize="x-small", loc="upper right")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def balloon_series(run: Run) -> pd.DataFrame:
    """The balloon manager's records as a tidy table: t_s, vm, balloon pages held (empty
    without a manager)."""
    recs = run.summary["host"].get("mom", {}).get("records", [])
    if not recs:
        return pd.DataFrame(columns=["t_s", "vm", "balloon MiB"])
    t = pd.DataFrame(recs)
    return pd.DataFrame(
        {"t_s": t["t_ns"] / 1e9, "vm": t["vm"], "balloon MiB": t["held"] * PAGE_MIB}
    )


def balloon_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per run and VM: its major faults at both levels (KVM's, read back by the host;
    the guest's own), its stall and its accesses, all after the warm-up."""
    rows = []
    for label, run in runs:
        for vm in run.summary["vms"]:
            g = vm.get("guest", {})
            rows.append(
                {
                    "variant": label,
                    "seed": int(run.config.get("seed", 0)),
                    "vm": vm["name"],
                    "host major faults": vm["faults"]["major"],
                    "guest major faults": g.get("pgmajfault", 0),
                    "false swap reads": g.get("false_swap_reads", 0),
                    "stall %": 100 * vm["stall_fraction"],
                    "accesses": vm["accesses"],
                    "balloon MiB at end": vm.get("guest_memory", {}).get("balloon", 0) * PAGE_MIB,
                }
            )
    return pd.DataFrame(rows)


def balloon_figure(runs: list[tuple[str, Run]], title: str = "") -> plt.Figure:
    """The balloon sizes the manager set over time (the first variant with a manager, first
    seed), the major faults of all VMs at each level per variant, and each VM's accesses per
    variant (means over seeds)."""
    sns.set_theme(style="whitegrid", context="notebook")
    t = balloon_table(runs)
    order = list(dict.fromkeys(t["variant"]))
    fig, (ax_b, ax_f, ax_a) = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    managed = next(((label, run) for label, run in runs if len(balloon_series(run))), None)
    if managed is not None:
        label, run = managed
        for vm, part in balloon_series(run).groupby("vm", sort=False):
            ax_b.step(part["t_s"], part["balloon MiB"], where="post", label=str(vm))
        ax_b.legend(fontsize="small")
        ax_b.set_title(f"Balloon the manager set ({label})")
    else:
        ax_b.set_title("Balloon the manager set (none)")
    ax_b.set(xlabel="time (s)", ylabel="balloon (MiB)")
    per_run = t.groupby(["variant", "seed"], sort=False)[
        ["host major faults", "guest major faults"]
    ].sum()
    faults = per_run.groupby("variant", sort=False).mean().loc[order] / 1e6
    faults.columns = ["host (KVM faults read back)", "guest (its own swap-ins)"]
    faults.index = [v.replace(" + ", "\n+ ") for v in faults.index]
    faults.plot.bar(stacked=True, ax=ax_f, rot=0, width=0.7, color=["#c44e52", "#55a868"])
    ax_f.set(xlabel="", ylabel="major faults, all VMs (millions)", title="Faults at each level")
    ax_f.legend(fontsize="small")
    a = t.assign(**{"accesses (millions)": t["accesses"] / 1e6})
    sns.barplot(data=a, x="vm", y="accesses (millions)", hue="variant", hue_order=order, ax=ax_a)
    ax_a.set(xlabel="", title="Work done by each VM")
    ax_a.legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig

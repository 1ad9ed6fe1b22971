"""Figures of ``memsim report``: seaborn, titled, with units on the axes, one function each.

Each takes DataFrames read from result files (the timeline, evictions, a sweep's runs table)
and returns a matplotlib Figure; ``analysis.report`` decides which apply and embeds them.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

PAGE_MIB = 4096 / 2**20  # a page of a run (4 KiB; THPs are counted in their 4 KiB pages)
MAX_POINTS = 200  # timeline samples per curve (rates are taken over the coarser steps)
SWEEP_METRICS = [
    ("stall_fraction", "vCPU stall fraction (all VMs)"),
    ("faults_major", "major faults (all VMs)"),
    ("misses", "misses (first-touch + major faults)"),
    ("pswpout", "pages swapped out"),
    ("opt_gap", "misses / OPT misses"),
    ("lru_gap", "misses / exact-LRU misses"),
    ("memcg_worst_stall_fraction", "vCPU stall fraction (worst memcg VM)"),
    ("memcg_max", "memory.max events (all VMs)"),
]


def _thin(tl: pd.DataFrame) -> pd.DataFrame:
    """Keep at most MAX_POINTS sample times, so rates are taken over readable steps."""
    times = np.sort(tl.t_ns.unique())
    stride = max(1, math.ceil(len(times) / MAX_POINTS))
    return tl[tl.t_ns.isin(times[::stride])]


def _rates(tl: pd.DataFrame, cols: list[str], by_vm: bool = True) -> pd.DataFrame:
    """Per-second rates of cumulative timeline columns (tidy: t_s, vm, column, rate)."""
    tl = _thin(tl)
    if not by_vm:
        tl = tl.drop_duplicates("t_ns").assign(vm="host")
    out = []
    for vm, g in tl.groupby(tl.vm.astype(str), sort=False):
        g = g.sort_values("t_ns")
        dt = g.t_ns.diff() / 1e9
        for c in cols:
            out.append(
                pd.DataFrame(
                    {"t_s": g.t_ns / 1e9, "vm": vm, "what": c, "rate": g[c].diff() / dt}
                ).dropna()
            )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def mark_warmup(ax: plt.Axes, warmup_s: float) -> None:
    """Shade the warm-up on a time axis: what the summary's figures leave out."""
    if warmup_s > 0:
        ax.axvspan(0, warmup_s, color="grey", alpha=0.15, lw=0, label="warm-up")


def fault_figure(tl: pd.DataFrame, name: str, warmup_s: float = 0.0) -> plt.Figure:
    """Major faults and refaults per second, per VM, over simulated time."""
    rates = _rates(tl, ["faults_major", "refaults"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True, sharey=True)
    for ax, (col, title) in zip(
        axes,
        [
            ("faults_major", "Major faults (page read back from swap)"),
            ("refaults", "Refaults (evicted page needed again)"),
        ],
        strict=True,
    ):
        sub = rates[rates.what == col]
        sns.lineplot(data=sub, x="t_s", y="rate", hue="vm", ax=ax, lw=1)
        mark_warmup(ax, warmup_s)
        ax.set(xlabel="simulated time (s)", ylabel="per second, per VM", title=title)
        ax.legend(fontsize="small", title="VM")
    fig.suptitle(f"{name}: guest fault and refault rates", fontsize="medium")
    return fig


def free_memory_figure(
    tl: pd.DataFrame, name: str, mib: float = PAGE_MIB, warmup_s: float = 0.0
) -> plt.Figure:
    """Free host memory against the min/low/high watermarks, and each VM's resident memory
    (``mib``: MiB per page)."""
    host = tl.drop_duplicates("t_ns").sort_values("t_ns")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax.plot(host.t_ns / 1e9, host.free_pages * mib, color="#4c72b0", lw=1.2, label="free")
    last = host.iloc[-1]
    title = "Free memory against the watermarks (zoomed)"
    if last["wmark_high"] > 0:
        for col, style in (("wmark_min", ":"), ("wmark_low", "--"), ("wmark_high", "-.")):
            ax.axhline(last[col] * mib, color="grey", ls=style, lw=1, label=col[6:] + " watermark")
        top = max(2.5 * last["wmark_high"], float(host.free_pages.quantile(0.05))) * mib
    else:  # demand mode: exactly N frames, no watermarks
        title = "Free memory (demand mode: no watermarks)"
        top = max(1.0, float(host.free_pages.max())) * mib * 1.05
    ax.set(
        xlabel="simulated time (s)",
        ylabel="free host memory (MiB)",
        title=title,
        ylim=(0, top),
    )
    mark_warmup(ax, warmup_s)
    ax.legend(fontsize="small")
    res = tl.assign(resident_mib=tl.resident_pages * mib, t_s=tl.t_ns / 1e9)
    sns.lineplot(data=res, x="t_s", y="resident_mib", hue=res.vm.astype(str), ax=ax2, lw=1)
    mark_warmup(ax2, warmup_s)
    ax2.set(
        xlabel="simulated time (s)", ylabel="resident guest memory (MiB)", title="Resident per VM"
    )
    ax2.legend(fontsize="small", title="VM")
    fig.suptitle(f"{name}: host memory", fontsize="medium")
    return fig


def kswapd_figure(tl: pd.DataFrame, name: str, warmup_s: float = 0.0) -> plt.Figure:
    """Pages scanned and reclaimed per second (kswapd and global direct reclaim: the host's
    pgscan_kswapd/_direct leave memcg limit reclaim out, as the kernel's), kswapd busy time."""
    cols = ["pgscan_kswapd", "pgsteal_kswapd", "pgscan_direct", "pgsteal_direct", "pswpin"]
    rates = _rates(tl, [*cols, "kswapd_busy_ns"], by_vm=False)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    sub = rates[rates.what.isin(cols)]
    sns.lineplot(data=sub, x="t_s", y="rate", hue="what", hue_order=cols, ax=ax, lw=1)
    mark_warmup(ax, warmup_s)
    ax.set(
        xlabel="simulated time (s)",
        ylabel="pages per second",
        title="Pages scanned, reclaimed, swapped in",
    )
    ax.legend(fontsize="small")
    busy = rates[rates.what == "kswapd_busy_ns"]
    ax2.plot(busy.t_s, 100 * busy.rate / 1e9, color="#c44e52", lw=1)
    mark_warmup(ax2, warmup_s)
    ax2.set(
        xlabel="simulated time (s)",
        ylabel="kswapd busy (% of one CPU)",
        title="kswapd activity",
        ylim=(0, 105),
    )
    fig.suptitle(f"{name}: reclaim", fontsize="medium")
    return fig


def memcg_limits(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each VM with a ``memcg`` section in ``summary.json``: its memcg block (limits, events)."""
    return {v["name"]: v["memcg"] for v in summary["vms"] if v.get("memcg")}


def memcg_figure(
    tl: pd.DataFrame,
    limits: dict[str, dict[str, Any]],
    name: str,
    mib: float = PAGE_MIB,
    warmup_s: float = 0.0,
) -> plt.Figure:
    """Each memcg VM's memory.current over time against its memory.max (dashed) and
    memory.high (dotted), one colour per VM (``mib``: MiB per page)."""
    fig, ax = plt.subplots(figsize=(11, 3.8), constrained_layout=True)
    colours = sns.color_palette(n_colors=max(1, len(limits)))
    vm = tl.vm.astype(str)
    for colour, (vm_name, cg) in zip(colours, limits.items(), strict=False):
        g = tl[vm == vm_name].sort_values("t_ns")
        ax.plot(g.t_ns / 1e9, g.memory_current_pages * mib, color=colour, lw=1.2, label=vm_name)
        for key, style in (("max_pages", "--"), ("high_pages", ":")):
            if cg.get(key) is not None:
                lim = cg[key] * mib
                ax.axhline(lim, color=colour, ls=style, lw=1, label=f"{vm_name} {key[:-6]}")
    mark_warmup(ax, warmup_s)
    ax.set(
        xlabel="simulated time (s)",
        ylabel="memory.current (MiB)",
        title="memory.current against memory.max (dashed) and memory.high (dotted)",
        ylim=(0, None),
    )
    ax.legend(fontsize="small", ncols=2)
    fig.suptitle(f"{name}: memory cgroups", fontsize="medium")
    return fig


def idle_age_figure(ev: pd.DataFrame, name: str) -> plt.Figure:
    """How long evicted pages had been idle, split by whether they came back (refaulted)."""
    ev = ev.sample(min(len(ev), 200_000), random_state=0) if len(ev) > 200_000 else ev
    df = pd.DataFrame(
        {
            "idle_ms": np.maximum(ev.idle_ns.to_numpy() / 1e6, 0.01),
            "evicted page": np.where(ev.refault.to_numpy(), "refaulted later", "not refaulted"),
            "vm": ev.vm.astype(str).to_numpy(),
        }
    )
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    sns.histplot(
        data=df,
        x="idle_ms",
        hue="evicted page",
        hue_order=["not refaulted", "refaulted later"],
        log_scale=True,
        bins=50,
        multiple="stack",
        ax=ax,
    )
    ax.set(
        xlabel="idle time at eviction (ms, log scale)",
        ylabel="evictions",
        title="Idle age of evicted pages",
    )
    sns.ecdfplot(data=df, x="idle_ms", hue="vm", log_scale=True, ax=ax2)
    ax2.set(
        xlabel="idle time at eviction (ms, log scale)",
        ylabel="share of the VM's evictions",
        title="Per VM (cumulative)",
    )
    fig.suptitle(f"{name}: eviction idle-age distribution", fontsize="medium")
    return fig


def quality_figure(summary: dict[str, Any]) -> plt.Figure:
    """Misses of the run's policy against exact LRU and Belady's OPT on the same string."""
    q = summary["quality"]
    df = pd.DataFrame(
        {
            "policy": [f"{summary['policy']} (this run)", "exact LRU", "OPT (Belady)"],
            "misses": [q["faults"], q["lru_faults"], q["opt_faults"]],
        }
    )
    fig, ax = plt.subplots(figsize=(7.5, 2.8), constrained_layout=True)
    sns.barplot(data=df, y="policy", x="misses", color="#4c72b0", ax=ax)
    for i, v in enumerate(df.misses):
        ax.text(v, i, f" {v:,} ({v / q['opt_faults']:.2f}x OPT)", va="center", fontsize="small")
    ax.set(
        xlabel="misses (same reference string, same memory)",
        ylabel="",
        title=f"{summary['name']}: eviction quality against exact LRU and OPT",
        xlim=(0, 1.35 * df.misses.max()),
    )
    return fig


def swept_params(runs: pd.DataFrame) -> list[str]:
    """Swept parameters: the columns between ``label`` and ``run`` (seed aside) that vary."""
    cols = list(runs.columns)
    if "label" not in cols or "run" not in cols:
        return []
    between = cols[cols.index("label") + 1 : cols.index("run")]
    return [c for c in between if c != "seed" and runs[c].astype(str).nunique() > 1]


def sweep_figure(runs: pd.DataFrame, name: str) -> plt.Figure:
    """Key metrics against the swept parameters, with 95% confidence bands over seeds.

    One numeric parameter: lines with bands; two numeric parameters: heatmaps of the mean;
    otherwise bars per label with confidence intervals.
    """
    ok = runs[runs.status != "failed"]
    metrics = [  # all-zero columns (stall in demand mode, say) say nothing
        (m, d) for m, d in SWEEP_METRICS if m in ok.columns and ok[m].fillna(0).abs().sum() > 0
    ]
    params = swept_params(ok)
    numeric = [p for p in params if pd.api.types.is_numeric_dtype(ok[p]) and ok[p].dtype != bool]
    n = len(metrics)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    heat = len(params) == 2 and len(numeric) == 2
    bars = not heat and not (len(params) == 1 and numeric)
    height = (0.35 * ok.label.nunique() + 1.4) if bars else 3.4
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols, height * nrows), constrained_layout=True, squeeze=False
    )
    for i, (ax, (m, desc)) in enumerate(zip(axes.flat, metrics, strict=False)):
        if heat:
            grid = ok.pivot_table(index=params[0], columns=params[1], values=m, aggfunc="mean")
            labels = grid.map(lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")
            sns.heatmap(grid, annot=labels, fmt="", cmap="rocket_r", ax=ax, cbar=False)
            ax.set(title=f"{desc} (mean over seeds)")
        elif not bars:
            sns.lineplot(data=ok, x=params[0], y=m, marker="o", errorbar=("ci", 95), ax=ax)
            ax.set(xlabel=params[0], ylabel=desc, title=desc)
        else:
            order = list(dict.fromkeys(ok.label))
            many = ok.duplicated("label").any()
            sns.barplot(
                data=ok,
                y="label",
                x=m,
                order=order,
                color="#4c72b0",
                errorbar=("ci", 95) if many else None,
                ax=ax,
            )
            ax.set(xlabel=desc, ylabel="", title=desc)
            if i % ncols:  # labels on the first column only
                ax.set_yticklabels([])
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    seeds = ok.seed.nunique() if "seed" in ok.columns else 1
    fig.suptitle(f"{name}: {len(ok)} runs, {seeds} seed(s) per point", fontsize="medium")
    return fig

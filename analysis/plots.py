"""Seaborn figures from run directories."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.load import Run, fault_rate  # noqa: E402
from analysis.report_figures import PAGE_MIB, mark_warmup  # noqa: E402
from sim.results import FRACTION_METRICS  # noqa: E402


def compare_runs(runs: Sequence[tuple[str, Run]], bin_ms: float = 100.0) -> plt.Figure:
    """Free memory against the watermarks, and major faults per second, for labelled runs."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_free, ax_major) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    frames, rates = [], []
    for label, run in runs:
        tl = run.table("timeline").drop_duplicates("t_ns")
        frames.append(
            pd.DataFrame(
                {
                    "t_s": tl.t_ns / 1e9,
                    "free MiB": tl.free_pages * PAGE_MIB,
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
            wm[name] * PAGE_MIB,
            color="grey",
            ls=style,
            lw=1,
            label=name.replace("wmark_", "") + " watermark",
        )
    ax_free.set(
        xlabel="simulated time (s)",
        ylabel="free host memory (MiB)",
        title="Free memory against the watermarks",
        ylim=(0, 2.5 * wm["wmark_high"] * PAGE_MIB),
    )
    ax_free.legend(fontsize="small")
    sns.lineplot(data=pd.concat(rates), x="t_s", y="rate_per_s", hue="run", ax=ax_major, lw=1)
    ax_major.set(
        xlabel="simulated time (s)", ylabel="major faults / s (all VMs)", title="Guest major faults"
    )
    warm = max(run.summary.get("warmup_ns", 0) for _, run in runs) / 1e9
    for ax in (ax_free, ax_major):  # the longest warm-up of the runs compared
        mark_warmup(ax, warm)
    return fig


def stall_windows(run: Run, window_ms: float = 100.0) -> pd.DataFrame:
    """Each VM's vCPU stall fraction per window of ``window_ms`` (tidy: t_s, vm, stall,
    resident MiB), from the timeline's cumulative ``stall_ns`` over the VM's vCPU time."""
    tl = run.table("timeline")
    vcpus = {v["name"]: v["vcpus"] for v in run.summary["vms"]}
    win_ns = int(window_ms * 1e6)
    tl = tl[tl.t_ns % win_ns == 0]
    out = []
    for vm, g in tl.groupby(tl.vm.astype(str), observed=True):
        g = g.sort_values("t_ns")
        dt = g.t_ns.diff() * vcpus[vm]
        out.append(
            pd.DataFrame(
                {
                    "t_s": g.t_ns / 1e9,
                    "vm": vm,
                    "stall": g.stall_ns.diff() / dt,
                    "resident MiB": g.resident_pages * PAGE_MIB,
                }
            ).iloc[1:]
        )
    return pd.concat(out, ignore_index=True)


def protection_figure(runs: Sequence[tuple[str, Run]], window_ms: float = 100.0) -> plt.Figure:
    """Per-VM stall per window and resident memory, for labelled runs (e.g. with and without
    a memcg's memory.low): who pays for reclaim, and who keeps its pages."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_stall, ax_res) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    frames = []
    for label, run in runs:
        df = stall_windows(run, window_ms)
        df["run"] = label
        frames.append(df)
    data = pd.concat(frames, ignore_index=True)
    data["stall %"] = 100 * data["stall"]
    sns.lineplot(data=data, x="t_s", y="stall %", hue="vm", style="run", ax=ax_stall, lw=1)
    ax_stall.set(
        xlabel="simulated time (s)",
        ylabel=f"vCPU time stalled per {window_ms:g} ms (%)",
        title="Stall per window",
    )
    sns.lineplot(data=data, x="t_s", y="resident MiB", hue="vm", style="run", ax=ax_res, lw=1)
    ax_res.set(xlabel="simulated time (s)", ylabel="resident guest memory (MiB)", title="Resident")
    for ax in (ax_stall, ax_res):
        ax.legend(fontsize="small")
    return fig


def mrc_figure(curves: pd.DataFrame, title: str = "") -> plt.Figure:
    """Miss ratio against memory size: exact LRU as a curve, other policies at their sizes."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    lru = curves[curves.policy == "lru"]
    ax.plot(lru.frames, lru.miss_ratio, color="black", lw=1.5, label="lru (exact, all sizes)")
    others = curves[curves.policy != "lru"]
    if len(others):
        sns.lineplot(
            data=others,
            x="frames",
            y="miss_ratio",
            hue="policy",
            style="policy",
            markers=True,
            dashes=False,
            ax=ax,
        )
    ax.set(
        xscale="log",
        xlabel="memory (frames)",
        ylabel="miss ratio",
        title=title or "Miss-ratio curves",
    )
    ax.legend(fontsize="small")
    return fig


def policies_figure(
    runs: pd.DataFrame, idle: pd.DataFrame | None = None, title: str = ""
) -> plt.Figure:
    """Each variant's misses relative to OPT (bars), and the idle-age rank of its evictions.

    ``runs`` is a sweep's ``runs.parquet`` (label, opt_gap); ``idle`` optionally has columns
    ``label`` and ``idle_rank`` (a sample of each run's evictions).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    ok = runs[runs.status != "failed"].copy()
    order = ok.sort_values("opt_gap").label.tolist()
    ncols = 2 if idle is not None and len(idle) else 1
    fig, axes = plt.subplots(
        1,
        ncols,
        figsize=(6.5 * ncols, 0.45 * len(order) + 1.6),
        constrained_layout=True,
        squeeze=False,
    )
    ax = axes[0][0]
    sns.barplot(
        data=ok,
        y="label",
        x="opt_gap",
        order=order,
        color="#4c72b0",
        ax=ax,
        errorbar=("ci", 95) if ok.duplicated("label").any() else None,
    )
    ax.axvline(1.0, color="black", lw=1)
    for i, lab in enumerate(order):
        v = ok[ok.label == lab].opt_gap.mean()
        ax.text(v, i, f" {v:.2f}", va="center", fontsize="small")
    ax.set(
        xlabel="misses / OPT misses (same string, same memory)",
        ylabel="",
        title=title or "Eviction quality against Belady's OPT",
    )
    if ncols == 2:
        ax2 = axes[0][1]
        sns.boxplot(
            data=idle, y="label", x="idle_rank", order=order, color="#dd8452", fliersize=0, ax=ax2
        )
        ax2.set(
            xlabel="idle-age rank of evicted pages (1 = coldest)",
            ylabel="",
            title="Were the evicted pages the cold ones?",
            xlim=(0, 1.02),
        )
        ax2.set_yticklabels([])
    return fig


STATUS_COLORS = {"pass": "#55a868", "uncertain": "#dd8452", "fail": "#c44e52"}


def capacity_figure(plan: dict[str, Any], runs: pd.DataFrame) -> plt.Figure:
    """The SLO metric against the searched variable: every seed's run, the mean with its
    confidence interval per evaluated value (coloured pass/uncertain/fail), the SLO line and
    the answer.

    ``plan`` is ``plan.json``; ``runs`` is ``plan.parquet`` (one row per run).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    var, metric = plan["variable"], plan["slo"]["metric"]
    scale = 100.0 if metric in FRACTION_METRICS else 1.0
    unit = " (%)" if scale == 100.0 else ""
    ev = pd.DataFrame(plan["evaluated"]).sort_values("value")
    fig, ax = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    finite = ev.dropna(subset=["mean"])
    ax.fill_between(
        finite.value,
        finite.low * scale,
        finite.high * scale,
        color="#4c72b0",
        alpha=0.18,
        lw=0,
        label=f"{plan['confidence']:.0%} CI over {len(plan['seeds'])} seeds",
    )
    ax.plot(finite.value, finite["mean"] * scale, color="#4c72b0", lw=1.5, label="mean")
    pts = runs.assign(y=runs[metric] * scale)
    sns.scatterplot(data=pts, x=var, y="y", color="black", s=14, alpha=0.6, ax=ax, label="one seed")
    for status, color in STATUS_COLORS.items():
        sub = finite[finite.status == status]
        if len(sub):
            ax.scatter(sub.value, sub["mean"] * scale, s=70, color=color, zorder=3, label=status)
    ax.axhline(plan["slo"]["max"] * scale, color="black", ls="--", lw=1, label="SLO")
    if plan["answer"] is not None:
        ax.axvline(plan["answer"], color=STATUS_COLORS["pass"], lw=1.2, ls=":")
        ax.annotate(
            f"answer: {plan['answer']:g}",
            (plan["answer"], plan["slo"]["max"] * scale),
            xytext=(4, 6),
            textcoords="offset points",
            fontsize="small",
            color="#2d6a3e",
        )
    label = {
        "vms": "VMs on the host",
        "host.memory_mib": "host memory (MiB)",
        "overcommit": "overcommit (guest RAM / host memory)",
        "memcg.max_mib": "memory.max per VM (MiB)",
    }.get(var, var)
    ax.set(
        xlabel=label,
        ylabel=textwrap.fill(f"{plan['slo']['description']}{unit}", 38),
        title=f"{plan['name']}: {metric} against {label.split(' (')[0]} (SLO ≤ "
        f"{plan['slo']['max'] * scale:g}{'%' if scale == 100.0 else ''})",
    )
    if var == "vms":
        ax.xaxis.get_major_locator().set_params(integer=True)
    # the curve falls to the right when smaller values are harder: keep the legend off it
    corner = "upper right" if plan.get("direction") == "smaller is harder" else "upper left"
    ax.legend(fontsize="small", loc=corner)
    return fig


def overcommit_figure(runs: pd.DataFrame, title: str = "") -> plt.Figure:
    """Major faults per second and vCPU stall against overcommit, per policy, notifiers on
    (solid) and off (dashed); the band is the 95% CI over seeds.

    ``runs`` is a sweep's ``runs.parquet``: ``overcommit``, ``policy``, ``major_faults_per_s``,
    ``stall_fraction`` and the swept ``kvm.mmu_notifiers`` column (absent: all on).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    ok = runs[runs.status != "failed"].copy()
    on = ok["kvm.mmu_notifiers"] if "kvm.mmu_notifiers" in ok.columns else True
    ok["notifiers"] = pd.Series(on, index=ok.index).map({True: "on", False: "off"})
    ok["stall %"] = 100 * ok.stall_fraction
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, y, label in (
        (axes[0], "major_faults_per_s", "major faults / s (all guests)"),
        (axes[1], "stall %", "vCPU time stalled (%)"),
    ):
        sns.lineplot(
            data=ok,
            x="overcommit",
            y=y,
            hue="policy",
            style="notifiers",
            style_order=["on", "off"],
            markers=True,
            errorbar=("ci", 95),
            ax=ax,
        )
        ax.set(xlabel="overcommit (guest RAM / host memory)", ylabel=label)
    axes[1].get_legend().remove()
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig

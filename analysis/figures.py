"""Render the README's figures from run directories.

python -m analysis.figures notifiers RUN_ON RUN_OFF [-o docs/notifiers.png]
python -m analysis.figures policies SWEEP_DIR [-o docs/policies.png]
python -m analysis.figures overcommit SWEEP_DIR [-o docs/sweep_overcommit.png]
python -m analysis.figures protection RUN_A RUN_B [--labels A,B] [-o docs/noisy_neighbour.png]
python -m analysis.figures limit RUN_A RUN_B [--labels A,B] [-o docs/memcg_limit.png]
python -m analysis.figures zswap SWEEP_DIR [-o docs/zswap.png]
python -m analysis.figures swappiness SWEEP_DIR [-o docs/swappiness.png]
python -m analysis.figures double_paging SWEEP_DIR [-o docs/double_paging.png]
python -m analysis.figures balloon SWEEP_DIR [-o docs/balloon.png]
python -m analysis.figures rmap_off SWEEP_DIR [-o docs/rmap_off.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.guest_figures import balloon_figure, double_paging_figure
from analysis.host_figures import (
    ksm_figure,
    rmap_off_figure,
    swappiness_figure,
    sweep_runs,
    thp_figure,
    zswap_figure,
)
from analysis.load import load_run
from analysis.plots import compare_runs, overcommit_figure, policies_figure, protection_figure

SWEEP_FIGURES = {  # figure: (help, default output), each drawn from one sweep directory
    "policies": ("a policy sweep: misses relative to OPT, idle ranks", "docs/policies.png"),
    "overcommit": ("an overcommit sweep: major faults and stall", "docs/sweep_overcommit.png"),
    "zswap": ("a swap-target sweep: fault sources, stall, kswapd CPU", "docs/zswap.png"),
    "swappiness": ("a swappiness sweep: anon vs file reclaim, faults", "docs/swappiness.png"),
    "double_paging": (
        "host-only, guest-only and two-level reclaim: throughput, swap I/O, double paging",
        "docs/double_paging.png",
    ),
    "balloon": (
        "a balloon sweep: balloon sizes over time, faults at each level, stall",
        "docs/balloon.png",
    ),
    "ksm": ("a KSM sweep: memory saved, rmap work and TLB flushes per page", "docs/ksm.png"),
    "rmap_off": (
        "an rmap sweep: entries visited and kswapd CPU per page reclaimed, rmap on vs off",
        "docs/rmap_off.png",
    ),
    "thp": (
        "a THP sweep: resident and swapped memory per VM, swap-out granularity",
        "docs/thp.png",
    ),
}
TWO_RUN_FIGURES = {  # figure: (help, default labels, default output): each VM's stall per window
    "protection": (
        "two runs (memory.low on, off): stall per window, resident memory",
        "with memory.low,without",
        "docs/noisy_neighbour.png",
    ),
    "limit": (
        "two runs (memory.max on, off): stall per window, resident memory",
        "memory.max,no limit",
        "docs/memcg_limit.png",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m analysis.figures")
    sub = ap.add_subparsers(dest="figure", required=True)
    n = sub.add_parser("notifiers", help="notifiers on vs off: free memory and major faults")
    n.add_argument("run_on")
    n.add_argument("run_off")
    n.add_argument("-o", "--out", default="docs/notifiers.png")
    for name, (what, out) in SWEEP_FIGURES.items():
        f = sub.add_parser(name, help=what)
        f.add_argument("sweep_dir")
        f.add_argument("-o", "--out", default=out)
    for name, (what, labels, out) in TWO_RUN_FIGURES.items():
        f = sub.add_parser(name, help=what)
        f.add_argument("run_a")
        f.add_argument("run_b")
        f.add_argument("--labels", default=labels, help="two labels, a,b")
        f.add_argument("-o", "--out", default=out)
    args = ap.parse_args(argv)
    try:
        if args.figure == "notifiers":
            on, off = load_run(args.run_on), load_run(args.run_off)
            fig = compare_runs([("notifiers on", on), ("notifiers off", off)])
            fig.suptitle(f"{on.summary['name']}: KVM aging notifiers on vs off", fontsize="medium")
        elif args.figure in ("protection", "limit"):
            labels = args.labels.split(",")
            if len(labels) != 2:
                raise ValueError(f"--labels {args.labels!r}: give two labels, e.g. on,off")
            a, b = load_run(args.run_a), load_run(args.run_b)
            fig = protection_figure([(labels[0], a), (labels[1], b)])
            fig.suptitle(f"{a.summary['name']}: {labels[0]} vs {labels[1]}", fontsize="medium")
        elif args.figure == "zswap":
            d = Path(args.sweep_dir)
            fig = zswap_figure(sweep_runs(d), title=f"{d.name}: where swapped guest pages go")
        elif args.figure == "swappiness":
            d = Path(args.sweep_dir)
            fig = swappiness_figure(sweep_runs(d), title=f"{d.name}: guest RAM vs page cache")
        elif args.figure == "double_paging":
            d = Path(args.sweep_dir)
            fig = double_paging_figure(
                sweep_runs(d),
                title=f"{d.name}: one guest, the same host memory, reclaimed by"
                " the host, the guest, or both",
            )
        elif args.figure == "balloon":
            d = Path(args.sweep_dir)
            fig = balloon_figure(
                sweep_runs(d), title=f"{d.name}: guests with a balloon, with and without a manager"
            )
        elif args.figure == "ksm":
            d = Path(args.sweep_dir)
            fig = ksm_figure(sweep_runs(d), title=f"{d.name}: KSM as the guests share more")
        elif args.figure == "rmap_off":
            d = Path(args.sweep_dir)
            fig = rmap_off_figure(
                sweep_runs(d), title=f"{d.name}: reclaim with and without the host rmap"
            )
        elif args.figure == "thp":
            d = Path(args.sweep_dir)
            fig = thp_figure(
                sweep_runs(d), title=f"{d.name}: guest RAM backed by THPs or 4 KiB pages"
            )
        elif args.figure == "overcommit":
            fig = _overcommit(Path(args.sweep_dir))
        else:
            fig = _policies(Path(args.sweep_dir))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fig.savefig(args.out, dpi=90)
    print(args.out)
    return 0


def _policies(sweep_dir: Path) -> Any:
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    if "opt_gap" not in runs.columns:
        raise ValueError(f"{sweep_dir}: no opt_gap column (run the sweep in demand mode)")
    idle = []
    for _, row in runs[runs.status != "failed"].iterrows():
        ev = load_run(sweep_dir / "runs" / row.run).table("evictions")
        if len(ev):
            sample = ev.idle_rank.sample(min(len(ev), 5000), random_state=0)
            idle.append(pd.DataFrame({"label": row.label, "idle_rank": sample.to_numpy()}))
    idle_df = pd.concat(idle) if idle else None
    return policies_figure(runs, idle_df, title=f"{sweep_dir.name}: misses relative to OPT")


def _overcommit(sweep_dir: Path) -> Any:
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    if "overcommit" not in runs.columns:
        raise ValueError(f"{sweep_dir}: no overcommit column (rerun the sweep to refresh it)")
    seeds = runs.seed.nunique() if "seed" in runs.columns else 1
    return overcommit_figure(
        runs, title=f"{sweep_dir.name}: {len(runs)} runs, mean and 95% CI over {seeds} seeds"
    )


if __name__ == "__main__":
    sys.exit(main())

"""Reports: a self-contained HTML page and a markdown summary for a run, sweep or plan.

``write_report(RESULTS_DIR)`` finds out what the directory holds (``plan.json``: a capacity
plan; ``runs.parquet``: a sweep; ``summary.json``: one run), draws its figures with seaborn,
and writes ``report.html`` (figures embedded as base64 PNGs, so the file stands alone) and
``report.md`` (figures saved beside it as PNG files) into a temporary directory that is renamed
into place. It reads result files only, never simulator internals: publishing and the flat rows
of a summary come from ``sim.results``, the results-schema module it shares with the simulator.
Figures without data (no evictions, no oracle gaps outside demand mode) are left out and the
markdown says so, rather than showing empty axes.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.load import Run, load_run  # noqa: E402
from analysis.plots import capacity_figure  # noqa: E402
from analysis.report_figures import (  # noqa: E402
    PAGE_MIB,
    SWEEP_METRICS,
    fault_figure,
    free_memory_figure,
    idle_age_figure,
    kswapd_figure,
    memcg_figure,
    memcg_limits,
    quality_figure,
    sweep_figure,
    swept_params,
)
from sim.results import (  # noqa: E402
    FRACTION_METRICS,  # noqa: E402
    host_row,
    staged,
    vm_rows,
    write_atomic,
    write_manifest,
)


class ReportError(ValueError):
    """The directory is not a result directory (or lacks a file the report needs)."""


@dataclass
class Figure:
    """One figure of a report: a file name stem, a caption, and the PNG bytes."""

    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    """Report content: a title, a lead paragraph, tables and figures."""

    title: str
    lead: str
    tables: list[tuple[str, pd.DataFrame]]
    figures: list[Figure]
    notes: list[str]


def _png(fig: plt.Figure, dpi: int = 90) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _save(fig: plt.Figure, path: Path) -> None:
    """Write a figure to a temporary name, then rename: readers never see half a PNG."""
    write_atomic(path, _png(fig))


def write_capacity_figure(plan_dir: Path) -> Path:
    """Draw ``capacity.png`` in a plan directory from its ``plan.json`` and ``plan.parquet``."""
    plan = json.loads((plan_dir / "plan.json").read_text())
    runs = pd.read_parquet(plan_dir / "plan.parquet")
    out = plan_dir / "capacity.png"
    _save(capacity_figure(plan, runs), out)
    return out


# --------------------------------------------------------------------------------------------
# one run


def _vm_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for v in vm_rows(summary):
        rows.append(
            {
                "vm": v["name"] + (" (OOM-killed)" if v.get("oom_killed") else ""),
                "accesses": v["accesses"],
                "first touch": v["faults_first_touch"],
                "minor": v["faults_minor"],
                "major": v["faults_major"],
                "refaults": v["refaults"],
                "stall %": round(100 * v["stall_fraction"], 2),
                "stall p99 window %": _pct(v.get("stall_window_p99")),
                "major/s": round(v["major_faults_per_s"], 1),
                "resident MiB": round(v["resident_pages"] * PAGE_MIB, 1),
            }
        )
    return pd.DataFrame(rows)


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def _host_table(summary: dict[str, Any]) -> pd.DataFrame:
    h = host_row(summary)
    items = {
        "host memory (MiB)": h["memory_pages"] * PAGE_MIB,
        "watermarks min/low/high (pages)": f"{h['wmark_min']}/{h['wmark_low']}/{h['wmark_high']}",
        "kswapd wake-ups": h["kswapd_wakeups"],
        "kswapd scanned / reclaimed": f"{h['kswapd_scanned']:,} / {h['kswapd_reclaimed']:,}",
        "direct reclaims": h["direct_reclaims"],
        "pswpin / pswpout": f"{h['pswpin']:,} / {h['pswpout']:,}",
        "remote TLB flushes": h["tlb_flushes"],
        "swap exhausted": h["swap_exhausted"],
        "OOM kills": ", ".join(k["vm"] for k in h["oom_kills"]) or "none",
    }
    if "scanned" in h:  # every reclaim, memcg limit reclaim too (pgscan_anon + pgscan_file)
        items["all reclaim scanned / reclaimed"] = f"{h['scanned']:,} / {h['reclaimed']:,}"
    q = summary.get("quality")
    if q:
        items["OPT gap / LRU gap"] = f"{q['opt_gap']:.3f} / {q['lru_gap']:.3f}"
    return pd.DataFrame({"": list(items), "value": [str(v) for v in items.values()]})


def run_section(path: Path) -> Section:
    """Everything about one run directory."""
    sns.set_theme(style="whitegrid", context="notebook")
    run = load_run(path)
    s = run.summary
    name = s["name"]
    lead = (
        f"Run {name} (seed {s['seed']}, policy {s['policy']}, trigger {s['host']['trigger']}): "
        f"{len(s['vms'])} VM(s), {s['sim_time_ns'] / 1e9:g} s simulated in {s['wall_s']:g} s."
    )
    warm = s.get("warmup_ns", 0) / 1e9
    if warm:
        lead += (
            f" Per-VM figures are measured after a {warm:g} s warm-up (shaded in the "
            "figures); host counters are whole-run."
        )
    figs: list[Figure] = []
    notes: list[str] = []
    tl = _table(run, "timeline")
    if tl is not None and tl.t_ns.nunique() > 2:
        figs.append(
            Figure(
                "faults",
                "Major faults and refaults per second, per VM.",
                _png(fault_figure(tl, name, warm)),
            )
        )
        figs.append(
            Figure(
                "free_memory",
                "Free host memory against the zone watermarks, and resident memory per VM.",
                _png(free_memory_figure(tl, name, warmup_s=warm)),
            )
        )
        figs.append(
            Figure(
                "kswapd",
                "Reclaim activity: pages scanned and reclaimed by kswapd and global direct "
                "reclaim (memcg limit reclaim is in the memcgs' own pgscan/pgsteal), "
                "swap-ins, and the share of time kswapd was busy.",
                _png(kswapd_figure(tl, name, warm)),
            )
        )
        limits = memcg_limits(s)
        if limits and "memory_current_pages" in tl.columns:
            figs.append(
                Figure(
                    "memcg",
                    "Each memory cgroup's usage (memory.current) against its memory.max and "
                    "memory.high.",
                    _png(memcg_figure(tl, limits, name, warmup_s=warm)),
                )
            )
    else:
        notes.append("No timeline (output.timeline off, or too short): no rate figures.")
    ev = _table(run, "evictions", ["vm", "idle_ns", "refault"])
    if ev is not None and len(ev):
        figs.append(
            Figure(
                "idle_age",
                "Idle time of evicted pages at eviction; pages that came back are the costly "
                "mistakes.",
                _png(idle_age_figure(ev, name)),
            )
        )
    else:
        notes.append("No evictions recorded: no idle-age figure.")
    if s.get("quality"):
        figs.append(
            Figure(
                "quality",
                "Misses of this run against exact LRU and OPT on the same reference string.",
                _png(quality_figure(s)),
            )
        )
    else:
        notes.append("Quality against OPT and exact LRU is recorded in demand mode only.")
    tables = [("Per VM", _vm_table(s)), ("Host", _host_table(s))]
    return Section(f"memsim run: {name}", lead, tables, figs, notes)


def _table(run: Run, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    p = run.path / f"{name}.parquet"
    return pd.read_parquet(p, columns=columns) if p.exists() else None


# --------------------------------------------------------------------------------------------
# a sweep


def sweep_section(path: Path) -> Section:
    """A sweep directory: its runs table and metrics figure."""
    sns.set_theme(style="whitegrid", context="notebook")
    runs = pd.read_parquet(path / "runs.parquet")
    name = path.name
    failed = int((runs.status == "failed").sum())
    lead = f"Sweep {name}: {len(runs)} run(s), {failed} failed."
    show = [
        c
        for c in [
            "label",
            *swept_params(runs),
            "seed",
            "status",
            *[m for m, _ in SWEEP_METRICS],
            "pswpin",
            "wall_s",
        ]
        if c in runs.columns
    ]
    figs = []
    notes = []
    if (runs.status != "failed").any():
        figs.append(
            Figure(
                "sweep",
                "Key metrics against the swept parameters (bands and bars: 95% CI over seeds).",
                _png(sweep_figure(runs, name)),
            )
        )
    else:
        notes.append("Every run failed: no figure (see the error column of runs.parquet).")
    return Section(f"memsim sweep: {name}", lead, [("Runs", runs[show])], figs, notes)


# --------------------------------------------------------------------------------------------
# a plan


def plan_section(path: Path) -> Section:
    """A capacity plan: its answer, every evaluated value, and the capacity curve."""
    plan = json.loads((path / "plan.json").read_text())
    runs = pd.read_parquet(path / "plan.parquet")
    metric = plan["slo"]["metric"]
    scale = 100.0 if metric in FRACTION_METRICS else 1.0
    ev = pd.DataFrame(plan["evaluated"])
    table = pd.DataFrame(
        {
            plan["variable"]: ev.value,
            "status": ev.status,
            "seeds meeting SLO": [f"{a}/{b}" for a, b in zip(ev.n_meet, ev.n, strict=True)],
            f"mean{' %' if scale == 100 else ''}": (ev["mean"] * scale).round(3),
            f"CI low{' %' if scale == 100 else ''}": (ev.low * scale).round(3),
            f"CI high{' %' if scale == 100 else ''}": (ev.high * scale).round(3),
        }
    ).sort_values(plan["variable"])
    lead = (
        f"{plan['statement']}. SLO: {metric} ({plan['slo']['description']}) at most "
        f"{plan['slo']['max']:g}; {plan['confidence']:.0%} t intervals over seeds "
        f"{plan['seeds']}"
        + (f"; measured after {plan['warmup_s']:g} s of warm-up." if plan["warmup_s"] else ".")
    )
    fig = Figure(
        "capacity",
        f"{metric} against {plan['variable']}: one dot per seed, the mean with its confidence "
        "band, pass/uncertain/fail per value, the SLO (dashed) and the answer (dotted).",
        _png(capacity_figure(plan, runs)),
    )
    cols = [plan["variable"], "seed", "status", metric, "wall_s"]
    per_run = runs[[c for c in cols if c in runs.columns]]
    return Section(
        f"memsim plan: {plan['name']}",
        lead,
        [("Evaluated values", table), ("Runs", per_run)],
        [fig],
        [],
    )


# --------------------------------------------------------------------------------------------
# output


def detect(path: Path) -> Callable[[Path], Section]:
    """Which kind of result directory ``path`` is."""
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory; give a run, sweep or plan result directory")
    if (path / "plan.json").exists():
        return plan_section
    if (path / "runs.parquet").exists():
        return sweep_section
    if (path / "summary.json").exists():
        return run_section
    raise ReportError(
        f"{path}: no summary.json, runs.parquet or plan.json; give a directory written by "
        "memsim run, sweep or plan"
    )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (no tabulate dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.2em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } .note { color: #777; font-size: 0.9em; }
"""


def render_html(sec: Section) -> str:
    """The section as one self-contained HTML page (figures as data URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(sec.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(sec.title)}</h1>",
        f"<p>{html.escape(sec.lead)}</p>",
    ]
    for fig in sec.figures:
        b64 = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(fig.name)}">'
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
        )
    for note in sec.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    for title, df in sec.tables:
        body = df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:,.4g}")
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(sec: Section) -> str:
    """The section as markdown, referring to the figure files saved beside it."""
    parts = [f"# {sec.title}", "", sec.lead, ""]
    for fig in sec.figures:
        parts += [f"![{fig.name}]({fig.name}.png)", "", f"*{fig.caption}*", ""]
    parts += [f"> {n}\n" for n in sec.notes]
    for title, df in sec.tables:
        parts += [f"## {title}", "", markdown_table(df), ""]
    return "\n".join(parts)


def write_report(results_dir: Path, out: Path | None = None) -> tuple[Path, list[str]]:
    """Write ``report.html``, ``report.md`` and the figure PNGs; returns the report directory
    and the figure names. Everything is built in a temporary sibling renamed into place, which
    may replace only an earlier report (``sim.results`` has the rules; its ``OutputError`` is
    a ``UserError`` the CLI prints as one line)."""
    results_dir = Path(results_dir)
    build = detect(results_dir)
    with staged(out or results_dir / "report", "report") as stage:  # a refused --out: no work
        try:
            sec = build(results_dir)
        except (OSError, KeyError, ValueError) as exc:
            raise ReportError(f"{results_dir}: cannot read results: {exc}") from None
        for fig in sec.figures:
            (stage.tmp / f"{fig.name}.png").write_bytes(fig.png)
        (stage.tmp / "report.html").write_text(render_html(sec))
        (stage.tmp / "report.md").write_text(render_markdown(sec))
        write_manifest(stage.tmp, "report", source=str(results_dir.resolve()))
    target = stage.target
    return target, [f.name for f in sec.figures]

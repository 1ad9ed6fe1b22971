"""``memsim`` command line: ``run`` and ``validate`` a scenario.

User errors (bad config, unknown key, impossible value, bad flag) print one line on stderr and
exit with code 2, and no result directory is written; results are published atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sim import __version__
from sim.config import Scenario, load_scenario
from sim.errors import UserError

err_console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 120)  # no 80-column squeeze in logs


def _fail(exc: UserError) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _load(config: Path, overrides: tuple[str, ...], seed: int | None) -> Scenario:
    try:
        return load_scenario(config, list(overrides), seed)
    except UserError as exc:
        _fail(exc)
        raise  # unreachable


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def describe(sc: Scenario) -> str:
    """One line: the host and its overcommit."""
    guest = sum(cfg.memory_mib for _, cfg in sc.vm_list())
    n = len(sc.vm_list())
    return (
        f"{sc.name}: {n} VM(s), {guest} MiB guest RAM on {sc.host.memory_mib} MiB host "
        f"({guest / sc.host.memory_mib:.2f}x overcommit), policy {sc.reclaim.policy}, "
        f"{sc.duration_s:g} s simulated"
    )


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table: per VM, then host totals."""
    t = Table(title=f"{summary['name']} (seed {summary['seed']}, policy {summary['policy']})")
    for col in (
        "vm",
        "accesses",
        "first touch",
        "minor",
        "major",
        "access trk",
        "refaults",
        "stall %",
        "major/s",
    ):
        t.add_column(col, justify="left" if col == "vm" else "right")
    for v in summary["vms"]:
        f = v["faults"]
        t.add_row(
            v["name"] + (" (OOM-killed)" if v["oom_killed"] else ""),
            _fmt(v["accesses"]),
            _fmt(f["first_touch"]),
            _fmt(f["minor"]),
            _fmt(f["major"]),
            _fmt(f["access_tracking"]),
            _fmt(v["refaults"]),
            f"{100 * v['stall_fraction']:.1f}",
            f"{v['major_faults_per_s']:,.0f}",
        )
    h = summary["host"]
    n = h["notifier"]
    t.caption = (
        f"kswapd scanned {_fmt(h['kswapd_scanned'])} reclaimed {_fmt(h['kswapd_reclaimed'])}; "
        f"direct reclaims {_fmt(h['direct_reclaims'])}; pswpin {_fmt(h['pswpin'])} "
        f"pswpout {_fmt(h['pswpout'])}; TLB flushes {_fmt(h['tlb_flushes'])}; "
        f"notifier clear_flush_young {_fmt(n['clear_flush_young'])} "
        f"invalidate_range_start {_fmt(n['invalidate_range_start'])}; "
        f"wall {summary['wall_s']:.1f} s"
    )
    if h["swap"]["exhausted"]:
        t.caption += f"; SWAP FULL ({_fmt(h['swap']['full_failures'])} failed swap-outs)"
    if h["oom_kills"]:
        t.caption += "; OOM kills: " + ", ".join(k["vm"] for k in h["oom_kills"])
    return t


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memsim")
def main() -> None:
    """memsim: simulate memory pressure on a KVM host (kswapd, rmap, MMU notifiers, swap)."""


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value by dotted path, e.g. --set kvm.mmu_notifiers=false "
    "or --set vms.0.count=3 (repeatable).",
)


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Result directory (default: results/<name>-<config hash>/).",
)
@click.option("--seed", type=click.IntRange(min=0), help="Override the config's seed.")
@_set_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary table.")
def run(
    config: Path, out: Path | None, seed: int | None, overrides: tuple[str, ...], quiet: bool
) -> None:
    """Run the scenario in CONFIG and write its results."""
    from sim.engine import default_outdir, run_scenario

    sc = _load(config, overrides, seed)
    target = out if out is not None else default_outdir(sc)
    if not quiet:
        err_console.print(describe(sc), highlight=False)
    try:
        if quiet:
            result = run_scenario(sc, target)
        else:
            with Progress(
                TextColumn("[bold]simulating"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[simt]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("run", total=1.0, simt="")

                def progress(frac: float) -> None:
                    bar.update(task, completed=frac, simt=f"{frac * sc.duration_s:.2f}s sim")

                result = run_scenario(sc, target, progress=progress)
    except UserError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err_console.print("interrupted: no result written")
        sys.exit(130)
    if not quiet:
        out_console.print(summary_table(result.summary))
    out_console.print(f"results: {result.outdir}", highlight=False)


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@_set_option
def validate(config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG (and overrides) without running it."""
    sc = _load(config, overrides, None)
    from sim.host.memory import setup_per_zone_wmarks

    frames = sc.host.memory_mib * 256
    wm = setup_per_zone_wmarks(frames, sc.host.min_free_kbytes, sc.host.watermark_scale_factor)
    out_console.print(
        f"ok: {describe(sc)}; watermarks min/low/high = "
        f"{wm.min}/{wm.low}/{wm.high} pages; config hash {sc.config_hash()}",
        highlight=False,
    )

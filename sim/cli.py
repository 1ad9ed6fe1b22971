"""``memsim`` command line: run, validate, replay, mrc, sweep, plan, scale, report and calibrate.

User errors (bad config, unknown key, impossible value, bad flag, unusable output path) print
one plain line on stderr and exit with code 2, and no result is written or lost; results are
published atomically (``sim.results``). Everything shown is printed literally: a name or a
message is never read as Rich markup or an emoji code. SIGTERM and SIGHUP stop a command the
way Ctrl-C does, with exit code 128 + the signal number (``sim.lifecycle``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

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
from rich.text import Text

from sim import __version__
from sim import fast as fast_paths
from sim.config import Scenario, load_scenario
from sim.errors import UserError, shown_path
from sim.lifecycle import exit_code, signals_as_interrupts
from sim.results import check_name, check_resumable, check_target, host_row, vm_rows

_PLAIN = {"markup": False, "emoji": False, "highlight": False}
err_console = Console(stderr=True, **_PLAIN)
out_console = Console(width=None if sys.stdout.isatty() else 120, **_PLAIN)  # no 80-col squeeze


def one_line(text: str) -> str:
    """A message as one line: its lines joined, YAML's caret-only marker lines dropped."""
    lines = [ln.strip() for ln in str(text).splitlines()]
    return " ".join(ln for ln in lines if ln and set(ln) != {"^"})


def say(text: str) -> None:
    """A line on stdout, printed literally and never wrapped."""
    out_console.print(Text(text), soft_wrap=True)


def note(text: str) -> None:
    """A line on stderr, printed literally and never wrapped (goes above a progress bar)."""
    err_console.print(Text(text), soft_wrap=True)


def error(text: str, code: int = 2) -> NoReturn:
    """Print ``error: TEXT`` as one line on stderr and exit with ``code``."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", one_line(text)), soft_wrap=True)
    sys.exit(code)


def _interrupted(exc: KeyboardInterrupt, what: str) -> NoReturn:
    note(f"interrupted: {what}")
    sys.exit(exit_code(exc))


class MemsimGroup(click.Group):
    """The ``memsim`` group: every error one plain line, signals handled like Ctrl-C."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; click's own errors (usage, bad parameter) become one line, exit 2."""
        try:
            with signals_as_interrupts():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help())
            rv = 0
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "memsim"
            error(f"{exc.format_message().rstrip('.')} (see {where} --help)", exc.exit_code)
        except click.ClickException as exc:
            error(exc.format_message(), exc.exit_code)
        except click.Abort as exc:
            cause = exc.__cause__
            _interrupted(
                cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt(), "stopped"
            )
        except UserError as exc:
            error(str(exc))
        except KeyboardInterrupt as exc:  # between commands, or in click itself
            _interrupted(exc, "stopped")
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run a subcommand; an interrupt it did not handle exits quietly with its code."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            _interrupted(exc, "stopped")


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
    """The end-of-run table: per VM, then host totals (from the flat rows of ``sim.results``);
    with a warm-up the VM rows count from its end and the host line stays whole-run."""
    warm = summary.get("warmup_ns", 0) / 1e9
    after = f", after a {warm:g} s warm-up" if warm else ""
    t = Table(
        title=Text(f"{summary['name']} (seed {summary['seed']}, policy {summary['policy']}{after})")
    )
    for col in (
        "vm",
        "accesses",
        "first touch",
        "minor",
        "major",
        "access trk",
        "refaults",
        "stall %",
        "p99 window %",
        "major/s",
    ):
        t.add_column(col, justify="left" if col == "vm" else "right")
    for v in vm_rows(summary):
        cells = [
            v["name"]
            + (" (hugetlbfs)" if v.get("memory_backing") == "hugetlbfs" else "")
            + (" (OOM-killed)" if v["oom_killed"] else ""),
            _fmt(v["accesses"]),
            _fmt(v["faults_first_touch"]),
            _fmt(v["faults_minor"]),
            _fmt(v["faults_major"]),
            _fmt(v["faults_access_tracking"]),
            _fmt(v["refaults"]),
            f"{100 * v['stall_fraction']:.1f}",
            "-" if v.get("stall_window_p99") is None else f"{100 * v['stall_window_p99']:.1f}",
            f"{v['major_faults_per_s']:,.0f}",
        ]
        t.add_row(*map(Text, cells))
    h = host_row(summary)
    # every reclaim, memcg limit reclaim too (summaries from before it: none)
    every = (
        f"reclaim scanned {_fmt(h['scanned'])} reclaimed {_fmt(h['reclaimed'])}, "
        if "scanned" in h
        else ""
    )
    caption = ("whole run: " if warm else "") + (
        every + f"kswapd scanned {_fmt(h['kswapd_scanned'])} "
        f"reclaimed {_fmt(h['kswapd_reclaimed'])}; "
        f"direct reclaims {_fmt(h['direct_reclaims'])}; pswpin {_fmt(h['pswpin'])} "
        f"pswpout {_fmt(h['pswpout'])}; TLB flushes {_fmt(h['tlb_flushes'])}; "
        f"notifier clear_flush_young {_fmt(h['notifier_clear_flush_young'])} "
        f"invalidate_range_start {_fmt(h['notifier_invalidate_range_start'])}; "
        f"wall {summary['wall_s']:.1f} s"
    )
    pool = h.get("swap_pool_frames_end", 0)
    as_is = h.get("swap_pool_incompressible_end", 0)  # summaries from before it: none
    if h.get("swap_zswap"):
        caption += (
            f"; zswap: zswpout {_fmt(h.get('vmstat_zswpout', 0))} "
            f"zswpin {_fmt(h.get('vmstat_zswpin', 0))} zswpwb {_fmt(h.get('vmstat_zswpwb', 0))}, "
            f"pool {_fmt(pool)} frames ({_fmt(as_is)} pages as they are)"
        )
    elif h.get("swap_device") == "zram":
        caption += f"; zram pool {_fmt(pool)} frames ({_fmt(as_is)} pages as they are)"
    if h.get("hugetlb_pool_pages"):  # HugePages_Total per size (Free: 0, all preallocated)
        sizes = ", ".join(
            f"{_fmt(k['HugePages_Total'])} x {k['hugepage_size_kib'] >> 10} MiB"
            for k in h["hugetlb_hstates"]
        )
        caption += f"; hugetlb pool {_fmt(h['hugetlb_pool_pages'])} pages ({sizes}, none free)"
    if h["swap_exhausted"]:
        caption += f"; SWAP FULL ({_fmt(h['swap_full_failures'])} failed swap-outs)"
    if h["oom_kills"]:
        caption += "; OOM kills: " + ", ".join(k["vm"] for k in h["oom_kills"])
    t.caption = Text(caption)
    return t


@click.group(cls=MemsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memsim")
def main() -> None:
    """memsim: simulate memory pressure on a KVM host (kswapd, rmap, MMU notifiers, swap)."""
    fast_paths.check_env()  # MEMSIM_FAST / MEMSIM_FAST_DISABLE (sim/fast.py)


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value by dotted path, e.g. --set kvm.mmu_notifiers=false "
    "or --set vms.0.count=3 (repeatable).",
)


_seeds_option = click.option(
    "--seeds",
    metavar="LIST",
    help="Replace the file's seeds: 1,2,3 or a range 1-5 (or both: 1-3,7).",
)
_max_memory_option = click.option(
    "--max-memory",
    metavar="SIZE",
    help="Refuse work estimated to need more memory than this (e.g. 4G, 512M; "
    "default: what the machine has available).",
)


def _memory_limit(max_memory: str | None) -> None:
    """Apply ``--max-memory`` (raises a UserError for a bad size)."""
    from sim.budget import parse_size, set_memory_limit

    set_memory_limit(parse_size(max_memory) if max_memory is not None else None)


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
@_max_memory_option
def run(
    config: Path,
    out: Path | None,
    seed: int | None,
    overrides: tuple[str, ...],
    quiet: bool,
    max_memory: str | None,
) -> None:
    """Run the scenario in CONFIG and write its results."""
    from sim.checks import prepare_run
    from sim.core import general_path_reason
    from sim.engine import default_outdir, run_scenario
    from sim.faultcore import fault_path_reason

    _memory_limit(max_memory)
    sc = load_scenario(config, list(overrides), seed)
    prepare_run(sc, str(config))
    target = out if out is not None else default_outdir(sc)
    check_target(target, "run")  # a refused --out: before anything is printed or run
    if not quiet:
        note(describe(sc))
        general = general_path_reason(sc)
        if general is not None:
            note(f"host core: not used ({general}); this run takes the general, slower path")
        elif (plain := fault_path_reason(sc)) is not None:
            note(f"compiled fault: not used ({plain}); major faults take the general path")
    try:
        if quiet:
            result = run_scenario(sc, target)
        else:
            with Progress(
                TextColumn("simulating", style="bold", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[simt]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("run", total=1.0, simt="")

                def progress(frac: float) -> None:
                    bar.update(task, completed=frac, simt=f"{frac * sc.duration_s:.2f}s sim")

                result = run_scenario(sc, target, progress=progress)
    except KeyboardInterrupt as exc:
        _interrupted(exc, "no result written")
    if not quiet:
        out_console.print(summary_table(result.summary))
    say(f"results: {result.outdir}")


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@_set_option
@_seeds_option
@_max_memory_option
def validate(
    config: Path, overrides: tuple[str, ...], seeds: str | None, max_memory: str | None
) -> None:
    """Check CONFIG (a scenario, a sweep or plan file: every point, with --set applied to
    its base, or a calibration file) without running it; every trace it names is opened and
    checked."""
    from sim.budget import fmt_bytes
    from sim.checks import check_points_memory
    from sim.config import read_yaml
    from sim.sweep import load_sweep, parse_seeds

    _memory_limit(max_memory)
    raw = read_yaml(config)
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if "search" in raw:
        from sim.plan import load_plan

        p = load_plan(config, list(overrides), seed_list)
        check_name(p.name, str(config))
        scenarios = [p.scenario(v, p.seeds[0]) for v in p.values]
        est = check_points_memory(scenarios, 1, str(config))
        say(
            f"ok: plan {p.name}: {len(p.values)} candidate(s) x {len(p.seeds)} seed(s), "
            f"all valid; largest run about {fmt_bytes(est.total)} of memory"
        )
        return
    if "base" in raw:
        name, points = load_sweep(config, list(overrides), seed_list)
        check_name(name, str(config))
        est = check_points_memory([pt.scenario for pt in points], 1, str(config))
        say(
            f"ok: sweep {name}: {len(points)} point(s), all valid; largest run about "
            f"{fmt_bytes(est.total)} of memory"
        )
        return
    if "scenarios" in raw and "vms" not in raw:
        from sim.calibrate import config as calconfig

        if overrides or seed_list is not None:
            raise UserError("--set and --seeds: not for a calibration file")
        cal = calconfig.load(config)
        uses = [s.use for s in cal.scenarios]
        say(
            f"ok: calibration {cal.name}: {len(cal.scenarios)} scenario(s) "
            f"({uses.count('fit')} fit, {uses.count('check')} check) x {cal.repetitions} "
            f"real run(s); policies {', '.join(cal.policies)} (run it with memsim calibrate)"
        )
        return
    if seed_list is not None:
        raise UserError("--seeds: only for sweep and plan files; a scenario takes --set seed=N")
    sc = load_scenario(config, list(overrides))
    est = check_points_memory([sc], 1, str(config))
    wm = sc.host.watermarks()
    say(
        f"ok: {describe(sc)}; watermarks min/low/high = "
        f"{wm.min}/{wm.low}/{wm.high} pages; config hash {sc.config_hash()}; "
        f"memory about {fmt_bytes(est.total)}"
    )


MAX_MRC_SIZES = 1000  # replays per policy; exact LRU has every size anyway
FAST_POLICIES = ("lru", "opt", "fifo", "clock")  # sim.replay.FAST, without importing numba

_trace_options = [
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["auto", "lackey", "csv", "npy", "parquet"]),
        default="auto",
        show_default=True,
        help="Trace format (auto: by extension).",
    ),
    click.option(
        "--page-size",
        type=int,
        default=4096,
        show_default=True,
        help="Page size in bytes for address traces.",
    ),
    click.option(
        "--instructions", is_flag=True, help="Include instruction fetches (lackey 'I' lines)."
    ),
]


def _trace_opts(fn: Any) -> Any:
    for opt in reversed(_trace_options):
        fn = opt(fn)
    return fn


def _load_trace(path: Path, fmt: str, page_size: int, instructions: bool) -> Any:
    """Read a trace named on the command line, refusing trace options its format ignores."""
    from click.core import ParameterSource

    from sim.guest.traces import detect_format, read_trace

    actual = detect_format(path) if fmt == "auto" else fmt
    given = click.get_current_context().get_parameter_source("page_size")
    if instructions and actual != "lackey":
        error(
            f"--instructions: only lackey traces have instruction fetches; {path.name} "
            f"is read as {actual} (--format)"
        )
    if given is ParameterSource.COMMANDLINE and actual == "npy":
        error(
            f"--page-size: a .npy trace holds page numbers, not addresses, so there is "
            f"nothing to cut into pages; drop --page-size for {path.name}"
        )
    return read_trace(
        path, fmt=None if fmt == "auto" else fmt, page_size=page_size, instructions=instructions
    )


@main.command()
@click.argument("trace", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--frames",
    type=click.IntRange(min=1),
    required=True,
    help="Memory size N in pages (demand mode: exactly N frames).",
)
@click.option(
    "--policy",
    required=True,
    help="Eviction policy (two_list, mglru, clock, fifo, random, lru, opt).",
)
@_trace_opts
@click.option(
    "--engine",
    type=click.Choice(["auto", "fast", "general"]),
    default="auto",
    show_default=True,
    help="fast: compiled textbook replay (lru, opt, fifo, clock); "
    "general: the full simulated mechanism.",
)
@_set_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_max_memory_option
def replay(
    trace: Path,
    frames: int,
    policy: str,
    fmt: str,
    page_size: int,
    instructions: bool,
    engine: str,
    overrides: tuple[str, ...],
    as_json: bool,
    max_memory: str | None,
) -> None:
    """Replay TRACE in demand mode with N frames and print the fault counts. --set changes
    kvm.*, reclaim.* (not the policy: that is --policy) and seed, with --engine general."""
    import json

    from sim.budget import check_fits, estimate_replay
    from sim.replay import replay as do_replay

    _memory_limit(max_memory)
    t = _load_trace(trace, fmt, page_size, instructions)
    fast = engine == "fast" or (
        engine == "auto"
        and not overrides
        and policy in FAST_POLICIES
        and fast_paths.enabled("replay_compiled")
    )
    n = len(t.pages)
    est = estimate_replay(n, n, frames, "fast" if fast else "general")
    check_fits(est, f"replay of {trace.name} ({n:,} accesses, {frames:,} frames)")
    r = do_replay(
        t.pages,
        t.writes,
        frames=frames,
        policy=policy,
        engine=engine,
        overrides=list(overrides),
    )
    if as_json:
        click.echo(json.dumps(r))
        return
    table = Table(title=Text(f"replay {trace.name}"))
    for key in r:
        table.add_column(Text(key), justify="right")
    table.add_row(*(Text(f"{v:,}" if isinstance(v, int) else str(v)) for v in r.values()))
    out_console.print(table)


@main.command()
@click.argument("trace", type=click.Path(path_type=Path, dir_okay=False))
@_trace_opts
@click.option(
    "--policies",
    default="lru,opt,fifo,clock",
    show_default=True,
    help="Comma-separated policies to draw besides the exact LRU curve.",
)
@click.option(
    "--sizes",
    default=None,
    help="Comma-separated memory sizes (frames) for the "
    "other policies (default: 12 sizes from 1% of the distinct pages to all).",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "fast", "general"]),
    default="auto",
    show_default=True,
    help="Engine for the other policies.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory (default: results/mrc-<trace name>/).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records.")
def mrc(
    trace: Path,
    fmt: str,
    page_size: int,
    instructions: bool,
    policies: str,
    sizes: str | None,
    engine: str,
    out: Path | None,
    as_json: bool,
) -> None:
    """Miss-ratio curves of TRACE: exact LRU at every size, other policies at chosen sizes."""
    import json

    from sim.reclaim import policy_names
    from sim.replay import default_sizes
    from sim.replay import mrc as do_mrc
    from sim.results import staged, write_manifest

    names = [p.strip() for p in policies.split(",") if p.strip()]
    ctx = click.get_current_context()
    if not [p for p in names if p != "lru"]:
        for opt, param in (("--sizes", "sizes"), ("--engine", "engine")):
            if ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE:
                error(
                    f"{opt}: only for the policies besides lru (exact LRU is computed at "
                    "every size in one pass); add some with --policies or drop it"
                )
    unknown = [p for p in names if p not in policy_names()]
    if unknown:
        error(
            f"--policies: unknown {', '.join(unknown)}; expected some of "
            f"{', '.join(policy_names())}"
        )
    try:
        size_list = [int(x) for x in sizes.split(",")] if sizes else None
    except ValueError:
        error(f"--sizes {sizes!r}: expected comma-separated integers, e.g. 100,200")
    if size_list is not None and min(size_list) < 1:
        error("--sizes: every size must be at least 1")
    if size_list is not None and len(size_list) > MAX_MRC_SIZES:
        error(f"--sizes: {len(size_list):,} sizes; at most {MAX_MRC_SIZES:,}")
    target = out or Path("results") / f"mrc-{trace.name.split('.')[0]}"
    with staged(target, "mrc") as stage:  # a refused --out fails before the work
        t = _load_trace(trace, fmt, page_size, instructions)
        table = do_mrc(t.pages, t.writes, policies=names, sizes=size_list, engine=engine)
        from analysis.plots import mrc_figure

        table.to_parquet(stage.tmp / "mrc.parquet", index=False)
        distinct = int(table[table.policy == "lru"].frames.max())
        shown = size_list or default_sizes(distinct)
        picked = table[table.frames.isin(shown)]
        fig = mrc_figure(table, f"{trace.name}: {len(t.pages):,} accesses, {distinct:,} pages")
        fig.savefig(stage.tmp / "mrc.png", dpi=90)
        meta = {
            "trace": str(trace),
            "accesses": len(t.pages),
            "distinct_pages": distinct,
            "policies": ["lru", *[p for p in names if p != "lru"]],
            "sizes": shown,
        }
        (stage.tmp / "mrc.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_manifest(stage.tmp, "mrc", trace=str(trace))
    if as_json:
        click.echo(picked.to_json(orient="records"))
        return
    wide = picked.pivot_table(index="frames", columns="policy", values="miss_ratio")
    tab = Table(
        title=Text(f"miss ratio, {trace.name} ({len(t.pages):,} accesses, {distinct:,} pages)")
    )
    tab.add_column("frames", justify="right")
    for col in wide.columns:
        tab.add_column(Text(str(col)), justify="right")
    for frames, row in wide.iterrows():
        tab.add_row(Text(f"{frames:,}"), *(Text(f"{v:.4f}") for v in row.tolist()))
    out_console.print(tab)
    say(f"results: {stage.target}")


@main.command()
@click.argument("sweep_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default: one per core).")
@click.option(
    "--dask",
    metavar="local|ADDRESS",
    help="Run on Dask: 'local' starts a LocalCluster of --workers processes; an address "
    "(tcp://HOST:8786) uses a running scheduler whose workers have memsim installed.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Sweep directory (default: results/<sweep name>/).",
)
@_set_option
@_seeds_option
@_max_memory_option
def sweep(
    sweep_file: Path,
    workers: int | None,
    dask: str | None,
    out: Path | None,
    overrides: tuple[str, ...],
    seeds: str | None,
    max_memory: str | None,
) -> None:
    """Run every point of SWEEP_FILE (base + grid/zip/random/variants/seeds); skip runs
    already done, so an interrupted sweep resumes where it stopped. --set changes the base
    scenario, --seeds replaces the file's seeds."""
    from sim.checks import check_points_memory
    from sim.sweep import check_dask_address, load_sweep, parse_seeds, run_sweep

    _memory_limit(max_memory)
    seed_list = parse_seeds(seeds) if seeds is not None else None
    name, points = load_sweep(sweep_file, list(overrides), seed_list)
    check_name(name, str(sweep_file))
    if dask is not None:
        check_dask_address(dask)
    if dask is None or dask == "local":  # remote workers have their own memory
        parallel = min(len(points), workers or os.cpu_count() or 1)
        check_points_memory([p.scenario for p in points], parallel, str(sweep_file))
    check_resumable(out or Path("results") / name, "sweep")  # a refused --out: before anything
    note(f"{name}: {len(points)} run(s)")
    with Progress(
        TextColumn("runs", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}", markup=False),
        TextColumn("{task.fields[failed]} failed", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("sweep", total=len(points), failed=0)

        started = [False]

        def progress(done: int, total: int, failed: int) -> None:
            if not started[0]:  # cached runs: count them, but keep them out of the ETA
                started[0] = True
                bar.reset(task, completed=done, failed=failed)
            bar.update(task, completed=done, failed=failed)

        try:
            target, df = run_sweep(
                sweep_file,
                out,
                workers=workers,
                progress=progress,
                dask=dask,
                overrides=list(overrides),
                seeds=seed_list,
            )
        except KeyboardInterrupt as exc:
            _interrupted(exc, "finished runs are kept; run again to resume")
    cols = [
        c
        for c in (
            "label",
            "seed",
            "status",
            "overcommit",
            "misses",
            "opt_gap",
            "lru_gap",
            "faults_major",
            "stall_fraction",
            "wall_s",
        )
        if c in df.columns
    ]
    table = Table(title=Text(f"sweep {name}"))
    for c in cols:
        table.add_column(Text(c), justify="left" if c == "label" else "right")
    for _, row in df.iterrows():
        table.add_row(*(Text(_cell(row[c])) for c in cols))
    out_console.print(table)
    failed = int((df.status == "failed").sum())
    if failed:
        note(f"{failed} run(s) failed; see the error column of runs.parquet")
    say(f"results: {target}")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@main.command()
@click.argument("plan_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default: one per core).")
@click.option(
    "--dask",
    metavar="local|ADDRESS",
    help="Run each search round on Dask, as `memsim sweep --dask` does.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Plan directory (default: results/<plan name>/).",
)
@_set_option
@_seeds_option
@_max_memory_option
def plan(
    plan_file: Path,
    workers: int | None,
    dask: str | None,
    out: Path | None,
    overrides: tuple[str, ...],
    seeds: str | None,
    max_memory: str | None,
) -> None:
    """Find how many VMs fit (or how little memory, how much overcommit) under PLAN_FILE's SLO.
    --set changes the base scenario, --seeds replaces the plan's seeds."""
    from sim.checks import check_points_memory
    from sim.plan import PlanError, fmt_value, load_plan, search, write_plan
    from sim.results import claim, release
    from sim.sweep import check_dask_address, parse_seeds

    _memory_limit(max_memory)
    seed_list = parse_seeds(seeds) if seeds is not None else None
    p = load_plan(plan_file, list(overrides), seed_list)
    check_name(p.name, str(plan_file))
    if dask is not None:
        check_dask_address(dask)
    if dask is None or dask == "local":
        parallel = min(len(p.values) * len(p.seeds), workers or os.cpu_count() or 1)
        scenarios = [p.scenario(v, p.seeds[0]) for v in p.values]
        check_points_memory(scenarios, parallel, str(plan_file))
    target, state = claim(out or Path("results") / p.name, "plan", name=p.name)
    note(
        f"{p.name}: {p.variable} from {fmt_value(p.values[0])} to {fmt_value(p.values[-1])} "
        f"({len(p.values)} candidates), {len(p.seeds)} seed(s) each; SLO {p.metric} <= "
        f"{fmt_value(p.slo_max)}"
    )

    def on_outcome(o: Any) -> None:
        note(
            f"  {o.label}: {o.status} (mean {o.mean:.4g}, {p.confidence:.0%} CI "
            f"{o.low:.4g}..{o.high:.4g}; {o.n_meet}/{o.n} seeds meet the SLO)"
        )

    try:
        with Progress(
            TextColumn("runs of this step", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}", markup=False),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("plan", total=None)

            def progress(done: int, total: int, failed: int) -> None:
                bar.update(task, completed=done, total=total)

            extra = {"dask": dask} if dask else {}
            result = search(
                p,
                target,
                workers=workers,
                on_outcome=on_outcome,
                progress=progress,
                kind="plan",
                **extra,
            )
    except UserError:
        release(target, state)
        raise
    except PlanError as exc:
        error(str(exc), 1)
    except KeyboardInterrupt as exc:
        _interrupted(exc, "finished runs are kept; run again to resume")
    write_plan(result, target)
    from analysis.report import write_capacity_figure

    write_capacity_figure(target)
    say(result.statement())
    say(f"results: {target} (figure: capacity.png)")


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--factor",
    required=True,
    type=click.IntRange(1, 1 << 20),
    help="Scale down by this integer (e.g. 8 or 32): sizes, access rates and the swap "
    "device's queue all / FACTOR.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the scaled YAML here (default: print it); an existing file needs --force.",
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def scale(config: Path, factor: int, out: Path | None, force: bool) -> None:
    """Scale a scenario or plan file down by FACTOR, keeping what the answer means (README
    "Scaling a question down": what is preserved, and what to multiply back)."""
    from sim.results import write_atomic
    from sim.scale import scale_file

    if out is not None:
        if out.is_dir() or (out.exists() and not force):
            what = "a directory" if out.is_dir() else "an existing file (add --force to replace it)"
            raise UserError(f"--out {shown_path(out)}: {what}")
        if not out.parent.is_dir():
            raise UserError(f"--out {shown_path(out)}: no directory {shown_path(out.parent)}")
    scaled = scale_file(config, factor)
    text = scaled.yaml()
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            write_atomic(out, text)
        except OSError as exc:
            raise UserError(f"--out {shown_path(out)}: cannot write ({exc.strerror})") from None
        say(f"scaled {scaled.kind} by {factor}: {out}")
    for n in scaled.notes:  # after the last thing that can fail: an error stays one line
        note(f"note: {n}")


@main.command()
@click.argument("results_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Report directory (default: RESULTS_DIR/report/).",
)
def report(results_dir: Path, out: Path | None) -> None:
    """Write report.html (self-contained) and report.md for a run, sweep or plan directory."""
    from analysis.report import ReportError, write_report

    try:
        target, figures = write_report(results_dir, out)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    say(f"report: {target / 'report.html'} and report.md ({len(figures)} figure(s))")


@main.command()
@click.argument(
    "config",
    required=False,
    type=click.Path(path_type=Path, dir_okay=False),
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Result directory (default: results/calibrate-<name>).",
)
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help="Run only this scenario (repeatable; it must be in CONFIG).",
)
@click.option(
    "--repetitions",
    type=click.IntRange(1, 50),
    help="Real runs per scenario (default: the config's).",
)
@click.option(
    "--from",
    "from_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Reuse the kernel measurements of this earlier calibration result (no root needed): "
    "memsim, the fit and the report are redone.",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="Only undo what a killed calibration run left on the host (swapfile, memory cgroup, "
    "sysctls), if its owner is dead.",
)
def calibrate(
    config: Path | None,
    out: Path | None,
    only: tuple[str, ...],
    repetitions: int | None,
    from_dir: Path | None,
    cleanup: bool,
) -> None:
    """Run a real KVM guest under a memory cgroup limit, predict it with memsim, compare.

    As root on a host with /dev/kvm and cgroup v1 memory: makes a swapfile and a memory
    cgroup, runs each scenario of CONFIG (default configs/calibrate.yaml) on the kernel and in
    memsim, fits a cost profile and writes the comparison (table, figure, profile.yaml).
    Everything it changed on the host is undone on every exit path.
    """
    from sim.calibrate.host import recover

    if cleanup:
        done, problems = recover()
        for line in done:
            say(f"recovered: {line}")
        if problems:
            raise UserError("cleanup incomplete: " + "; ".join(problems))
        if not done:
            say("nothing to clean up")
        return
    from sim.calibrate import config as calconfig
    from sim.calibrate.run import calibrate as run_calibration

    cfg = calconfig.load(config or Path("configs/calibrate.yaml"))
    if only:
        names = {s.name for s in cfg.scenarios}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(
                f"--only {unknown[0]}: no such scenario (have: {', '.join(sorted(names))})"
            )
        cfg = cfg.model_copy(update={"scenarios": [s for s in cfg.scenarios if s.name in only]})
        if not any(s.use == "fit" for s in cfg.scenarios):
            raise UserError("--only: keep at least one scenario with use: fit (the fit's data)")
    if repetitions:
        cfg = cfg.model_copy(update={"repetitions": repetitions})
    target = out or Path("results") / f"calibrate-{cfg.name}"
    verdict = run_calibration(cfg, target, say, from_dir=from_dir)
    say(f"calibration: {target}/comparison.md")
    say(
        f"majors within 3%: {verdict['majors_within_3pct']}/{verdict['not_oom_killed']}; "
        f"pgscan within 20%: {verdict['pgscan_within_20pct']}; pgsteal within 20%: "
        f"{verdict['pgsteal_within_20pct']}; OOM matches: {verdict['oom_matches']}/"
        f"{verdict['scenarios']}; held-out time within 20%: "
        f"{verdict['check_time_within_20pct']}/{verdict['check_scenarios_timed']}"
    )

"""Run every benchmark in one process: ``python -m bench [--quick] [--json PATH|-] [--only ...]``.

Each ``bench/bench_*.py`` module's ``run(quick)`` returns rows (see ``bench/__init__.py``); they
are printed as one table under a header of machine facts and, with ``--json``, written with
those facts. Modules run one after another; a module that sets ``PIN_ONE_CORE = True`` runs
with the process pinned to one CPU (``--cpu``; ``--no-pin`` turns this off), others unpinned
(``bench_sweep.py`` needs both cores; child processes inherit the affinity), and
numba/BLAS thread pools are limited to one thread (``NUMBA_NUM_THREADS=1`` and friends are set
before numpy and numba are imported, unless already set). ``--quick`` runs everything small, for
a CI smoke test; nothing gates on time (the exit code is 0 whether targets are met or not, and
1 only if a benchmark module raised).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import REPO, skipped, with_unit

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def discover() -> list[str]:
    """Names of the benchmark modules (``bench_*.py`` here), sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def select(names: list[str], only: list[str] | None) -> list[str]:
    """The modules ``--only`` asks for (``model`` or ``bench_model``); all without it."""
    if not only:
        return names
    want = {o if o.startswith("bench_") else f"bench_{o}" for o in only}
    unknown = want - set(names)
    if unknown:
        raise SystemExit(f"--only: no module {', '.join(sorted(unknown))} (have {names})")
    return [n for n in names if n in want]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(mod: str) -> str | None:
    """A module's ``__version__`` (None if it does not import)."""
    try:
        return str(importlib.import_module(mod).__version__)
    except Exception:
        return None


def git_commit() -> str | None:
    """The repository's HEAD commit, with ``-dirty`` if the tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or None
    except OSError:
        return None


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    """What the figures depend on: CPU, cores, load, versions, date, commit, pinning."""
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": affinity,
        "pinned_cpu": None if args.no_pin else args.cpu,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": version("numpy"),
        "numba": version("numba"),
        "simpy": version("simpy"),
        "libcachesim": version("libcachesim"),
        "memsim_commit": git_commit(),
        "quick": args.quick,
        "thread_env": {v: os.environ.get(v) for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")},
    }


def pin(cpu: int | None, allowed: set[int] | None) -> None:
    """Pin this process to ``cpu``, or restore ``allowed`` when ``cpu`` is None."""
    if not hasattr(os, "sched_setaffinity") or allowed is None:
        return
    os.sched_setaffinity(0, {cpu} if cpu is not None else allowed)


def run_modules(names: list[str], args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Run each module's ``run(quick)``; a module that raises becomes one error row."""
    rows: list[dict] = []
    errors: list[str] = []
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        one_core = getattr(mod, "PIN_ONE_CORE", False) is True and not args.no_pin
        pin(args.cpu if one_core else None, allowed)
        t0 = time.perf_counter()
        where = f"pinned to cpu {args.cpu}" if one_core else "unpinned"
        print(f"running {name} ({where})", file=sys.stderr, flush=True)
        try:
            got = mod.run(args.quick)
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"{name}: {exc!r}")
            got = [skipped(name.removeprefix("bench_"), "(module failed)", "", repr(exc))]
        finally:
            pin(None, allowed)
        for r in got:
            r.setdefault("details", {})["module_wall_s"] = round(time.perf_counter() - t0, 2)
        rows.extend(got)
    return rows, errors


def fmt(x: Any, unit: str = "") -> str:
    """A cell: numbers with k/M suffixes, None as a dash."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float | int):
        return with_unit(float(x), unit)
    return str(x)


def print_table(facts: dict[str, Any], rows: list[dict]) -> None:
    """The rows as a rich table to stderr-free stdout, under the machine facts."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:
        con = Console(width=180)  # a log file or pipe: do not wrap at 80 columns
    con.print(
        f"[bold]memsim bench[/] {facts['date_utc']} UTC  commit {facts['memsim_commit']}  "
        f"{'quick' if facts['quick'] else 'full'}\n"
        f"{facts['cpu']}, {facts['cores']} cores (pinned: {facts['pinned_cpu']}), "
        f"load {' '.join(f'{x:.2f}' for x in facts['loadavg_start'])} -> "
        f"{' '.join(f'{x:.2f}' for x in facts.get('loadavg_end', []))}\n"
        f"python {facts['python']}, numpy {facts['numpy']}, numba {facts['numba']}, "
        f"simpy {facts['simpy']}, libcachesim {facts['libcachesim']}"
    )
    t = Table(show_lines=False)
    for col, just in (
        ("bench", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("baseline", "left"),
        ("baseline value", "right"),
        ("ratio", "right"),
        ("target", "left"),
        ("met", "center"),
        ("value (cpu time)", "right"),
        ("ratio (cpu)", "right"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        met = fmt(r["met"])
        t.add_row(
            r["bench"],
            r["metric"] + (f"\n[dim]{r['note']}[/]" if r.get("note") else ""),
            fmt(r["value"], r["unit"]),
            r["baseline"] or "-",
            fmt(r["baseline_value"], r["unit"]) if r["baseline"] else "-",
            ratio,
            r["target"] or "-",
            f"[red]{met}[/]" if r["met"] is False else met,
            fmt(r.get("value_cpu"), r["unit"]),
            "-" if r.get("ratio_cpu") is None else f"{r['ratio_cpu']:.2f}x",
        )
    con.print(t)
    con.print(
        "[dim]value, baseline value and ratio are over wall-clock time; the cpu columns over "
        "process CPU time (steadier on a shared machine). Targets are checked on wall time.[/]"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected modules, print and/or write the results."""
    for var in THREAD_VARS:  # before numpy or numba is imported (no module here imports them)
        os.environ.setdefault(var, "1")
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    ap.add_argument("--json", metavar="PATH|-", help="write rows and machine facts as JSON")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="modules to run (e.g. model replay)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin single-core modules to")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--list", action="store_true", help="list the modules and exit")
    args = ap.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    names = select(names, args.only)
    args.json_to_stdout = args.json == "-"
    facts = machine_facts(args)
    rows, errors = run_modules(names, args)
    facts["loadavg_end"] = list(os.getloadavg())
    facts["modules"] = names
    if args.json_to_stdout:
        json.dump({"machine": facts, "rows": rows, "errors": errors}, sys.stdout, indent=1)
        print()
    else:
        print_table(facts, rows)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"machine": facts, "rows": rows, "errors": errors}, indent=1) + "\n"
            )
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

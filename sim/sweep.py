"""Sweeps: one base scenario, many variants, run in parallel, one row per run.

A sweep file is YAML::

    base: quickstart.yaml          # a scenario file (relative to the sweep file) or a mapping
    grid:                          # optional: cartesian product over dotted keys
      reclaim.policy: [two_list, clock]
      kvm.mmu_notifiers: [true, false]
    zip:                           # optional: equal-length lists, taken position by position
      host.memory_mib: [512, 384]
      vms.0.count: [2, 3]
    random:                        # optional: n samples from the sweep's own seed
      n: 20
      seed: 0
      keys:
        swap.read_latency_us: {low: 10, high: 1000, log: true}   # also int: true
        reclaim.policy: [two_list, clock]                        # a list: one of its values
    variants:                      # optional: explicit points, each a set of overrides
      - {label: opt, set: {reclaim.policy: opt}}
    seeds: [1, 2]                  # optional: replicate every point

Points are variants x grid x zip rows x random samples x seeds. Every point is validated before
anything runs (a bad point is reported with its index and key). Each run goes to
``<out>/runs/<name>-<config hash>/`` (hash of the resolved config), written atomically, and a
run whose directory already exists is skipped, so an interrupted sweep resumes where it
stopped. Runs go to a local process pool or to a Dask cluster. ``runs.parquet`` has one row per
run: label, swept parameters as columns, status, and the metric row of ``sim.results``.

However a sweep ends, it leaves nothing running and nothing half-written: ``<out>/.lock`` is a
``flock`` only the main process holds (its PID and host are written in it), pool workers die
with the main process (``sim.lifecycle``), and on an interrupt (Ctrl-C, SIGTERM, SIGHUP) the
workers are killed and their temp dirs removed. After a SIGKILL the next start finds the lock
free, says whose it was, and removes the temp dirs of the dead workers.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.config import Scenario, parse_scenario, read_yaml, set_dotted
from sim.errors import ConfigError, UserError
from sim.lifecycle import checkpoint, die_with_parent, pid_alive
from sim.results import (
    check_name,
    check_resumable,
    claim,
    clean_stale,
    metric_row,
    release,
    staged,
    write_atomic,
)

SWEEP_KEYS = {"base", "grid", "zip", "random", "variants", "seeds", "name"}


@dataclass(frozen=True, slots=True)
class Point:
    """One run of a sweep."""

    index: int
    label: str
    params: dict[str, Any]
    scenario: Scenario

    @property
    def run_name(self) -> str:
        """Directory name of this run."""
        return f"{self.scenario.name}-{self.scenario.config_hash()}"


def _fmt(v: Any) -> str:
    """A parameter value as a label fragment."""
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def _expand_zip(path: Path, spec: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``zip``: dotted keys to equal-length lists, one point per position."""
    if not spec:
        return [], [()]
    if not isinstance(spec, dict) or not all(isinstance(v, list) and v for v in spec.values()):
        raise ConfigError(f"{path}: zip: expected a mapping of dotted keys to non-empty lists")
    lengths = {k: len(v) for k, v in spec.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ConfigError(f"{path}: zip: lists must have equal lengths ({shown}); fix the lists")
    return list(spec), list(zip(*spec.values(), strict=True))


def _sample(rng: np.random.Generator, where: str, dist: Any) -> Any:
    """One draw of a ``random`` key: a choice from a list, or a number in [low, high]."""
    if isinstance(dist, list):
        if not dist:
            raise ConfigError(f"{where}: expected a non-empty list of choices or {{low, high}}")
        return dist[int(rng.integers(len(dist)))]
    if not isinstance(dist, dict) or set(dist) - {"low", "high", "log", "int"}:
        raise ConfigError(f"{where}: expected a list of choices or {{low, high, log, int}}")
    low, high = dist.get("low"), dist.get("high")
    num = (int, float)
    if not (isinstance(low, num) and isinstance(high, num)) or isinstance(low, bool) or low > high:
        raise ConfigError(f"{where}: needs numbers low <= high, e.g. {{low: 1, high: 8}}")
    log, as_int = bool(dist.get("log", False)), bool(dist.get("int", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (got {low})")
    u = float(rng.random())
    if log:
        x = float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
    else:
        x = low + u * (high - low)
    if as_int:  # round, then clamp: the ends stay reachable and in range
        return int(min(max(round(x), math.ceil(low)), math.floor(high)))
    return float(f"{x:.6g}")  # short labels; the draw itself is seeded, so still deterministic


def _expand_random(path: Path, spec: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``random``: ``n`` samples over dotted keys, drawn from the sweep's own ``seed`` (not the
    run seeds) so the same file always gives the same points."""
    if not spec:
        return [], [()]
    if not isinstance(spec, dict) or set(spec) - {"n", "seed", "keys"}:
        raise ConfigError(f"{path}: random: expected {{n: 20, seed: 0, keys: {{dotted.key: ...}}}}")
    n, seed, keys = spec.get("n"), spec.get("seed", 0), spec.get("keys")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"{path}: random.n: expected a positive integer (samples), got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{path}: random.seed: expected a non-negative integer, got {seed!r}")
    if not isinstance(keys, dict) or not keys:
        raise ConfigError(f"{path}: random.keys: expected a mapping of dotted keys to ranges")
    rng = np.random.default_rng(seed)
    rows = [
        tuple(_sample(rng, f"{path}: random.keys.{k}", d) for k, d in keys.items())
        for _ in range(n)
    ]
    return list(keys), rows


def read_spec(path: Path, keys: set[str], what: str) -> dict[str, Any]:
    """A sweep or plan file, with unknown top-level keys refused."""
    spec = read_yaml(path)
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; {what} has {', '.join(sorted(keys))}"
        )
    return spec


def load_base(path: Path, base: Any) -> dict[str, Any]:
    """The ``base`` scenario of a sweep or plan file: a file name (relative to it; its stem is
    the default name) or a mapping."""
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        raw = read_yaml(base_path)
        raw.setdefault("name", base_path.stem)
        return raw
    if isinstance(base, dict):
        return copy.deepcopy(base)
    raise ConfigError(f"{path}: base: expected a scenario file name or mapping")


def load_sweep(path: Path) -> tuple[str, list[Point]]:
    """Read a sweep file and expand it into validated points.

    Points are variants x grid x zip rows x random samples x seeds, in that nesting order; a
    variant's ``set`` wins over the axes. Nothing runs unless every point is valid.
    """
    spec = read_spec(path, SWEEP_KEYS, "a sweep")
    raw = load_base(path, spec.get("base"))
    name = str(spec.get("name", path.stem))
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid: expected a mapping of dotted keys to non-empty lists")
    variants = spec.get("variants") or [{}]
    if not isinstance(variants, list):
        raise ConfigError(f"{path}: variants: expected a list of {{label, set}} mappings")
    seeds = spec.get("seeds") or [raw.get("seed", 1)]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: seeds: expected a list of non-negative integers")
    grid_keys = list(grid)
    zip_keys, zip_rows = _expand_zip(path, spec.get("zip"))
    rand_keys, rand_rows = _expand_random(path, spec.get("random"))
    seen: dict[str, str] = {}
    for axis, axis_keys in (("grid", grid_keys), ("zip", zip_keys), ("random", rand_keys)):
        for k in axis_keys:
            if k in seen:
                raise ConfigError(f"{path}: {k} is in both {seen[k]} and {axis}; keep it in one")
            seen[k] = axis
    keys = grid_keys + zip_keys + rand_keys
    combos = [
        g + z + r
        for g in (list(itertools.product(*(grid[k] for k in grid_keys))) or [()])
        for z in zip_rows
        for r in rand_rows
    ]
    points: list[Point] = []
    for vi, var in enumerate(variants):
        if not isinstance(var, dict) or set(var) - {"label", "set"}:
            raise ConfigError(f"{path}: variants[{vi}]: expected {{label: ..., set: {{...}}}}")
        vset = var.get("set") or {}
        for combo in combos:
            for seed in seeds:
                params = {**dict(zip(keys, combo, strict=True)), **vset}
                label = var.get("label") or ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
                where = f"{path}: point {len(points)} ({label or 'base'}, seed {seed})"
                try:
                    pr = copy.deepcopy(raw)
                    for k, v in params.items():
                        set_dotted(pr, k, v, f"{where}: {k}")
                    pr["seed"] = seed
                    sc = parse_scenario(pr, where)
                except UserError as exc:
                    raise ConfigError(str(exc)) from None
                points.append(Point(len(points), label or "base", {**params, "seed": seed}, sc))
    return name, points


def _base_row(point: Point) -> dict[str, Any]:
    return {"index": point.index, "label": point.label, **point.params, "run": point.run_name}


def _cached_row(point: Point, runs_dir: Path) -> dict[str, Any] | None:
    """The row of a run already done, or None. A run directory is only ever created by an
    atomic rename of a finished one, so ``summary.json`` existing means the run is complete."""
    try:
        summary = json.loads((runs_dir / point.run_name / "summary.json").read_text())
    except (OSError, ValueError):  # absent (or damaged by hand): run it, replacing the dir
        return None
    return {**_base_row(point), "status": "cached", **metric_row(summary)}


def _failed_row(point: Point, exc: BaseException) -> dict[str, Any]:
    return {
        **_base_row(point),
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc, limit=5)),
    }


def _run_point(point: Point, runs_dir: Path) -> dict[str, Any]:
    """Worker: run one point into ``runs_dir`` (or find it done); return its row."""
    from sim.engine import run_scenario

    try:
        cached = _cached_row(point, runs_dir)
        if cached is not None:
            return cached
        summary = run_scenario(
            point.scenario, runs_dir / point.run_name, command=["memsim", "sweep"], tidy=False
        ).summary
    except Exception as exc:  # a failed run is a row, not a lost sweep
        return _failed_row(point, exc)
    return {**_base_row(point), "status": "ok", **metric_row(summary)}


def _run_point_shipped(point: Point) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Dask worker: run one point in a private temporary directory and return its row and its
    files, so workers need only the package (no shared filesystem); the client publishes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="memsim-") as tmp:
        row = _run_point(point, Path(tmp))
        run_dir = Path(tmp) / point.run_name
        files = (
            {
                f.relative_to(run_dir).as_posix(): f.read_bytes()
                for f in sorted(run_dir.rglob("*"))
                if f.is_file()
            }
            if row["status"] == "ok"
            else {}
        )
    return row, files


def _publish_files(runs_dir: Path, run_name: str, files: dict[str, bytes]) -> None:
    """Publish a shipped run the way ``run_scenario`` does (its manifest is among the files)."""
    with staged(runs_dir / run_name, "run", tidy=False) as stage:
        for rel, data in files.items():
            (stage.tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage.tmp / rel).write_bytes(data)


WALL_CLOCK_COLUMNS = ("status", "wall_s", "error", "traceback")
"""Columns of ``runs.parquet`` that depend on when and how a sweep ran, not on its configs
(``status`` says cached or ok); everything else is identical for the same sweep file."""


@contextlib.contextmanager
def _sweep_lock(target: Path) -> Iterator[int]:
    """Hold ``target/.lock`` while a sweep runs; yields its file descriptor.

    An advisory ``flock`` that only this process holds (pool workers close the copy they
    inherit), so the kernel drops it when this process dies, however it dies. The file holds
    the holder's PID and host name while held and is emptied on release, so a PID found in a
    lock that can be taken is a sweep that was killed: that is said on stderr, and the sweep
    goes on.
    """
    import fcntl

    path = target / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(_busy(target, path, _lock_holder(fd))) from None
        stale = _lock_holder(fd)
        if stale is not None:
            where = "" if stale[1] == socket.gethostname() else f" on {stale[1]}"
            print(f"removed stale lock of dead sweep PID {stale[0]}{where}", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield fd
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> tuple[int, str] | None:
    """The PID and host written in a lock file, or None if it is empty or unreadable."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").split()
    if len(text) < 2 or not text[0].isdigit():
        return None
    return int(text[0]), text[1]


def _busy(target: Path, path: Path, holder: tuple[int, str] | None) -> str:
    """Why the lock cannot be taken, and what to do about it."""
    if holder is not None and holder[1] == socket.gethostname() and not pid_alive(holder[0]):
        left = _lock_holders(path)
        pids = ", ".join(map(str, left)) or "unknown"
        return (
            f"{target}: the lock of dead sweep PID {holder[0]} is still held by processes it "
            f"left running (PIDs {pids}); stop them, then run again"
        )
    who = f" (PID {holder[0]} on {holder[1]})" if holder is not None else ""
    return (
        f"{target}: another sweep{who} is running in this directory; wait for it to finish "
        "or give a different --out"
    )


def _lock_holders(path: Path) -> list[int]:
    """PIDs of the processes with the lock file open (Linux ``/proc``; empty elsewhere)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    s = fd.stat()
                    if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                        pids.append(int(proc.name))
                        break
    return sorted(pids)


def _init_worker(parent_pid: int, lock_fd: int, lock_id: tuple[int, int]) -> None:
    """Pool worker start: die with the sweep, close the inherited copy of its lock (which
    would otherwise keep the lock held after the sweep died), and leave signals to it (Ctrl-C
    reaches the whole process group; the sweep stops its workers itself)."""
    die_with_parent(parent_pid)
    with contextlib.suppress(OSError):
        st = os.fstat(lock_fd)
        if (st.st_dev, st.st_ino) == lock_id:
            os.close(lock_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _pool_rows(
    points: list[Point], runs_dir: Path, workers: int, lock_fd: int
) -> Iterator[dict[str, Any]]:
    """Rows from a local process pool, as runs finish. On an interrupt (or when the consumer
    stops early) the workers are killed at once; their temp dirs are the caller's to clean."""
    import multiprocessing

    import sim.engine  # noqa: F401  (forked workers inherit it instead of each importing it)

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    st = os.fstat(lock_fd)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(os.getpid(), lock_fd, (st.st_dev, st.st_ino)),
    )
    try:
        futures = {pool.submit(_run_point, p, runs_dir): p for p in points}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as exc:  # a worker died (e.g. OOM-killed): that run failed
                yield _failed_row(futures[fut], exc)
    except BaseException:  # interrupted, or closed early: do not wait for the running runs
        _kill_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL every worker of ``pool`` and wait until they are gone."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(10)


def _dask_rows(
    points: list[Point], runs_dir: Path, address: str, workers: int
) -> Iterator[dict[str, Any]]:
    """Rows from a Dask cluster (``local``: a LocalCluster of ``workers`` processes), as runs
    finish; each run's files come back with its row and are published here."""
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:
        raise UserError(
            "--dask: dask.distributed is not installed; pip install -r requirements.txt"
        ) from None
    with contextlib.ExitStack() as stack:
        if address == "local":
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout="10s"))
            except (OSError, TimeoutError, ValueError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(
                    f"--dask {address}: cannot reach the scheduler ({reason}); give its address "
                    "(tcp://HOST:8786) or use --dask local"
                ) from None
        futures = {client.submit(_run_point_shipped, p, pure=False): p for p in points}
        for fut in dask_completed(list(futures)):
            point = futures[fut]
            try:
                row, files = fut.result()
                if files:
                    _publish_files(runs_dir, point.run_name, files)
            except Exception as exc:  # worker lost, or the files could not be written
                row = _failed_row(point, exc)
            yield row


def run_points(
    points: list[Point],
    target: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    dask: str | None = None,
    kind: str = "sweep",
) -> pd.DataFrame:
    """Run points into ``target/runs/`` (skipping finished ones); write and return ``runs.parquet``.

    The engine under both ``memsim sweep`` and ``memsim plan`` (``kind``): rows come back in
    point order whatever order the workers finish in. Runs go to a local process pool of
    ``workers`` (serially in this process with 1), or with ``dask`` to a Dask cluster:
    ``"local"`` starts a LocalCluster of ``workers`` processes, anything else is a scheduler
    address. Points with the same resolved config run once. ``progress(done, total, failed)``
    is called once after the cache scan (``done`` = runs already finished) and after every run.
    ``target`` must be new, empty, or an earlier directory of this kind (``sim.results.claim``).
    """
    target, state = claim(target, kind)
    try:
        return _run_points(points, target, workers, progress, dask)
    except UserError:  # bad input (e.g. an unreachable scheduler): leave no empty directory
        release(target, state)
        raise


def _run_points(
    points: list[Point],
    target: Path,
    workers: int | None,
    progress: Callable[[int, int, int], None] | None,
    dask: str | None,
) -> pd.DataFrame:
    """``run_points`` once its arguments are settled."""
    runs_dir = target / "runs"
    runs_dir.mkdir(exist_ok=True)
    with _sweep_lock(target) as lock_fd:
        clean_stale(runs_dir)  # what killed runs left; only dead processes' temporaries
        clean_stale(target)
        rows: dict[int, dict[str, Any]] = {}  # position in points -> row
        same: dict[str, list[int]] = {}  # run name -> positions of its points (the first runs)
        for i, p in enumerate(points):
            same.setdefault(p.run_name, []).append(i)
        todo: list[Point] = []
        failed = 0

        def record(row: dict[str, Any]) -> None:
            nonlocal failed
            for i in same[row["run"]]:
                rows[i] = {**row, **_base_row(points[i])}
                failed += row["status"] == "failed"

        for group in same.values():
            cached = _cached_row(points[group[0]], runs_dir)
            if cached is None:
                todo.append(points[group[0]])
            else:
                record(cached)
        if progress:
            progress(len(rows), len(points), failed)
        n = max(1, min(len(todo), workers or os.cpu_count() or 1))
        if dask:
            source: Iterator[dict[str, Any]] = _dask_rows(todo, runs_dir, dask, n)
        elif n == 1:
            source = (_run_point(p, runs_dir) for p in todo)
        else:
            source = _pool_rows(todo, runs_dir, n, lock_fd)
        try:
            with contextlib.closing(source):
                for row in source:
                    record(row)
                    if progress:
                        progress(len(rows), len(points), failed)
                    checkpoint()
        except BaseException:  # interrupted: the stopped workers' temp dirs go too
            clean_stale(runs_dir)
            raise
        df = pd.DataFrame([rows[i] for i in sorted(rows)]).reset_index(drop=True)
        write_atomic(target / "runs.parquet", lambda p: df.to_parquet(p, index=False))
    return df


def run_sweep(
    path: Path,
    out: Path | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    dask: str | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Run every point of a sweep file; returns the sweep directory and ``runs.parquet``."""
    name, points = load_sweep(path)
    check_name(name, str(path))
    target = check_resumable(out or Path("results") / name, "sweep")
    return target, run_points(points, target, workers=workers, progress=progress, dask=dask)

"""Sweeps: one base scenario, many variants, run in parallel, one row per run.

A sweep file is YAML (:class:`SweepSpec`; unknown keys are errors)::

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
        vms.0.vcpus: [1, 2, 4]                                   # a list: one of its values
    variants:                      # optional: explicit points, each a set of overrides
      - {label: opt, set: {reclaim.policy: opt, reclaim.trigger: demand}}
    seeds: [1, 2]                  # optional: replicate every point

Points are variants x grid x zip rows x random samples x seeds (at most ``MAX_POINTS``). A key
is swept by one axis only, and a variant may not set a swept key (or a section holding one):
either would silently replace the other's values. Trace paths are relative to the file that
names them: the base file's own directory for a base file, the sweep file's for everything
written in the sweep file. ``--set`` changes the base scenario (not a key the sweep itself
sets) and ``--seeds`` replaces ``seeds``. Every point is validated before anything runs,
traces included (a bad point is reported with its index and key).

Each run goes to ``<out>/runs/<name>-<config hash>/`` (hash of the resolved config), written
atomically, and a run whose directory already exists is skipped, so an interrupted sweep
resumes where it stopped. Runs go to a local process pool or to a Dask cluster.
``runs.parquet`` has one row per run: label, swept parameters as columns, status, and the
metric row of ``sim.results``.

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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from sim.config import (
    Scenario,
    apply_overrides,
    format_validation_error,
    parse_scenario,
    read_yaml,
    resolve_paths,
    set_dotted,
)
from sim.errors import ConfigError, UserError, clip, shown, shown_path
from sim.lifecycle import checkpoint, die_with_parent, pid_alive
from sim.results import (
    ResultName,
    check_name,
    check_resumable,
    claim,
    clean_stale,
    metric_row,
    release,
    staged,
    write_atomic,
)
from sim.schema import Strict

MAX_POINTS = 10_000  # runs one sweep expands to, and candidates one plan searches

Seed = Annotated[int, Field(ge=0, lt=2**63)]
Values = Annotated[list[Any], Field(min_length=1)]


class RandomRange(Strict):
    """A number drawn uniformly from [low, high] (log-uniformly with ``log``), rounded to an
    integer with ``int``."""

    low: float
    high: float
    log: bool = False
    as_int: bool = Field(False, alias="int")

    @model_validator(mode="after")
    def _range(self) -> RandomRange:
        if self.low > self.high:
            raise ValueError(
                f"needs numbers low <= high (got low={self.low:g}, high={self.high:g}), "
                "e.g. {low: 1, high: 8}"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low:g})")
        if self.as_int and math.floor(self.high) < math.ceil(self.low):
            raise ValueError(f"int: true needs an integer in [{self.low:g}, {self.high:g}]")
        return self


RandomKey = Annotated[
    Annotated[RandomRange, Tag("range")] | Annotated[Values, Tag("choices")],
    Discriminator(
        lambda v: "choices" if isinstance(v, list) else "range" if isinstance(v, dict) else None,
        custom_error_type="random_key",
        custom_error_message="expected a list of choices or {low, high, log, int}",
    ),
]


class RandomSpec(Strict):
    """``n`` samples over dotted keys, drawn from ``seed`` (not the run seeds), so the same
    file always gives the same points."""

    n: int = Field(ge=1, le=MAX_POINTS, description="Samples.")
    seed: Seed = Field(0, description="Seed of the draws.")
    keys: dict[str, RandomKey] = Field(min_length=1, description="Dotted key -> range.")


class Variant(Strict):
    """An explicit point: ``set`` overrides dotted keys of the base."""

    label: str | None = Field(None, max_length=200)
    set: dict[str, Any] = Field(default_factory=dict)


def _base_is_file_or_mapping(v: Any) -> Any:
    if isinstance(v, str) and v or isinstance(v, dict):
        return v
    raise ValueError("expected a scenario file name (relative to this file) or a mapping")


def _check_keys(where: str, keys: Iterable[str]) -> None:
    for k in keys:
        if not all(part.strip() for part in k.split(".")):
            raise ValueError(f"{where}: {shown(k)} is not a dotted key like reclaim.policy")


def _overlap(a: str, b: str) -> bool:
    """Two dotted keys touch the same value (equal, or one a section holding the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class SweepSpec(Strict):
    """A sweep file: one base scenario and the axes and variants that vary it."""

    name: ResultName | None = None
    base: str | dict[str, Any]
    grid: dict[str, Values] = Field(default_factory=dict)
    zip: dict[str, Values] = Field(default_factory=dict)
    random: RandomSpec | None = None
    variants: list[Variant] = Field(default_factory=list, max_length=MAX_POINTS)
    seeds: list[Seed] | None = Field(None, max_length=MAX_POINTS)

    _base = field_validator("base", mode="before")(_base_is_file_or_mapping)

    @model_validator(mode="after")
    def _axes(self) -> SweepSpec:
        lengths = {k: len(v) for k, v in self.zip.items()}
        if len(set(lengths.values())) > 1:
            shown_lengths = ", ".join(f"{clip(k)} has {n}" for k, n in lengths.items())
            raise ValueError(f"zip: lists must have equal lengths ({shown_lengths}); fix the lists")
        for axis, keys in self.axes().items():
            _check_keys(axis, keys)
        sets = [(f"variants[{i}].set", k) for i, v in enumerate(self.variants) for k in v.set]
        for where, k in [(a, k) for a, ks in self.axes().items() for k in ks] + sets:
            if _overlap(k, "seed"):
                raise ValueError(
                    f"{where}: {clip(k)}: every run's seed comes from seeds (or --seeds), "
                    "which would replace it; list the seeds there"
                )
        seen: dict[str, str] = {}
        for axis, keys in self.axes().items():
            for k in keys:
                other = next((o for o in seen if _overlap(o, k)), None)
                if other is not None:
                    both = clip(k) if other == k else f"{clip(other)} and {clip(k)}"
                    raise ValueError(
                        f"{both} is in both {seen[other]} and {axis}; keep it in one"
                        if other == k
                        else f"{both} overlap ({seen[other]}, {axis}); keep one"
                    )
                seen[k] = axis
        for i, var in enumerate(self.variants):
            _check_keys(f"variants[{i}].set", var.set)
            for k in var.set:
                hit = next((o for o in seen if _overlap(o, k)), None)
                if hit is not None:
                    raise ValueError(
                        f"variants[{i}].set: {clip(k)} is also swept by {seen[hit]} "
                        f"({clip(hit)}); a variant may not override an axis: drop one of them"
                    )
        return self

    def axes(self) -> dict[str, list[str]]:
        """Swept keys per axis (grid, zip, random)."""
        return {
            "grid": list(self.grid),
            "zip": list(self.zip),
            "random": list(self.random.keys) if self.random else [],
        }

    def set_keys(self) -> dict[str, str]:
        """Every key the sweep sets, and where (for refusing ``--set`` on them)."""
        out = {k: axis for axis, keys in self.axes().items() for k in keys}
        for i, var in enumerate(self.variants):
            for k in var.set:
                out.setdefault(k, f"variants[{i}]")
        return out


def read_spec(path: Path, model: type[BaseModel]) -> tuple[dict[str, Any], Any]:
    """A sweep or plan file: its raw mapping and the validated ``model`` of it."""
    raw = read_yaml(path)
    try:
        return raw, model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, raw, shown_path(path), model)) from None


def load_base(path: Path, base: str | dict[str, Any]) -> dict[str, Any]:
    """The ``base`` scenario of a sweep or plan file, its trace paths resolved against the
    file that names them: a file name (relative to the sweep file; its stem is the default
    name), or a mapping (written in the sweep file, so relative to it)."""
    if isinstance(base, str):
        base_path = path.parent / base
        raw = resolve_paths(read_yaml(base_path), base_path.parent)
        raw.setdefault("name", base_path.stem)
        return raw
    return resolve_paths(copy.deepcopy(base), path.parent)


def apply_base_overrides(
    path: Path, raw: dict[str, Any], overrides: list[str], taken: dict[str, str]
) -> dict[str, Any]:
    """``--set`` on a sweep or plan file: applied to the base scenario (paths relative to the
    current directory), refused for a key the file itself varies (``taken``: key -> where),
    since the file's value would silently win."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "seed":
            raise ConfigError(
                f"--set seed: {shown_path(path)} gives every run its seed from its seeds; "
                "use --seeds"
            )
        hit = next((k for k in taken if _overlap(k, key)), None)
        if hit is not None:
            raise ConfigError(
                f"--set {clip(key)}: {shown_path(path)} sets {clip(hit)} itself "
                f"({taken[hit]}); --set changes only the base scenario: edit the file instead"
            )
    return resolve_paths(apply_overrides(raw, overrides), Path.cwd())


def parse_seeds(text: str) -> list[int]:
    """``--seeds 1,2,3``, ``--seeds 1-5`` or both (``1-3,7``): distinct seeds, in order."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise UserError(
                f"--seeds {shown(text)}: expected seeds like 1,2,3 or a range like 1-5"
            ) from None
        if not 0 <= a <= b < 2**63:
            raise UserError(f"--seeds {shown(text)}: {part.strip()} is not a range of seeds >= 0")
        if b - a + 1 + len(seeds) > MAX_POINTS:
            raise UserError(f"--seeds {shown(text)}: more than {MAX_POINTS:,} seeds")
        seeds.extend(range(a, b + 1))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {shown(text)}: a seed is given twice")
    return seeds


def check_points(path: Path, n: int, what: str = "points") -> None:
    """Refuse an expansion of more than :data:`MAX_POINTS` runs before building it."""
    if n > MAX_POINTS:
        raise ConfigError(
            f"{shown_path(path)}: {n:,} {what}; at most {MAX_POINTS:,} (split the sweep or "
            "use fewer values or seeds)"
        )


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
        return json.dumps(v, default=str)
    return str(v).lower() if isinstance(v, bool) else str(v)


def _sample(rng: np.random.Generator, dist: RandomRange | list[Any]) -> Any:
    """One draw of a ``random`` key: a choice from a list, or a number in [low, high]."""
    if isinstance(dist, list):
        return dist[int(rng.integers(len(dist)))]
    low, high = dist.low, dist.high
    u = float(rng.random())
    if dist.log:
        x = float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
    else:
        x = low + u * (high - low)
    if dist.as_int:  # round, then clamp: the ends stay reachable and in range
        return int(min(max(round(x), math.ceil(low)), math.floor(high)))
    return float(f"{x:.6g}")  # short labels; the draw itself is seeded, so still deterministic


def _random_rows(spec: RandomSpec | None) -> list[tuple[Any, ...]]:
    if spec is None:
        return [()]
    rng = np.random.default_rng(spec.seed)
    return [tuple(_sample(rng, d) for d in spec.keys.values()) for _ in range(spec.n)]


def _uniform_params(points: list[Point]) -> list[Point]:
    """Parameter values as ``runs.parquet`` can hold them: a key whose values are not all of
    one plain type (or are lists or mappings) is shown as text in every row."""
    kinds: dict[str, set[type]] = {}
    for p in points:
        for k, v in p.params.items():
            kinds.setdefault(k, set()).add(type(v))
    plain = {bool, int, float, str}
    mixed = {k for k, ts in kinds.items() if len(ts) > 1 or not ts <= plain}
    if not mixed:
        return points
    return [
        Point(
            p.index,
            p.label,
            {k: _fmt(v) if k in mixed else v for k, v in p.params.items()},
            p.scenario,
        )
        for p in points
    ]


def load_sweep(
    path: Path, overrides: list[str] | None = None, seeds: list[int] | None = None
) -> tuple[str, list[Point]]:
    """Read a sweep file and expand it into validated points.

    Points are variants x grid x zip rows x random samples x seeds, in that nesting order; a
    variant's ``set`` may not touch a swept key. ``overrides`` (``--set``) change the base
    scenario, ``seeds`` (``--seeds``) replace the file's seeds. Nothing runs unless every
    point is valid, including the traces it replays (a bounded read of each).
    """
    from sim.checks import Cache, check_traces

    _, spec = read_spec(path, SweepSpec)
    raw = load_base(path, spec.base)
    if overrides:
        raw = apply_base_overrides(path, raw, overrides, spec.set_keys())
    name = spec.name or path.stem
    seeds = seeds or spec.seeds or [raw.get("seed", 1)]
    variants = spec.variants or [Variant()]
    grid_keys, zip_keys = list(spec.grid), list(spec.zip)
    rand_keys = list(spec.random.keys) if spec.random else []
    n_zip = len(next(iter(spec.zip.values()))) if spec.zip else 1
    n_rand = spec.random.n if spec.random else 1
    n = len(variants) * math.prod(len(v) for v in spec.grid.values()) * n_zip * n_rand
    check_points(path, n * len(seeds))
    zip_rows = list(zip(*spec.zip.values(), strict=True)) if spec.zip else [()]
    keys = grid_keys + zip_keys + rand_keys
    combos = [
        g + z + r
        for g in (list(itertools.product(*(spec.grid[k] for k in grid_keys))) or [()])
        for z in zip_rows
        for r in _random_rows(spec.random)
    ]
    source = shown_path(path)
    cache: Cache = {}
    points: list[Point] = []
    for var in variants:
        for combo in combos:
            for seed in seeds:
                params = {**dict(zip(keys, combo, strict=True)), **var.set}
                label = var.label or ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
                where = f"{source}: point {len(points)} ({clip(label or 'base')}, seed {seed})"
                try:
                    pr = copy.deepcopy(raw)
                    for k, v in params.items():
                        set_dotted(pr, k, v, f"{where}: {clip(k)}")
                    pr = resolve_paths(pr, path.parent)
                    pr["seed"] = seed
                    sc = parse_scenario(pr, where)
                    check_traces(sc, where, full=False, cache=cache)
                except UserError as exc:
                    raise ConfigError(str(exc)) from None
                points.append(Point(len(points), label or "base", {**params, "seed": seed}, sc))
    return name, _uniform_params(points)


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


def check_dask_address(address: str) -> None:
    """Refuse a ``--dask`` address that cannot name a scheduler, before anything is printed or
    started (reaching it is tried when the runs start)."""
    if address == "local":
        return
    try:
        from distributed.comm.addressing import parse_address, parse_host_port

        scheme, loc = parse_address(address)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(loc)
    except ImportError:
        raise UserError(
            "--dask: dask.distributed is not installed; pip install -r requirements.txt"
        ) from None
    except ValueError as exc:
        raise UserError(
            f"--dask {address}: not a scheduler address ({str(exc).splitlines()[0]}); give one "
            "like tcp://HOST:8786, or local for a cluster on this machine"
        ) from None


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
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Run every point of a sweep file; returns the sweep directory and ``runs.parquet``."""
    name, points = load_sweep(path, overrides, seeds)
    check_name(name, str(path))
    target = check_resumable(out or Path("results") / name, "sweep")
    return target, run_points(points, target, workers=workers, progress=progress, dask=dask)

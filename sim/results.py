"""Result directories: the one place that publishes, replaces, resumes into and cleans up what
memsim writes, and the flat rows every table of results is read from.

Every command that writes results goes through this module:

- **Publishing** (``run``, ``mrc``, ``report``): :func:`staged` builds the directory in a
  hidden temporary sibling, ``.NAME.memsim-tmp-HOST-PID`` (HOST: 8 hex digits of the host
  name's hash), and renames it into place in one step, so it is complete or absent.
- **Recognising**: every result directory holds ``manifest.json`` with a marker
  ``"memsim": {"kind": KIND, "format": 1}`` and, for published kinds, the list of files it was
  published with. A published directory may replace only an earlier memsim directory of the
  same kind that still holds nothing but its listed files, temporaries and memsim result
  subdirectories (a ``report/``); or a directory that is empty or absent. Anything else is
  refused with a one-line :class:`OutputError` before any work is done, and nothing is touched.
  An ``--out`` that is a symbolic link, the current directory or one of its parents, or a name
  that looks like a memsim temporary is refused too: deletion never goes through a link.
- **Resuming** (``sweep``, ``plan``): :func:`claim` accepts an absent or empty directory, an
  earlier one of the same kind, or one in the layout sweeps had before manifests; it is never
  replaced wholesale, and files are added to it only by atomic renames (:func:`write_atomic`).
- **Cleaning**: :func:`clean_stale` removes temporaries left by killed processes: only names of
  the pattern above, made on this host, whose PID is no longer alive; never a symbolic link.
- **Rows**: :func:`vm_rows`, :func:`host_row` and :func:`metric_row` flatten ``summary.json``
  (nested counters become ``faults_major``, ``notifier_clear_flush_young``); the CLI table, the
  sweep's ``runs.parquet``, the plan's metrics and the report all read them.

It imports nothing from the simulator but its errors and process helpers, so ``analysis`` may
use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

from sim.errors import ConfigError, UserError
from sim.lifecycle import checkpoint, pid_alive

__all__ = [
    "FRACTION_METRICS",
    "MANIFEST",
    "NAME_PATTERN",
    "ResultName",
    "valid_name",
    "OutputError",
    "check_name",
    "check_resumable",
    "check_target",
    "claim",
    "clean_stale",
    "host_row",
    "is_temp_name",
    "kind_of",
    "metric_row",
    "read_manifest",
    "release",
    "resolve_out",
    "staged",
    "temp_name",
    "versions",
    "vm_rows",
    "write_atomic",
    "write_manifest",
]

MANIFEST = "manifest.json"
FORMAT = 1
KINDS = ("run", "mrc", "report", "sweep", "plan", "calibrate")
RESUMABLE = ("sweep", "plan")
RUN_FILES = frozenset(
    {
        "summary.json",
        "config.yaml",
        MANIFEST,
        "evictions.parquet",
        "faults.parquet",
        "timeline.parquet",
    }
)
"""What a run directory held before manifests listed their files."""
LEGACY_RESUMABLE = frozenset(
    {"runs", "runs.parquet", ".lock", "plan.json", "plan.parquet", "capacity.png", "report"}
)
"""What a sweep or plan directory held before it had a manifest."""
_LEGACY_TEMP = re.compile(r"^\..+\.(tmp|old)(-[0-9]+)?$|^[^.].*\.tmp$")
TEMP_RE = re.compile(
    r"^\.(?P<name>.+)\.memsim-(?P<what>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)$"
)
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
MAX_NAME = 200
NAME_MAX = 255  # bytes in one path component (Linux, macOS)
_TEMP_OVERHEAD = len(".") + len(".memsim-tmp-") + 8 + len("-") + 7


class OutputError(UserError):
    """An output path cannot be used (it holds other files, is a link, cannot be written)."""


# --------------------------------------------------------------------------------------------
# names


@cache
def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(name: str, what: str = "tmp") -> str:
    """The hidden name under which this process builds (``tmp``) or retires (``old``) ``name``."""
    return f".{name}.memsim-{what}-{_host()}-{os.getpid()}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` has the shape of a memsim temporary (from any host or process)."""
    return TEMP_RE.fullmatch(name) is not None


_NAME_RULE = (
    f"expected letters, digits, '_', '.' and '-' (not first), at most {MAX_NAME} characters: "
    "it names a directory under results/"
)


def valid_name(name: str) -> str:
    """``name`` if it is safe as one directory under ``results/`` (a pydantic validator: raises
    ValueError with the rule)."""
    if not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and len(name) <= MAX_NAME):
        raise ValueError(f"{name!r}: {_NAME_RULE}")
    return name


ResultName = Annotated[str, AfterValidator(valid_name)]


def check_name(name: str, where: str) -> str:
    """A sweep or plan ``name`` that is safe as one directory under ``results/``."""
    try:
        return valid_name(name)
    except ValueError as exc:
        raise ConfigError(f"{where}: name {exc}") from None


# --------------------------------------------------------------------------------------------
# manifests


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import sim

    out = {"memsim": sim.__version__, "python": platform.python_version()}
    for pkg in ("numpy", "simpy", "pandas", "pyarrow", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_manifest(
    directory: Path,
    kind: str,
    *,
    command: list[str] | None = None,
    started: float | None = None,
    wall_s: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Write ``manifest.json`` last into a directory being built: the kind marker, ``fields``,
    how and where it was made, and (published kinds) the files it holds."""
    assert kind in KINDS, kind
    manifest: dict[str, Any] = {"memsim": {"kind": kind, "format": FORMAT}, **fields}
    manifest["command"] = command if command is not None else sys.argv
    manifest["versions"] = versions()
    manifest["platform"] = platform.platform()
    if started is not None:
        manifest["started_unix"] = round(started, 3)
    if wall_s is not None:
        manifest["wall_s"] = round(wall_s, 3)
    if kind not in RESUMABLE:
        manifest["files"] = sorted({*os.listdir(directory), MANIFEST})
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a directory, or None if it has no readable one."""
    try:
        with open(directory / MANIFEST, "rb") as fh:
            data = fh.read(1 << 20)
        manifest = json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) else None


def kind_of(manifest: dict[str, Any] | None) -> str | None:
    """The kind of memsim result a manifest marks (run manifests from before the marker have
    ``config_hash`` and the memsim version), or None if it is not memsim's."""
    if manifest is None:
        return None
    marker = manifest.get("memsim")
    if isinstance(marker, dict) and marker.get("kind") in KINDS:
        return str(marker["kind"])
    vers = manifest.get("versions")
    if isinstance(vers, dict) and "memsim" in vers and "config_hash" in manifest:
        return "run"
    return None


# --------------------------------------------------------------------------------------------
# output paths


def resolve_out(out: Path) -> Path:
    """The absolute path of an output directory, its last component not followed.

    Refused: a symbolic link (memsim never writes or deletes through one: give the directory it
    points to), the current directory or one of its parents, a name shaped like a memsim
    temporary, and a name too long to build beside it.
    """
    out = Path(out)
    size = len(os.fsencode(out.name))
    if size > NAME_MAX - _TEMP_OVERHEAD:
        raise OutputError(
            f"{out}: name is {size} bytes; at most {NAME_MAX - _TEMP_OVERHEAD} fit beside its "
            "temporary; choose a shorter --out"
        )
    if out.name in ("", ".", ".."):
        real = out.resolve()
    else:
        if out.is_symlink():
            raise OutputError(
                f"{out}: is a symbolic link; memsim does not write through links: give the "
                f"directory it points to ({os.path.realpath(out)}) or another --out"
            )
        real = out.parent.resolve() / out.name
    with contextlib.suppress(OSError):  # the current directory may be gone
        cwd = Path.cwd().resolve()
        if real == cwd or real in cwd.parents:
            raise OutputError(
                f"{out}: is the current directory or one of its parents; give a new or empty "
                "directory with --out"
            )
    if is_temp_name(real.name):
        raise OutputError(
            f"{out}: the name has the shape of a memsim temporary directory (which is removed "
            "once its process is gone); choose another --out"
        )
    above = next((p for p in real.parents if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():  # found now, not after the run
        raise OutputError(
            f"{out}: cannot write results here: {above} is a file, not a directory; choose "
            "another --out"
        )
    return real


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a parent is a file, not a directory",
    errno.EEXIST: "a parent is a file, not a directory",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMLINK: "too many entries in the parent directory",
}


@contextlib.contextmanager
def output_errors(out: Path) -> Iterator[None]:
    """Turn an OS error about ``out`` (or the directory it goes in) into one line naming it."""
    try:
        yield
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0)
        if reason is None or not _about(exc, Path(out)):
            raise
        raise OutputError(
            f"{out}: cannot write results here: {reason}; choose another --out"
        ) from None


def _about(exc: OSError, out: Path) -> bool:
    """Whether an OS error concerns ``out``: the directory, a parent of it, something in it, or
    its temporary sibling (an input file that happens to lie beside it is not)."""
    if exc.filename is None:  # e.g. pyarrow's write errors: nothing but the output is written
        return True
    name = Path(os.path.abspath(os.fsdecode(exc.filename)))
    target = Path(os.path.abspath(out))
    return (
        target.is_relative_to(name)
        or name.is_relative_to(target)
        or (name.parent == target.parent and is_temp_name(name.name))
        or any(p.parent == target.parent and is_temp_name(p.name) for p in name.parents)
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _why_not_replaceable(path: Path, kind: str) -> str | None:
    """None if ``path`` is an earlier memsim result of ``kind`` that may be replaced whole;
    otherwise why not, as the end of a sentence starting with the path."""
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "exists and is not a directory"
    entries = sorted(os.listdir(path))
    if not entries:
        return None
    manifest = read_manifest(path)
    found = kind_of(manifest)
    if found is None:
        return f"exists and is not a memsim result directory (it holds {_listing(entries)})"
    if found != kind:
        return f"is a memsim {found} directory, not a {kind} result"
    assert manifest is not None
    listed = manifest.get("files")
    known = set(listed) if isinstance(listed, list) else RUN_FILES
    foreign = [e for e in entries if e not in known and not is_temp_name(e)]
    foreign = [e for e in foreign if not _is_result_subdir(path / e)]
    if foreign:
        return (
            f"is a memsim {kind} directory but also holds {_listing(foreign)}, which memsim "
            "did not write; move that out first or choose another --out"
        )
    return None


def _is_result_subdir(path: Path) -> bool:
    """A published memsim result inside another (``memsim report RUN`` writes ``RUN/report/``)
    that could itself be replaced."""
    if path.is_symlink() or not path.is_dir():
        return False
    kind = kind_of(read_manifest(path))
    return kind is not None and kind not in RESUMABLE and _why_not_replaceable(path, kind) is None


def _refuse(out: Path, why: str) -> OutputError:
    if "; " not in why:  # the reason names no fix of its own
        why += "; choose another --out or remove it"
    return OutputError(f"{out}: {why}")


def _checked(out: Path, kind: str, why_not: Callable[[Path, str], str | None]) -> Path:
    """The resolved ``out``, or an OutputError saying ``why_not`` (None: usable)."""
    with output_errors(out):
        target = resolve_out(out)
        if os.path.lexists(target):
            why = why_not(target, kind)
            if why is not None:
                raise _refuse(out, why)
    return target


def check_target(out: Path, kind: str) -> Path:
    """The resolved ``out`` if a result of ``kind`` may be published there; writes nothing."""
    return _checked(out, kind, _why_not_replaceable)


@dataclass(frozen=True)
class Stage:
    """A directory being built (``tmp``) and where it will be published (``target``)."""

    tmp: Path
    target: Path


@contextlib.contextmanager
def staged(out: Path, kind: str, *, tidy: bool = True) -> Iterator[Stage]:
    """Build a result directory of ``kind`` in a temporary sibling of ``out``; publish it as
    ``out`` when the block ends (the block writes its manifest last, :func:`write_manifest`).

    ``out`` is checked first, so a refused target costs no work. On any exception or interrupt
    the temporary is removed and nothing else is touched. With ``tidy``, stale temporaries of
    dead processes beside ``out`` are removed first (a sweep, which cleans its ``runs/`` once
    under its lock, passes False).
    """
    with output_errors(out):
        target = check_target(out, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        if tidy:
            clean_stale(target.parent)
    tmp = target.parent / temp_name(target.name)
    try:  # from before it exists: an interrupt right after mkdir must not leave it behind
        with output_errors(out):
            shutil.rmtree(tmp, ignore_errors=True)  # this PID's own leftover: PIDs are reused
            tmp.mkdir()
            yield Stage(tmp, target)
            checkpoint()  # nothing is published after a signal, even one whose exception was lost
            _publish(tmp, target, kind, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path, kind: str, out: Path) -> None:
    """Rename ``tmp`` to ``target``: directly if ``target`` is absent or an empty directory
    (rename replaces an empty directory in one step), else by retiring an earlier result."""
    if kind_of(read_manifest(tmp)) != kind:
        raise RuntimeError(f"{tmp}: no {kind} manifest; write_manifest must come last")
    try:
        os.rename(tmp, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    why = _why_not_replaceable(target, kind)
    if why is not None:  # it changed since the check
        raise _refuse(out, why)
    old = target.parent / temp_name(target.name, "old")
    os.rename(target, old)
    try:
        why = _why_not_replaceable(old, kind)
        if why is not None:  # swapped for something else between the check and the rename
            raise _refuse(out, why)
        os.rename(tmp, target)
    except BaseException:  # refused or interrupted: the earlier result goes back
        if not os.path.lexists(target):
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def claim(out: Path, kind: str, **fields: Any) -> tuple[Path, str]:
    """Make ``out`` a sweep or plan directory to resume into; returns it and what it was:
    ``"created"``, ``"empty"`` or ``"resumed"`` (for :func:`release`). Accepted: an absent or
    empty directory, an earlier one of the same kind, or one holding only what a sweep or plan
    wrote before directories had manifests. ``fields`` go into the manifest written first."""
    assert kind in RESUMABLE, kind
    with output_errors(out):
        target = check_resumable(out, kind)
        state = "created"
        if os.path.lexists(target):
            state = "resumed" if os.listdir(target) else "empty"
        target.mkdir(parents=True, exist_ok=True)
        runs = target / "runs"
        if runs.is_symlink() or (os.path.lexists(runs) and not runs.is_dir()):
            raise _refuse(out, "holds a runs entry that is not a directory")
        if read_manifest(target) is None:
            write_manifest(target, kind, started=time.time(), **fields)
    return target, state


def check_resumable(out: Path, kind: str) -> Path:
    """The resolved ``out`` if :func:`claim` would accept it for ``kind``; writes nothing."""
    return _checked(out, kind, _why_not_resumable)


def _why_not_resumable(path: Path, kind: str) -> str | None:
    if not path.is_dir():
        return "exists and is not a directory"
    entries = sorted(os.listdir(path))
    if not entries:
        return None
    found = kind_of(read_manifest(path))
    if found == kind:
        return None
    if found is not None:
        return f"is a memsim {found} directory, not a {kind} directory"
    foreign = [
        e
        for e in entries
        if e not in LEGACY_RESUMABLE and not is_temp_name(e) and not _LEGACY_TEMP.fullmatch(e)
    ]
    if {"runs", ".lock"} & set(entries) and not foreign:
        return None
    return f"exists and is not a memsim {kind} directory (it holds {_listing(foreign or entries)})"


def release(target: Path, state: str) -> None:
    """Undo :func:`claim` (which returned ``state``) if nothing was run: remove the manifest,
    the lock and the empty ``runs/``, then the directory if claim created it. A directory with
    anything else in it (a finished run, a file someone put there) is left whole."""
    if state == "resumed":
        return
    clean_stale(target / "runs")
    clean_stale(target)
    with contextlib.suppress(OSError):
        if set(os.listdir(target)) - {MANIFEST, ".lock", "runs"} or os.listdir(target / "runs"):
            return
    for name in (MANIFEST, ".lock"):
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    for d in (target / "runs", target) if state == "created" else (target / "runs",):
        with contextlib.suppress(OSError):
            d.rmdir()


def write_atomic(path: Path, data: bytes | str | Callable[[Path], None]) -> None:
    """Write a file under a temporary name beside it, then rename it into place: readers see
    the old file or the new one, never half of one. ``data`` may be a writer of a path."""
    tmp = path.parent / temp_name(path.name)
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def clean_stale(directory: Path) -> list[str]:
    """Remove the temporaries in ``directory`` that dead processes of this host left (killed
    halfway); return their names. Nothing else is ever removed, and links are never followed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = TEMP_RE.fullmatch(entry.name)
        if m is None or m["host"] != _host() or pid_alive(int(m["pid"])):
            continue
        if entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        removed.append(entry.name)
    return removed


# --------------------------------------------------------------------------------------------
# flat rows


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# metrics that are fractions (shown as percentages by the CLI, plans and figures)
FRACTION_METRICS = frozenset(
    {
        "stall_mean_p99_vms",
        "stall_max",
        "stall_mean",
        "stall_window_p99",
        "stall_window_max",
        "promotion_rate_per_min",
        "memcg_worst_stall_fraction",
    }
)

MEMCG_EVENT_KEYS = ("memcg_low", "memcg_high", "memcg_max", "memcg_oom", "memcg_swap_max")
"""vmstat keys of ``memory.events`` (runs with a memcg only)."""


def vm_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per VM of ``summary.json``: its scalars, and nested counters prefixed
    (``faults_major``)."""
    return [_flat(v) for v in summary["vms"]]


def host_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The host part of ``summary.json`` flat: ``notifier_clear_flush_young``,
    ``swap_exhausted``, ``wmark_low``, ``vmstat_pswpout``; ``oom_kills`` stays a list."""
    return _flat(summary["host"])


def metric_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's row of ``runs.parquet``: its totals over VMs and the host's counters, from the
    warm-up's end (``warmup_ns``; summaries from before it had none: the whole run)."""
    vms = vm_rows(summary)
    host = host_row(summary)
    faults = {k: sum(v[k] for v in vms) for k in vms[0] if k.startswith("faults_")}
    stall = sum(v["stall_ns"] for v in vms)
    run = sum(v["stall_ns"] + v["compute_ns"] for v in vms)
    warmup_ns = summary.get("warmup_ns", 0)
    measured_s = (summary["sim_time_ns"] - warmup_ns) / 1e9
    after = "vmstat_after_warmup_" if "vmstat_after_warmup_pswpin" in host else "vmstat_"
    out = {
        "policy": summary["policy"],
        # guest RAM / host memory, so sweeps over either axis group the same way
        "overcommit": round(sum(v["memory_pages"] for v in vms) / host["memory_pages"], 6),
        "accesses": sum(v["accesses"] for v in vms),
        **faults,
        "misses": faults["faults_first_touch"] + faults["faults_major"],
        "major_faults_per_s": faults["faults_major"] / measured_s if measured_s else 0.0,
        "refaults": sum(v["refaults"] for v in vms),
        "stall_fraction": stall / run if run else 0.0,
        "major_latency_p99_ns": host.get("fault_latency_ns_major_p99"),
        "pswpin": host[after + "pswpin"],
        "pswpout": host[after + "pswpout"],
        "tlb_flushes": host[after + "remote_tlb_flush"],
        "notifier_calls": sum(v for k, v in host.items() if k.startswith(after + "mmu_notifier_")),
        "oom_kills": len(host["oom_kills"]),
        "warmup_ns": warmup_ns,
        "sim_time_ns": summary["sim_time_ns"],
        "wall_s": summary["wall_s"],
    }
    q = summary.get("quality")
    if q:
        out.update({k: q[k] for k in ("opt_faults", "lru_faults", "opt_gap", "lru_gap")})
    out.update(memcg_columns(summary, host, after))
    return out


def memcg_columns(summary: dict[str, Any], host: dict[str, Any], after: str) -> dict[str, Any]:
    """A memcg run's columns (none without memcgs): ``memory.events`` summed over every VM
    (``memcg_max``: charges that hit a memory.max, ...; nonzero means some VM hit that limit),
    and the worst memcg VM: the one with the highest stall fraction, the figure a VM's SLO
    breaks on first, with its stall, major faults per second, reclaim (``pgscan``/``pgsteal``:
    its share of kswapd, direct and limit reclaim) and its own ``memory.events`` high and max.
    Everything counts from the warm-up's end, as the rest of the row."""
    cgs = [v for v in summary["vms"] if v.get("memcg")]
    if not cgs:
        return {}
    out: dict[str, Any] = {k: host.get(after + k, 0) for k in MEMCG_EVENT_KEYS}
    worst = max(cgs, key=lambda v: v["stall_fraction"])  # the first on ties: VM order
    cg = worst["memcg"]
    vs = cg.get("vmstat_after_warmup", worst["vmstat"])  # older summaries: whole-run

    def both(kind: str) -> int:
        return int(vs.get(f"{kind}_kswapd", 0) + vs.get(f"{kind}_direct", 0))

    out.update(
        {
            "memcg_worst_vm": worst["name"],
            "memcg_worst_stall_fraction": worst["stall_fraction"],
            "memcg_worst_major_faults_per_s": worst["major_faults_per_s"],
            "memcg_worst_pgscan": both("pgscan"),
            "memcg_worst_pgsteal": both("pgsteal"),
            "memcg_worst_high": int(vs.get("memcg_high", 0)),
            "memcg_worst_max": int(vs.get("memcg_max", 0)),
        }
    )
    return out

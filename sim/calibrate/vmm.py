"""Build and run the calibration VMM (``vmm.c``): feed it a stream, parse what it reports.

Models
    One run of a real KVM guest (or, with ``plain=True``, of this machine's own process over
    an mmap of the same size) replaying a :class:`~sim.calibrate.streams.StreamSpec`. The C
    source ships in the repository and is compiled with the system C compiler on first use
    into a cache directory keyed by the source's hash, so an edited source is rebuilt.

Errors
    Every failure a user can meet (no C compiler, no ``/dev/kvm``, a compile error, the VMM
    stopping with a message) is a :class:`CalibrateError` with one line. Only the VMM process
    this module started is ever killed (on a timeout or an interrupt), by its own pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.calibrate.streams import Chunks, StreamSpec, data_pages, write_stream
from sim.errors import UserError
from sim.results import write_atomic

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sim.calibrate.host import Cgroup

SOURCE = Path(__file__).with_name("vmm.c")
KVM_DEVICE = "/dev/kvm"
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror")
DEFAULT_CHUNK = 1 << 17  # accesses per guest exit: an exit costs ~60-80 us under PVM
STDERR_LIMIT = 4096  # bytes of the VMM's stderr kept for the error line
MAX_PHASE_BOUNDARIES = 15  # the VMM's static snapshot slots


class CalibrateError(UserError):
    """The calibration VMM cannot be built or run; the message is one line.

    ``cgroup`` holds the :class:`CgroupReport` of a run in a cgroup that failed (an OOM kill
    is a result too), else None.
    """

    cgroup: CgroupReport | None = None


@dataclass(frozen=True)
class CgroupReport:
    """The memory cgroup a run was confined to, read by the harness before and after the run.

    Unlike the VMM's own ``memcg_stat_delta`` (the access loop alone) this spans the whole
    process, start-up and exit included. ``stat_delta`` holds the memory.stat entries that
    changed; ``max_usage_bytes`` and ``failcnt`` count from the cgroup's creation (so from
    the run's start, in a fresh cgroup); ``oom_kills`` is the change in memory.oom_control's
    ``oom_kill``; ``exit_signal`` the signal that ended the VMM (9 after an OOM kill), if one did.
    """

    path: str
    stat_before: dict[str, int]
    stat_after: dict[str, int]
    stat_delta: dict[str, int]
    max_usage_bytes: int
    memsw_max_usage_bytes: int
    failcnt: int
    oom_kills: int
    exit_signal: int | None

    @property
    def oom_killed(self) -> bool:
        """Whether the cgroup's OOM killer ended the VMM."""
        return self.oom_kills > 0 and self.exit_signal == 9


def cache_dir() -> Path:
    """Where the compiled VMM lives: ``$MEMSIM_CACHE`` or ``$XDG_CACHE_HOME/memsim``."""
    if env := os.environ.get("MEMSIM_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memsim"


def compiler() -> str | None:
    """The system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``), or None."""
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        if found := shutil.which(name):
            return found
    return None


def kvm_usable() -> bool:
    """Whether ``/dev/kvm`` exists and this process may open it read-write."""
    return os.access(KVM_DEVICE, os.R_OK | os.W_OK)


def build(force: bool = False) -> Path:
    """Compile ``vmm.c`` unless a binary of this exact source is cached; return its path.

    The binary is written under a temporary name and renamed (:func:`sim.results.write_atomic`),
    so concurrent first uses (two test workers, say) never run a half-written file.
    """
    if not SOURCE.is_file():
        raise CalibrateError(f"the VMM source {SOURCE} is missing")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / f"vmm-{digest}"
    if out.is_file() and not force:
        return out
    cc = compiler()
    if cc is None:
        raise CalibrateError("no C compiler found (set CC or install cc/gcc) to build the VMM")
    out.parent.mkdir(parents=True, exist_ok=True)

    def compile_to(tmp: Path) -> None:
        done = subprocess.run(
            [cc, *CFLAGS, "-o", str(tmp), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            first = next((ln for ln in done.stderr.splitlines() if "error" in ln), "")
            raise CalibrateError(f"building the VMM with {cc} failed: {first.strip()[:300]}")

    write_atomic(out, compile_to)
    return out


@dataclass(frozen=True)
class PhaseResult:
    """One phase of a run: from one ``phase_at`` boundary (or the start) to the next (or the end).

    The VMM snapshots its counters between two chunks, so a phase holds exactly ``accesses``
    accesses. The phases' ``accesses``, ``loop_ns`` and counter deltas add up to the run's;
    ``wall_ns`` and the faults leave out the snapshots' own reads, so they may add up to less.
    """

    accesses: int
    wall_ns: int
    loop_ns: int
    minflt: int
    majflt: int
    vmstat_delta: dict[str, int] | None = None
    memcg_stat_delta: dict[str, int] | None = None


@dataclass(frozen=True)
class RunResult:
    """What the VMM reported for one run (``raw`` has every field).

    ``vmstat_delta`` (system-wide ``/proc/vmstat``) and ``memcg_stat_delta`` (the ``memory.stat``
    of the VMM's memory cgroup, ``memcg``) hold the counters that changed across the access
    loop alone; memory.stat's gauges (``rss``, ``active_anon`` ...) appear as changes too.
    ``phases`` splits the run at the ``phase_at`` boundaries (one phase without them).
    """

    mode: str
    accesses: int
    read_sum: int
    checksum: int | None
    wall_ns: int
    loop_ns: int
    feed_ns: int
    minflt: int
    majflt: int
    exits: int
    chunk_ns: list[int] = field(default_factory=list)
    cgroup: CgroupReport | None = None
    kvm_vcpu_stats: dict[str, int] | None = None
    kvm_vm_stats: dict[str, int] | None = None
    vmstat_delta: dict[str, int] | None = None
    memcg: str | None = None
    memcg_stat_delta: dict[str, int] | None = None
    phases: list[PhaseResult] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ns_per_access(self) -> float:
        """Time in the access loop (guest run time for KVM) per access."""
        return self.loop_ns / self.accesses if self.accesses else 0.0


def parse_result(text: str) -> RunResult:
    """Parse the VMM's JSON report; a malformed one is a :class:`CalibrateError`."""
    try:
        d = json.loads(text)
        return RunResult(
            mode=str(d["mode"]),
            accesses=int(d["accesses"]),
            read_sum=int(d["read_sum"]),
            checksum=None if d["checksum"] is None else int(d["checksum"]),
            wall_ns=int(d["wall_ns"]),
            loop_ns=int(d["loop_ns"]),
            feed_ns=int(d["feed_ns"]),
            minflt=int(d["minflt"]),
            majflt=int(d["majflt"]),
            exits=int(d["exits"]),
            chunk_ns=[int(x) for x in d.get("chunk_ns", [])],
            kvm_vcpu_stats=d.get("kvm_vcpu_stats"),
            kvm_vm_stats=d.get("kvm_vm_stats"),
            vmstat_delta=d.get("vmstat_delta"),
            memcg=d.get("memcg"),
            memcg_stat_delta=d.get("memcg_stat_delta"),
            phases=[_parse_phase(p) for p in d.get("phases", [])],
            raw=d,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        head = text.strip().replace("\n", " ")[:100]
        msg = f"the VMM's report is not the JSON expected ({exc}): {head!r}"
        raise CalibrateError(msg) from None


def _parse_phase(p: dict[str, Any]) -> PhaseResult:
    return PhaseResult(
        accesses=int(p["accesses"]),
        wall_ns=int(p["wall_ns"]),
        loop_ns=int(p["loop_ns"]),
        minflt=int(p["minflt"]),
        majflt=int(p["majflt"]),
        vmstat_delta=_counters(p.get("vmstat_delta")),
        memcg_stat_delta=_counters(p.get("memcg_stat_delta")),
    )


def _counters(d: dict[str, Any] | None) -> dict[str, int] | None:
    return None if d is None else {str(k): int(v) for k, v in d.items()}


def check_phase_at(phase_at: Sequence[int], accesses: int | None = None) -> list[int]:
    """``phase_at`` as a list, if the VMM would take it (and a stream of ``accesses`` reach it).

    Checked here too so that a bad list fails before the stream is generated.
    """
    bounds = [int(b) for b in phase_at]
    if len(bounds) > MAX_PHASE_BOUNDARIES:
        raise CalibrateError(f"at most {MAX_PHASE_BOUNDARIES} phase boundaries (got {len(bounds)})")
    if any(b <= 0 for b in bounds):
        raise CalibrateError(f"phase boundaries must be positive access counts (got {bounds})")
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise CalibrateError(f"phase boundaries must be strictly increasing (got {bounds})")
    if accesses is not None and bounds and bounds[-1] > accesses:
        raise CalibrateError(
            f"phase boundary {bounds[-1]} is beyond the stream's {accesses} accesses"
        )
    return bounds


def run(
    stream: StreamSpec | Chunks,
    *,
    mem_mib: int,
    plain: bool = False,
    chunk: int = DEFAULT_CHUNK,
    checksum: bool = True,
    chunk_times: bool = False,
    populate: bool = False,
    phase_at: Sequence[int] = (),
    timeout_s: float | None = None,
    cgroup: Cgroup | None = None,
) -> RunResult:
    """Replay ``stream`` in a guest with ``mem_mib`` MiB of RAM (or a plain process); parse.

    ``stream`` is a spec or any chunks of ``(pages, writes)`` (the VMM checks their range).
    ``populate`` makes every data page resident in the host before the run, so the guest's
    first touches cost KVM's fault alone. The stream is generated here and written to the
    VMM's stdin by a thread while the main thread reads its report, so neither side waits on
    a full pipe. Generating costs 25-50 ns an access, more than the guest's resident accesses;
    pass ``list(streams.chunks(spec))`` to generate before the VMM starts.

    ``cgroup`` (from :mod:`sim.calibrate.host`) confines the VMM to a memory cgroup: the child
    joins it before ``exec``, so every page it touches is charged there, and is recorded as
    started by this session (the only processes the harness ever kills). The result's
    ``cgroup`` then reports the cgroup's counters; an OOM kill raises a :class:`CalibrateError`
    carrying that report.

    ``phase_at`` (strictly increasing access counts, at most 15) splits the run into phases
    whose time, faults and counters the VMM records separately (``RunResult.phases``).
    """
    bounds = check_phase_at(phase_at, stream.accesses if isinstance(stream, StreamSpec) else None)
    pages = data_pages(mem_mib)
    if isinstance(stream, StreamSpec) and stream.pages > pages:
        raise CalibrateError(
            f"the stream spans {stream.pages} pages but a {mem_mib} MiB guest has {pages} "
            f"data pages; raise mem_mib to at least {((stream.pages << 12) >> 20) + 3}"
        )
    if not plain and not kvm_usable():
        raise CalibrateError(f"{KVM_DEVICE} is missing or not readable and writable by this user")
    exe = build()
    args = [str(exe), "--mem-mib", str(mem_mib), "--chunk", str(chunk)]
    args += ["--plain"] * plain + ["--no-checksum"] * (not checksum)
    args += ["--chunk-times"] * chunk_times + ["--populate"] * populate
    args += [a for b in bounds for a in ("--phase-at", str(b))]
    before = cgroup.report() if cgroup is not None else None
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=cgroup.join_in_child() if cgroup is not None else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # preexec_fn: joining the cgroup
        where = f" in {cgroup.path}" if cgroup is not None else ""
        raise CalibrateError(f"the VMM could not be started{where}: {exc}") from None
    if cgroup is not None:
        try:
            cgroup.started(proc.pid)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    feed_error: list[BaseException] = []
    err_chunks: list[bytes] = []

    def feed() -> None:
        assert proc.stdin is not None
        try:
            write_stream(stream, proc.stdin)
        except BrokenPipeError:
            pass  # the VMM stopped early; its stderr says why
        except BaseException as exc:  # re-raised below, after the VMM is reaped
            feed_error.append(exc)
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()

    def drain_stderr() -> None:
        assert proc.stderr is not None
        err_chunks.append(proc.stderr.read())

    threads = [
        threading.Thread(target=feed, name="calibrate-feed", daemon=True),
        threading.Thread(target=drain_stderr, name="calibrate-stderr", daemon=True),
    ]
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()  # only the process started above

    timer = threading.Timer(timeout_s, expire) if timeout_s else None
    for t in threads:
        t.start()
    if timer:
        timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
        for t in threads:
            t.join()
    report = None
    if cgroup is not None and before is not None:
        report = _cgroup_report(cgroup, before, proc.returncode)
    if timed_out.is_set():
        raise _with(CalibrateError(f"the VMM did not finish within {timeout_s} s (killed)"), report)
    if report is not None and report.oom_killed:
        msg = (
            f"the VMM was OOM-killed in {report.path} (peak {report.max_usage_bytes >> 20} MiB,"
            f" limit reached {report.failcnt} times)"
        )
        raise _with(CalibrateError(msg), report)
    if feed_error:
        raise feed_error[0]
    if proc.returncode != 0:
        err = b"".join(err_chunks)[-STDERR_LIMIT:].decode(errors="replace")
        lines = err.strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise _with(CalibrateError(why.removeprefix("vmm: ")), report)
    result = parse_result(out.decode(errors="replace"))
    return dataclasses.replace(result, cgroup=report)


def _with(exc: CalibrateError, report: CgroupReport | None) -> CalibrateError:
    exc.cgroup = report
    return exc


def _cgroup_report(cgroup: Cgroup, before: dict[str, Any], returncode: int) -> CgroupReport:
    after = cgroup.report()
    sb, sa = before["stat"], after["stat"]
    delta = {k: sa.get(k, 0) - sb.get(k, 0) for k in sorted(set(sa) | set(sb))}
    return CgroupReport(
        path=str(cgroup.path),
        stat_before=sb,
        stat_after=sa,
        stat_delta={k: v for k, v in delta.items() if v},
        max_usage_bytes=after["max_usage_in_bytes"],
        memsw_max_usage_bytes=after["memsw_max_usage_in_bytes"],
        failcnt=after["failcnt"],
        oom_kills=after["oom_kill"] - before["oom_kill"],
        exit_signal=-returncode if returncode < 0 else None,
    )

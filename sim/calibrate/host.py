"""Host-side harness for calibration runs under memory pressure: swap, a memory cgroup, sysctls.

Why
    Comparing memsim with the kernel needs the guest to run under a memory limit with swap
    behind it, on a machine that is otherwise left exactly as it was found. Everything this
    module changes on the host (a swapfile made active, a cgroup v1 memory directory, sysctl
    values) is undone on a normal exit, on an exception, and on SIGINT, SIGTERM or SIGHUP
    (:func:`sim.lifecycle.signals_as_interrupts` turns those into an exception; the undo steps
    themselves run with those signals blocked, so a second signal cannot cut them short).

Crash recovery
    SIGKILL cannot be caught, so every change is first written to a state file (JSON, replaced
    atomically) under ``/run/memsim`` naming the owner (PID, its start time and the boot id).
    Before a new session starts, and on ``memsim calibrate --cleanup``, the state files of
    owners that are dead are replayed backwards: swapoff and unlink the swapfile, kill the VMMs
    the owner recorded (PID and start time both must match), rmdir the cgroup, restore the
    sysctls. A state file of a live owner is never touched, and one from an earlier boot only
    has its swapfile unlinked (swap, cgroups and sysctls did not survive the reboot).

Ownership
    Nothing that this module did not create is changed: a session refuses to start while any
    swap is active or another live session exists; only processes whose PIDs this session
    recorded as started are killed, by PID; the cgroup has a unique name
    (``memsim-calib-<pid>-<n>``) directly under the memory controller's root.

Testing
    Every path (the cgroup root, ``/proc``, ``/proc/sys``, the state directory), the command
    runner (``mkswap``, ``swapon``, ``swapoff``) and the root check are fields of :class:`Host`,
    so the cleanup logic runs in the default test suite against a fake directory tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.calibrate.vmm import CalibrateError, cache_dir
from sim.lifecycle import CAUGHT, pid_alive, signals_as_interrupts
from sim.results import write_atomic

CGROUP_PREFIX = "memsim-calib-"
SWAP_PREFIX = "memsim-swap-"
STATE_PREFIX = "host-"
EMPTY_WAIT_S = 10.0  # how long to wait for a cgroup to empty after killing its processes

Runner = Callable[[list[str]], None]


def run_command(argv: list[str]) -> None:
    """Run a system command (``mkswap``, ``swapon``, ``swapoff``); failure is one line."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CalibrateError(f"{argv[0]} could not run: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise CalibrateError(f"{' '.join(argv)} failed: {why}")


@dataclass
class Host:
    """Where the host's interfaces are (injectable for tests) and how commands are run."""

    cgroup_root: Path = Path("/sys/fs/cgroup/memory")
    proc: Path = Path("/proc")
    state_dir: Path = Path("/run/memsim")
    swap_dir: Path = field(default_factory=cache_dir)
    run: Runner = run_command
    is_root: Callable[[], bool] = lambda: os.geteuid() == 0
    kill: Callable[[int, int], None] = os.kill
    rmdir: Callable[[Path], None] = os.rmdir
    empty_wait_s: float = EMPTY_WAIT_S
    alive: Callable[[int], bool] = pid_alive

    def sysctl_path(self, name: str) -> Path:
        """``vm.page-cluster`` -> ``/proc/sys/vm/page-cluster``."""
        return self.proc / "sys" / name.replace(".", "/")

    def boot_id(self) -> str:
        """This boot's id: a state file from another boot describes nothing that still exists."""
        try:
            return (self.proc / "sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""

    def start_time(self, pid: int) -> int | None:
        """A process's start time in clock ticks (field 22 of ``/proc/<pid>/stat``), which
        together with the PID names one process even after the PID is reused."""
        try:
            stat = (self.proc / str(pid) / "stat").read_bytes()
            return int(stat.rsplit(b")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            return None

    def active_swaps(self) -> list[str]:
        """Paths of the active swap areas (``/proc/swaps`` without its header)."""
        try:
            lines = (self.proc / "swaps").read_text().splitlines()[1:]
        except OSError:
            return []
        return [ln.split()[0].replace("\\040", " ") for ln in lines if ln.strip()]


# ---------------------------------------------------------------------------- state file


class Ledger:
    """The state file of one session: what it created, written before each change is made.

    The file is rewritten atomically on every change, so after a SIGKILL it names at most one
    thing that was about to be created and was not; recovery tolerates that.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.pid = os.getpid()
        self.data: dict[str, Any] = {
            "owner_pid": self.pid,
            "owner_start": host.start_time(self.pid),
            "boot_id": host.boot_id(),
            "swapfile": None,
            "cgroups": [],
            "started": [],
            "sysctls": {},
        }
        self.path = host.state_dir / f"{STATE_PREFIX}{self.pid}.json"

    def save(self) -> None:
        """Write the state file atomically (a crash leaves the old one or the new one)."""
        self.host.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(self.data, indent=1) + "\n")

    def update(self, **changes: Any) -> None:
        """Change fields and save."""
        self.data.update(changes)
        self.save()

    def remove(self) -> None:
        """Delete the state file: everything it names has been undone."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGHUP while undoing, so a signal cannot interrupt an undo
    halfway; one that arrives meanwhile is delivered (and raises) once the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------- undo steps
# Each takes what a state file records, is idempotent, and returns problems as lines.


def _undo_swap(host: Host, path: str | None) -> list[str]:
    if not path:
        return []
    problems = []
    if path in host.active_swaps():
        try:
            host.run(["swapoff", path])
        except CalibrateError as exc:
            problems.append(str(exc))
            return problems  # an active swapfile must not be unlinked
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
    return problems


def _kill_started(host: Host, cg: Path, started: list[list[int]]) -> list[str]:
    """SIGKILL the processes in ``cg`` that were recorded as started (PID and start time)."""
    ours = {int(p): s for p, s in started}
    strangers = []
    for pid in _procs(cg):
        if pid in ours and host.start_time(pid) in (ours[pid], None):
            with contextlib.suppress(ProcessLookupError):
                host.kill(pid, signal.SIGKILL)
        else:
            strangers.append(pid)
    return [f"{cg} holds processes memsim did not start ({strangers}); left alone"] * bool(
        strangers
    )


def _procs(cg: Path) -> list[int]:
    try:
        return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _undo_cgroup(host: Host, cg: Path, started: list[list[int]], wait_s: float) -> list[str]:
    if not cg.is_dir():
        return []
    problems = _kill_started(host, cg, started)
    deadline = time.monotonic() + wait_s
    while _procs(cg) and time.monotonic() < deadline:
        time.sleep(0.02)
    while True:
        try:
            host.rmdir(cg)
            return problems
        except FileNotFoundError:
            return problems
        except OSError as exc:  # EBUSY while the last task is still exiting
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return [*problems, f"cannot remove {cg}: {exc.strerror}"]
            time.sleep(0.02)


def _undo_sysctls(host: Host, old: dict[str, str]) -> list[str]:
    problems = []
    for name, value in reversed(list(old.items())):
        try:
            host.sysctl_path(name).write_text(value + "\n")
        except OSError as exc:
            problems.append(f"cannot restore {name}={value}: {exc.strerror}")
    return problems


def undo(host: Host, data: dict[str, Any]) -> list[str]:
    """Undo everything a state file records, newest first; return what could not be undone.

    On a different boot only the swapfile is unlinked: the rest vanished with the reboot, and
    the sysctl values recorded then must not overwrite what was set since.
    """
    if data.get("boot_id") and data["boot_id"] != host.boot_id():
        with contextlib.suppress(FileNotFoundError, TypeError):
            Path(data.get("swapfile") or "").unlink()
        return []
    problems = []
    started = data.get("started", [])
    for cg in reversed(data.get("cgroups", [])):
        problems += _undo_cgroup(host, Path(cg), started, host.empty_wait_s)
    problems += _undo_swap(host, data.get("swapfile"))
    problems += _undo_sysctls(host, data.get("sysctls", {}))
    return problems


def _owner_alive(host: Host, data: dict[str, Any]) -> bool:
    pid = int(data.get("owner_pid", 0))
    if pid == os.getpid() or not host.alive(pid):
        return pid == os.getpid()
    start = data.get("owner_start")
    return start is None or host.start_time(pid) in (start, None)


def recover(host: Host | None = None) -> tuple[list[str], list[str]]:
    """Undo the leftovers of sessions whose owner is dead (SIGKILLed, say).

    Returns (what was recovered, problems). State files of live owners are left alone.
    """
    host = host or Host()
    done: list[str] = []
    problems: list[str] = []
    if not host.state_dir.is_dir():
        return done, problems
    for path in sorted(host.state_dir.glob(f"{STATE_PREFIX}*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            problems.append(f"unreadable state file {path}; left alone")
            continue
        if _owner_alive(host, data):
            continue
        with _signals_blocked():
            left = undo(host, data)
            if not left:
                path.unlink(missing_ok=True)
        done.append(f"{path.name} (pid {data.get('owner_pid')})")
        problems += left
    return done, problems


def live_sessions(host: Host) -> list[int]:
    """PIDs of other live sessions (their state files exist and their owners run)."""
    pids = []
    for path in host.state_dir.glob(f"{STATE_PREFIX}*.json") if host.state_dir.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if int(data["owner_pid"]) != os.getpid() and _owner_alive(host, data):
                pids.append(int(data["owner_pid"]))
    return pids


# ---------------------------------------------------------------------------- the session


class Session:
    """One harness session: its ledger and the context managers that change the host.

    Use :func:`session`; each context manager records a change before making it and undoes it
    on exit. Leaving the session undoes anything left (the steps are idempotent).
    """

    _counter = itertools.count()

    def __init__(self, host: Host) -> None:
        self.host = host
        self.ledger = Ledger(host)
        self.problems: list[str] = []

    def _undo(self, step: Callable[[], list[str]]) -> None:
        with _signals_blocked():
            self.problems += step()

    @contextlib.contextmanager
    def swapfile(self, size_bytes: int) -> Iterator[Path]:
        """An active swapfile of ``size_bytes`` (fallocate, mode 600, mkswap, swapon); on exit
        swapoff and unlink. Refuses (one line) if any swap is already active."""
        if active := self.host.active_swaps():
            raise CalibrateError(
                f"swap is already active ({', '.join(active)}); memsim uses only a swapfile "
                "of its own: swapoff the others first"
            )
        n = next(Session._counter)
        path = self.host.swap_dir / f"{SWAP_PREFIX}{self.ledger.pid}-{n}"
        self.host.swap_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.update(swapfile=str(path))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self.ledger.update(swapfile=None)  # not ours
            raise CalibrateError(f"{path} already exists; not touching it") from None
        try:
            try:
                os.fchmod(fd, 0o600)
                os.posix_fallocate(fd, 0, size_bytes)
            finally:
                os.close(fd)
            self.host.run(["mkswap", str(path)])
            self.host.run(["swapon", str(path)])
            yield path
        finally:
            self._undo(lambda: _undo_swap(self.host, str(path)))
            if not any(str(path) in p for p in self.problems):
                self.ledger.update(swapfile=None)

    @contextlib.contextmanager
    def cgroup(
        self,
        limit_bytes: int,
        swappiness: int | None = None,
        memsw_limit_bytes: int | None = None,
    ) -> Iterator[Cgroup]:
        """A memory cgroup v1 directory of our own with ``memory.limit_in_bytes`` (and
        optionally ``memory.swappiness`` and ``memory.memsw.limit_in_bytes``, the limit on
        memory plus swap); on exit its processes that we started are killed, it is waited on
        to empty, and removed."""
        n = next(Session._counter)
        path = self.host.cgroup_root / f"{CGROUP_PREFIX}{self.ledger.pid}-{n}"
        self.ledger.update(cgroups=[*self.ledger.data["cgroups"], str(path)])
        try:
            path.mkdir()
        except OSError as exc:  # an existing directory is not ours: forget it, touch nothing
            self.ledger.update(cgroups=[c for c in self.ledger.data["cgroups"] if c != str(path)])
            msg = f"cannot create the memory cgroup {path}: {exc.strerror}"
            raise CalibrateError(msg) from None
        cg = Cgroup(path, self)
        try:
            cg.write("memory.limit_in_bytes", str(limit_bytes))
            if swappiness is not None:
                cg.write("memory.swappiness", str(swappiness))
            if memsw_limit_bytes is not None:  # after limit_in_bytes: memsw may not be below it
                cg.write("memory.memsw.limit_in_bytes", str(memsw_limit_bytes))
            yield cg
        finally:

            def step() -> list[str]:
                started = self.ledger.data["started"]
                return _undo_cgroup(self.host, path, started, self.host.empty_wait_s)

            self._undo(step)
            if not path.exists():
                self.ledger.update(
                    cgroups=[c for c in self.ledger.data["cgroups"] if c != str(path)]
                )

    @contextlib.contextmanager
    def sysctls(self, values: dict[str, int | str]) -> Iterator[dict[str, str]]:
        """Set sysctls (``{"vm.page-cluster": 0}``); the old values come back on exit.

        Yields the old values."""
        old: dict[str, str] = {}
        try:
            for name, value in values.items():
                p = self.host.sysctl_path(name)
                try:
                    before = p.read_text().strip()
                except OSError as exc:
                    raise CalibrateError(f"cannot read sysctl {name}: {exc.strerror}") from None
                old[name] = before
                recorded = {**self.ledger.data["sysctls"]}
                recorded.setdefault(name, before)  # the first value seen is the original
                self.ledger.update(sysctls=recorded)
                try:
                    p.write_text(f"{value}\n")
                except OSError as exc:
                    raise CalibrateError(f"cannot set {name}={value}: {exc.strerror}") from None
            yield old
        finally:
            self._undo(lambda: _undo_sysctls(self.host, old))
            recorded = {
                k: v
                for k, v in self.ledger.data["sysctls"].items()
                if old.get(k) != v  # restored to the original: nothing left to undo
            }
            self.ledger.update(sysctls=recorded)


@dataclass
class Cgroup:
    """A memory cgroup v1 directory created by a :class:`Session`."""

    path: Path
    session: Session

    def write(self, name: str, value: str) -> None:
        """Write a control file; failure is one line."""
        try:
            (self.path / name).write_text(value)
        except OSError as exc:
            msg = f"cannot write {value} to {self.path / name}: {exc.strerror}"
            raise CalibrateError(msg) from None

    def read(self, name: str) -> str:
        """A control file's text ('' if it cannot be read)."""
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def number(self, name: str) -> int:
        """A control file holding one number (0 if absent)."""
        text = self.read(name).strip()
        return int(text) if text.lstrip("-").isdigit() else 0

    def keyed(self, name: str) -> dict[str, int]:
        """A ``key value`` control file (memory.stat, memory.oom_control) as a dict."""
        out = {}
        for line in self.read(name).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def procs(self) -> list[int]:
        """PIDs in the cgroup."""
        return _procs(self.path)

    def join_in_child(self) -> Callable[[], None]:
        """A ``preexec_fn`` that moves the new process into this cgroup before it runs (so
        every page it touches is charged here) and asks for SIGKILL when its parent dies (so
        a SIGKILLed harness leaves no VMM running)."""
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # 0: the writing process itself
            finally:
                os.close(fd)
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG

        return join

    def report(self) -> dict[str, Any]:
        """The counters a run is judged by: memory.stat, peak usage, failcnt, OOM kills."""
        return {
            "stat": self.keyed("memory.stat"),
            "max_usage_in_bytes": self.number("memory.max_usage_in_bytes"),
            "memsw_max_usage_in_bytes": self.number("memory.memsw.max_usage_in_bytes"),
            "failcnt": self.number("memory.failcnt"),
            "oom_kill": self.keyed("memory.oom_control").get("oom_kill", 0),
        }

    def started(self, pid: int) -> None:
        """Record a process started into this cgroup (only such processes are ever killed)."""
        ledger = self.session.ledger
        entry = [pid, self.session.host.start_time(pid)]
        ledger.update(started=[*ledger.data["started"], entry])


@contextlib.contextmanager
def session(host: Host | None = None) -> Iterator[Session]:
    """A harness session: refuses unless root and alone, recovers dead sessions' leftovers,
    and undoes everything on exit, including on SIGINT, SIGTERM and SIGHUP."""
    host = host or Host()
    if not host.is_root():
        raise CalibrateError("the calibration harness must run as root (swapon, cgroups, sysctl)")
    _, problems = recover(host)
    if problems:
        raise CalibrateError("leftovers of an earlier run remain: " + "; ".join(problems))
    if others := live_sessions(host):
        raise CalibrateError(f"another calibration harness is running (pid {others[0]})")
    s = Session(host)
    with signals_as_interrupts():
        s.ledger.save()
        try:
            yield s
        finally:
            with _signals_blocked():
                s.problems += undo(host, s.ledger.data)  # anything a step left behind
                if not s.problems:
                    s.ledger.remove()
    if s.problems:
        raise CalibrateError("cleanup incomplete: " + "; ".join(dict.fromkeys(s.problems)))

"""Signals leave no orphans and no debris: SIGTERM and SIGHUP stop a run like Ctrl-C; a sweep
whose main process is killed takes its workers with it, and the next start resumes it, saying
what it cleaned up, without recomputing a finished run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.errors import UserError
from sim.lifecycle import (
    Interrupted,
    checkpoint,
    exit_code,
    pid_alive,
    signals_as_interrupts,
)
from sim.results import is_temp_name
from sim.sweep import _sweep_lock, run_sweep
from tests.conftest import TINY

REPO = Path(__file__).resolve().parent.parent
GUARD_S = 120  # only ever reached if processes are left behind (then the test fails)
RUN_FILES = {
    "summary.json",
    "config.yaml",
    "manifest.json",
    "faults.parquet",
    "evictions.parquet",
    "timeline.parquet",
}


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (workers inherit it)."""
    needle = f"MEMSIM_TEST_TAG={tag}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes().split(b"\0") and pid_alive(int(proc.name)):
                pids.append(int(proc.name))
    return pids


@contextlib.contextmanager
def _memsim(args: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m sim ARGS`` in its own session, tagged; everything it started is killed on
    the way out whatever the test did."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", *args],
        cwd=cwd,
        env={**os.environ, "MEMSIM_TEST_TAG": tag, "PYTHONPATH": str(REPO)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc, tag
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _tagged(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_for(cond: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not cond():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def _wait_gone(tag: str, pids: list[int]) -> None:
    """Until no process carries ``tag`` and every one of ``pids`` has exited (a process that
    is exiting has no environment to read any more, but is not gone yet)."""
    deadline = time.monotonic() + GUARD_S
    while _tagged(tag) or [p for p in pids if pid_alive(p)]:
        assert time.monotonic() < deadline, f"processes left behind: {_tagged(tag)}"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# memsim run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_run_cleans_up_like_ctrl_c(tmp_path: Path, sig: signal.Signals) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "duration_s": 60.0}))  # minutes: it is stopped
    with _memsim(["run", str(cfg), "--out", "res", "-q"], tmp_path) as (proc, _):
        _wait_for(lambda: [p for p in os.listdir(tmp_path) if is_temp_name(p)], proc, "a temp")
        proc.send_signal(sig)
        assert proc.wait() == 128 + sig
        assert proc.stderr is not None
        assert proc.stderr.read().decode() == "interrupted: no result written\n"
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]


def _terminate_myself() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # interrupted at once by the handler's exception


def test_interrupted_is_a_keyboard_interrupt_with_the_signal_in_its_exit_code() -> None:
    with pytest.raises(KeyboardInterrupt) as info, signals_as_interrupts():
        _terminate_myself()
    assert isinstance(info.value, Interrupted)
    assert exit_code(info.value) == 143
    assert exit_code(KeyboardInterrupt()) == 130
    copy = type(info.value)(*info.value.args)  # SimPy re-raises copies made this way
    assert exit_code(copy) == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_an_ignored_signal_stays_ignored() -> None:
    """Under nohup SIGHUP is ignored, and memsim must not undo that."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def _swallowed_terminate() -> None:
    """What some code does to an exception raised by a signal handler: lose it."""
    with contextlib.suppress(KeyboardInterrupt):
        _terminate_myself()


def _lose_then_check() -> None:
    with signals_as_interrupts():
        _swallowed_terminate()
        checkpoint()  # what a long loop does between steps


def _lose_then_leave() -> None:
    with signals_as_interrupts():
        _swallowed_terminate()


def test_a_lost_interrupt_is_raised_again() -> None:
    for lose in (_lose_then_check, _lose_then_leave):
        with pytest.raises(Interrupted):
            lose()
    checkpoint()  # outside the block nothing is pending


# --------------------------------------------------------------------------------------------
# sweeps


def _sweep(tmp_path: Path, duration_s: float = 0.05) -> Path:
    p = tmp_path / "sweep.yaml"
    spec = {"base": {**TINY, "duration_s": duration_s}, "seeds": [1, 2, 3, 4, 5, 6]}
    p.write_text(yaml.safe_dump(spec))
    return p


def _finished(runs: Path) -> dict[str, dict[str, int]]:
    return {
        p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir()}
        for p in runs.iterdir()
        if not is_temp_name(p.name)
    }


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_killing_the_sweep_process_leaves_no_worker_and_resumes(
    tmp_path: Path, sig: signal.Signals, capsys: Any
) -> None:
    path = _sweep(tmp_path)
    out = tmp_path / "out"
    runs = out / "runs"
    args = ["sweep", str(path), "--workers", "2", "--out", str(out)]
    with _memsim(args, tmp_path) as (proc, tag):
        _wait_for(
            lambda: (
                runs.is_dir()
                and _finished(runs)
                and [p for p in os.listdir(runs) if is_temp_name(p)]
            ),
            proc,
            "a finished run while others were running",
        )
        workers = [p for p in _tagged(tag) if p != proc.pid]
        assert len(workers) == 2
        os.kill(proc.pid, sig)  # the main process only, not its process group
        rc = proc.wait()
        assert proc.stderr is not None
        expected = -signal.SIGKILL if sig == signal.SIGKILL else 128 + sig
        assert rc == expected, proc.stderr.read().decode(errors="replace")[-4000:]
        _wait_gone(tag, workers)
    temps = [p for p in os.listdir(runs) if is_temp_name(p)]
    if sig != signal.SIGKILL:  # cleaned up like Ctrl-C: workers stopped, temp dirs removed
        assert not temps
        assert (out / ".lock").read_text() == ""
    lock = (out / ".lock").read_text()
    done = _finished(runs)
    assert done
    assert all(set(files) == RUN_FILES for files in done.values())
    assert not (out / "runs.parquet").exists()

    capsys.readouterr()
    _, df = run_sweep(path, out, workers=2)
    err = capsys.readouterr().err
    if sig == signal.SIGKILL:
        assert err == f"removed stale lock of dead sweep PID {proc.pid}\n", (lock, err)
    else:
        assert err == ""
    assert {r.run: r.status for r in df.itertuples()} == {
        r: "cached" if r in done else "ok" for r in df.run
    }
    for name, mtimes in done.items():  # finished runs were not recomputed
        assert {f.name: f.stat().st_mtime_ns for f in (runs / name).iterdir()} == mtimes
    assert sorted(os.listdir(runs)) == sorted(df.run)  # no temp dirs left
    assert (out / ".lock").read_text() == ""


def test_a_lock_held_by_a_live_sweep_names_it(tmp_path: Path) -> None:
    path = _sweep(tmp_path)
    (tmp_path / "out").mkdir()
    with _sweep_lock(tmp_path / "out"), pytest.raises(UserError) as info:
        run_sweep(path, tmp_path / "out", workers=1)
    assert f"another sweep (PID {os.getpid()} on " in str(info.value)


def test_a_lock_left_held_by_processes_of_a_dead_sweep_names_them(tmp_path: Path) -> None:
    """What an older memsim left: workers holding the lock of their dead parent."""
    path = _sweep(tmp_path)
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    (out / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(600)",
            str(out / ".lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # it holds the lock now
        with pytest.raises(UserError) as info:
            run_sweep(path, out, workers=1)
        msg = str(info.value)
        assert f"the lock of dead sweep PID {dead.pid} is still held" in msg
        assert str(holder.pid) in msg
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_killing_a_dask_local_sweep_leaves_no_worker(tmp_path: Path) -> None:
    """The LocalCluster's worker processes end with the client (distributed's parent-alive
    pipe): none outlives a SIGKILL of the sweep."""
    path = _sweep(tmp_path, duration_s=5.0)  # far longer than the test: it is killed
    out = tmp_path / "out"
    args = ["sweep", str(path), "--workers", "2", "--dask", "local", "--out", str(out)]
    with _memsim(args, tmp_path) as (proc, tag):
        _wait_for(lambda: len(_tagged(tag)) >= 4, proc, "the cluster's two workers")
        started = _tagged(tag)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        _wait_gone(tag, started)


class _SignalsInDel:
    """An object whose finalizer is interrupted by a signal (Python drops what __del__
    raises and prints it as "Exception ignored")."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # interrupted at once by the handler's exception


def _finalize_during_a_signal() -> None:
    obj = _SignalsInDel()
    del obj  # the handler raises inside __del__, where the exception is dropped


def test_a_signal_lost_in_a_finalizer_is_silent_and_raised_again(
    capfd: pytest.CaptureFixture[str],
) -> None:
    pytests_hook = sys.unraisablehook
    sys.unraisablehook = sys.__unraisablehook__  # Python's own: prints "Exception ignored"
    try:
        with pytest.raises(KeyboardInterrupt) as info, signals_as_interrupts():
            _finalize_during_a_signal()
        assert sys.unraisablehook is sys.__unraisablehook__  # restored
    finally:
        sys.unraisablehook = pytests_hook
    assert isinstance(info.value, Interrupted)
    assert "Exception ignored" not in capfd.readouterr().err

"""Process lifecycle: signals that end a command cleanly, workers that die with their parent.

A command that writes results must never leave debris or orphans behind, however it is stopped.
:func:`signals_as_interrupts` makes SIGINT (Ctrl-C), SIGTERM (what a scheduler or ``kill``
sends) and SIGHUP (a closed terminal) raise :class:`Interrupted`, a ``KeyboardInterrupt``, so
one cleanup path serves all three and the exit code says which signal it was (128 + signal
number). SIGKILL cannot be caught: what it leaves (temporary directories
named with the dead PID, a lock file naming a dead holder) is recognised and removed by the next
command that uses the same place. Pool workers call :func:`die_with_parent` so that they end
when the process that started them does, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``, and a
watchdog thread that notices the worker was re-parented, on every platform).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = [
    "Interrupted",
    "checkpoint",
    "die_with_parent",
    "exit_code",
    "pid_alive",
    "signals_as_interrupts",
]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal arrived: unwind like Ctrl-C, then exit with 128 + the signal number.

    Its only argument is the signal number, so copies made from ``args`` (SimPy re-raises an
    exception from a process that way) are the same exception.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(int(signum))
        self.signum = int(signum)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's exit code for a process ended by this interrupt (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


_pending: list[int] = []  # the signal that fired inside signals_as_interrupts, if one did


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread.

    Only the first such signal raises; later ones are ignored so that they cannot break into the
    cleanup the first one started (SIGKILL still ends the process). An exception raised from a
    signal handler can be lost (code it interrupts may swallow it: an import, a finalizer), so
    the signal is also remembered: :func:`checkpoint` raises it again, and so does leaving the
    block normally. A signal that is ignored (``nohup``, a background job) stays ignored. The
    previous handlers come back on exit. Outside the main thread (where Python cannot install
    handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending.clear()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not _pending:
            _pending.append(signum)
            raise Interrupted(signum)

    def unraisable(u: Any) -> None:
        # raised into a finalizer or a callback (an import's lock clean-up), Python drops the
        # exception and prints it: it is remembered in _pending and raised again, not an error
        if not isinstance(u.exc_value, Interrupted):
            previous_hook(u)

    previous = {
        s: signal.signal(s, handler) for s in CAUGHT if signal.getsignal(s) is not signal.SIG_IGN
    }
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
        checkpoint()  # the block ended although a signal came: its exception was lost
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook
        _pending.clear()


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a signal came whose exception was lost on the way (long
    loops call this between steps, and nothing is published after a signal)."""
    if _pending:
        raise Interrupted(_pending[0])


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:  # "pid (comm) S ...": S is the state
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (not Linux): kill(0) is all there is
        return True


def die_with_parent(parent_pid: int) -> None:
    """Called first thing in a worker process: end this process when ``parent_pid`` (its
    parent) ends, however it ends.

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); everywhere a
    daemon thread checks once a second whether the process was re-parented, which also covers
    a parent that died before the request was made.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="memsim-parent-watch", daemon=True).start()

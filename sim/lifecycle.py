"""Process lifecycle: whether a process is still alive.

Temporaries and locks carry the PID of the process that made them; what a process killed by
SIGKILL left is recognised by its PID being gone, and only then removed.
"""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


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

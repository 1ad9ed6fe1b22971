"""How much memory a command may use, and sizes for messages.

The limit is what the user gives with ``--max-memory`` (on ``run``, ``replay``, ``sweep``,
``plan`` and ``validate``) or else the kernel's ``MemAvailable``: what can be allocated without
swapping. Work that would need more is refused before it allocates, with a one-line error
saying how much it would need, instead of grinding into swap or a ``MemoryError`` halfway.
"""

from __future__ import annotations

import re

from sim.errors import UserError, shown

_limit: int | None = None  # --max-memory, for this process (and forked sweep workers)

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Bytes from ``512M``, ``4G``, ``1.5GiB``, ``2T`` or a plain byte count (powers of 1024)."""
    m = _SIZE.fullmatch(text)
    if m is None or float(m.group(1)) <= 0:
        raise UserError(f"{option} {shown(text)}: expected a size such as 512M, 4G or 1.5GiB")
    n = int(float(m.group(1)) * (1 << _SHIFT[m.group(2).lower()]))
    if n < 1 << 20:
        raise UserError(f"{option} {shown(text)}: at least 1M is needed to run anything")
    return n


def set_memory_limit(n: int | None) -> None:
    """Use ``n`` bytes as this process's limit (``--max-memory``); None: ``MemAvailable``."""
    global _limit
    _limit = n


def available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo``, or None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_limit() -> tuple[int | None, str]:
    """The limit in bytes (None: unknown, no check) and what it is, for messages."""
    if _limit is not None:
        return _limit, "allowed by --max-memory"
    return available_bytes(), "available (MemAvailable; another limit: --max-memory)"


def fmt_bytes(n: float) -> str:
    """``1.5 GiB``, ``320 MiB``, ``12 KiB``."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.1f} {unit}" if v < 10 else f"{v:,.0f} {unit}"
    return f"{n:.0f} B"


def check_fits(needed: int, what: str, error: type[UserError] = UserError) -> None:
    """Raise ``error`` if ``needed`` bytes exceed the limit: ``WHAT needs about X of memory,
    more than the Y available``."""
    limit, source = memory_limit()
    if limit is not None and needed > limit:
        raise error(
            f"{what} needs about {fmt_bytes(needed)} of memory, more than the "
            f"{fmt_bytes(limit)} {source}"
        )

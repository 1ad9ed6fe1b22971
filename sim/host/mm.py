"""A host process address space (``struct mm_struct``): here, one QEMU process's guest RAM.

Models
    QEMU ``mmap``s each VM's guest RAM as one anonymous region of its own mm, starting at
    ``hva_base``; guest page ``gfn`` sits at host virtual address ``hva_base + gfn * PAGE_SIZE``.
    Notifier subscribers (KVM) register on the mm.

Kernel reference
    include/linux/mm_types.h (``mm_struct.notifier_subscriptions``); QEMU's RAMBlock.

Invariants
    Global page ids of this mm are ``[pid_base, pid_base + nr_pages)``. A page in ``zapped`` has
    a frame and I/O in flight (``PG_LOCKED`` or ``PG_WRITEBACK``) and no pte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import PAGE_SHIFT
from sim.host.mmu_notifier import MmuNotifierSubscriptions
from sim.host.swap_state import SwapRaInfo

GUEST_RAM_HVA = 0x7F00_0000_0000  # where QEMU's guest RAM mapping starts (any aligned address)


class IoWaiter(Protocol):
    """What faults wait on for a folio's I/O to end (a SimPy event, made by the fault path)."""

    callbacks: list[Any] | None

    def succeed(self, value: Any = None) -> Any:
        """Wake the waiters."""
        ...


@dataclass(slots=True)
class Mm:
    """One VM's QEMU address space as seen by the host mm."""

    index: int
    name: str
    pid_base: int
    nr_pages: int
    hva_base: int = GUEST_RAM_HVA
    notifiers: MmuNotifierSubscriptions = field(default_factory=MmuNotifierSubscriptions)
    dead: bool = False  # OOM-killed: its pages are gone and its vCPUs stop
    swap_ra: SwapRaInfo = field(default_factory=SwapRaInfo)  # its VMA's swap_readahead_info
    # pages discarded (madvise.py) while their folio's I/O was in flight: the folio keeps the
    # frame and slot until the I/O ends; a fault on the page waits for that (the event)
    zapped: dict[int, IoWaiter | None] = field(default_factory=dict)

    def zap_done(self, pid: int) -> None:
        """The folio of page ``pid`` was freed at the end of its I/O: if the page was zapped, it
        is untouched now, and the faults waiting for that go on."""
        ev = self.zapped.pop(pid, None)
        if ev is not None and ev.callbacks:
            ev.succeed()

    def hva(self, pids: NDArray[np.integer]) -> NDArray[np.int64]:
        """Host virtual addresses of the given global page ids."""
        return self.hva_base + ((pids.astype(np.int64) - self.pid_base) << PAGE_SHIFT)

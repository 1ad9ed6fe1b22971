"""The OOM killer and ``exit_mmap`` for a QEMU process: when reclaim cannot free memory.

Models
    ``out_of_memory`` picks the process with the largest ``oom_badness`` (resident plus swapped
    pages; all VMs have the same oom_score_adj) and kills it. Its mm is torn down: the notifier
    ``release`` makes KVM drop every spte, frames and swap slots are freed. Pages whose I/O is in
    flight are released when the I/O completes. The VM's vCPUs stop at their next step.

Kernel reference
    mm/oom_kill.c: ``out_of_memory``, ``select_bad_process``, ``oom_badness``;
    mm/mmap.c: ``exit_mmap``; mm/mmu_notifier.c: ``__mmu_notifier_release``.

Invariants
    After the kill, no page of the mm owns a frame or slot except those with I/O in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sim.host.memory import HAS_FRAME, NO_PFN, PG_LOCKED, PG_SWAP, PG_WRITEBACK, HostMemory
from sim.host.mm import Mm
from sim.host.swap import SwapDevice
from sim.host.vmstat import VmEvents, VmStat
from sim.reclaim.base import EvictionPolicy

if TYPE_CHECKING:
    from sim.host.ksm import Ksm


def exit_mmap(
    mm: Mm, mem: HostMemory, swap: SwapDevice, policy: EvictionPolicy, ksm: Ksm | None = None
) -> None:
    """Tear down ``mm``: KVM first (release), then every frame and slot not under I/O (its
    KSM sharers leave their KSM pages first: a KSM page goes with its last mapping)."""
    mm.dead = True
    mm.notifiers.release()
    pids = np.arange(mm.pid_base, mm.pid_base + mm.nr_pages, dtype=np.int64)
    if ksm is not None:
        pids = ksm.exit_mmap(pids)
    f = mem.flags[pids]
    busy = (f & (PG_LOCKED | PG_WRITEBACK)) != 0
    idle = pids[~busy]
    fi = f[~busy]
    in_swap = (fi & PG_SWAP) != 0
    swap.free_slots(int(np.count_nonzero(in_swap)), idle[in_swap])
    has_frame = (fi & HAS_FRAME) != 0
    pfns = mem.pfn[idle[has_frame]].astype(np.int64)
    policy.folio_remove(pfns)
    mem.pfn[idle[~has_frame]] = NO_PFN  # shadows go with the swap copies
    mem.free_frames(pfns)
    mem.flags[idle] = 0
    if len(mem.readahead):
        mem.readahead[idle] = False
    mem.nr_swapped[mm.index] = 0
    if mem.thp is not None:  # its THPs are gone, but those under write-out (freed at its end)
        blocks = mem.thp[mm.pid_base >> 9 : (mm.pid_base + mm.nr_pages) >> 9]
        blocks[~busy[::512]] = 0
        if mem.thp_zapped is not None:  # their zapped pages' frames went with the rest
            zapped = mem.thp_zapped[mm.pid_base : mm.pid_base + mm.nr_pages].reshape(-1, 512)
            zapped[~busy[::512]] = False


class OomKiller:
    """Chooses and kills the biggest VM when the allocator gives up."""

    def __init__(
        self,
        mms: Sequence[Mm],
        mem: HostMemory,
        swap: SwapDevice,
        policy: EvictionPolicy,
        vmstat: VmEvents,
        now: Callable[[], int],
    ) -> None:
        self.mms, self.mem, self.swap, self.policy = list(mms), mem, swap, policy
        self.vmstat, self.now = vmstat, now
        self.kills: list[tuple[int, str]] = []  # (t_ns, vm name)
        self.ksm: Ksm | None = None  # KSM, when on: sharers leave their KSM pages at exit
        # hugetlbfs VMs: their rss holds no hugetlb page and a kill would give the pages back
        # to the pool, not to free memory (host/hugetlb.py): never chosen
        self.hugetlb: frozenset[int] = frozenset()

    def __call__(self) -> bool:
        """``out_of_memory``: kill the mm with the highest badness; False if none is left."""
        alive = [mm for mm in self.mms if not mm.dead and mm.index not in self.hugetlb]
        if not alive:
            return False
        mem = self.mem
        victim = max(
            alive, key=lambda m: (mem.nr_resident[m.index] + mem.nr_swapped[m.index], -m.index)
        )
        self.kill(victim)
        return True

    def kill(self, victim: Mm) -> None:
        """``oom_kill_process``: tear the victim down, count ``oom_kill`` (the memcg OOM of
        ``mem_cgroup_out_of_memory`` kills this way too: its memcg holds one process)."""
        exit_mmap(victim, self.mem, self.swap, self.policy, self.ksm)
        self.vmstat.count(VmStat.OOM_KILL, 1, victim.index)
        self.kills.append((self.now(), victim.name))

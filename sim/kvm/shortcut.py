"""The notifier chain collapsed for its common case: one TDP MMU per mm, KVM its only subscriber.

Models
    Nothing new: ``folio_referenced``'s and ``try_to_unmap``'s walk from host ptes through
    ``mmu_notifier_clear_flush_young`` / ``invalidate_range_start/end`` into KVM's
    ``kvm_tdp_mmu_age_gfn_range`` / ``kvm_tdp_mmu_unmap_gfn_range``, for a batch of folios of
    any number of VMs at once. Every spte, flag and counter changes exactly as through the chain
    (sim/host/rmap.py -> sim/host/mmu_notifier.py -> sim/kvm/notifier.py -> sim/kvm/mmu.py), which
    stays the general path and the reference: a test runs worlds both ways and compares them.

Why
    Reclaim calls the chain per batch of a few folios, and the chain's layers (group by mm,
    hva ranges, memslot lookup, per-op dispatch) cost a few numpy calls each; with one spte per
    gfn in one memslot at the mm's hva base, the spte of page ``pid`` is simply ``spte[pid]`` in
    the host-wide array, so the whole walk is a handful of array operations.

When
    Used for a call only when every mm the batch touches has exactly the KVM ops it registered
    at build time as its subscribers (a test may add others; then the chain runs), the MMU is
    TDP (one spte per gfn) with EPT A/D bits, and the VM has its one memslot at gfn 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import PG_DIRTY, PTE_PRESENT, PTE_YOUNG, HostMemory
from sim.host.mmu_notifier import MmuNotifierOps, NotifierWork
from sim.kvm.mmu import SPTE_ACCESSED, SPTE_DIRTY, SPTE_PRESENT
from sim.kvm.vm import Vm

_U8 = np.uint8
_PA = _U8(SPTE_PRESENT | SPTE_ACCESSED)


class TdpShortcut:
    """The fused walk for ``vms`` whose sptes are ``spte`` (host-wide, indexed by page id).

    Args:
        mem: host memory (flags, page owners).
        vms: every VM, by mm index.
        spte: the host-wide spte array (one spte per page: the TDP MMU).
    """

    def __init__(self, mem: HostMemory, vms: Sequence[Vm], spte: NDArray[np.uint8]) -> None:
        self.mem, self.vms, self.spte = mem, list(vms), spte
        self._ops: list[MmuNotifierOps | None] = []
        for vm in self.vms:
            subs = vm.mm.notifiers.subscribers
            mmu = vm.mmu
            usable = (
                mmu.k == 1
                and mmu.ept_ad
                and len(mmu.memslots) == 1
                and mmu.memslots[0].base_gfn == 0
                and mmu.memslots[0].userspace_addr == vm.mm.hva_base
                and len(subs) == 1
                and np.shares_memory(mmu.spte, spte)
            )
            self._ops.append(subs[0] if usable else None)

    def _groups(self, pids: NDArray[np.int64]) -> list[tuple[int, NDArray[np.bool_] | None]] | None:
        """Owning mm indexes in ascending order (the chain's order) with each one's mask
        (None: all), or None if any of them needs the general chain."""
        owner = self.mem.page_owner
        if len(pids) == 1:
            groups: list[tuple[int, NDArray[np.bool_] | None]] = [(owner.item(pids.item(0)), None)]
        else:
            owners = owner[pids]
            first = owners.item(0)
            if (owners == first).all():
                groups = [(first, None)]
            else:
                groups = [(int(i), owners == i) for i in np.unique(owners)]
        for i, _ in groups:
            ops = self._ops[i]
            subs = self.vms[i].mm.notifiers.subscribers
            if ops is None or len(subs) != 1 or subs[0] is not ops:
                return None
        return groups

    def age(
        self, pids: NDArray[np.int64], work: NotifierWork, *, flush: bool
    ) -> NDArray[np.bool_] | None:
        """``clear_flush_young`` (``flush``) or ``clear_young`` over one page per pid: True
        where an spte was young, all of them aged; None if the chain must run instead."""
        groups = self._groups(pids)
        if groups is None:
            return None
        op = "clear_flush_young" if flush else "clear_young"
        young = np.zeros(len(pids), dtype=np.bool_)
        aged = False
        for i, sel in groups:
            vm = self.vms[i]
            if not vm.notifier.aging:  # KVM registered no aging ops: nothing is called
                continue
            p = pids if sel is None else pids[sel]
            n = len(p)
            s = self.spte[p]
            self.spte[p] = s & ~_U8(SPTE_ACCESSED)
            y = (s & _PA) == _PA
            if sel is None:
                young = y
            else:
                young[sel] = y
            aged = True
            vm.mm.notifiers.calls[op] += n
            work.nr_notifier_calls += n
            work.nr_sptes_walked += n
            if flush and vm.notifier.flush_on_age:
                vm.mmu.flush_remote_tlbs(int(y.sum()), work)
        return young if aged else np.zeros(len(pids), dtype=np.bool_)

    def unmap(self, pids: NDArray[np.int64], work: NotifierWork) -> bool:
        """``try_to_unmap``'s invalidation bracket and host pte clear for one page per pid;
        False (nothing done) if the chain must run instead."""
        groups = self._groups(pids)
        if groups is None:
            return False
        flags = self.mem.flags
        for i, sel in groups:
            vm = self.vms[i]
            mmu = vm.mmu
            p = pids if sel is None else pids[sel]
            n = len(p)
            calls = vm.mm.notifiers.calls
            mmu.invalidate_begin(n)
            s = self.spte[p]
            present = (s & SPTE_PRESENT) != 0
            dirty = present & ((s & SPTE_DIRTY) != 0)
            if dirty.any():  # kvm_set_pfn_dirty
                flags[p[dirty]] |= _U8(PG_DIRTY)
            self.spte[p] = 0
            nz = int(present.sum())
            mmu.zapped += nz
            mmu.revoked()
            mmu.flush_remote_tlbs(nz, work)
            calls["invalidate_range_start"] += n
            work.nr_sptes_walked += n
            flags[p] &= ~_U8(PTE_PRESENT | PTE_YOUNG)
            mmu.invalidate_end(n)
            calls["invalidate_range_end"] += n
            work.nr_notifier_calls += 2 * n
        return True

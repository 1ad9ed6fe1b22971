"""The notifier chain collapsed for its common case: one TDP MMU per mm, KVM its only subscriber.

Models
    Nothing new: ``folio_referenced``'s and ``try_to_unmap``'s walk from host ptes through
    ``mmu_notifier_clear_flush_young`` / ``invalidate_range_start/end`` into KVM's
    ``kvm_tdp_mmu_age_gfn_range`` / ``kvm_tdp_mmu_unmap_gfn_range``, for a batch of folios of
    any number of VMs at once. Every pte and spte bit, flag and counter changes exactly as
    through the chain (sim/host/rmap.py -> sim/host/mmu_notifier.py -> sim/kvm/notifier.py ->
    sim/kvm/mmu.py), which stays the general path and the reference: a test runs worlds both
    ways and compares them.

Why
    Reclaim calls the chain per batch of a few folios, and the chain's layers (group by mm, hva
    ranges, memslot lookup, per-op dispatch) cost dozens of numpy calls at about a microsecond
    each. With one spte per gfn in one memslot at the mm's hva base, the spte of page ``pid`` is
    ``spte[pid]`` in the host-wide array, so the walk is one compiled pass over the batch; only
    the per-VM side effects (call counts, remote TLB flushes, vCPUs rechecking their step) stay
    in Python, once per VM the batch touches, in the chain's order (ascending mm).

When
    Used for a call only when every mm the batch touches has exactly the KVM ops it registered
    at build time as its subscribers (a test may register others; then the chain runs for the
    batches that touch that mm), the MMU is TDP (one spte per gfn) with EPT A/D bits, and the
    VM has its one memslot at gfn 0, and (host.thp) no page of the batch is in a large folio,
    whose aging and unmapping cover its 2 MiB (``any_large``: one compiled test per batch).
    Each mm's subscriptions tell the shortcut when they
    change (``MmuNotifierSubscriptions.watch``), so the test costs nothing per call and a
    registration on one mm (of this world or another) changes nothing for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numba
import numpy as np
from numpy.typing import NDArray

from sim import fast
from sim.host.huge_memory import any_large
from sim.host.memory import PG_DIRTY, PTE_PRESENT, PTE_YOUNG, HostMemory
from sim.host.mmu_notifier import MmuNotifierOps, NotifierWork
from sim.host.vmstat import NOTIFIER_KEYS, VmEvents, VmStat
from sim.kvm.spte import SPTE_NONPRESENT, age, is_dirty, is_present, is_young
from sim.kvm.vm import Vm


@numba.njit(cache=True, nogil=True, inline="always")
def _owner(bases: NDArray[np.int64], pid: int) -> int:
    """``HostMemory.page_owner`` in compiled code: the mm whose first pid is the last <= pid."""
    return np.searchsorted(bases, pid, side="right") - 1


@numba.njit(cache=True, nogil=True, inline="always")
def _all_usable(
    pids: NDArray[np.int32], bases: NDArray[np.int64], usable: NDArray[np.bool_]
) -> bool:
    """Every page's mm can take the shortcut (checked before anything changes)."""
    for i in range(pids.size):  # noqa: SIM110 (a loop: compiled code has no generator all())
        if not usable[_owner(bases, pids[i])]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _involved(counts: NDArray[np.int64], inv: NDArray[np.int64]) -> int:
    """Fill ``inv`` with the mms that have a count, ascending; return how many."""
    k = 0
    for o in range(counts.size):
        if counts[o]:
            inv[k] = o
            k += 1
    return k


@numba.njit(cache=True, nogil=True, inline="always")
def age_page(
    p: int,
    flags: NDArray[np.uint8],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    aging: NDArray[np.bool_],
    counts: NDArray[np.int64],
    young_counts: NDArray[np.int64],
) -> bool:
    """One mapped page of the fused aging walk: test and clear its host pte young bit and, if
    its mm's KVM registered aging ops (``clear_flush_young`` / ``clear_young``), its spte's
    accessed bit, counting the call (and a young spte) for the mm; whether either was young."""
    f = flags[p]
    y = (f & PTE_YOUNG) != 0
    flags[p] = f & ~PTE_YOUNG
    o = _owner(bases, p)
    if aging[o]:
        counts[o] += 1
        s = spte[p]
        spte[p] = age(s, True)  # the fused walk runs only with EPT A/D bits
        if is_young(s, True):
            young_counts[o] += 1
            y = True
    return y


@numba.njit(cache=True, nogil=True, inline="always")
def unmap_page(
    p: int,
    flags: NDArray[np.uint8],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    counts: NDArray[np.int64],
    zapped: NDArray[np.int64],
) -> int:
    """One mapped page of the fused ``try_to_unmap``: its spte zapped (its dirty bit to the
    folio, ``kvm_set_pfn_dirty``), its host pte cleared, the invalidation (and a zap of a
    present spte) counted for its mm; returns the page's new flags."""
    o = _owner(bases, p)
    counts[o] += 1
    s = spte[p]
    f = flags[p]
    if is_present(s):
        zapped[o] += 1
        if is_dirty(s):
            f |= PG_DIRTY
    spte[p] = SPTE_NONPRESENT
    f = f & ~(PTE_PRESENT | PTE_YOUNG)
    flags[p] = f
    return f


@numba.njit(cache=True, nogil=True)
def _age(
    pids: NDArray[np.int32],
    flags: NDArray[np.uint8],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    usable: NDArray[np.bool_],
    aging: NDArray[np.bool_],
    young: NDArray[np.bool_],
    counts: NDArray[np.int64],
    young_counts: NDArray[np.int64],
    inv: NDArray[np.int64],
) -> int:
    """Test and clear the host pte and spte young bits of each page; -1 (nothing changed) if a
    page's mm cannot take the shortcut, else the number of mms in ``inv``."""
    if not _all_usable(pids, bases, usable):
        return -1
    counts[:] = 0
    young_counts[:] = 0
    for i in range(pids.size):
        young[i] = age_page(pids[i], flags, spte, bases, aging, counts, young_counts)
    return _involved(counts, inv)


@numba.njit(cache=True, nogil=True)
def _unmap(
    pids: NDArray[np.int32],
    flags: NDArray[np.uint8],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    usable: NDArray[np.bool_],
    counts: NDArray[np.int64],
    zapped: NDArray[np.int64],
    inv: NDArray[np.int64],
) -> int:
    """Zap each page's spte (its dirty bit to the folio) and clear its host pte; -1 (nothing
    changed) if a page's mm cannot take the shortcut, else the number of mms in ``inv``."""
    if not _all_usable(pids, bases, usable):
        return -1
    counts[:] = 0
    zapped[:] = 0
    for i in range(pids.size):
        unmap_page(pids[i], flags, spte, bases, counts, zapped)
    return _involved(counts, inv)


_CLEAR_FLUSH_YOUNG = NOTIFIER_KEYS["clear_flush_young"]
_CLEAR_YOUNG = NOTIFIER_KEYS["clear_young"]
_INVALIDATE_START = NOTIFIER_KEYS["invalidate_range_start"]
_INVALIDATE_END = NOTIFIER_KEYS["invalidate_range_end"]
_SPTES_WALKED = VmStat.SPTES_WALKED.value
_TLB_FLUSHES = VmStat.TLB_FLUSHES.value


class TdpShortcut:
    """The fused walk for ``vms`` whose sptes are ``spte`` (host-wide, indexed by page id).

    Args:
        mem: host memory (its pte/folio flags, and each mm's range of page ids).
        vms: every VM, by mm index (ascending page ids).
        spte: the host-wide spte array (one spte per page: the TDP MMU).
    """

    def __init__(self, mem: HostMemory, vms: Sequence[Vm], spte: NDArray[np.uint8]) -> None:
        self.mem, self.vms, self.spte = mem, list(vms), spte
        n = len(self.vms)
        self._aging = np.array([vm.notifier.aging for vm in self.vms], dtype=np.bool_)
        self._ops: list[MmuNotifierOps | None] = []
        for vm in self.vms:
            subs, mmu = vm.mm.notifiers.subscribers, vm.mmu
            built = (
                mmu.k == 1
                and mmu.ept_ad
                and len(mmu.memslots) == 1
                and mmu.memslots[0].base_gfn == 0
                and mmu.memslots[0].userspace_addr == vm.mm.hva_base
                and len(subs) == 1
                and np.shares_memory(mmu.spte, spte)
            )
            self._ops.append(subs[0] if built else None)
        self._usable = np.array([ops is not None for ops in self._ops], dtype=np.bool_)
        for i, vm in enumerate(self.vms):
            vm.mm.notifiers.watch(partial(self._subscribers_changed, i))
        self._counts = np.zeros(n, dtype=np.int64)
        self._young = np.zeros(n, dtype=np.int64)
        # the counters every mm's notifiers and MMU count into (the host's, or none)
        self._vmstat: VmEvents | None = self.vms[0].mmu.vmstat if self.vms else None
        for vm in self.vms:
            assert vm.mmu.vmstat is self._vmstat, "one host's counters"
            assert vm.mm.notifiers.vmstat is self._vmstat, "one host's counters"
        self._flush_on_age = [o for o, vm in enumerate(self.vms) if vm.notifier.flush_on_age]
        self._inv = np.zeros(n, dtype=np.int64)
        # THP-backed guest RAM (host.thp): the per-block bytes; a batch with a large folio
        # takes the chain (its aging and unmapping cover 2 MiB)
        self._thp = mem.thp if mem.thp is not None else np.zeros(0, dtype=np.uint8)

    def _subscribers_changed(self, i: int) -> None:
        """Whether mm ``i`` still has exactly KVM's ops subscribed (after a registration)."""
        subs = self.vms[i].mm.notifiers.subscribers
        ops = self._ops[i]
        self._usable[i] = ops is not None and len(subs) == 1 and subs[0] is ops

    def built_any(self) -> bool:
        """Whether any VM's MMU was built in the shape the fused walk takes."""
        return any(op is not None for op in self._ops)

    def folio_referenced(
        self, pids: NDArray[np.int32], work: NotifierWork, *, flush: bool
    ) -> NDArray[np.bool_] | None:
        """Host pte young OR ``clear_flush_young`` (``flush``) / ``clear_young`` of one page
        per pid, all of them aged; None (nothing done) if the chain must run instead."""
        if len(self._thp) and any_large(pids, self._thp):
            return None
        young = np.empty(len(pids), dtype=np.bool_)
        counts, yc, inv = self._counts, self._young, self._inv
        k = _age(
            pids,
            self.mem.flags,
            self.spte,
            self.mem.pid_base,
            self._usable,
            self._aging,
            young,
            counts,
            yc,
            inv,
        )
        if k < 0:
            return None
        self.aged(counts, yc, work, flush=flush)
        fast.took("tdp_shortcut")
        return young

    def aged(
        self,
        counts: NDArray[np.int64],
        young: NDArray[np.int64],
        work: NotifierWork,
        *,
        flush: bool,
    ) -> None:
        """The per-VM side effects of an aging walk that made ``counts[o]`` notifier calls
        into mm ``o``, ``young[o]`` of them finding the spte young: call counts, the walk,
        and the remote TLB flushes of ``clear_flush_young``; mms in ascending order, as the
        chain visits them. Counted per key over all mms at once (each mm's share, as each
        callback would count it)."""
        calls = counts.tolist()
        total = sum(calls)
        if not total:
            return
        work.nr_notifier_calls += total
        work.nr_sptes_walked += total
        vs = self._vmstat
        if vs is not None:
            vs.count_per_mm(_CLEAR_FLUSH_YOUNG if flush else _CLEAR_YOUNG, calls)
            vs.count_per_mm(_SPTES_WALKED, calls)
        if flush:
            for o in self._flush_on_age:
                if calls[o]:
                    self.vms[o].mmu.flush_remote_tlbs(young.item(o), work)

    def unmap(self, pids: NDArray[np.int32], work: NotifierWork) -> bool:
        """``try_to_unmap``'s invalidation bracket and host pte clear for one page per pid;
        False (nothing done) if the chain must run instead."""
        if len(self._thp) and any_large(pids, self._thp):
            return False
        counts, zapped, inv = self._counts, self._young, self._inv
        k = _unmap(
            pids, self.mem.flags, self.spte, self.mem.pid_base, self._usable, counts, zapped, inv
        )
        if k < 0:
            return False
        self.unmapped(counts, zapped, work)
        fast.took("tdp_shortcut")
        return True

    def unmapped(
        self, counts: NDArray[np.int64], zapped: NDArray[np.int64], work: NotifierWork
    ) -> None:
        """The per-VM side effects of ``counts[o]`` invalidations of mm ``o`` that zapped
        ``zapped[o]`` present sptes: KVM's invalidation bracket (nothing runs inside it: its
        sequence moves on), the vCPUs rechecking their step, the remote TLB flushes, the
        counts (per key over all mms at once, as :meth:`aged`)."""
        calls = counts.tolist()
        total = sum(calls)
        if not total:
            return
        zaps = zapped.tolist()
        flushes = sum(zaps)
        work.nr_notifier_calls += 2 * total
        work.nr_sptes_walked += total
        vs = self._vmstat
        if vs is not None:
            vs.count_per_mm(_INVALIDATE_START, calls)
            vs.count_per_mm(_SPTES_WALKED, calls)
            vs.count_per_mm(_INVALIDATE_END, calls)
            if flushes:
                vs.count_per_mm(_TLB_FLUSHES, zaps)
        work.nr_tlb_flushes += flushes
        for o, c in enumerate(calls):
            if c:
                mmu = self.vms[o].mmu
                mmu.mmu_invalidate_seq += c
                nz = zaps[o]
                mmu.zapped += nz
                mmu.revoked()
                if nz:
                    mmu.kick(nz)

"""The plain major fault fused: KVM's fault, the host's swap-in and the LRU add in two calls.

Where
    Above the host and KVM, as sim/core.py is: it fuses ``kvm_page_fault`` (sim/kvm/fault.py),
    ``do_swap_page`` (sim/host/fault.py) and the two-list policy's ``folio_add_lru`` and
    ``folio_mark_accessed`` (sim/reclaim/two_list.py), which no one layer may do alone.

Models
    Nothing new. The commonest fault of a swapping host: a vCPU touches a page that is only in
    swap. KVM finds no spte (arch/x86/kvm/mmu/mmu.c ``kvm_mmu_page_fault`` ->
    ``kvm_faultin_pfn``), GUP faults the page in (mm/memory.c ``do_swap_page``: a frame, the
    folio locked, the read submitted; mm/swap_state.c, no readahead), and once the read is done
    the pte is restored young, the swap copy kept or freed (``should_try_to_free_swap``), the
    folio added to the LRU with its refault tested against the workingset
    (mm/workingset.c ``workingset_refault``) and marked accessed by GUP's FOLL_TOUCH; KVM then
    installs the spte unless an invalidation ran meanwhile (``is_page_fault_stale``) and
    releases the page dirty and accessed (``kvm_release_faultin_page``). The general path runs
    this through ``kvm_page_fault``'s and the vCPU's generators and some 25 calls; here the
    steps before the read are :meth:`HostFaultHandler.swapin_begin`'s and those after it one
    compiled pass over the arrays (:func:`_swapin_map`) with the counters, the swap slot, the
    LRU add batch and the folio lock's waiters in Python. The fault's bookkeeping (counts by
    kind, refaults, latency, the fault log) is the vCPU's, shared with the general path.

What the add, mark, mark comes to
    ``folio_add_lru`` puts the folio in the inactive list's add batch (or, a refault within
    the workingset, the active list's); GUP's ``folio_mark_accessed`` sets PG_referenced;
    KVM's release finds it referenced and still the newest add of the inactive batch, and
    activates it there (``__lru_cache_activate_folio``: no pgactivate). Either way the folio
    ends as the newest add of the active batch with the workingset clock one further on: flags
    ``LRU_ACTIVE`` (activated by the second mark), or ``LRU_ACTIVE | PG_referenced`` and
    ``PG_workingset`` from the shadow (activated by the refault). The inactive batch is back as
    it was, unless the add had filled it (4,096 adds, a drain): that fault takes the general
    path.

When
    The world was built for it (:func:`fault_core_for`: the compiled host core is used, the
    policy is two-list on the node's lruvec without page cache lists or lazy memcg statistics,
    no memcgs, no KSM, no swap readahead, zswap or zram, and ``plain_swapin`` is on; the vCPU's
    VM has no guest kernel and no async page faults), and at the fault the page is only in swap
    (so in no large folio, with host.thp) with no fault of it in progress
    (:meth:`FaultCore.swap_only`: then KVM's and the host's no-wait attempts find nothing and
    change nothing, so they are skipped) and ``swapin_begin`` takes it (its mm lives and a frame
    is free above min). After the read the pass runs if the mm lives, the page was not
    discarded, no invalidation is in progress and the inactive add batch has room; otherwise
    ``kvm_page_fault`` goes on from the read (``begun``), as the general path would. An
    invalidation that ran during the read (reclaim zapping other sptes of the VM: a third of the
    major faults in bench/bench_model.py's 5% world) makes the fault stale: KVM returns
    RET_PF_RETRY and the retry's GUP finds the pte present with nothing else changed, so the
    pass also counts the retry (``pf_retry``, the exit and the GUP's CPU). It is the fast path
    ``compiled_fault`` of sim/fast.py; tests/test_fastpaths.py runs random worlds with it on and
    off and compares every array and counter.

Invariants
    The same as the general path's: a page being read in is locked and on no list; after the
    pass it is mapped young, on the active add batch, and its spte present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
from numpy.typing import NDArray

from sim import fast
from sim.costs import CostsConfig
from sim.host.fault import HostFault
from sim.host.memory import PG_DIRTY, PG_LOCKED, PG_RESIDENT, PG_SWAP, PTE_PRESENT, PTE_YOUNG
from sim.host.vmstat import VmStat
from sim.kvm.fault import FaultKind, _host_cost
from sim.kvm.spte import SPTE_PRESENT, is_access_tracked, mapped
from sim.reclaim.two_list import _AGE_MASK, LRU_ACTIVE, PG_REFERENCED, PG_WORKINGSET, TwoList

if TYPE_CHECKING:
    from sim.config import Scenario
    from sim.host.fault import HostFaultHandler
    from sim.host.mm import Mm
    from sim.kvm.mmu import KvmMmu

_ADD_BATCH = 4096  # PageQueue.add_one drains its batch at this many single adds
_PGMAJFAULT = VmStat.PGMAJFAULT.value
_WORKINGSET_REFAULT = VmStat.WORKINGSET_REFAULT.value
_WORKINGSET_ACTIVATE = VmStat.WORKINGSET_ACTIVATE.value
_WORKINGSET_RESTORE = VmStat.WORKINGSET_RESTORE.value
_ACTIVATED, _RESTORED = 1, 2  # _swapin_map's result bits


_SIG = (
    "int64(uint8[::1], uint8[::1], uint8[::1], uint8[::1], int64, int64, int64, int64,"
    " boolean, boolean, int64, int64, int64, int64)"
)


@numba.njit(_SIG, cache=True, nogil=True)
def _swapin_map(
    flags: NDArray[np.uint8],
    fl: NDArray[np.uint8],
    spte: NDArray[np.uint8],
    rmap_count: NDArray[np.uint8],
    pid: int,
    pfn: int,
    idx: int,
    gfn: int,
    free_swap: bool,
    dirty: bool,
    spte_value: int,
    shadow: int,
    age: int,
    active_size: int,
) -> int:
    """The array steps after a plain swap-in's read, in the general path's order: the folio
    unlocked and its pte restored young (``do_swap_page``), its swap copy dropped if
    ``free_swap``; its LRU flags after ``folio_add_lru`` with ``shadow`` (refault distance
    against ``age``, the lruvec's nonresident_age, and ``active_size``, the active list's
    size in pages) and two ``folio_mark_accessed`` (see the module docstring); the spte installed
    (``rmap_count``, when KVM keeps one, counts a newly present spte); the folio dirty if KVM
    could map it writable. Returns ``_ACTIVATED`` if the refault activated the folio, with
    ``_RESTORED`` if its shadow had PG_workingset."""
    f = (flags[pid] & ~PG_LOCKED) | PTE_PRESENT | PTE_YOUNG
    if free_swap:
        f = (f & ~PG_SWAP) | PG_DIRTY
    if dirty:
        f |= PG_DIRTY
    flags[pid] = f
    out = 0
    if ((age - (shadow & _AGE_MASK)) & _AGE_MASK) <= active_size:
        fl[pfn] = LRU_ACTIVE | PG_REFERENCED
        out = _ACTIVATED
        if shadow >> 31:
            fl[pfn] = LRU_ACTIVE | PG_REFERENCED | PG_WORKINGSET
            out |= _RESTORED
    else:
        fl[pfn] = LRU_ACTIVE
    if rmap_count.size and not spte[idx] & SPTE_PRESENT:
        rmap_count[gfn] += 1
    spte[idx] = spte_value
    return out


class FaultCore:
    """The fused plain major fault of one world (see the module docstring).

    Args:
        host: the host's fault handler (its folio locks, swap device and counters).
        policy: the node's two-list lruvec.
    """

    def __init__(self, host: HostFaultHandler, policy: TwoList, costs: CostsConfig) -> None:
        self.host, self.policy = host, policy
        self.major_ns = _host_cost(costs, HostFault.MAJOR)  # the fault's CPU, as KVM counts it
        # a stale fault's retry: the exit back into the guest, and GUP finding the pte present
        self.retry_ns = costs.vmexit_ns + _host_cost(costs, HostFault.MAPPED)
        self.mem, self.swap, self.vmstat = host.mem, host.swap, host.vmstat
        self._no_rmap = np.zeros(0, dtype=np.uint8)
        # the compiled pass's own entry point, its one signature: the dispatcher's resolution
        # of 14 argument types would cost more than the pass (and a wrong type still raises)
        self._map = _swapin_map.overloads[_swapin_map.signatures[0]].entry_point

    def swap_only(self, pid: int, spte: int) -> bool:
        """Page ``pid`` is only in swap, with no fault or readahead of it in progress and its
        spte not access-tracked: KVM's ``fast_page_fault`` and the host's no-wait fault would
        both find nothing to do and change nothing."""
        host = self.host
        return (
            self.mem.flags.item(pid) & (PTE_PRESENT | PG_RESIDENT | PG_SWAP) == PG_SWAP
            and not is_access_tracked(spte)
            and pid not in host._inflight
            and pid not in host._ra_wait
        )

    def swapin_done(
        self,
        mmu: KvmMmu,
        mm: Mm,
        *,
        pid: int,
        gfn: int,
        alias: int,
        write: bool,
        pfn: int,
        shadow: int,
        mmu_seq: int,
    ) -> tuple[FaultKind, int, int] | None:
        """The read ``swapin_begin`` started is done: finish the fault as
        :meth:`HostFaultHandler.swapin_end` and ``kvm_page_fault``'s spte install would, and
        return what ``kvm_page_fault`` returns; or do nothing and return None (the mm died, the
        page was discarded, an invalidation ran, or the inactive add batch is full): the caller
        goes on with ``kvm_page_fault(begun=...)``."""
        policy, swap = self.policy, self.swap
        if (
            mm.dead
            or (mm.zapped and pid in mm.zapped)
            or mmu.mmu_invalidate_in_progress > 0
            or len(policy.inactive._pending) >= _ADD_BATCH - 1
        ):
            return None
        free_swap = write or swap.vm_swap_full()
        rmap = mmu._rmap_count
        out = self._map(
            self.mem.flags,
            policy.fl,
            mmu.spte,
            self._no_rmap if rmap is None else rmap,
            pid,
            pfn,
            gfn * mmu.k + alias,
            gfn,
            free_swap,
            mmu.dirty_on_map or write,
            mapped(write),
            shadow,
            policy.nonresident_age,
            policy.nr_active,
        )
        self.vmstat.count(_PGMAJFAULT, 1, mm.index)
        if free_swap:
            swap.free_slots(1, (pid,))
        policy._count(_WORKINGSET_REFAULT)
        if out & _ACTIVATED:
            policy._count(_WORKINGSET_ACTIVATE)
        policy.active.add_one(pfn)
        policy.nonresident_age += 1
        if out & _RESTORED:
            policy._count(_WORKINGSET_RESTORE)
            policy._lru_note_cost(1, 0)
        self.host._unlock(pid)
        mmu.pf_fixed += 1
        fast.took("compiled_fault")
        if mmu.mmu_invalidate_seq != mmu_seq:  # is_page_fault_stale: RET_PF_RETRY, and the
            mmu.pf_retry += 1  # retry's GUP finds the pte present (nothing changes meanwhile)
            return FaultKind.MAJOR, self.major_ns + self.retry_ns, 1
        return FaultKind.MAJOR, self.major_ns, 0


def fault_core_for(
    host: HostFaultHandler, policy: object, costs: CostsConfig, core: object
) -> FaultCore | None:
    """The fused fault path for a world, or None when its configuration needs the general path
    (see the module docstring's "When"; the vCPUs add their own conditions)."""
    if (
        not fast.enabled("compiled_fault")
        or core is None
        or type(policy) is not TwoList
        or policy.memcg >= 0
        or policy.file
        or policy.stats is not None
        or host.memcg is not None
        or host.ksm is not None
        or host.env is None
        or not host._plain  # swapin_begin never takes a fault whole
        or host.page_cluster
        or host.swap.zram
        or host.swap.zswap is not None
    ):
        return None
    return FaultCore(host, policy, costs)


def fault_path_reason(sc: Scenario) -> str | None:
    """Why some or all of a scenario's vCPUs take the general path for every major fault (None:
    all of them have the fused one where a fault allows), in the user's terms, for ``memsim
    run``'s note; :func:`fault_core_for` and the world's per-VM test decide the same from the
    built world (tested equal). Not asked while the host core itself is not used (its note
    says the run takes the general path)."""
    if sc.reclaim.trigger == "demand":
        return None  # no clock: every fault resolves at once, no read waited for
    reasons = []
    if not (fast.enabled("compiled_fault") and fast.enabled("plain_swapin")):
        reasons.append("turned off by MEMSIM_FAST / MEMSIM_FAST_DISABLE")
    vms = [cfg for _, cfg in sc.vm_list()]
    if sc.reclaim.policy != "two_list":
        reasons.append(f"reclaim.policy {sc.reclaim.policy} (its own LRU hooks)")
    if any(cfg.memcg is not None for cfg in vms):
        reasons.append("memcgs (charging)")
    if sc.swap.page_cluster:
        reasons.append("swap.page_cluster (readahead)")
    if sc.swap.device == "zram":
        reasons.append("swap.device zram")
    elif sc.swap.zswap.enabled:
        reasons.append("swap.zswap")
    if any(cfg.guest is not None for cfg in vms):
        reasons.append("vms[].guest (on those VMs)")
    if any(cfg.async_pf > 0.0 for cfg in vms):
        reasons.append("vms[].async_pf (on those VMs)")
    return ", ".join(reasons) or None

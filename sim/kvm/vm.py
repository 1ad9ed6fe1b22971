"""A VM (``struct kvm``): its QEMU mm, its secondary MMU, its notifier subscription, its vCPUs.

Models
    The glue that KVM keeps per VM: the memslot covering guest RAM, the MMU, the notifier ops it
    registered on QEMU's mm, and the per-VM statistics. ``kick`` is ``kvm_make_all_cpus_request``
    for a TLB flush: each vCPU that is running guest code takes a forced exit; a vCPU blocked in
    the host flushes for free on its next entry.

Kernel reference
    virt/kvm/kvm_main.c: ``kvm_make_all_cpus_request``, ``kvm_flush_remote_tlbs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import PG_DIRTY, HostMemory
from sim.host.mm import Mm
from sim.host.vmstat import VmEvents
from sim.kvm.fault import FAULT_KINDS
from sim.kvm.mmu import KvmMmu, Memslot
from sim.kvm.notifier import KvmNotifier

if TYPE_CHECKING:
    from sim.guest.balloon import VirtioBalloon
    from sim.guest.kernel import GuestKernel
    from sim.guest.tlb import GuestTlbs
    from sim.guest.vcpu import Vcpu


@dataclass(slots=True)
class VmStats:
    """Per-VM totals for the summary and the timeline."""

    accesses: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    refaults: int = 0
    stall_ns: int = 0  # vCPU time lost to faults, reclaim stalls and forced exits
    fault_ns: int = 0  # part of stall_ns spent in fault handling (incl. direct reclaim, I/O)
    tlb_flush_exits: int = 0
    async_pf: int = 0  # faults made asynchronous (kvm_arch_setup_async_pf): no vCPU waited
    compute_ns: int = 0  # vCPU time running guest code
    guest_wait_ns: int = 0  # vCPU time blocked in the guest kernel's own faults (I/O, reclaim)
    # memsim's, not a kernel counter: pages holding a frame or a swap copy that the host
    # discarded (madvise(MADV_DONTNEED): balloon, free page reporting; sim/host/madvise.py)
    pages_discarded: int = 0


class Vm:
    """One guest: QEMU's mm plus KVM's per-VM state.

    Args:
        index: VM number (also its mm's index).
        name: VM name.
        mm: QEMU's mm holding the guest RAM.
        mem: host memory (for ``kvm_set_pfn_dirty``).
        sptes_per_gfn: 1 with the TDP MMU, more with shadow paging.
        ept_ad: EPT A/D bits available.
        dirty_on_map: KVM marks pages dirty when it releases them after a fault.
        aging_notifiers: register the aging ops (``kvm.mmu_notifiers``).
        flush_on_age: pre-6.13 flush on a young ``clear_flush_young``.
        tlb_flush_exit_ns: cost charged to each running vCPU per remote flush.
        spte: storage for this VM's sptes (a slice of a host-wide array), or None.
        vmstat: the host's counters (KVM counts its walks and flushes there), or None.
    """

    def __init__(
        self,
        index: int,
        name: str,
        mm: Mm,
        mem: HostMemory,
        *,
        sptes_per_gfn: int,
        ept_ad: bool,
        dirty_on_map: bool,
        aging_notifiers: bool,
        flush_on_age: bool,
        tlb_flush_exit_ns: int,
        spte: NDArray[np.uint8] | None = None,
        vmstat: VmEvents | None = None,
        shadow_rmap: bool = True,
    ) -> None:
        self.index, self.name, self.mm, self.mem = index, name, mm, mem
        self.memslot = Memslot(base_gfn=0, npages=mm.nr_pages, userspace_addr=mm.hva_base)
        self.mmu = KvmMmu(
            mm.nr_pages,
            [self.memslot],
            sptes_per_gfn=sptes_per_gfn,
            ept_ad=ept_ad,
            dirty_on_map=dirty_on_map,
            mark_dirty=self._mark_dirty,
            spte=spte,
            kick=self.kick,
            revoked=self.revoked,
            vmstat=vmstat,
            mm=index,
            rmap=shadow_rmap,
        )
        self.notifier = KvmNotifier(self.mmu, aging=aging_notifiers, flush_on_age=flush_on_age)
        mm.notifiers.register(self.notifier.ops())
        self.vcpus: list[Vcpu] = []
        self.nr_vcpus = 0  # configured vCPUs (demand mode runs none as processes)
        self.stats = VmStats()
        self.tlb_flush_exit_ns = tlb_flush_exit_ns
        # the vCPUs' TLB model (guest/tlb.py), set by the world when the VM has one
        self.tlbs: GuestTlbs | None = None
        self.tlb_rows = range(0)
        self.notifier.on_release = self._release_tlbs
        self.guest: GuestKernel | None = None  # the guest kernel's memory, when modelled
        self.balloon: VirtioBalloon | None = None  # its virtio-balloon, when it has one

    def _release_tlbs(self) -> None:
        """The mm exited and KVM dropped every spte: the vCPUs' TLBs go with them."""
        if self.tlbs is not None:
            self.tlbs.flush(self.tlb_rows)

    def _mark_dirty(self, gfns: NDArray[np.int64]) -> None:
        """``kvm_set_pfn_dirty``: a zapped spte was dirty, so the host folio is too."""
        self.mem.flags[self.mm.pid_base + gfns] |= np.uint8(PG_DIRTY)

    def revoked(self) -> None:
        """Sptes were zapped or access-tracked: vCPUs whose step is in flight recheck it."""
        for v in self.vcpus:
            v.revoked()

    def kick(self, n: int) -> None:
        """``n`` remote TLB flushes: every vCPU in guest mode takes ``n`` forced exits, and
        every vCPU's TLB is emptied (``kvm_vcpu_flush_tlb_all``, at once or at its entry)."""
        if self.tlbs is not None:
            self.tlbs.flush(self.tlb_rows)
        for v in self.vcpus:
            if v.in_guest:
                v.pending_ns += n * self.tlb_flush_exit_ns
                self.stats.tlb_flush_exits += n

"""KVM's page-fault path for a guest access that found no usable spte (an EPT violation).

Models
    An access-tracked spte is restored in place by ``fast_page_fault`` (no GUP). Otherwise KVM
    snapshots ``mmu_invalidate_seq``, asks the host for the page (``hva_to_pfn`` -> GUP, which may
    allocate, reclaim or read from swap), and installs the spte only if no invalidation ran
    meanwhile (``is_page_fault_stale``); if one did, the fault returns RET_PF_RETRY, the guest
    re-enters, faults again and the host lookup is repeated.

Kernel reference
    arch/x86/kvm/mmu/mmu.c: ``kvm_mmu_page_fault``, ``direct_page_fault``, ``fast_page_fault``,
    ``kvm_faultin_pfn``, ``is_page_fault_stale``; virt/kvm/kvm_main.c: ``hva_to_pfn``.

Both worlds
    The vCPU (guest/vcpu.py) resolves what needs no waiting with ``kvm_fault_nowait`` and runs
    ``kvm_page_fault`` as a process step otherwise; demand mode (demand.py) drives
    ``kvm_page_fault`` to completion at once: its host has no clock, so every fault is one
    that needs no waiting there. Both count each resolved fault with ``fault_done``.

Simplifications
    An async page fault (``vms[].async_pf``) runs this same path in a process of its own
    (KVM's worker), the vCPU running on (guest/vcpu.py). The fault's CPU cost is
    returned to the caller rather than waited here, so the vCPU pays it with its next step.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from sim.costs import CostsConfig
from sim.host.fault import HostFault, HostFaultHandler
from sim.host.kswapd import ProcessGen
from sim.host.memory import PTE_PRESENT, PTRS_PER_PMD
from sim.host.mm import Mm
from sim.kvm.mmu import KvmMmu
from sim.kvm.spte import is_access_tracked, is_write_protected

if TYPE_CHECKING:
    from sim.kvm.vm import Vm


class FaultKind(StrEnum):
    """Guest-visible fault kinds (the ``kind`` column of the faults table)."""

    FIRST_TOUCH = "first_touch"  # page never touched: allocate and zero
    MINOR = "minor"  # page in host memory (mapped, or in the swap cache): no I/O
    MAJOR = "major"  # page read back from swap
    ACCESS_TRACKING = "access_tracking"  # fast page fault on an aged spte (EPT A/D off)


FAULT_KINDS = tuple(k.value for k in FaultKind)
# a guest kernel's own page faults (vms[].guest), logged beside KVM's: the guest's level
GUEST_FAULT_KINDS = ("guest_first_touch", "guest_minor", "guest_major", "guest_cache_miss")

_KIND = {
    HostFault.MAPPED: FaultKind.MINOR,
    HostFault.FIRST_TOUCH: FaultKind.FIRST_TOUCH,
    HostFault.SWAPCACHE: FaultKind.MINOR,
    HostFault.MAJOR: FaultKind.MAJOR,
    HostFault.WAITED: FaultKind.MINOR,
    HostFault.COW: FaultKind.MINOR,
    HostFault.THP: FaultKind.FIRST_TOUCH,
}


_HOST_COST: dict[HostFault, Callable[[CostsConfig], int]] = {
    HostFault.MAPPED: lambda c: c.ept_fault_ns,
    HostFault.FIRST_TOUCH: lambda c: c.first_touch_ns,
    HostFault.SWAPCACHE: lambda c: c.swapcache_fault_ns,
    HostFault.MAJOR: lambda c: c.ept_fault_ns + c.swapin_kernel_ns,
    HostFault.WAITED: lambda c: c.ept_fault_ns,
    HostFault.COW: lambda c: c.first_touch_ns,  # allocate and fill a page (the copy)
    # clear_huge_page: 511 more 4 KiB pages zeroed
    HostFault.THP: lambda c: c.first_touch_ns + (PTRS_PER_PMD - 1) * c.clear_page_ns,
}


class FaultSink(Protocol):
    """Where faults are logged (the recorder)."""

    def fault(
        self, t_ns: int, vm: int, vcpu: int, gfn: int, kind: str, latency_ns: int, pid: int
    ) -> None:
        """One resolved guest fault."""
        ...


def fault_done(
    vm: Vm,
    sink: FaultSink | None,
    *,
    t_ns: int,
    vcpu: int,
    gfn: int,
    pid: int,
    kind: FaultKind,
    refault: bool,
    latency_ns: int,
    stalled: bool = True,
) -> None:
    """A guest fault of ``vm`` is resolved: count it (by kind; a refault if its page had been
    evicted since it was last faulted in, as ``HostFaultHandler.is_refault`` said before the
    fault; its latency in ``fault_ns`` if a vCPU stalled for it, not for an async one) and log
    it. Every world counts its faults here."""
    st = vm.stats
    st.faults[kind] += 1
    st.refaults += refault
    if stalled:
        st.fault_ns += latency_ns
    if sink is not None:
        sink.fault(t_ns, vm.index, vcpu, gfn, kind, latency_ns, pid)


def _host_cost(c: CostsConfig, hf: HostFault) -> int:
    return _HOST_COST[hf](c)


def kvm_fault_nowait(
    mmu: KvmMmu,
    host: HostFaultHandler,
    costs: CostsConfig,
    *,
    pid: int,
    gfn: int,
    alias: int,
    write: bool,
) -> tuple[FaultKind, int] | None:
    """The EPT violations KVM resolves without waiting; ``(kind, cpu_ns)`` or None.

    A fast page fault, or a GUP the host satisfies at once. No time passes, so no invalidation
    can race with it and the spte is installed straight away.
    """
    idx = gfn * mmu.k + alias  # mmu.spte_index, inlined: this runs once per fault
    s = mmu.spte.item(idx)
    if is_access_tracked(s) and not (write and is_write_protected(s)):
        mmu.fast_page_fault(idx, write)
        if write:
            host.page_written(pid)
        return FaultKind.ACCESS_TRACKING, costs.fast_fault_ns
    hf = host.fault_nowait(pid, write)
    if hf is None:
        return None
    _map(mmu, host, pid, gfn, alias, write)
    return _KIND[hf], _HOST_COST[hf](costs)


def _map(mmu: KvmMmu, host: HostFaultHandler, pid: int, gfn: int, alias: int, write: bool) -> None:
    """Install the spte (read-only over a KSM page: ``hva_to_pfn`` found the host pte
    read-only) and release the page to the host."""
    if host.write_protected(pid):
        mmu.map_spte_readonly(gfn, alias)
    else:
        mmu.map_spte(gfn, alias, write)
        if host.thp is not None and mmu.k == 1 and host.thp.pmd_mapped(pid):
            mmu.map_huge_spte(gfn)
        if write:
            host.page_written(pid)
    host.kvm_release_page(pid, dirty=mmu.dirty_on_map or write)


def kvm_page_fault(
    mmu: KvmMmu,
    mm: Mm,
    host: HostFaultHandler,
    costs: CostsConfig,
    *,
    pid: int,
    gfn: int,
    alias: int,
    write: bool,
    tried: bool = False,
    begun: tuple[int, int, int] | None = None,
) -> ProcessGen:
    """Resolve an EPT violation on ``gfn``; returns ``(FaultKind, cpu_ns, retries)``.

    ``tried``: the caller's :func:`kvm_fault_nowait` just returned None, no time passed since,
    and ``host.retry_is_idle(pid)`` holds, so neither KVM's nor the host's no-wait attempt
    is repeated (it would find the same and change nothing).
    ``begun``: ``(mmu_seq, pfn, shadow)``: the caller did this loop's first round up to the
    end of the read (``mmu_seq`` snapshot, ``host.swapin_begin`` and its wait: the fused path
    of sim/faultcore.py, which declined to finish it); the fault goes on from there.
    """
    if not tried and begun is None:
        quick = kvm_fault_nowait(mmu, host, costs, pid=pid, gfn=gfn, alias=alias, write=write)
        if quick is not None:  # resolved meanwhile (e.g. another vCPU faulted the page in)
            return quick[0], quick[1], 0
    kind: FaultKind | None = None
    cpu_ns = 0
    retries = 0
    while True:
        if begun is not None:  # the first round's read is done: swapin_end
            mmu_seq, pfn, shadow = begun
            begun = None
            host.swapin_end(pid, write, pfn, shadow)
            hf = HostFault.MAJOR
        else:
            mmu_seq = mmu.mmu_invalidate_seq
            plain = host.swapin_begin(pid)
            if plain is not None:  # the same steps, without the generators' frames
                yield plain[0]
                host.swapin_end(pid, write, plain[1], plain[2])
                hf = HostFault.MAJOR
            else:
                hf = yield from host.handle_mm_fault(pid, write, tried)
        tried = False
        if kind is None:
            kind = _KIND[hf]
        cpu_ns += _host_cost(costs, hf)
        if mm.dead:
            return kind, cpu_ns, retries
        if not mmu.is_page_fault_stale(mmu_seq, gfn) and host.mem.flags.item(pid) & PTE_PRESENT:
            break
        retries += 1  # RET_PF_RETRY: back into the guest, which faults again
        mmu.pf_retry += 1
        cpu_ns += costs.vmexit_ns
    _map(mmu, host, pid, gfn, alias, write)
    return kind, cpu_ns, retries

"""KVM's subscriber to the host mm's notifier chain (``kvm_mmu_notifier_ops``).

Models
    Each op fills a range descriptor ``{handler, on_lock, flush_on_ret}`` and calls one walker,
    ``__kvm_handle_hva_range``: memslot lookup from hva to gfn, the handler on the gfn range (a
    walk of KVM's rmap or TDP table), and a remote TLB flush when ``flush_on_ret`` is set and the
    handler changed something. This is the kernel's shape, so the aging and invalidation paths
    differ only in their descriptors.

Kernel reference
    virt/kvm/kvm_main.c: ``kvm_mmu_notifier_clear_flush_young``,
    ``kvm_mmu_notifier_clear_young``, ``kvm_mmu_notifier_test_young``,
    ``kvm_mmu_notifier_invalidate_range_start/end``, ``__kvm_handle_hva_range``.

Switches
    ``aging=False`` (config ``kvm.mmu_notifiers: false``): KVM registers no aging ops, so the host
    judges guest pages by QEMU's own pte young bits alone (set at fault-in, never by guest
    accesses). Invalidation stays, because without it the host could free a page the guest still
    maps (pre-notifier KVM pinned all guest memory instead). ``flush_on_age=True`` is the pre-6.13
    behaviour: a young ``clear_flush_young`` result costs a remote TLB flush.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from sim.host.mmu_notifier import Hva, MmuNotifierOps, NotifierWork
from sim.kvm.mmu import KvmMmu

Handler = Callable[[Hva, Hva, NotifierWork], NDArray[np.bool_]]


class KvmNotifier:
    """The ``kvm_mmu_notifier_ops`` of one VM."""

    def __init__(self, mmu: KvmMmu, *, aging: bool = True, flush_on_age: bool = False) -> None:
        self.mmu, self.aging, self.flush_on_age = mmu, aging, flush_on_age
        # what else the VM drops with its sptes at release (its vCPUs' cached translations)
        self.on_release: Callable[[], None] | None = None

    def ops(self) -> MmuNotifierOps:
        """The ops table KVM registers (``kvm_init_mmu_notifier``)."""
        return MmuNotifierOps(
            clear_flush_young=self.clear_flush_young if self.aging else None,
            clear_young=self.clear_young if self.aging else None,
            test_young=self.test_young if self.aging else None,
            invalidate_range_start=self.invalidate_range_start,
            invalidate_range_end=self.invalidate_range_end,
            release=self.release,
        )

    def _handle_hva_range(
        self,
        start: Hva,
        end: Hva,
        work: NotifierWork,
        handler: Handler,
        *,
        flush_on_ret: bool,
        on_lock: Callable[[int], None] | None = None,
    ) -> NDArray[np.bool_]:
        """``__kvm_handle_hva_range``: lock, handler per range, flush once per changed range."""
        if on_lock is not None:
            on_lock(len(start))
        ret = handler(start, end, work)
        if flush_on_ret:
            self.mmu.flush_remote_tlbs(int(ret.sum()), work)
        return ret

    def _age(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        return self.mmu.age_hva_ranges(start, end, work, clear=True)

    def _test_age(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        return self.mmu.age_hva_ranges(start, end, work, clear=False)

    def clear_flush_young(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        """``kvm_age_gfn``; flushes only before 6.13 (``KVM_ELIDE_TLB_FLUSH_IF_YOUNG``)."""
        return self._handle_hva_range(start, end, work, self._age, flush_on_ret=self.flush_on_age)

    def clear_young(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        """``kvm_age_gfn``, never flushing ("no secondary TLB flushes from clear_young")."""
        return self._handle_hva_range(start, end, work, self._age, flush_on_ret=False)

    def test_young(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        """``kvm_test_age_gfn``: no side effects."""
        return self._handle_hva_range(start, end, work, self._test_age, flush_on_ret=False)

    def invalidate_range_start(self, start: Hva, end: Hva, work: NotifierWork) -> None:
        """Zap sptes in the ranges (``kvm_mmu_unmap_gfn_range``) and flush remote TLBs."""
        self._handle_hva_range(
            start,
            end,
            work,
            self.mmu.unmap_hva_ranges,
            flush_on_ret=True,
            on_lock=self.mmu.invalidate_begin,
        )

    def invalidate_range_end(self, start: Hva, end: Hva, work: NotifierWork) -> None:
        """``kvm_mmu_invalidate_end``: bump ``mmu_invalidate_seq``; faults may map again."""
        self.mmu.invalidate_end(len(start))

    def release(self) -> None:
        """``kvm_mmu_notifier_release``: the mm is exiting; drop every spte (and, with them,
        every translation the vCPUs cached: ``kvm_flush_shadow_all`` flushes)."""
        self.mmu.zap_all()
        if self.on_release is not None:
            self.on_release()

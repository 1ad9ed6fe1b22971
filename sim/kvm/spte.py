"""KVM's spte: the bit layout memsim keeps of one leaf entry, and the rules that read and change it.

Models
    One byte per spte (an EPT/NPT leaf, or a shadow-paging leaf):

    ==========================  ===  ==============================================================
    ``SPTE_PRESENT``            0x1  maps the page: hardware may use it (RWX bits set in the kernel)
    ``SPTE_ACCESSED``           0x2  EPT A bit: hardware sets it on any access through the spte
    ``SPTE_DIRTY``              0x4  EPT D bit: hardware sets it on a write through the spte
    ``SPTE_ACCESS_TRACKED``     0x8  present, but its R/X permissions are parked by aging
    ``SPTE_WRITE_PROTECTED``   0x10  present without W: maps a KSM page read-only (host/ksm.py)
    ==========================  ===  ==============================================================

    A zapped spte is 0 (``SPTE_NONPRESENT``); a freshly mapped one is present and accessed, and
    dirty if the access that faulted it in was a write.

    **With EPT A/D bits** (``kvm.ept_ad_bits``, ``eptad=1``; every CPU since Haswell), a guest
    access through a present spte sets its accessed bit (and dirty bit on a write) in hardware,
    with no exit. Aging (``kvm_age_gfn`` from the notifiers' ``clear_young`` /
    ``clear_flush_young``) tests and clears the accessed bit; the next access sets it again,
    still without an exit.

    **Without A/D bits** the hardware records nothing, so KVM makes the first access after aging
    fault instead: ``mark_spte_for_access_track`` saves the spte's R/X permissions in spare high
    bits and clears them, which memsim keeps as ``SPTE_ACCESS_TRACKED`` (and clears the accessed
    bit, so that accessed always means "not access-tracked" in this mode, as KVM's
    ``is_accessed_spte`` defines it). The next guest access takes an EPT violation that
    ``fast_page_fault`` resolves without the host (no GUP, no mmu_lock): it restores the saved
    bits with a cmpxchg (``restore_acc_track_spte``). Young then means "present and not
    access-tracked".

    A guest access is a hit (completes in hardware) if its spte is present and not
    access-tracked; anything else is an EPT violation (``needs_fault``). A write through a
    write-protected spte is one too (``needs_write_fault``): KVM maps a page read-only when the
    host pte is read-only (``hva_to_pfn`` without ``writable``), which only KSM pages are here;
    only runs with ``host.ksm`` make such sptes, so every other spte is as before. The dirty bit is
    tracked the same way in both modes (KVM without A/D bits write-protects for dirty logging
    instead; not modelled), and zapping a present dirty spte hands the dirt to the folio
    (``kvm_set_pfn_dirty``).

Kernel reference
    arch/x86/kvm/mmu/spte.h (``shadow_accessed_mask``, ``shadow_dirty_mask``,
    ``spte_ad_enabled``, ``is_access_track_spte``, ``is_accessed_spte``,
    ``restore_acc_track_spte``), arch/x86/kvm/mmu/spte.c (``mark_spte_for_access_track``,
    ``make_spte``), arch/x86/kvm/mmu/mmu.c (``fast_page_fault``, ``kvm_age_rmap``),
    arch/x86/kvm/mmu/tdp_mmu.c (``kvm_tdp_mmu_age_gfn_range``).

Why here
    Every reader of sptes uses these: KVM's MMU and notifier walks (vectorised numpy), the
    vCPU's touch walk and the fused reclaim walk (compiled), KVM's fault path (Python scalars).
    Each rule is a bit expression registered with numba (``register_jitable``): a plain
    Python function that also works elementwise on numpy arrays, and that compiled code
    inlines. No other module defines spte bits or masks.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numba.extending import register_jitable
from numpy.typing import NDArray

S: TypeAlias = int | np.integer | NDArray[np.uint8]  # one spte, or an array of them
B: TypeAlias = bool | np.bool_ | NDArray[np.bool_]  # a flag, or one per spte

SPTE_PRESENT = 0x1
SPTE_ACCESSED = 0x2
SPTE_DIRTY = 0x4
SPTE_ACCESS_TRACKED = 0x8
SPTE_WRITE_PROTECTED = 0x10
SPTE_NONPRESENT = 0  # what a zap leaves

_HW_CHECK = SPTE_PRESENT | SPTE_ACCESS_TRACKED  # the bits the hardware walk decides on
_YOUNG_AD = SPTE_PRESENT | SPTE_ACCESSED
_NOT_ACCESSED = 0xFF ^ SPTE_ACCESSED  # positive masks: they fit a uint8 array as they are
_NOT_TRACKED = 0xFF ^ SPTE_ACCESS_TRACKED
_MAPPED = SPTE_PRESENT | SPTE_ACCESSED


@register_jitable
def is_present(s: S) -> B:
    """The spte maps its page (an access-tracked one too)."""
    return (s & SPTE_PRESENT) != 0


@register_jitable
def is_hit(s: S) -> B:
    """A guest access through ``s`` completes in hardware: present and not access-tracked."""
    return (s & _HW_CHECK) == SPTE_PRESENT


@register_jitable
def needs_fault(s: S) -> B:
    """A guest access through ``s`` takes an EPT violation (not present, or access-tracked)."""
    return (s & _HW_CHECK) != SPTE_PRESENT


@register_jitable
def needs_write_fault(s: S, write: B) -> B:
    """An access through ``s`` takes an EPT violation: :func:`needs_fault`, or a write through
    a write-protected spte (a KSM page's)."""
    return (s & (_HW_CHECK | SPTE_WRITE_PROTECTED * write)) != SPTE_PRESENT


@register_jitable
def is_write_protected(s: S) -> B:
    """Present and mapped read-only (a KSM page): a write faults to the host's COW."""
    return (s & (SPTE_PRESENT | SPTE_WRITE_PROTECTED)) == (SPTE_PRESENT | SPTE_WRITE_PROTECTED)


@register_jitable
def is_access_tracked(s: S) -> B:
    """Present but parked by aging: ``fast_page_fault`` restores it without the host."""
    return (s & _HW_CHECK) == _HW_CHECK


@register_jitable
def is_dirty(s: S) -> B:
    """Present with the dirty bit: zapping it marks the folio dirty (``kvm_set_pfn_dirty``)."""
    return (s & (SPTE_PRESENT | SPTE_DIRTY)) == (SPTE_PRESENT | SPTE_DIRTY)


@register_jitable
def is_young(s: S, ept_ad: bool) -> B:
    """``is_accessed_spte``: the accessed bit of a present spte (A/D), or present and not
    access-tracked (no A/D bits)."""
    if ept_ad:
        return (s & _YOUNG_AD) == _YOUNG_AD
    return (s & _HW_CHECK) == SPTE_PRESENT


@register_jitable
def touch(s: S, write: B) -> S:
    """The hardware's side of a hit: set the accessed bit, and the dirty bit on a write."""
    return s | (SPTE_ACCESSED | SPTE_DIRTY * write)


@register_jitable
def age(s: S, ept_ad: bool) -> S:
    """The spte after aging: accessed bit cleared (A/D), or ``mark_spte_for_access_track``
    (no A/D bits: a present spte is parked and loses its accessed bit; others stay)."""
    if ept_ad:
        return s & _NOT_ACCESSED
    p = s & SPTE_PRESENT  # 1 for a present spte, else 0: only present ones are parked
    return (s | p * SPTE_ACCESS_TRACKED) & (0xFF ^ p * SPTE_ACCESSED)


@register_jitable
def fast_page_fault(s: S, write: B) -> S:
    """``fast_page_fault`` on an access-tracked spte: its permissions restored
    (``restore_acc_track_spte``) and the access that faulted applied."""
    return (s & _NOT_TRACKED) | (SPTE_ACCESSED | SPTE_DIRTY * write)


@register_jitable
def mapped(write: B) -> int:
    """A newly installed spte (``make_spte``): present and accessed, dirty after a write."""
    return _MAPPED | SPTE_DIRTY * write


@register_jitable
def mapped_readonly() -> int:
    """A newly installed read-only spte (``make_spte`` without ``ACC_WRITE_MASK``): present and
    accessed, never dirty (no write can go through it)."""
    return _MAPPED | SPTE_WRITE_PROTECTED

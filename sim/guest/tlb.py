"""The guest's TLB: which translations a vCPU has cached, and so when the EPT accessed bit is set.

Models
    Hardware sets an EPT entry's accessed bit when it *walks* the entry: on a TLB miss, when the
    translation is filled. An access through a cached translation walks nothing and sets no
    bit. So after aging clears a page's accessed bit without a TLB flush (the primary MMU has
    not flushed on clearing young since 2014, KVM not since 6.13), a page the guest keeps
    hitting in its TLB looks idle to the host's reclaim until the entry is evicted or
    flushed: the LRU approximation is lossy in a way no per-access model shows. A write
    through a cached translation whose dirty bit the TLB does not hold yet walks the entry to
    set it (setting accessed too); one that holds it walks nothing.

    Each vCPU with ``vms[].guest_tlb`` has one set-associative TLB of ``entries`` translations
    in ``ways``-way sets (a page's set is its spte index modulo the number of sets, as the
    low bits of the page number index a real TLB), least recently used way replaced. It
    caches one translation per guest page (guest-virtual addresses are not modelled: the
    streams are of guest-physical pages). Flushes:

    - a remote TLB flush of the VM (``kvm_flush_remote_tlbs``: every zap of a present spte,
      and a young ``clear_flush_young`` with ``kvm.flush_on_age``) empties every vCPU's TLB
      of that VM (``KVM_REQ_TLB_FLUSH`` -> ``kvm_vcpu_flush_tlb_all``, INVEPT single-context);
    - ``context_switch_us``: every that much guest time the guest switches address spaces in
      a way that flushes everything (a guest without PCID); 0: never (PCID keeps entries).

    An entry never outlives its spte: a zap that removes a present spte always flushes, and
    an access that finds its entry over a spte that is not present (possible only between a
    zap and its flush within one batch) is a miss.

Batching
    The vCPU applies a run of accesses at once (guest/vcpu.py); the TLB is updated in the same
    pass, access by access. A remote flush that lands while a run is in flight empties the
    TLB at the flush, not at the access it falls between: accesses later in that run keep
    the entries they had (their accessed bits were set no later than they would have been:
    batching's usual shift). A run cut short by a revoked spte keeps the fills of the
    accesses it took back.

Sources
    Intel SDM vol. 3, "VMX Support for Address Translation": "Accessed and Dirty Flags for
    EPT" (set when the entry is used in a walk) and "Caching Translation Information" (cached
    translations are used without walking); arch/x86/kvm/x86.c ``kvm_vcpu_flush_tlb_all``
    (on ``KVM_REQ_TLB_FLUSH``), virt/kvm/kvm_main.c ``kvm_flush_remote_tlbs``,
    ``kvm_mmu_notifier_clear_flush_young`` (no flush on x86 since 6.13); arch/x86/mm/tlb.c
    ``switch_mm_irqs_off`` (PCID: no flush on a context switch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import NDArray

from sim.kvm.spte import is_present, needs_fault, touch

# columns of GuestTlbs.st: one row per vCPU
ST_CLOCK = 0  # LRU clock of the row's sets
ST_UNTIL = 1  # accesses left before the next context-switch flush
ST_EVERY = 2  # accesses between context-switch flushes (0: none)
ST_HITS = 3  # accesses that used a cached translation
ST_FILLS = 4  # accesses that walked the spte and cached it (misses)
ST_FLUSHES = 5  # full flushes (remote and context switch)
ST_WAYS = 6  # the row's associativity (0: no TLB: every access walks)
ST_SETS = 7  # the row's sets
ST_OFF = 8  # where the row's entries begin in the flat arrays
ST_SIZE = 9

NO_ROWS = np.empty(0, dtype=np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _flush_row(tags: NDArray[np.int64], st: NDArray[np.int64], r: int) -> None:
    off = st[r, ST_OFF]
    for e in range(off, off + st[r, ST_SETS] * st[r, ST_WAYS]):
        tags[e] = -1
    st[r, ST_FLUSHES] += 1


@numba.njit(cache=True, nogil=True)
def tlb_touch(
    spte: NDArray[np.uint8],
    idx: NDArray[np.int64],
    gfns: NDArray[np.int64],
    writes: NDArray[np.bool_],
    last_access: NDArray[np.uint32],
    base: int,
    stamp: int,
    start: int,
    end: int,
    rows: NDArray[np.int64],
    row0: int,
    tags: NDArray[np.int64],
    used: NDArray[np.int64],
    dirty: NDArray[np.bool_],
    st: NDArray[np.int64],
) -> int:
    """``ept_touch`` (guest/touch.py) through the TLB of each access's vCPU (``rows[p]``, or
    ``row0`` for all when ``rows`` is empty): apply accesses ``start..end`` while they hit the
    TLB or the spte; return the first that faults (or ``end``)."""
    t = np.uint32(stamp)
    stamps = last_access.size != 0
    per_access = rows.size != 0
    for p in range(start, end):
        r = rows[p] if per_access else row0
        i = idx[p]
        s = spte[i]
        ways = st[r, ST_WAYS]
        if ways == 0:  # this vCPU has no TLB model: the walk of every access
            if needs_fault(s):
                return p
            spte[i] = touch(s, writes[p])
        else:
            if st[r, ST_EVERY] > 0 and st[r, ST_UNTIL] == 0:  # a context switch flushes all
                _flush_row(tags, st, r)
                st[r, ST_UNTIL] = st[r, ST_EVERY]
            first = st[r, ST_OFF] + (i % st[r, ST_SETS]) * ways
            e = -1
            for w in range(first, first + ways):
                if tags[w] == i:
                    e = w
                    break
            if e >= 0 and is_present(s):  # a cached translation: no walk, unless a write
                if writes[p] and not dirty[e]:  # must set the dirty bit the TLB lacks
                    spte[i] = touch(s, True)
                    dirty[e] = True
                st[r, ST_HITS] += 1
            else:
                if needs_fault(s):
                    return p
                spte[i] = touch(s, writes[p])
                if e < 0:  # the set's least recently used way (an empty one first)
                    e = first
                    for w in range(first, first + ways):
                        if tags[w] < 0:
                            e = w
                            break
                        if used[w] < used[e]:
                            e = w
                tags[e] = i
                dirty[e] = writes[p]
                st[r, ST_FILLS] += 1
            used[e] = st[r, ST_CLOCK]
            st[r, ST_CLOCK] += 1
            if st[r, ST_EVERY] > 0:
                st[r, ST_UNTIL] -= 1
        if stamps:
            last_access[base + gfns[p]] = t
    return end


@numba.njit(cache=True, nogil=True)
def tlb_first_fault(
    spte: NDArray[np.uint8],
    idx: NDArray[np.int64],
    start: int,
    end: int,
    row: int,
    tags: NDArray[np.int64],
    st: NDArray[np.int64],
) -> int:
    """The first of accesses ``start..end`` of vCPU ``row`` that would fault now: its spte
    needs a fault and no cached translation over a present spte saves it, or ``end``."""
    ways = st[row, ST_WAYS]
    for p in range(start, end):
        i = idx[p]
        s = spte[i]
        if not needs_fault(s):
            continue
        cached = False
        if ways > 0 and is_present(s):
            first = st[row, ST_OFF] + (i % st[row, ST_SETS]) * ways
            for w in range(first, first + ways):
                if tags[w] == i:
                    cached = True
                    break
        if not cached:
            return p
    return end


@dataclass(frozen=True, slots=True)
class TlbGeometry:
    """One vCPU's TLB: ``entries`` in ``ways``-way sets, a full flush every ``every`` accesses
    (0: none); ``entries == 0``: no TLB model."""

    entries: int
    ways: int
    every: int


class GuestTlbs:
    """Every vCPU's TLB in a world, one row each (rows by VM, then vCPU), in flat arrays.

    Args:
        rows: each vCPU's geometry.
    """

    def __init__(self, rows: Sequence[TlbGeometry]) -> None:
        n = len(rows)
        self.st = np.zeros((n, ST_SIZE), dtype=np.int64)
        off = 0
        for r, g in enumerate(rows):
            ways = g.ways if g.entries else 0
            self.st[r, ST_WAYS] = ways
            self.st[r, ST_SETS] = g.entries // ways if ways else 0
            self.st[r, ST_OFF] = off
            self.st[r, ST_EVERY] = self.st[r, ST_UNTIL] = g.every if ways else 0
            off += g.entries if ways else 0
        self.tags = np.full(off, -1, dtype=np.int64)  # the spte index cached, -1: empty
        self.used = np.zeros(off, dtype=np.int64)  # when each entry was last used (LRU)
        self.dirty = np.zeros(off, dtype=np.bool_)  # the entry holds the dirty bit

    def flush(self, rows: range) -> None:
        """A remote TLB flush: the vCPUs ``rows`` drop every cached translation."""
        for r in rows:
            if self.st[r, ST_WAYS]:
                _flush_row(self.tags, self.st, r)

    def totals(self, rows: range) -> dict[str, int]:
        """Hits, fills (misses that walked) and full flushes of the vCPUs ``rows``."""
        s = self.st[rows.start : rows.stop]
        return {
            "hits": int(s[:, ST_HITS].sum()),
            "fills": int(s[:, ST_FILLS].sum()),
            "flushes": int(s[:, ST_FLUSHES].sum()),
        }

    def check(self, spte: NDArray[np.uint8], rows: range) -> None:
        """Assert: every translation the vCPUs ``rows`` cache is of a present spte of
        ``spte`` (the array their entries index) (tests)."""
        for r in rows:
            off, n = self.st[r, ST_OFF], self.st[r, ST_SETS] * self.st[r, ST_WAYS]
            tags = self.tags[off : off + n]
            cached = tags[tags >= 0]
            assert is_present(spte[cached]).all(), "a TLB entry outlived its spte"

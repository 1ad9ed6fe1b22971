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
    low bits of the page number index a real TLB), least recently used way replaced. Without
    a guest kernel it caches one translation per guest page (the streams are of
    guest-physical pages: guest-virtual addresses are not modelled); with one, see below.
    Flushes:

    - a remote TLB flush of the VM (``kvm_flush_remote_tlbs``: every zap of a present spte,
      and a young ``clear_flush_young`` with ``kvm.flush_on_age``) empties every vCPU's TLB
      of that VM (``KVM_REQ_TLB_FLUSH`` -> ``kvm_vcpu_flush_tlb_all``, INVEPT single-context);
    - ``context_switch_us``: every that much guest time the guest switches address spaces in
      a way that flushes everything (a guest without PCID); 0: never (PCID keeps entries).

    An entry never outlives its spte: a zap that removes a present spte always flushes, and
    an access that finds its entry over a spte that is not present (possible only between a
    zap and its flush within one batch) is a miss.

    With KSM (host/ksm.py) an entry holds its spte's write permission, as a hardware TLB
    caches the access rights of the walk: a read through a KSM page's read-only spte fills
    it, and a later write through it is an EPT violation (the host's COW, whose invalidation
    flushes), never a hit. Every write that completes marks its page written for ksmd. Not
    yet with a guest kernel (KSM rejects one).

With a guest kernel
    With ``vms[].guest`` the streams name the guest process's virtual pages, and the TLB
    caches what x86 caches under EPT: *combined* translations, process page -> host frame,
    tagged by the process page (its set: the page modulo the sets). A miss is the
    two-dimensional walk, which sets the guest pte's accessed bit (dirty on a write) and the
    spte's, then fills the entry; a hit walks neither level, and a write through an entry
    that lacks the dirty bit walks both to set it. A non-present guest pte or spte (or an
    access-tracked spte) faults and nothing is cached (x86 caches no non-present
    translation); the retried access fills. The guest's aging clears its ptes' accessed bits
    without a flush (``ptep_clear_flush_young`` on x86), so a page hot in the TLB looks idle
    to the guest's LRU as well as the host's. A page-cache page the process ``read()``s has
    no pte: the guest marks it accessed in software on every read whatever the TLB holds, the
    copy runs through the guest's direct map, and only a fill sets its gfn's EPT accessed
    bit (its entry is tagged by the file page too).

    The guest's unmaps flush its process's translations on every vCPU of the VM
    (:class:`GuestShootdown`, arch/x86/mm/tlb.c): ``flush_tlb_mm_range`` invalidates up to
    ``tlb_single_page_flush_ceiling`` (33) pages one by one (INVLPG) and flushes everything
    beyond. Reclaim's ``try_to_unmap`` batches its flushes (``TTU_BATCH_FLUSH``) whenever the
    process may run on another CPU than the reclaimer's, and ``arch_tlbbatch_flush`` then
    flushes everything: a guest of several vCPUs, all running the process, flushes all per
    reclaim batch (kswapd's or direct); a 1-vCPU guest has no other CPU and flushes page by
    page (``ptep_clear_flush``: one INVLPG each). A process exit (``exit_mmap``, fullmm)
    and the guest's OOM kill flush everything. Dropping a page-cache page removes its entry
    without a flush counted: the kernel flushes nothing then (the direct map does not
    change), but the entry is tagged by the file page, which will live at another gfn. The
    guest's flushes are counted per row (``guest_flushes``, ``invlpg``), full ones also in
    ``flushes``. KVM's remote flushes and context switches flush as without a guest kernel.
    An entry never outlives its guest pte or page-cache page, nor its spte.

Batching
    The vCPU applies a run of accesses at once (guest/vcpu.py); the TLB is updated in the same
    pass, access by access. A remote flush that lands while a run is in flight empties the
    TLB at the flush, not at the access it falls between: accesses later in that run keep
    the entries they had (their accessed bits were set no later than they would have been:
    batching's usual shift). A run cut short by a revoked spte keeps the fills of the
    accesses it took back. With a guest kernel the guest's flushes land the same way, and a
    run is cut at the first access whose page the guest unmapped.

Sources
    Intel SDM vol. 3, "VMX Support for Address Translation": "Accessed and Dirty Flags for
    EPT" (set when the entry is used in a walk) and "Caching Translation Information" (cached
    translations are used without walking); arch/x86/kvm/x86.c ``kvm_vcpu_flush_tlb_all``
    (on ``KVM_REQ_TLB_FLUSH``), virt/kvm/kvm_main.c ``kvm_flush_remote_tlbs``,
    ``kvm_mmu_notifier_clear_flush_young`` (no flush on x86 since 6.13); arch/x86/mm/tlb.c
    ``switch_mm_irqs_off`` (PCID: no flush on a context switch), ``flush_tlb_mm_range``,
    ``tlb_single_page_flush_ceiling``, ``arch_tlbbatch_flush``; arch/x86/mm/pgtable.c
    ``ptep_clear_flush_young`` (no flush); arch/x86/include/asm/tlbflush.h
    ``arch_tlbbatch_should_defer``; mm/rmap.c ``should_defer_flush``, ``try_to_unmap_one``;
    Intel SDM vol. 3, "Information Cached for EPT" (combined mappings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import NDArray

from sim.guest.touch import guest_present
from sim.kvm.spte import is_present, is_write_protected, needs_fault, touch

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
ST_GUEST_FLUSHES = 9  # the guest kernel's TLB flushes of its process that reached the row
ST_INVLPG = 10  # pages those flushes invalidated one by one (INVLPG)
ST_SIZE = 11

# arch/x86/mm/tlb.c: a flush_tlb_mm_range of more pages than this flushes everything
TLB_SINGLE_PAGE_FLUSH_CEILING = 33

NO_ROWS = np.empty(0, dtype=np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _flush_row(tags: NDArray[np.int64], st: NDArray[np.int64], r: int) -> None:
    off = st[r, ST_OFF]
    for e in range(off, off + st[r, ST_SETS] * st[r, ST_WAYS]):
        tags[e] = -1
    st[r, ST_FLUSHES] += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _lookup(tags: NDArray[np.int64], first: int, ways: int, tag: int) -> int:
    """The way of the set starting at ``first`` that holds ``tag``, or -1."""
    for w in range(first, first + ways):
        if tags[w] == tag:
            return w
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def _victim(tags: NDArray[np.int64], used: NDArray[np.int64], first: int, ways: int) -> int:
    """The way a fill replaces: the set's first empty way, else its least recently used."""
    e = first
    for w in range(first, first + ways):
        if tags[w] < 0:
            return w
        if used[w] < used[e]:
            e = w
    return e


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
    written: NDArray[np.uint8],
) -> int:
    """``ept_touch`` (guest/touch.py) through the TLB of each access's vCPU (``rows[p]``, or
    ``row0`` for all when ``rows`` is empty): apply accesses ``start..end`` while they hit the
    TLB or the spte; return the first that faults (or ``end``). With ``written`` not empty
    (KSM on) an entry holds the spte's permission: a write through an entry over a
    write-protected spte (a KSM page's, cached by a read) is an EPT violation, as a write
    missing the TLB is; every write that completes marks its page ``written``."""
    t = np.uint32(stamp)
    stamps = last_access.size != 0
    per_access = rows.size != 0
    ksm = written.size != 0
    for p in range(start, end):
        r = rows[p] if per_access else row0
        i = idx[p]
        s = spte[i]
        ways = st[r, ST_WAYS]
        if ksm and writes[p] and is_write_protected(s):  # a read-only translation, cached
            return p  # or walked: the write faults either way (the host's COW)
        if ways == 0:  # this vCPU has no TLB model: the walk of every access
            if needs_fault(s):
                return p
            spte[i] = touch(s, writes[p])
        else:
            if st[r, ST_EVERY] > 0 and st[r, ST_UNTIL] == 0:  # a context switch flushes all
                _flush_row(tags, st, r)
                st[r, ST_UNTIL] = st[r, ST_EVERY]
            first = st[r, ST_OFF] + (i % st[r, ST_SETS]) * ways
            e = _lookup(tags, first, ways, i)
            if e >= 0 and is_present(s):  # a cached translation: no walk, unless a write
                if writes[p] and not dirty[e]:  # must set the dirty bit the TLB lacks
                    spte[i] = touch(s, True)
                    dirty[e] = True
                st[r, ST_HITS] += 1
            else:
                if needs_fault(s):
                    return p
                spte[i] = touch(s, writes[p])
                if e < 0:
                    e = _victim(tags, used, first, ways)
                tags[e] = i
                dirty[e] = writes[p]
                st[r, ST_FILLS] += 1
            used[e] = st[r, ST_CLOCK]
            st[r, ST_CLOCK] += 1
            if st[r, ST_EVERY] > 0:
                st[r, ST_UNTIL] -= 1
        if ksm and writes[p]:
            written[base + gfns[p]] = 1
        if stamps:
            last_access[base + gfns[p]] = t
    return end


@numba.njit(cache=True, nogil=True)
def tlb_guest_touch(
    gflags: NDArray[np.uint8],
    gpfn: NDArray[np.uint32],
    vpages: NDArray[np.int64],
    aliases: NDArray[np.int64],
    k: int,
    file_base: int,
    spte: NDArray[np.uint8],
    idx: NDArray[np.int64],
    gfns: NDArray[np.int64],
    writes: NDArray[np.bool_],
    last_access: NDArray[np.uint32],
    base: int,
    stamp: int,
    start: int,
    end: int,
    r: int,
    tags: NDArray[np.int64],
    sidx: NDArray[np.int64],
    used: NDArray[np.int64],
    dirty: NDArray[np.bool_],
    st: NDArray[np.int64],
) -> int:
    """Accesses ``start..end`` of a guest process (virtual pages ``vpages``) through the
    combined translations of vCPU row ``r``: a hit walks nothing (a write the entry holds no
    dirty bit for walks both levels for it); a miss is the two-dimensional walk (the guest
    pte or page-cache lookup, then the spte ``gfn * k + alias``), which sets both levels'
    accessed bits (dirty on a write) and fills the entry. Writes each access's gfn and spte
    into ``gfns`` and ``idx``; returns the first access that takes a guest page fault or an
    EPT violation (nothing is cached for it), or ``end``. A file page (from ``file_base``)
    has no guest pte: its walk sets only the spte's bits."""
    t = np.uint32(stamp)
    stamps = last_access.size != 0
    ways, sets, every = st[r, ST_WAYS], st[r, ST_SETS], st[r, ST_EVERY]
    for p in range(start, end):
        if every > 0 and st[r, ST_UNTIL] == 0:  # a context switch flushes all
            _flush_row(tags, st, r)
            st[r, ST_UNTIL] = every
        v = vpages[p]
        first = st[r, ST_OFF] + (v % sets) * ways
        e = _lookup(tags, first, ways, v)
        if e >= 0 and is_present(spte[sidx[e]]):  # a cached translation: no walk
            i = sidx[e]
            gfns[p] = gpfn[v]
            idx[p] = i
            if writes[p] and not dirty[e]:  # walks both levels for the dirty bits
                spte[i] = touch(spte[i], True)
                if v < file_base:
                    gflags[v] |= np.uint8(0x06)  # PTE_YOUNG|PG_DIRTY
                dirty[e] = True
            st[r, ST_HITS] += 1
        else:
            f = gflags[v]
            if not guest_present(f, v, file_base):  # a guest page fault: nothing cached
                return p
            g = np.int64(gpfn[v])
            i = g * k + aliases[p] if k != 1 else g
            gfns[p] = g
            idx[p] = i
            s = spte[i]
            if needs_fault(s):  # an EPT violation: nothing cached
                return p
            spte[i] = touch(s, writes[p])
            if v < file_base:
                gflags[v] = f | (np.uint8(0x06) if writes[p] else np.uint8(0x02))
            if e < 0:
                e = _victim(tags, used, first, ways)
            tags[e] = v
            sidx[e] = i
            dirty[e] = writes[p]
            st[r, ST_FILLS] += 1
        used[e] = st[r, ST_CLOCK]
        st[r, ST_CLOCK] += 1
        if every > 0:
            st[r, ST_UNTIL] -= 1
        if stamps:
            last_access[base + gfns[p]] = t
    return end


@numba.njit(cache=True, nogil=True)
def tlb_guest_first_fault(
    gflags: NDArray[np.uint8],
    vpages: NDArray[np.int64],
    file_base: int,
    spte: NDArray[np.uint8],
    idx: NDArray[np.int64],
    start: int,
    end: int,
    row: int,
    tags: NDArray[np.int64],
    sidx: NDArray[np.int64],
    st: NDArray[np.int64],
) -> int:
    """The first of accesses ``start..end`` (walked by :func:`tlb_guest_touch`, which set
    their sptes ``idx``) of vCPU ``row`` that would fault now: its page gone from the guest,
    or its spte needing a fault with no cached translation over a present spte; or ``end``."""
    ways, sets = st[row, ST_WAYS], st[row, ST_SETS]
    for p in range(start, end):
        v = vpages[p]
        if not guest_present(gflags[v], v, file_base):
            return p
        if not needs_fault(spte[idx[p]]):
            continue
        w = _lookup(tags, st[row, ST_OFF] + (v % sets) * ways, ways, v)
        if w < 0 or not is_present(spte[sidx[w]]):
            return p
    return end


@numba.njit(cache=True, nogil=True)
def _invalidate(
    tags: NDArray[np.int64],
    st: NDArray[np.int64],
    rows: NDArray[np.int64],
    pages: NDArray[np.int64],
    count: bool,
) -> None:
    """Drop the entries of ``pages`` from each row (INVLPG each, counted if ``count``)."""
    for r in rows:
        ways, sets, off = st[r, ST_WAYS], st[r, ST_SETS], st[r, ST_OFF]
        if ways == 0:
            continue
        for v in pages:
            w = _lookup(tags, off + (v % sets) * ways, ways, v)
            if w >= 0:  # (a tag is in its set at most once: a fill follows a failed lookup)
                tags[w] = -1
        if count:
            st[r, ST_GUEST_FLUSHES] += 1
            st[r, ST_INVLPG] += pages.size


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
        if ways == 0 or not is_present(s):
            return p
        if _lookup(tags, st[row, ST_OFF] + (i % st[row, ST_SETS]) * ways, ways, i) < 0:
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
        # the page cached, -1: empty: its spte index, or with a guest kernel the process's
        # virtual page, whose spte index is then in sidx
        self.tags = np.full(off, -1, dtype=np.int64)
        self.sidx = np.full(off, -1, dtype=np.int64)
        self.used = np.zeros(off, dtype=np.int64)  # when each entry was last used (LRU)
        self.dirty = np.zeros(off, dtype=np.bool_)  # the entry holds the dirty bit

    def flush(self, rows: range) -> None:
        """A remote TLB flush: the vCPUs ``rows`` drop every cached translation."""
        for r in rows:
            if self.st[r, ST_WAYS]:
                _flush_row(self.tags, self.st, r)

    def totals(self, rows: range, guest: bool = False) -> dict[str, int]:
        """Hits, fills (misses that walked) and full flushes (any cause) of the vCPUs
        ``rows``; with a guest kernel (``guest``) also its flushes that reached them
        (``guest_flushes``) and the pages those invalidated one by one (``invlpg``)."""
        s = self.st[rows.start : rows.stop]
        out = {
            "hits": int(s[:, ST_HITS].sum()),
            "fills": int(s[:, ST_FILLS].sum()),
            "flushes": int(s[:, ST_FLUSHES].sum()),
        }
        if guest:
            out["guest_flushes"] = int(s[:, ST_GUEST_FLUSHES].sum())
            out["invlpg"] = int(s[:, ST_INVLPG].sum())
        return out

    def check(self, spte: NDArray[np.uint8], rows: range) -> None:
        """Assert: every translation the vCPUs ``rows`` cache is of a present spte of
        ``spte`` (the array their entries index) (tests)."""
        for r in rows:
            off, n = self.st[r, ST_OFF], self.st[r, ST_SETS] * self.st[r, ST_WAYS]
            tags = self.tags[off : off + n]
            cached = tags[tags >= 0]
            assert is_present(spte[cached]).all(), "a TLB entry outlived its spte"

    def check_guest(
        self,
        spte: NDArray[np.uint8],
        rows: range,
        gflags: NDArray[np.uint8],
        gpfn: NDArray[np.uint32],
        file_base: int,
        k: int,
    ) -> None:
        """Assert: every translation the vCPUs ``rows`` cache (tagged by the guest process's
        virtual page) is of a page the guest has (its pte present, or in the page cache) at
        the gfn whose present spte the entry holds (tests)."""
        for r in rows:
            off, n = self.st[r, ST_OFF], self.st[r, ST_SETS] * self.st[r, ST_WAYS]
            tags, sidx = self.tags[off : off + n], self.sidx[off : off + n]
            valid = tags >= 0
            v, i = tags[valid], sidx[valid]
            assert is_present(spte[i]).all(), "a TLB entry outlived its spte"
            f = gflags[v]
            anon = v < file_base
            here = np.where(anon, (f & 0x01) != 0, (f & 0x60) == 0x40)
            assert here.all(), "a TLB entry outlived its guest pte or page-cache page"
            assert (gpfn[v].astype(np.int64) == i // k).all(), "a TLB entry of a stale gfn"


class GuestShootdown:
    """The guest kernel's TLB flushes of its process's translations, as they reach every
    vCPU of its VM (x86 Linux, arch/x86/mm/tlb.c): the guest rows of ``tlbs``.

    Args:
        tlbs: the world's TLBs.
        rows: the VM's vCPU rows.
    """

    def __init__(self, tlbs: GuestTlbs, rows: range) -> None:
        self.tlbs = tlbs
        self.rows = np.arange(rows.start, rows.stop, dtype=np.int64)

    def flush_range(self, pages: NDArray[np.integer]) -> None:
        """``flush_tlb_mm_range`` of ``pages``: up to ``tlb_single_page_flush_ceiling`` pages
        are invalidated one by one (INVLPG) on every vCPU, more flush everything."""
        if len(pages) > TLB_SINGLE_PAGE_FLUSH_CEILING:
            self.flush_all()
            return
        t = self.tlbs
        _invalidate(t.tags, t.st, self.rows, np.asarray(pages, dtype=np.int64), True)

    def flush_all(self) -> None:
        """A full flush of the process's translations on every vCPU (``flush_tlb_mm``, or
        ``arch_tlbbatch_flush``, which always flushes everything)."""
        t = self.tlbs
        for r in self.rows.tolist():
            if t.st[r, ST_WAYS]:
                _flush_row(t.tags, t.st, r)
                t.st[r, ST_GUEST_FLUSHES] += 1

    def forget(self, pages: NDArray[np.integer]) -> None:
        """Page-cache pages left the guest's page cache: their entries go, with no flush
        counted (the copy of a ``read()`` runs through the guest's direct map, which no
        page-cache drop changes; the entries are tagged by file page, so they must go)."""
        t = self.tlbs
        _invalidate(t.tags, t.st, self.rows, np.asarray(pages, dtype=np.int64), False)

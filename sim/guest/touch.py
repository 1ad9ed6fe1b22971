"""The hardware side of a guest access: the EPT walk that hits or raises an EPT violation.

Models
    A guest access whose spte is present and not access-tracked completes in hardware, which
    sets the spte's accessed bit (and its dirty bit on a write); the host learns nothing else,
    except that the simulator stamps the page's last access when the eviction log wants it (for
    analysis: ``HostMemory.stamps``). Any other spte is an EPT violation, which software
    (kvm/fault.py) must handle before the access can retry. The spte rules are kvm/spte.py's.

Both worlds
    The vCPU (guest/vcpu.py) walks its batches with it, and demand mode (demand.py) its
    reference string, one call per run of hits; demand mode stamps each access with its own
    time itself (it passes no stamp array), where the vCPU stamps a run with its start.

Why compiled
    This loop runs once per simulated access. One compiled call per run of hits replaces a
    dozen numpy calls per batch (gather, compare, search, three scatters), which dominated the
    hit path; the result is the same as applying the batch's bits in bulk after its faults,
    because a fault handled in the batch only ever makes its own spte present.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from sim.kvm.spte import needs_fault, needs_write_fault, touch


@numba.njit(cache=True, nogil=True)
def ept_touch(
    spte: NDArray[np.uint8],
    idx: NDArray[np.int64],
    gfns: NDArray[np.int64],
    writes: NDArray[np.bool_],
    last_access: NDArray[np.uint32],
    base: int,
    stamp: int,
    start: int,
    end: int,
    written: NDArray[np.uint8],
) -> int:
    """Apply accesses ``start..end`` while they hit; return the first one that faults (or
    ``end``). Access ``p`` uses spte ``idx[p]`` of page ``base + gfns[p]``, whose
    ``last_access`` entry it sets to ``stamp`` (unless ``last_access`` is empty). With
    ``written`` not empty (KSM on: host/ksm.py) a write through a write-protected spte
    faults, and every write that hits marks its page ``written`` (its content changed)."""
    t = np.uint32(stamp)
    stamps = last_access.size != 0  # no eviction log: nothing reads stamps
    if written.size != 0:
        for p in range(start, end):
            i = idx[p]
            s = spte[i]
            w = writes[p]
            if needs_write_fault(s, w):
                return p
            spte[i] = touch(s, w)
            if w:
                written[base + gfns[p]] = 1
            if stamps:
                last_access[base + gfns[p]] = t
        return end
    for p in range(start, end):
        i = idx[p]
        s = spte[i]
        if needs_fault(s):
            return p
        spte[i] = touch(s, writes[p])
        if stamps:
            last_access[base + gfns[p]] = t
    return end


@numba.njit(cache=True, nogil=True)
def first_fault(spte: NDArray[np.uint8], idx: NDArray[np.int64], start: int, end: int) -> int:
    """The first of accesses ``start..end`` whose spte ``idx[p]`` would fault, or ``end``."""
    for p in range(start, end):
        if needs_fault(spte[idx[p]]):
            return p
    return end


@numba.njit(cache=True, nogil=True)
def guest_present(f: np.uint8, v: int, file_base: int) -> bool:
    """An anon page is reachable through its guest pte; a page of the file the process reads
    (pages from ``file_base`` on) while its folio is in the page cache and not being read."""
    if v < file_base:
        return bool(f & 0x01)  # PTE_PRESENT
    return (f & 0x60) == 0x40  # PG_RESIDENT, not PG_LOCKED


@numba.njit(cache=True, nogil=True)
def guest_translate(
    gflags: NDArray[np.uint8],
    gpfn: NDArray[np.uint32],
    vpages: NDArray[np.int64],
    gfns: NDArray[np.int64],
    start: int,
    end: int,
    file_base: int,
) -> int:
    """The guest side of accesses ``start..end`` (a guest kernel is modelled): the page walk
    of an anon page, or the page-cache lookup of a file page (a ``read()``); write the gfn
    each one uses into ``gfns`` while it is there; return the first access that takes a guest
    page fault or a page-cache miss (or ``end``). Nothing is set: the accessed bits are the
    hits' (:func:`guest_mark`)."""
    for p in range(start, end):
        v = vpages[p]
        if not guest_present(gflags[v], v, file_base):
            return p
        gfns[p] = gpfn[v]
    return end


@numba.njit(cache=True, nogil=True)
def guest_mark(
    gflags: NDArray[np.uint8],
    vpages: NDArray[np.int64],
    writes: NDArray[np.bool_],
    start: int,
    end: int,
    file_base: int,
) -> None:
    """Accesses ``start..end`` completed: the walk set each anon page's guest pte accessed
    bit, and its dirty bit on a write (the guest folio's PG_dirty stands for both). File
    pages have no pte (their reads are marked accessed by the kernel, in Python)."""
    for p in range(start, end):
        v = vpages[p]
        if v < file_base:
            gflags[v] |= np.uint8(0x06) if writes[p] else np.uint8(0x02)  # PTE_YOUNG|PG_DIRTY


@numba.njit(cache=True, nogil=True)
def guest_first_unmapped(
    gflags: NDArray[np.uint8], vpages: NDArray[np.int64], start: int, end: int, file_base: int
) -> int:
    """The first of accesses ``start..end`` whose page the guest no longer has (its pte gone,
    or its page-cache folio dropped), or ``end``."""
    for p in range(start, end):
        v = vpages[p]
        if not guest_present(gflags[v], v, file_base):
            return p
    return end

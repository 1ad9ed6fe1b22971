"""The host core compiled: a reclaim batch as one pass over arrays, Python left for side effects.

Where
    Above the host and KVM, as the engine is: it fuses host reclaim (sim/host, sim/reclaim)
    with KVM's TDP walk (sim/kvm/shortcut.py), which neither layer may do alone.

Models
    Nothing new. ``shrink_folio_list`` of the folios any policy isolated, exactly as
    sim/host/vmscan.py does it through sim/host/rmap.py and the fused TDP walk
    (sim/kvm/shortcut.py): the write-back checks, ``add_to_swap``, ``try_to_unmap`` (sptes
    zapped, their dirty bits to the folio), ``pageout``'s flag changes and ``__remove_mapping``
    with the policy's workingset shadow. For the two-list policy the whole
    ``shrink_inactive_list`` and ``shrink_active_list`` of an lruvec, exactly as
    sim/reclaim/two_list.py does them, around the same steps: isolation from the list's tail,
    ``folio_referenced`` (host pte young OR the spte accessed bit, cleared), the reference check,
    the putbacks and ``activate_locked``'s swap freeing. Every flag, link, counter and shadow
    ends as the general path leaves it.

Why
    The general path spends a reclaim batch of ~32 folios in a few dozen numpy calls of about a
    microsecond each, whatever their length; here the batch is one compiled call. What stays in
    Python is what belongs to other components and is per VM or per batch, not per folio: the
    counters (``vmstat``, the scan control), the notifier and KVM side effects per VM the batch
    touched (call counts, remote TLB flushes, vCPUs rechecking their step), the swap device's
    queue (one ``submit`` per batch) and the eviction log.

When
    A batch takes this path when the world was built for it (:func:`core_for`: any policy, on
    the node's lruvec or with a memcg per VM, none of them with ``memory.zswap.writeback`` 0
    (whose refused writes ``pageout`` activates), no host page cache, any swap device (a disk,
    with slot identities or without, with zswap in front or without, or zram), and the fused
    TDP walk) and every page the batch isolates belongs to an mm whose notifier subscribers are
    still KVM's alone and (host.thp) is in no large folio (a THP is aged, unmapped and written
    over its 2 MiB: sim/host/vmscan.py ``_shrink_large``); any other batch runs the general
    path, with nothing changed by the attempt. Policies other than two-list keep their own
    isolation and reference checks (MGLRU's look-around walks the rmap through the fused walk)
    and hand the core their victims through ``Vmscan.shrink_folio_list``; two-list runs each
    lruvec (the node's, or each memcg's) whole. The swap device's slots (identities,
    memory.swap.max and memory.swap.current) are taken and freed through its own calls once per
    batch, and zram's compressed pool stores the batch's writes and takes its frames once the
    batch has freed its own, as in the general path. With zswap the pass decides each write's
    ``zswap_store`` as sim/host/zswap.py does (the pool limit and its hysteresis, poorly
    compressing pages rejected) from the pool's bytes: stored pages are clean at once and freed
    with the batch, rejected ones go to the disk; Python then stores them in the pool in order,
    counts, submits the rest once and runs the shrink worker if the pool was full, whose freed
    zspages go on the free stack below the batch's frames (the general path frees those after
    ``pageout``). ``memsim run`` says once when a world cannot use the core at all. It is the
    fast path ``host_core`` of sim/fast.py (``MEMSIM_FAST_DISABLE=host_core`` turns it off; it
    is built on the fused walk, so it counts as ``tdp_shortcut`` taken too); tests/test_core.py
    and tests/test_fastpaths.py run worlds both ways and compare every array and counter."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
from numpy.typing import NDArray

from sim import fast
from sim.host.huge_memory import any_large
from sim.host.memcontrol import MEMCG_SWAP_MAX
from sim.host.memory import (
    PAGE_SIZE,
    PG_DIRTY,
    PG_RECLAIM,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
)
from sim.host.vmscan import Outcome
from sim.host.vmstat import VmStat
from sim.kvm.shortcut import TdpShortcut, _owner, age_page, unmap_page
from sim.reclaim.base import PageQueue
from sim.reclaim.memcg import MemcgReclaimer
from sim.reclaim.two_list import (
    _AGE_MASK,
    LRU_ACTIVE,
    LRU_INACTIVE,
    PG_WORKINGSET,
    TwoList,
    _check_references,
)

if TYPE_CHECKING:
    from sim.config import Scenario
    from sim.host.vmscan import ScanControl, Vmscan


# io: scalars in and out of a pass
IO_N = 0  # in: folios to isolate
IO_FREE_SLOTS = 1  # in/out: free swap slots
IO_NR_SLOTS = 2  # in: swap slots in all
IO_AGE = 3  # in/out: the lruvec's nonresident_age
IO_FREED_TOP = 4  # in/out: top of the free-frame stack
IO_IMMEDIATE_OK = 5  # in: kswapd with PGDAT_WRITEBACK set (counts nr_immediate)
IO_STAMPS = 6  # in: per-frame scan stamps are kept
IO_SYNC = 7  # in: the device writes before pageout returns (SWP_SYNCHRONOUS_IO: zram)
IO_ZSWAP = 8  # in: zswap stands in front of the device
IO_PAGE_BYTES = 9  # in: bytes per page (zswap: a compressed page no smaller is rejected)
IO_POOL_MAX = 10  # in: zswap_max_pages
IO_POOL_ACCEPT = 11  # in: zswap_accept_thr_pages
IO_POOL_BYTES = 12  # in/out: bytes in the zswap pool (stores of this pass added)
IO_POOL_FULL = 13  # in/out: zswap_pool_reached_full
IO_AS_IS = 14  # in: zswap stores a page that does not shrink as it is (6.18+)
IO_TAKEN = 15  # out (this and all after it): folios isolated
IO_WRITEBACK = 16  # out: found under write-out
IO_IMMEDIATE = 17  # out: ... with PG_reclaim from kswapd's last meeting
IO_REF_WALKED = 18  # out: mapped folios folio_referenced walked
IO_SWAP_FULL = 19  # out: folios add_to_swap found no slot for
IO_UNMAPPED = 20  # out: folios try_to_unmap unmapped (the eviction log's rows)
IO_WRITTEN = 21  # out: folios whose write to the device started (buf[B_WRITE_PID])
IO_FREED = 22  # out: folios freed (shrink_folio_list: to be freed)
IO_TO_INACTIVE = 23  # out: folios put back on the inactive list
IO_TO_ACTIVE = 24  # out: folios put back on the active list
IO_SLOTS_TAKEN = 25  # out: swap slots add_to_swap took (their pages in buf[B_SLOT_PID])
IO_SLOTS_FREED = 26  # out: swap slots activate_locked freed (their pages in buf[B_UNSLOT_PID])
IO_STORED = 27  # out: pages zswap stored (buf[B_STORE_PID]), clean when pageout returned
IO_COMPRESSED = 28  # out: pages zswap compressed (stored, or rejected as poorly compressing)
IO_LIMIT_HIT = 29  # out: zswap_check_limits calls that found the pool at its limit
IO_REJECT_POOR = 30  # out: pages zswap rejected for compressing poorly
IO_POOL_WAS_FULL = 31  # out: a store found the pool full (the shrink worker runs)
IO_SIZE = 32

# mmc rows: per-mm counts of a pass
MM_AGED = 0  # aging notifier calls
MM_YOUNG = 1  # ... that found the spte young
MM_UNMAPPED = 2  # invalidations
MM_ZAPPED = 3  # ... that zapped a present spte
MM_WRITTEN = 4  # swap writes (pswpout)
MM_FREED = 5  # frames freed (nr_swapped up, nr_resident down)
MM_SWAP_ASKED = 6  # memcgs: slots memory.swap.max allowed (__mem_cgroup_try_charge_swap)
MM_SWAP_MAX = 7  # memcgs: ... refused (memory.swap.events max)
MM_CHARGED = 8  # slots add_to_swap took (memory.swap.current up)
MM_STORED = 9  # pages zswap stored (zswpout)
MM_ROWS = 10

# buf rows: per-folio lists of a pass
(
    B_EVICT_PID,
    B_EVICT_PFN,
    B_EVICT_DIRTY,
    B_WRITE_PID,
    B_WRITE_PFN,
    B_PFNS,
    B_FREE_PFN,
    B_SLOT_PID,
    B_UNSLOT_PID,
    B_STORE_PID,
) = range(10)
B_ROWS = 10

_FREED, _KEEP, _ACTIVATE = int(Outcome.FREED), int(Outcome.KEEP), int(Outcome.ACTIVATE)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_head(nxt: NDArray[np.int32], prev: NDArray[np.int32], s: int, p: int) -> None:
    """Link folio ``p`` at the head (newest end) of the list whose sentinel is ``s``."""
    head = prev[s]
    nxt[head] = p
    prev[p] = head
    nxt[p] = s
    prev[s] = p


@numba.njit(cache=True, nogil=True, inline="always")
def _start(io: NDArray[np.int64], mmc: NDArray[np.int64]) -> None:
    """Zero a pass's outputs."""
    for i in range(io.size):
        if i >= IO_TAKEN:
            io[i] = 0
    mmc[:] = 0


@numba.njit(cache=True, nogil=True)
def _isolate(
    io: NDArray[np.int64],
    frame_pid: NDArray[np.int32],
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
    s: int,
    bases: NDArray[np.int64],
    usable: NDArray[np.bool_],
    out: NDArray[np.int64],
) -> int:
    """Take up to ``io[IO_N]`` folios from the tail of list ``s`` into ``out`` (oldest first);
    -1 (nothing taken) if one belongs to an mm the fused walk cannot take."""
    n = io[IO_N]
    k = 0
    cur = nxt[s]
    while k < n and cur != s:
        if not usable[_owner(bases, frame_pid[cur])]:
            return -1
        out[k] = cur
        k += 1
        cur = nxt[cur]
    nxt[s] = cur
    prev[cur] = s
    return k


@numba.njit(cache=True, nogil=True)
def _tail_has_large(
    nxt: NDArray[np.int32], s: int, n: int, frame_pid: NDArray[np.int32], block: NDArray[np.uint8]
) -> bool:
    """Whether the ``n`` folios at the tail of list ``s`` (those a pass would isolate) hold
    a large one (host.thp; ``block``: the per-block THP bytes): then the general path runs."""
    cur = nxt[s]
    k = 0
    while k < n and cur != s:
        if any_large(frame_pid[cur : cur + 1], block):
            return True
        k += 1
        cur = nxt[cur]
    return False


@numba.njit(cache=True, nogil=True)
def _referenced(
    pfns: NDArray[np.int64],
    k: int,
    flags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    aging: NDArray[np.bool_],
    scans: NDArray[np.uint8],
    stamps: bool,
    mmc: NDArray[np.int64],
    young: NDArray[np.bool_],
) -> int:
    """``folio_referenced`` of ``pfns[:k]``: scan stamps, then host pte young OR the spte's
    accessed bit (both cleared) for mapped folios; returns how many were mapped (walked)."""
    walked = 0
    for i in range(k):
        p = pfns[i]
        if stamps:
            c = scans[p]
            if c < 255:
                scans[p] = c + 1
        pid = frame_pid[p]
        f = flags[pid]
        if not f & PTE_PRESENT:  # folio_mapcount == 0: nothing to walk, not referenced
            young[i] = False
            continue
        walked += 1
        young[i] = age_page(pid, flags, spte, bases, aging, mmc[MM_AGED], mmc[MM_YOUNG])
    return walked


@numba.njit(cache=True, nogil=True, inline="always")
def _writeback_check(
    pfns: NDArray[np.int64],
    k: int,
    io: NDArray[np.int64],
    flags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    wb: NDArray[np.bool_],
) -> int:
    """``shrink_folio_list``'s write-back cases 1 and 2 for ``pfns[:k]``: which are under
    write-out (``wb``, to be activated), each marked PG_reclaim, those kswapd had marked
    already counted as immediate; returns how many."""
    nwb = 0
    for i in range(k):
        pid = frame_pid[pfns[i]]
        f = flags[pid]
        wb[i] = (f & PG_WRITEBACK) != 0
        if wb[i]:
            nwb += 1
            if io[IO_IMMEDIATE_OK] and f & PG_RECLAIM:
                io[IO_IMMEDIATE] += 1
            flags[pid] = f | PG_RECLAIM
    io[IO_WRITEBACK] = nwb
    return nwb


@numba.njit(cache=True, nogil=True, inline="always")
def _zswap_store(
    pid: int, io: NDArray[np.int64], obj_bytes: NDArray[np.uint32], pool_stored: NDArray[np.bool_]
) -> bool:
    """``zswap_store`` of one page as sim/host/zswap.py decides it: ``zswap_check_limits``
    (the limit and its accept-threshold hysteresis), then compressed, and stored (as it is, a
    page-sized object, if it does not shrink below a page and ``IO_AS_IS``) or rejected;
    returns whether it was stored (its bytes now in the pool)."""
    page = io[IO_PAGE_BYTES]
    cur = -(-io[IO_POOL_BYTES] // page)
    if cur >= io[IO_POOL_MAX]:
        io[IO_LIMIT_HIT] += 1
        io[IO_POOL_FULL] = 1
    elif io[IO_POOL_FULL] and cur <= io[IO_POOL_ACCEPT]:
        io[IO_POOL_FULL] = 0
    if io[IO_POOL_FULL]:
        io[IO_POOL_WAS_FULL] = 1
        return False
    io[IO_COMPRESSED] += 1
    size = np.int64(obj_bytes[pid])
    if size >= page and not io[IO_AS_IS]:
        io[IO_REJECT_POOR] += 1
        return False
    if pool_stored[pid]:  # rewritten: the old object is freed first
        io[IO_POOL_BYTES] -= size
    io[IO_POOL_BYTES] += size
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _reclaim_folios(
    victims: NDArray[np.int64],
    nv: int,
    ok: NDArray[np.bool_],
    io: NDArray[np.int64],
    flags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    swap_max: NDArray[np.int64],
    swap_usage: NDArray[np.int64],
    obj_bytes: NDArray[np.uint32],
    pool_stored: NDArray[np.bool_],
    mmc: NDArray[np.int64],
    buf: NDArray[np.int64],
) -> None:
    """``shrink_folio_list`` past the write-back checks for the ``ok`` ones of
    ``victims[:nv]``: ``add_to_swap`` in order while slots last and (with memcgs: ``swap_max``
    and ``swap_usage`` per VM, else empty) the folio's memcg is under memory.swap.max, counting
    those before it (``ok`` cleared for the rest),
    ``try_to_unmap`` (the eviction log's rows), and ``pageout``'s flags for the dirty ones
    (the rows of the writes to submit; on a synchronous device they are clean at once; with
    zswap, ``obj_bytes`` and ``pool_stored`` per page, those it stores are clean at once and
    left out of them). The clean ones are left for ``__remove_mapping``."""
    free_slots = io[IO_FREE_SLOTS]
    for i in range(nv):
        if not ok[i]:
            continue
        pid = frame_pid[victims[i]]
        f = flags[pid]
        if not f & PG_SWAP:
            o = _owner(bases, pid)
            if swap_max.size:
                if swap_usage[o] + mmc[MM_SWAP_ASKED, o] + 1 > swap_max[o]:
                    ok[i] = False
                    mmc[MM_SWAP_MAX, o] += 1
                    continue
                mmc[MM_SWAP_ASKED, o] += 1
            if free_slots > 0:
                free_slots -= 1
                flags[pid] = f | PG_SWAP | PG_DIRTY
                mmc[MM_CHARGED, o] += 1
                buf[B_SLOT_PID, io[IO_SLOTS_TAKEN]] = pid
                io[IO_SLOTS_TAKEN] += 1
            else:
                ok[i] = False
                io[IO_SWAP_FULL] += 1
    io[IO_FREE_SLOTS] = free_slots
    # try_to_unmap: KVM zaps its sptes and hands their dirty bits to the folio
    ne = 0
    for i in range(nv):
        if not ok[i]:
            continue
        p = victims[i]
        pid = frame_pid[p]
        if not flags[pid] & PTE_PRESENT:
            continue
        f = unmap_page(pid, flags, spte, bases, mmc[MM_UNMAPPED], mmc[MM_ZAPPED])
        buf[B_EVICT_PID, ne] = pid
        buf[B_EVICT_PFN, ne] = p
        buf[B_EVICT_DIRTY, ne] = 1 if f & PG_DIRTY else 0
        ne += 1
    io[IO_UNMAPPED] = ne
    # pageout: dirty ones are written and kept
    nw = 0
    for i in range(nv):
        if not ok[i]:
            continue
        p = victims[i]
        pid = frame_pid[p]
        f = flags[pid]
        if f & PG_DIRTY:
            if io[IO_ZSWAP] and _zswap_store(pid, io, obj_bytes, pool_stored):
                flags[pid] = f & ~PG_DIRTY  # stored before pageout returned: freed with the rest
                mmc[MM_STORED, _owner(bases, pid)] += 1
                buf[B_STORE_PID, io[IO_STORED]] = pid
                io[IO_STORED] += 1
                continue
            if io[IO_SYNC]:  # written before pageout returned: clean, freed with the rest
                flags[pid] = f & ~PG_DIRTY
            else:
                flags[pid] = (f & ~PG_DIRTY) | PG_WRITEBACK | PG_RECLAIM
            mmc[MM_WRITTEN, _owner(bases, pid)] += 1
            buf[B_WRITE_PID, nw] = pid
            buf[B_WRITE_PFN, nw] = p
            nw += 1
    io[IO_WRITTEN] = nw


@numba.njit(cache=True, nogil=True, inline="always")
def _free_folio(
    p: int,
    shadow: int,
    flags: NDArray[np.uint8],
    pfn: NDArray[np.uint32],
    frame_pid: NDArray[np.int32],
    bases: NDArray[np.int64],
    readahead: NDArray[np.bool_],
    free_stack: NDArray[np.uint32],
    top: int,
    mmc: NDArray[np.int64],
) -> None:
    """``__remove_mapping`` of one clean, unmapped folio: the page only in swap with
    ``shadow`` where its pfn was, the frame pushed on the free stack at ``top``."""
    pid = frame_pid[p]
    mmc[MM_FREED, _owner(bases, pid)] += 1
    flags[pid] = PG_SWAP
    if readahead.size:
        readahead[pid] = False  # a folio read ahead and never touched
    pfn[pid] = shadow
    frame_pid[p] = -1
    free_stack[top] = p


@numba.njit(cache=True, nogil=True)
def _shrink_folio_list(
    pfns: NDArray[np.int64],
    io: NDArray[np.int64],
    flags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    usable: NDArray[np.bool_],
    swap_max: NDArray[np.int64],
    swap_usage: NDArray[np.int64],
    obj_bytes: NDArray[np.uint32],
    pool_stored: NDArray[np.bool_],
    mmc: NDArray[np.int64],
    buf: NDArray[np.int64],
    out: NDArray[np.int8],
) -> bool:
    """``shrink_folio_list`` of isolated ``pfns`` up to ``__remove_mapping``: an Outcome each
    in ``out``, the ones to free in ``buf[B_FREE_PFN]``; False if a folio belongs to an mm the
    fused walk cannot take (nothing changed)."""
    k = pfns.size
    for i in range(k):
        if not usable[_owner(bases, frame_pid[pfns[i]])]:
            return False
    _start(io, mmc)
    ok = np.empty(k, dtype=np.bool_)
    _writeback_check(pfns, k, io, flags, frame_pid, ok)
    for i in range(k):
        ok[i] = not ok[i]
    _reclaim_folios(
        pfns,
        k,
        ok,
        io,
        flags,
        frame_pid,
        spte,
        bases,
        swap_max,
        swap_usage,
        obj_bytes,
        pool_stored,
        mmc,
        buf,
    )
    nf = 0
    for i in range(k):
        p = pfns[i]
        if not ok[i]:
            out[i] = _ACTIVATE
        elif flags[frame_pid[p]] & PG_WRITEBACK:  # written just now: kept
            out[i] = _KEEP
        else:
            out[i] = _FREED
            buf[B_FREE_PFN, nf] = p
            nf += 1
    io[IO_FREED] = nf
    return True


@numba.njit(cache=True, nogil=True)
def _remove_mapping(
    io: NDArray[np.int64],
    shadows: NDArray[np.uint32],
    flags: NDArray[np.uint8],
    pfn: NDArray[np.uint32],
    frame_pid: NDArray[np.int32],
    bases: NDArray[np.int64],
    readahead: NDArray[np.bool_],
    free_stack: NDArray[np.uint32],
    mmc: NDArray[np.int64],
    buf: NDArray[np.int64],
) -> None:
    """``__remove_mapping`` of the ``io[IO_FREED]`` folios :func:`_shrink_folio_list` left in
    ``buf[B_FREE_PFN]``, each keeping its shadow."""
    top = io[IO_FREED_TOP]
    for i in range(io[IO_FREED]):
        _free_folio(
            buf[B_FREE_PFN, i],
            shadows[i],
            flags,
            pfn,
            frame_pid,
            bases,
            readahead,
            free_stack,
            top,
            mmc,
        )
        top += 1
    io[IO_FREED_TOP] = top


@numba.njit(cache=True, nogil=True)
def _shrink_inactive(
    io: NDArray[np.int64],
    flags: NDArray[np.uint8],
    pfn: NDArray[np.uint32],
    frame_pid: NDArray[np.int32],
    fl: NDArray[np.uint8],
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
    s_inactive: int,
    s_active: int,
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    usable: NDArray[np.bool_],
    aging: NDArray[np.bool_],
    scans: NDArray[np.uint8],
    readahead: NDArray[np.bool_],
    free_stack: NDArray[np.uint32],
    swap_max: NDArray[np.int64],
    swap_usage: NDArray[np.int64],
    obj_bytes: NDArray[np.uint32],
    pool_stored: NDArray[np.bool_],
    mmc: NDArray[np.int64],
    buf: NDArray[np.int64],
) -> bool:
    """Two-list ``shrink_inactive_list`` of ``io[IO_N]`` folios; False if it must not run here
    (nothing changed). See the module docstring for what it covers."""
    pfns = buf[B_PFNS]
    k = _isolate(io, frame_pid, nxt, prev, s_inactive, bases, usable, pfns)
    if k < 0:
        return False
    _start(io, mmc)
    io[IO_TAKEN] = k
    if k == 0:
        return True
    # isolation: off every list
    for i in range(k):
        p = pfns[i]
        fl[p] = fl[p] & ~(LRU_INACTIVE | LRU_ACTIVE)
    # write-back cases 1 and 2: activated before any reference check, marked PG_reclaim
    wb = np.empty(k, dtype=np.bool_)
    nwb = _writeback_check(pfns, k, io, flags, frame_pid, wb)
    check = np.empty(k - nwb, dtype=np.int64)
    j = 0
    for i in range(k):
        if not wb[i]:
            check[j] = pfns[i]
            j += 1
    nc = k - nwb
    young = np.empty(nc, dtype=np.bool_)
    io[IO_REF_WALKED] = _referenced(
        check, nc, flags, frame_pid, spte, bases, aging, scans, io[IO_STAMPS] != 0, mmc, young
    )
    victims, keep, referenced = _check_references(check, young, fl)
    nv, nk = victims.size, keep.size
    # shrink_folio_list: add_to_swap, try_to_unmap, pageout, then __remove_mapping
    ok = np.ones(nv, dtype=np.bool_)
    _reclaim_folios(
        victims,
        nv,
        ok,
        io,
        flags,
        frame_pid,
        spte,
        bases,
        swap_max,
        swap_usage,
        obj_bytes,
        pool_stored,
        mmc,
        buf,
    )
    age = io[IO_AGE]
    top = io[IO_FREED_TOP]
    nf = 0
    for i in range(nv):
        p = victims[i]
        if not ok[i] or flags[frame_pid[p]] & PG_WRITEBACK:  # no slot, or written just now
            continue
        shadow = age & _AGE_MASK  # workingset_eviction
        if fl[p] & PG_WORKINGSET:
            shadow |= 1 << 31
        age += 1
        fl[p] = 0
        _free_folio(p, shadow, flags, pfn, frame_pid, bases, readahead, free_stack, top, mmc)
        top += 1
        nf += 1
    io[IO_FREED] = nf
    io[IO_FREED_TOP] = top
    # putback: kept and written (still under write-out) folios to the inactive head, in order
    nw = 0 if io[IO_SYNC] else io[IO_WRITTEN]
    for i in range(nk):
        p = keep[i]
        fl[p] = (fl[p] & ~(LRU_INACTIVE | LRU_ACTIVE)) | LRU_INACTIVE
        _add_head(nxt, prev, s_inactive, p)
    for i in range(nw):
        p = buf[B_WRITE_PFN, i]
        fl[p] = (fl[p] & ~(LRU_INACTIVE | LRU_ACTIVE)) | LRU_INACTIVE
        _add_head(nxt, prev, s_inactive, p)
    io[IO_TO_INACTIVE] = nk + nw
    # activate: referenced twice, no swap slot, under write-out
    activate = np.empty(referenced.size + nv + nwb, dtype=np.int64)
    na = referenced.size
    activate[:na] = referenced
    for i in range(nv):
        if not ok[i]:
            activate[na] = victims[i]
            na += 1
    for i in range(k):
        if wb[i]:
            activate[na] = pfns[i]
            na += 1
    # activate_locked: vm_swap_full, or (memcgs) mem_cgroup_swap_full of the folio's memcg
    full = io[IO_FREE_SLOTS] * 2 < io[IO_NR_SLOTS]
    if full or swap_max.size:
        freed_slots = 0
        want = PG_SWAP | PTE_PRESENT
        for i in range(na):
            pid = frame_pid[activate[i]]
            f = flags[pid]
            if (f & (PG_SWAP | PG_WRITEBACK | PTE_PRESENT)) != want:
                continue
            o = _owner(bases, pid)
            if full or (swap_usage[o] + mmc[MM_CHARGED, o]) * 2 >= swap_max[o]:
                flags[pid] = (f & ~PG_SWAP) | PG_DIRTY
                buf[B_UNSLOT_PID, freed_slots] = pid
                freed_slots += 1
        io[IO_FREE_SLOTS] += freed_slots
        io[IO_SLOTS_FREED] = freed_slots
    for i in range(na):
        p = activate[i]
        fl[p] = (fl[p] & ~(LRU_INACTIVE | LRU_ACTIVE)) | LRU_ACTIVE
        _add_head(nxt, prev, s_active, p)
    io[IO_TO_ACTIVE] = na
    io[IO_AGE] = age + na
    return True


@numba.njit(cache=True, nogil=True)
def _shrink_active(
    io: NDArray[np.int64],
    flags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    fl: NDArray[np.uint8],
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
    s_inactive: int,
    s_active: int,
    spte: NDArray[np.uint8],
    bases: NDArray[np.int64],
    usable: NDArray[np.bool_],
    aging: NDArray[np.bool_],
    scans: NDArray[np.uint8],
    mmc: NDArray[np.int64],
    buf: NDArray[np.int64],
) -> bool:
    """Two-list ``shrink_active_list`` of ``io[IO_N]`` anon folios: every one deactivated
    (PG_workingset set) after ``folio_referenced`` cleared its bits; False if it must not run
    here (nothing changed)."""
    pfns = buf[B_PFNS]
    k = _isolate(io, frame_pid, nxt, prev, s_active, bases, usable, pfns)
    if k < 0:
        return False
    mmc[:] = 0
    io[IO_TAKEN] = k
    young = np.empty(k, dtype=np.bool_)
    io[IO_REF_WALKED] = _referenced(
        pfns, k, flags, frame_pid, spte, bases, aging, scans, io[IO_STAMPS] != 0, mmc, young
    )
    for i in range(k):
        p = pfns[i]
        fl[p] = (fl[p] & ~(LRU_INACTIVE | LRU_ACTIVE)) | LRU_INACTIVE | PG_WORKINGSET
        _add_head(nxt, prev, s_inactive, p)
    return True


class HostCore:
    """The compiled reclaim batch for one world (see the module docstring).

    Args:
        vmscan: the world's reclaim machinery (memory, swap, rmap with its fused TDP walk).
        shortcut: that fused walk (its view of which mms are KVM's alone, and the per-VM side
            effects it applies).
    """

    def __init__(self, vmscan: Vmscan, shortcut: TdpShortcut) -> None:
        self.vmscan, self.shortcut = vmscan, shortcut
        self.mem, self.swap = vmscan.mem, vmscan.swap
        self.io = np.zeros(IO_SIZE, dtype=np.int64)
        self.mmc = np.zeros((MM_ROWS, len(shortcut.vms)), dtype=np.int64)
        self.buf = np.zeros((B_ROWS, 64), dtype=np.int64)
        self.memcg = vmscan.memcg
        nr_vms = len(shortcut.vms)
        self._nr_vms = nr_vms
        # memory.swap.max per VM memcg (pages), or empty without memcgs
        self._swap_max = np.zeros(0, dtype=np.int64)
        if self.memcg is not None:
            self._swap_max = np.array(self.memcg.limits.swap_max[:nr_vms], dtype=np.int64)
        self._no_bytes = np.zeros(0, dtype=np.uint32)  # the zswap arrays of worlds without it
        self._no_stored = np.zeros(0, dtype=np.bool_)

    def takes(self, reclaim: object) -> bool:
        """Whether ``reclaim`` is this world's reclaimer, as the node's lruvec or one memcg's
        lruvec sees it (a test may hand a policy another)."""
        return reclaim is self.vmscan or (
            type(reclaim) is MemcgReclaimer and reclaim.reclaimer is self.vmscan
        )

    def _device_ok(self) -> bool:
        """The swap device is still one the core drives (a test may change it after the world
        was built)."""
        swap = self.swap
        return swap.zswap is None or not swap.synchronous

    def _zswap_arrays(self) -> tuple[NDArray[np.uint32], NDArray[np.bool_]]:
        """The zswap pool's per-page compressed sizes and stored marks (read only by the
        passes), or empty ones without zswap."""
        if self.swap.zswap is None:
            return self._no_bytes, self._no_stored
        pool = self.swap.zswap.pool
        return pool.obj_bytes, pool.stored

    def _swap_usage(self) -> NDArray[np.int64]:
        """Each VM memcg's memory.swap.current (read only by the passes), or empty."""
        if self.memcg is None:
            return self._swap_max
        return self.memcg.swap_usage[: self._nr_vms]

    def _slots_taken(self) -> None:
        """``add_to_swap``'s slots through the device, as the general path takes them
        (``get_swap_pages``, slot identities in order when the device tracks them;
        memory.swap.max's refusals counted per memcg, the slots charged to
        memory.swap.current)."""
        io, buf, swap, memcg = self.io, self.buf, self.swap, self.memcg
        if memcg is not None:
            mmc = self.mmc
            for o in np.flatnonzero(mmc[MM_SWAP_MAX]).tolist():
                self.vmscan.vmstat.count(MEMCG_SWAP_MAX, mmc.item(MM_SWAP_MAX, o), o)
        taken = int(io[IO_SLOTS_TAKEN])
        if taken:
            pids = buf[B_SLOT_PID, :taken].copy()
            swap.alloc_slots(taken, pids)
            if memcg is not None:
                memcg.charge_swap(pids)

    def _slots_freed(self) -> None:
        """The slots ``activate_locked`` gave back (``swap_free_nr``: uncharged, and their
        compressed copies freed, the pool's spare frames with them)."""
        freed = int(self.io[IO_SLOTS_FREED])
        if freed:
            self.swap.free_slots(freed, self.buf[B_UNSLOT_PID, :freed].copy())

    def _room(self, n: int) -> NDArray[np.int64]:
        """The pass's scalars, with per-folio rows for ``n`` folios."""
        if n > self.buf.shape[1]:
            self.buf = np.zeros((B_ROWS, max(n, 2 * self.buf.shape[1])), dtype=np.int64)
        io = self.io
        io[IO_N] = n
        io[IO_STAMPS] = self.mem.stamps
        io[IO_FREE_SLOTS] = self.swap.nr_free_slots
        io[IO_NR_SLOTS] = self.swap.nr_slots
        io[IO_FREED_TOP] = self.mem._nr_freed
        io[IO_SYNC] = self.swap.synchronous
        zswap = self.swap.zswap
        io[IO_ZSWAP] = zswap is not None
        if zswap is not None:
            io[IO_PAGE_BYTES] = PAGE_SIZE
            io[IO_POOL_MAX] = zswap.max_pages
            io[IO_POOL_ACCEPT] = zswap.accept_thr_pages
            io[IO_POOL_BYTES] = zswap.pool.total_bytes
            io[IO_POOL_FULL] = zswap.reached_full
            io[IO_AS_IS] = zswap.as_is
        return io

    def _prepare(self, lru: TwoList, n: int) -> NDArray[np.int64]:
        """Room for a pass of ``n`` folios, with the lists' buffered adds linked in first
        (``lru_add_drain``, as isolation and putback would do)."""
        lru.inactive.drain()
        lru.active.drain()
        return self._room(n)

    def _large_at_tail(self, lst: PageQueue, n: int) -> bool:
        """A pass of ``n`` folios from ``lst`` would isolate a large folio (host.thp): the
        general path handles those (their aging and unmapping cover 2 MiB)."""
        thp = self.shortcut._thp
        return len(thp) > 0 and _tail_has_large(lst._nxt, lst._s, n, self.mem.frame_pid, thp)

    def _aged(self, sc: ScanControl) -> None:
        """``folio_referenced``'s counts for the pass: the rmap walk, and the per-VM side
        effects of the aging notifier calls (``clear_flush_young``)."""
        walked = int(self.io[IO_REF_WALKED])
        if walked:
            self.vmscan.rmap.walked(sc, walked)
            self.shortcut.aged(self.mmc[MM_AGED], self.mmc[MM_YOUNG], sc, flush=True)
            fast.took("tdp_shortcut")  # the fused walk's aging step, compiled in

    def _writeback_counted(self, sc: ScanControl) -> None:
        """The write-back cases' counts (``nr_immediate``, ``nr_writeback``)."""
        io = self.io
        nwb = int(io[IO_WRITEBACK])
        if nwb:
            vs = self.vmscan.vmstat
            immediate = int(io[IO_IMMEDIATE])
            sc.nr_immediate += immediate
            sc.nr_writeback += nwb - immediate
            vs[VmStat.VMSCAN_WRITEBACK] += nwb - immediate
            vs[VmStat.VMSCAN_IMMEDIATE] += immediate

    def _zswap_stored(self, sc: ScanControl) -> None:
        """``zswap_store``'s effects for the pages the pass stored or rejected: the counters,
        the objects stored one by one (the pool's LRU in store order) and the pool's
        full state, as :meth:`Zswap.store` leaves them."""
        zswap, io, vs = self.swap.zswap, self.io, self.vmscan.vmstat
        assert zswap is not None
        hits, poor = int(io[IO_LIMIT_HIT]), int(io[IO_REJECT_POOR])
        if hits:
            vs[VmStat.ZSWAP_POOL_LIMIT_HIT] += hits
        if poor:
            vs[VmStat.ZSWAP_REJECT_COMPRESS_POOR] += poor
        pool = zswap.pool
        for pid in self.buf[B_STORE_PID, : int(io[IO_STORED])].tolist():
            pool.store(np.array([pid], dtype=np.int64))
        stored = self.mmc[MM_STORED]
        for o in np.flatnonzero(stored).tolist():
            vs.count(VmStat.ZSWPOUT, stored.item(o), o)
        zswap.reached_full = bool(io[IO_POOL_FULL])
        sc.nr_compressed += int(io[IO_COMPRESSED])

    def _zswap_writeback(self, sc: ScanControl, pushed: bool) -> None:
        """``shrink_worker`` after a store found the pool full, as the general path runs it;
        the frames the emptied zspages give back go on the free stack below those the pass
        already ``pushed`` there (the general path frees the batch's after pageout)."""
        mem, io = self.mem, self.io
        top0 = mem._nr_freed
        nf = int(io[IO_FREED_TOP]) - top0 if pushed else 0
        saved = mem._free[top0 : top0 + nf].copy()
        self.vmscan._zswap_writeback(sc)
        if nf and mem._nr_freed != top0:
            free = mem.reserve_free(nf)
            top = mem._nr_freed
            free[top : top + nf] = saved
            io[IO_FREED_TOP] = top + nf

    def _unmapped_and_written(self, sc: ScanControl, pushed: bool = False) -> None:
        """``shrink_folio_list``'s per-batch side effects up to ``__remove_mapping``, in the
        general path's order: the slots ``add_to_swap`` took, ``try_to_unmap``'s walk, per-VM
        invalidations and eviction log, ``pageout``'s zswap stores, one submission of the
        batch's writes and their write-back timers (zram: their store in its pool), and
        zswap's shrink worker if a store found its pool full (``pushed``: the pass has put the
        frames it freed on the free stack already)."""
        mem, swap, vmscan, io, mmc, buf = (
            self.mem,
            self.swap,
            self.vmscan,
            self.io,
            self.mmc,
            self.buf,
        )
        vs = vmscan.vmstat
        full = int(io[IO_SWAP_FULL])
        self._slots_taken()
        if full:
            sc.nr_swap_full += full
            vs[VmStat.SWAP_FULL] += full
        ne = int(io[IO_UNMAPPED])
        if ne:
            vmscan.rmap.walked(sc, ne)
            self.shortcut.unmapped(mmc[MM_UNMAPPED], mmc[MM_ZAPPED], sc)
            fast.took("tdp_shortcut")  # the fused walk's unmap step, compiled in
            if vmscan.sink is not None:
                upid = buf[B_EVICT_PID, :ne].astype(np.int32)
                upfn = buf[B_EVICT_PFN, :ne].copy()
                scans = mem.scans[upfn] if mem.stamps else np.zeros(ne, dtype=np.uint8)
                dirty = buf[B_EVICT_DIRTY, :ne] != 0
                vmscan.sink.evicted(vmscan.now(), upid, upfn, dirty, scans)
        nw, ns = int(io[IO_WRITTEN]), int(io[IO_STORED])
        if nw + ns:
            sc.nr_pageout += nw + ns
            vs[VmStat.NR_VMSCAN_WRITE] += nw + ns
        if swap.zswap is not None and nw + ns:
            self._zswap_stored(sc)
        if nw:
            wpid = buf[B_WRITE_PID, :nw].tolist()
            wpfn = buf[B_WRITE_PFN, :nw].tolist()
            if vmscan.on_swap_write is not None:
                vmscan.on_swap_write(buf[B_WRITE_PID, :nw].astype(np.int64))
            ends = swap.submit(vmscan.now(), write=True, n=nw, per_mm=mmc[MM_WRITTEN].tolist())
            if not swap.synchronous:
                vmscan.writeback_started(wpid, wpfn, ends, sc)
            elif swap.zpool is not None:  # zram_write_page: compressed into the pool
                swap.zpool.store(buf[B_WRITE_PID, :nw].copy())
                sc.nr_compressed += nw
        if io[IO_POOL_WAS_FULL]:  # zswap_store queued the shrink worker
            self._zswap_writeback(sc, pushed)

    def _freed(self, sc: ScanControl) -> None:
        """``__remove_mapping``'s counts: the pages now only in swap, the frames free
        (``pgsteal``); then a compressed pool takes its new frames from them."""
        io = self.io
        nf = int(io[IO_FREED])
        if nf:
            freed = self.mmc[MM_FREED]
            self.mem.nr_swapped += freed
            self.mem.frames_freed(int(io[IO_FREED_TOP]), nf, freed)
            sc.freed(nf)
        if self.swap.zpool is not None and nf + int(io[IO_WRITTEN]) + int(io[IO_STORED]):
            self.swap.zpool.fit()

    def shrink_folio_list(
        self, pfns: NDArray[np.int64], sc: ScanControl
    ) -> NDArray[np.int8] | None:
        """``vmscan.shrink_folio_list(pfns, sc)`` compiled, whatever policy isolated the folios;
        None if the general path must run it (nothing was done)."""
        n = len(pfns)
        if n == 0 or not self._device_ok():
            return None
        mem, sh, vmscan = self.mem, self.shortcut, self.vmscan
        if len(sh._thp) and any_large(mem.frame_pid[pfns], sh._thp):
            return None
        io = self._room(n)
        io[IO_IMMEDIATE_OK] = (not sc.direct) and vmscan.pgdat_writeback
        out = np.empty(n, dtype=np.int8)
        pfns = np.ascontiguousarray(pfns, dtype=np.int64)
        done = _shrink_folio_list(
            pfns,
            io,
            mem.flags,
            mem.frame_pid,
            sh.spte,
            mem.pid_base,
            sh._usable,
            self._swap_max,
            self._swap_usage(),
            *self._zswap_arrays(),
            self.mmc,
            self.buf,
            out,
        )
        if not done:
            return None
        fast.took("host_core")
        self._writeback_counted(sc)
        self._unmapped_and_written(sc)
        nf = int(io[IO_FREED])
        if nf:
            shadows = vmscan.policy.workingset_eviction(self.buf[B_FREE_PFN, :nf].copy())
            free = mem.reserve_free(nf)
            io[IO_FREED_TOP] = mem._nr_freed
            _remove_mapping(
                io,
                shadows,
                mem.flags,
                mem.pfn,
                mem.frame_pid,
                mem.pid_base,
                mem.readahead,
                free,
                self.mmc,
                self.buf,
            )
        self._freed(sc)
        return out

    def shrink_inactive_list(self, lru: TwoList, n: int, sc: ScanControl) -> bool:
        """``lru.shrink_inactive_list(n, sc, vmscan)`` compiled; False if the general path must
        run it (nothing was done)."""
        if not self._device_ok():
            return False
        mem, vmscan = self.mem, self.vmscan
        io = self._prepare(lru, n)
        if self._large_at_tail(lru.inactive, n):
            return False
        io[IO_AGE] = lru.nonresident_age
        io[IO_IMMEDIATE_OK] = (not sc.direct) and vmscan.pgdat_writeback
        free = mem.reserve_free(n)
        io[IO_FREED_TOP] = mem._nr_freed
        sh = self.shortcut
        done = _shrink_inactive(
            io,
            mem.flags,
            mem.pfn,
            mem.frame_pid,
            lru.fl,
            lru.inactive._nxt,
            lru.inactive._prev,
            lru.inactive._s,
            lru.active._s,
            sh.spte,
            mem.pid_base,
            sh._usable,
            sh._aging,
            mem.scans,
            mem.readahead,
            free,
            self._swap_max,
            self._swap_usage(),
            *self._zswap_arrays(),
            self.mmc,
            self.buf,
        )
        if not done:
            return False
        fast.took("host_core")
        k = int(io[IO_TAKEN])
        if k == 0:
            return True
        lru.inactive._size += int(io[IO_TO_INACTIVE]) - k
        lru.active._size += int(io[IO_TO_ACTIVE])
        sc.nr_taken += k
        sc.isolated(k)
        pageout0, reclaimed0 = sc.nr_pageout, sc.nr_reclaimed
        self._writeback_counted(sc)
        self._aged(sc)
        self._unmapped_and_written(sc, pushed=True)
        self._freed(sc)
        self._slots_freed()  # activate_locked's, after shrink_folio_list as in the kernel
        lru.nonresident_age = int(io[IO_AGE])
        sc.activated(int(io[IO_TO_ACTIVE]))
        lru._lru_note_cost(sc.nr_pageout - pageout0, k - (sc.nr_reclaimed - reclaimed0))
        return True

    def shrink_active_list(self, lru: TwoList, n: int, sc: ScanControl) -> bool:
        """``lru.shrink_active_list(n, sc, vmscan)`` compiled; False if the general path must
        run it (nothing was done)."""
        mem = self.mem
        io = self._prepare(lru, n)
        if self._large_at_tail(lru.active, n):
            return False
        sh = self.shortcut
        done = _shrink_active(
            io,
            mem.flags,
            mem.frame_pid,
            lru.fl,
            lru.active._nxt,
            lru.active._prev,
            lru.inactive._s,
            lru.active._s,
            sh.spte,
            mem.pid_base,
            sh._usable,
            sh._aging,
            mem.scans,
            self.mmc,
            self.buf,
        )
        if not done:
            return False
        fast.took("host_core")
        k = int(io[IO_TAKEN])
        if k == 0:
            return True
        lru.active._size -= k
        lru.inactive._size += k
        sc.refilled(k)
        self._aged(sc)
        sc.deactivated(k)
        return True


def general_path_reason(sc: Scenario) -> str | None:
    """Why a scenario's watermark world cannot use the compiled core (None: it does), in the
    user's terms; :func:`core_for` decides the same from the built world (tested equal)."""
    if sc.reclaim.trigger == "demand":
        return None  # demand mode has no kswapd: its own compiled replays serve it
    reasons = []
    if not fast.enabled("host_core"):
        reasons.append("turned off by MEMSIM_FAST / MEMSIM_FAST_DISABLE")
    if sc.file_sections() or sc.disk_images():
        reasons.append("host page cache")
    if sc.host.ksm is not None:
        reasons.append("host.ksm (a KSM page has a mapping per sharer)")
    if sc.kvm.mmu == "shadow" and sc.kvm.shadow_sptes_per_gfn > 1:
        reasons.append("shadow paging with several sptes per gfn")
    elif not sc.kvm.ept_ad_bits:
        reasons.append("kvm.ept_ad_bits off (access tracking)")
    if sc.host.rmap != "anon_vma":
        reasons.append("host.rmap: none (each walk scans page tables)")
    if sc.kvm.mmu == "shadow" and not sc.kvm.shadow_rmap:
        reasons.append("kvm.shadow_rmap off (each notifier call scans the sptes)")
    if any(vm.memcg is not None and not vm.memcg.zswap_writeback for vm in sc.vms):
        reasons.append("a memcg with zswap_writeback false (its refused writes are activated)")
    return ", ".join(reasons) or None


def core_for(vmscan: Vmscan) -> HostCore | None:
    """The compiled core for a world, or None when its configuration needs the general path
    (see the module docstring's "When")."""
    shortcut = vmscan.rmap.shortcut
    swap = vmscan.swap
    if (
        not fast.enabled("host_core")
        or vmscan.mem.file_base < vmscan.mem.nr_pages  # host page cache
        or not isinstance(shortcut, TdpShortcut)
        or not shortcut.built_any()
        or (swap.zswap is not None and swap.synchronous)  # zswap's rejects wait for a disk
        or (vmscan.memcg is not None and vmscan.memcg.no_writeback is not None)
    ):
        return None
    return HostCore(vmscan, shortcut)

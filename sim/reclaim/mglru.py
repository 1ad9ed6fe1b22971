"""The multi-generational LRU (CONFIG_LRU_GEN, "MGLRU") for one lruvec: guest RAM (anon) and,
with ``host_files``, the host page cache (file).

Models
    Folios live in generations numbered by sequence: ``min_seq`` (oldest) .. ``max_seq``
    (youngest), two to four of them at a time, each a list (linked through the frames) indexed by
    ``seq % MAX_NR_GENS``. A folio's generation is a per-frame number that aging may raise
    without moving the folio ("lazy" promotion); eviction's sort step moves it to the list of its
    generation when it meets it at the oldest end, as the kernel does.

    Placement (``lru_gen_folio_seq``, 6.14+): every add in this simulator happens inside a fault
    (first touch and swap-in through KVM's GUP), so ``folio_add_lru`` marks the folio PG_active
    and it joins generation ``max_seq - 1``, or ``max_seq`` if it is PG_workingset (a refault
    whose shadow says it was workingset). Adds go through the per-CPU ``lru_add`` batch
    (FOLIO_BATCH_SIZE = 31, drained when full and before reclaim looks at the lists).
    ``folio_mark_accessed`` is ``lru_gen_inc_refs``, which has no PG_lru check: the two host
    references of a KVM fault-in (GUP's FOLL_TOUCH, then ``kvm_release_page_*``) leave a new
    folio with PG_referenced and one ref (tier 1) even while it sits in the batch, so its first
    young sighting promotes it, and the reclaim scan protects it by tier until then.

    Aging (``try_to_inc_max_seq``): a walk over every present pte of every mm in page-table
    order, in batches of one PTE table (512 ptes, paid for and yielded after each). Since 6.12 the
    mm has notifiers (KVM), so the walk calls ``ptep_clear_young_notify`` on every present pte of
    a folio on the LRU: one ``clear_young`` notifier call per pte. A young folio gets
    ``folio_update_gen``: the first sighting only sets PG_referenced; a folio already
    PG_referenced or PG_workingset moves to ``max_seq`` with PG_workingset (PG_referenced
    cleared). Then ``inc_max_seq``: if four generations exist, ``inc_min_seq`` first pushes the
    oldest generation's folios into the next one ("protected"; their PG_referenced is cleared);
    ``max_seq`` advances and the new generation is stamped with the time. Concurrent reclaimers
    share one walk (the kernel's shared mm-list iterator): whoever finishes it advances
    ``max_seq``, the others give up.

    Eviction (``evict_folios``): from the oldest generation's tail, up to the scan budget
    (``lru_size >> priority``, at most MAX_LRU_BATCH folios met per call, sorted ones included) or
    until MIN_LRU_BATCH folios are isolated (``scan_folios``; ``try_to_shrink_lruvec`` calls again
    until what the calls met reaches the budget, recomputed each time): ``sort_folio`` moves
    promoted folios to their generation's list, protects folios of a tier the PID controller says
    refaults more than tier 0, and folios under write-out (which get PG_reclaim), by moving them
    one generation up; the rest are isolated (``pgscan``; sorted ones count as ``pgrefill``). A
    folio whose write ``shrink_folio_list`` started is put back into ``max_seq - 1`` (PG_reclaim
    and under write-out); when the write ends ``folio_rotate_reclaimable`` moves it to the oldest
    generation's tail, where the next scan frees it. ``try_to_inc_min_seq`` then skips empty
    generations. Each isolated folio gets the MGLRU branch of ``folio_check_references``:
    ``lru_gen_look_around`` clears its pte's young bit with ``ptep_clear_young_notify``; if it was
    young, up to 64 neighbouring ptes in its PMD are cleared too and their young folios get
    ``folio_update_gen``. Not young -> RECLAIM (``shrink_folio_list``); young and neither
    PG_referenced nor PG_workingset -> KEEP with PG_referenced; otherwise ACTIVATE (PG_workingset,
    into ``max_seq``). Folios that could not be reclaimed are activated. Rejected folios are never
    put back into the oldest generation.

    Tiers and the PID controller: a folio's tier is ``order_base_2(refs)`` (refs = fd accesses
    counted by ``lru_gen_inc_refs``), or 3 if PG_workingset. Per tier the lruvec counts
    ``evicted``, ``refaulted`` and ``protected`` for the current min_seq, folded into halving
    averages whenever min_seq advances; ``get_tier_idx`` protects tiers whose refault rate is
    worse than tier 0's (``positive_ctrl_err``, gains 2:3). For guest memory refs stay 0/1, so
    this is tier 0 (never promoted) against tier 3 (PG_workingset).

    Workingset (6.14+): the shadow token holds min_seq at eviction, refs - 1 and PG_workingset.
    A refault is recent if the token's sequence is within MAX_NR_GENS of ``max_seq``: then
    ``refaulted[tier]`` and WORKINGSET_ACTIVATE count it, and a shadow with PG_workingset sets
    PG_workingset again (WORKINGSET_RESTORE), which places the folio in ``max_seq``. (Up to
    6.13, as docs/MODEL.md 4.9 describes, every recent refault inside a fault got PG_workingset.)

    The file type (``host_files``, sim/host/filemap.py): page-cache folios have their own
    ``min_seq[file]``, generation lists, page counts and PID counts, under the shared
    ``max_seq``. A read is not a fault, so ``folio_add_lru`` does not set PG_active and
    ``lru_gen_folio_seq`` puts the folio ``MAX_NR_GENS`` back from ``max_seq`` (one younger
    with PG_workingset), never older than ``min_seq[file]``: new page cache joins the oldest
    generation. It has no pte, so the aging walk never sees it; it climbs tiers through
    ``folio_mark_accessed`` (``lru_gen_inc_refs`` on each read), and ``sort_folio`` protects a
    tier the file PID controller says refaults more than tier 0 with ``folio_inc_gen`` into
    ``min_seq + 1`` (refs cleared). ``sort_folio`` also moves dirty file folios (and any under
    write-back) to ``min_seq + 1`` with PG_reclaim: reclaim never writes file data; the flusher
    does, and ``folio_end_writeback`` rotates them to the oldest generation's tail. Isolated
    file folios are unmapped, so ``folio_referenced`` finds nothing and all are reclaimed,
    clean, by ``__remove_mapping`` (no I/O, a shadow with the file ``min_seq``). A refault
    from a read counts ``workingset_refault_file``, feeds file's ``refaulted`` if recent and
    restores PG_workingset (``workingset_restore_file``) or the refs; not being in a fault it
    counts no ``workingset_activate_file``.

    Type choice: ``get_type_to_scan`` compares the refault rates of all tiers of anon (gain
    ``swappiness``) and file (gain ``MAX_SWAPPINESS - swappiness``), file at swappiness 1 and anon
    at 200; ``isolate_folios`` scans that type's oldest generation and, if it yields nothing, the
    other one. ``get_swappiness`` is 0 when fewer than MIN_LRU_BATCH swap slots are free
    (``mem_cgroup_get_nr_swap_pages``: for a memcg, also under its memory.swap.max): then (as at
    swappiness 0) only file is evictable (``for_each_evictable_type``), the walk skips anonymous
    VMAs (``should_skip_vma``: nothing of guest RAM is aged), and ``inc_min_seq`` advances anon's
    ``min_seq`` without sorting its oldest folios, which the new ``max_seq`` takes over (the
    kernel's cold/hot inversion). MGLRU has no counterpart of the classic ``file_is_tiny``: at
    swappiness 0 anon stays unevictable even when no file is left. ``try_to_inc_min_seq`` skips
    each evictable type's empty oldest generations but keeps a type from passing ``max_seq -
    MIN_NR_GENS`` while the other is behind it; ``should_run_aging`` asks for aging once the lower
    evictable ``min_seq`` is within two generations of ``max_seq``. So while reads keep refilling
    file's oldest generation no aging runs and anon, whose folios start in ``max_seq - 1``, has
    nothing evictable: swappiness only matters once file's oldest generations empty (for example
    when dirty file folios are sorted up). Counted per type where the kernel counts them
    (``PGSCAN_ANON + type`` in ``scan_folios``, ``PGSTEAL_ANON + type`` in ``evict_folios``), as
    ``pgscan_anon``/``_file`` and ``pgsteal_anon``/``_file``.

    kswapd's ``lru_gen_age_node`` does no aging itself; with ``min_ttl_ms`` it checks whether the
    oldest generation is older than the TTL and, if not, counts ``mglru_min_ttl_oom`` (the kernel
    would invoke the OOM killer there).

    KSM (sim/host/ksm.py): a KSM folio is on the lists like any anon folio and is mapped by
    one pte per sharer. The walk visits ptes, not folios (``walk_pte_range`` ->
    ``ptep_clear_young_notify`` on each): it meets a KSM folio once per mapped sharer, clears
    that pte's young bit alone (and asks that sharer's KVM), and each young pte is one
    ``folio_update_gen`` in order, so two young sharers in one walk are a first and a second
    sighting. The stable node and the zero page's ptes are no walk entries. With memcgs a
    memcg's walk visits its own mm's ptes and ``get_pfn_folio`` skips folios of other memcgs:
    a KSM folio is aged by the walk only through its own memcg's sharer; the others' young
    bits are seen by eviction's ``folio_referenced`` (``rmap_walk_ksm``, then
    ``lru_gen_look_around`` around each young mapping, promoting neighbours of the folio's
    memcg only). ``notifier_walk: false`` is not modelled with KSM.

    ``notifier_walk: false`` is the behaviour before 6.12: the walk and the look-around test and
    clear only the host pte young bits (no notifier call), and only for young host ptes; the
    folio being evicted is still checked with ``folio_referenced``
    (``ptep_clear_flush_young_notify``, which does ask KVM), after a host-only look-around if
    its host pte was young. Everything else (placement, two-step, reference rules) stays 6.14.

Compiled path
    The fast path ``mglru_compiled`` (sim/fast.py) does the per-batch steps as compiled passes
    over the same arrays: ``scan_folios`` with ``sort_folio`` and isolation (reading
    PG_writeback and PG_dirty and setting PG_reclaim in the host's page flags, as Vmscan's
    tests do, so only with the host's Vmscan as reclaimer), the reference check after the
    look-around, the putback and the lru_add drain, ``folio_update_gen``,
    ``folio_rotate_reclaimable`` and ``workingset_eviction``. Each is the numpy step's loop
    folio by folio in its order, so every link, generation, flag, page count and counter ends
    the same; ``MEMSIM_FAST_DISABLE=mglru_compiled`` runs the numpy steps, and
    tests/test_fastpaths.py compares the two over random worlds. The host's side (the
    look-around windows, ``clear_young``, ``shrink_folio_list``) is the host's.

Kernel reference
    mm/vmscan.c: ``try_to_inc_max_seq``, ``inc_max_seq``, ``inc_min_seq``,
    ``try_to_inc_min_seq``, ``walk_pte_range``, ``folio_update_gen``, ``folio_inc_gen``,
    ``lru_gen_look_around``, ``lru_gen_set_refs``, ``lru_gen_folio_check_references``,
    ``should_run_aging``, ``get_nr_to_scan``, ``evict_folios``, ``isolate_folios``,
    ``scan_folios``, ``sort_folio``, ``isolate_folio``, ``get_type_to_scan``, ``get_tier_idx``,
    ``read_ctrl_pos``, ``reset_ctrl_pos``, ``positive_ctrl_err``, ``try_to_shrink_lruvec``,
    ``should_abort_scan``, ``lru_gen_age_node``, ``lruvec_is_reclaimable``;
    include/linux/mm_inline.h: ``lru_gen_folio_seq``, ``lru_gen_add_folio``,
    ``lru_tier_from_refs``, ``folio_lru_refs``; mm/swap.c: ``folio_add_lru``,
    ``lru_gen_inc_refs``; mm/workingset.c: ``lru_gen_eviction``, ``lru_gen_test_recent``,
    ``lru_gen_refault`` (all as of the Dec 2024 "rework workingset protection" series, ~6.14);
    the file type, ``get_swappiness``, ``for_each_evictable_type``, ``evictable_min_seq`` and
    ``try_to_inc_min_seq`` as in mainline mm/vmscan.c of late 2025; ``scan_folios``' budget
    ``min(nr_to_scan, MAX_LRU_BATCH)`` and ``get_nr_to_scan``'s memcg protection
    (``mem_cgroup_below_min``, ``apply_proportional_protection``, through ``protection``, set
    only by memcg.py) since 6.16 ("apply proportional reclaim pressure for memcg when MGLRU is
    enabled"; before, MAX_LRU_BATCH whatever ``nr_to_scan``, and no scaling).

Simplifications
    One lruvec per memcg (memcg.py); with ``host_files`` every lruvec has the file type (the
    node's one, or every memcg's). Without it the lruvec is anon only, as before: ``min_seq[file]``
    is not modelled and swappiness 0 or a full swap device leaves nothing evictable. With it:
    ``sort_folio`` counts the dirty file folios it sorts in ``nr.file_taken`` (and, not under
    write-back, ``nr.unqueued_dirty``), ``scan_folios`` the isolated ones, and
    ``try_to_shrink_lruvec`` wakes the flushers when every one was unqueued dirty
    (``wakeup_flusher_threads(WB_REASON_VMSCAN)``: "mm: vmscan: wake up flushers conditionally to
    avoid cgroup OOM"; counted from the call's start, which is the node's ``shrink_node`` with one
    lruvec; with memcgs the kernel's ``sc->nr`` spans every lruvec ``shrink_many`` visits in the
    call). On anon's cold/hot inversion, folios promoted lazily onto the inverted list move to
    their own generations' lists (the kernel leaves them there); ``lru_gen_folio_seq``'s PG_reclaim
    case for file folios is not needed (reclaim never puts a file folio back). No Bloom filter and
    no mm-list skipping: every aging walk visits every present pte (the kernel's ``force_scan``),
    which is the upper bound of its cost; the walk snapshot is taken at its start and frames that
    left the LRU meanwhile are skipped. ``folio_update_gen`` is used for look-around promotions in
    direct reclaim too (the kernel uses ``lru_gen_set_refs`` + ``folio_activate`` there, with the
    same result). Folios kept by the reference check are put back as "anon not in the swap cache"
    (generation ``max_seq - 1``): the policy cannot see the swap cache. No retry of clean unmapped
    folios that missed ``folio_rotate_reclaimable`` (none do here). One zone: no ``skipped_zone``
    (every folio the scan reaches and does not sort is isolated). No ``set_initial_priority`` for
    kswapd. The controller keeps one history generation (NR_HIST_GENS = 1, CONFIG_LRU_GEN_STATS
    off). Pte dirty bits seen by the walk are not transferred. ``promotion: one_step`` gives
    6.1-6.13's reference rules (any young sighting promotes to ``max_seq``, faulted-in folios join
    ``max_seq``, promotion sets no PG_workingset) with everything else kept at 6.14. In demand mode
    (``nr_to_reclaim == 1``, ``sc.batch`` 1) a scan isolates one folio, and a call goes on, lowering
    the priority and aging as needed, until it has reclaimed its page (standing in for the caller's
    retries). The walk's pte visits are priced through the host's aging call: one rmap entry and one
    notifier call per pte (the host-only walk, through ``Reclaimer.ptep_test_and_clear_young``,
    prices one rmap entry per pte and no notifier).

Invariants
    ``2 <= max_seq - min_seq[type] + 1 <= 4`` for each type. Every folio the policy tracks is
    either in the lru_add batch or on exactly one generation list of its own type; a listed
    folio's generation lies between that list's sequence and ``max_seq``, and lists outside
    ``[min_seq[type], max_seq]`` are empty. The per-generation page counts match the folios'
    generations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numba
import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim import fast
from sim.host.memcontrol import Protection, apply_proportional_protection
from sim.host.memory import DEF_PRIORITY, PG_DIRTY, PG_RECLAIM, PG_WRITEBACK, PTRS_PER_PMD
from sim.host.vmscan import Outcome, ScanControl, Vmscan
from sim.host.vmstat import VmStat
from sim.reclaim.base import (
    LruLinks,
    PageQueue,
    Pfns,
    ReclaimBase,
    Reclaimer,
    lru_del,
    lru_links,
)
from sim.reclaim.two_list import (
    WORKINGSET_REFAULT_FILE,
    WORKINGSET_RESTORE_FILE,
)

MIN_NR_GENS = 2
MAX_NR_GENS = 4
MAX_NR_TIERS = 4
LRU_REFS_WIDTH = 2  # MAX_NR_TIERS - 2 spare bits for fd access counts
MIN_LRU_BATCH = 64  # BITS_PER_LONG: look-around window, isolation batch
MAX_LRU_BATCH = MIN_LRU_BATCH * 64  # folios scanned per scan_folios call
FOLIO_BATCH_SIZE = 31  # per-CPU lru_add batch
WALK_BATCH = PTRS_PER_PMD  # ptes walked between yields: one PTE table
MAX_SWAPPINESS = 200
ANON, FILE = 0, 1

# Per-frame flags (uint8): list membership and the folio flags MGLRU uses.
FL_LRU = 0x01  # PG_lru: on a generation list
PG_REFERENCED = 0x02
PG_WORKINGSET = 0x04
PG_ACTIVE = 0x08  # only while off the lists (set in a fault or on activation)
FL_BATCH = 0x10  # in the per-CPU lru_add batch (not yet PG_lru)
FL_FILE = 0x20  # a page-cache folio (folio_is_file_lru): on the file type's generations
LRU_REFS_PGOFF = 6
LRU_REFS_MASK = ((1 << LRU_REFS_WIDTH) - 1) << LRU_REFS_PGOFF
LRU_REFS_FLAGS = LRU_REFS_MASK | PG_REFERENCED
_U8 = np.uint8
_OB2 = np.array([0, 0, 1, 2, 2], dtype=np.int64)  # order_base_2(refs) for refs 0..4
_MAXED = (1 << LRU_REFS_WIDTH) + 1  # refs + workingset of a folio with every bit set

# A folio's generation is kept as its sequence number modulo _SEQ_MOD in one byte (_OFF_LRU:
# on no list), as the kernel keeps ``gen + 1`` in folio->flags (LRU_GEN_MASK); the lruvec's
# max_seq gives the rest, since every generation in use lies within a few of it.
_SEQ_MOD = 255
_OFF_LRU = 255

# Shadow token (32 bits): PG_workingset | min_seq at eviction | refs - 1.
_SEQ_BITS = 31 - LRU_REFS_WIDTH
_SEQ_MASK = (1 << _SEQ_BITS) - 1


# -- the compiled path (fast path ``mglru_compiled``, sim/fast.py) ---------------------------
# The same steps as the numpy methods they stand in for, folio by folio in the same order: the
# same list links written (stale ones included), generations, flags, page counts and counters.
# MGLRU's lists never buffer single adds (no PageQueue.add_one), so each list is its sentinel
# in the shared links. ``sentinels[type, gen]`` names the lists.


@numba.njit(cache=True, nogil=True, inline="always")
def _add_head(
    nxt: NDArray[np.int32], prev: NDArray[np.int32], s: int, pfns: NDArray[np.int64], n: int
) -> None:
    """``PageQueue.add_head`` of ``pfns[:n]`` onto the list of sentinel ``s``."""
    if n == 0:
        return
    head = prev[s]
    for i in range(n - 1):
        nxt[pfns[i]] = pfns[i + 1]
        prev[pfns[i + 1]] = pfns[i]
    first, last = pfns[0], pfns[n - 1]
    nxt[head] = first
    prev[first] = head
    nxt[last] = s
    prev[s] = last


@numba.njit(cache=True, nogil=True, inline="always")
def _tier_of(fl: int) -> tuple[int, bool]:
    """``_tier`` of one folio: its tier, and whether refs + workingset are maxed."""
    refs = ((fl & LRU_REFS_MASK) >> LRU_REFS_PGOFF) + 1 if fl & PG_REFERENCED else 0
    ws = 1 if fl & PG_WORKINGSET else 0
    tier = MAX_NR_TIERS - 1 if ws else _OB2[refs]
    return tier, refs + ws == _MAXED


@numba.njit(cache=True, nogil=True)
def _scan_kernel(
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
    sentinels: NDArray[np.int64],
    gen: NDArray[np.uint8],
    dec: NDArray[np.int64],
    fl: NDArray[np.uint8],
    hflags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    nr_pages: NDArray[np.int64],
    protected: NDArray[np.int64],
    min_seq: int,
    tier_idx: int,
    file: bool,
    remaining: int,
    cap: int,
    iso: NDArray[np.int64],
    sizes: NDArray[np.int64],
) -> tuple[int, int, int, int, int, int, int, bool]:
    """``Mglru._scan_folios``' loop over one type's oldest generation (``sentinels`` of that
    type): chunks off the tail, sorted (promoted to their lists, protected or under write-out
    to ``min_seq + 1``) or isolated into ``iso``. PG_writeback and PG_dirty are read, and
    PG_reclaim set, in the host's page flags ``hflags`` as Vmscan's ``folio_test_writeback``,
    ``folio_test_dirty`` and ``folio_set_reclaim`` do. Returns (isolated, scanned, budget
    left, sorted, protected counted, dirty file folios, of which unqueued, whether any chunk
    sorted a folio up); ``sizes`` gets what each list's ``PageQueue._size`` gains."""
    s = sentinels[min_seq % MAX_NR_GENS]
    up_s = sentinels[(min_seq + 1) % MAX_NR_GENS]
    chunk = np.empty(MIN_LRU_BATCH, dtype=np.int64)
    seq = np.empty(MIN_LRU_BATCH, dtype=np.int64)
    cfl = np.empty(MIN_LRU_BATCH, dtype=np.uint8)
    tiers = np.empty(MIN_LRU_BATCH, dtype=np.int64)
    kind = np.empty(MIN_LRU_BATCH, dtype=np.int8)  # 0 promoted, 1 protected, 2 write-out, 3 take
    maxed = np.empty(MIN_LRU_BATCH, dtype=np.bool_)
    buf = np.empty(MIN_LRU_BATCH, dtype=np.int64)
    scanned = sorted_ = n_iso = nprot = file_dirty = unqueued = 0
    any_inc = False
    while remaining and n_iso < cap and nxt[s] != s:
        # isolate_tail: a chunk of the tail
        want = min(remaining, MIN_LRU_BATCH, max(8, 2 * (cap - n_iso)))
        k = 0
        cur = nxt[s]
        while k < want and cur != s:
            chunk[k] = cur
            k += 1
            cur = nxt[cur]
        nxt[s] = cur
        prev[cur] = s
        sizes[min_seq % MAX_NR_GENS] -= k
        need = cap - n_iso
        taken = 0
        cut = k
        for i in range(k):
            p = chunk[i]
            f = fl[p]
            cfl[i] = f
            seq[i] = dec[gen[p]]
            tiers[i], maxed[i] = _tier_of(f)
            if seq[i] != min_seq:
                kind[i] = 0
            elif tiers[i] > tier_idx or maxed[i]:
                kind[i] = 1
            else:
                h = hflags[frame_pid[p]]
                dirty = file and (h & PG_DIRTY) != 0
                if h & PG_WRITEBACK:
                    kind[i] = 2
                elif dirty:
                    kind[i] = 2
                    unqueued += 1
                else:
                    kind[i] = 3
                if dirty:
                    file_dirty += 1
            if kind[i] == 3:
                taken += 1
                if taken == need:
                    cut = i + 1
                    break
        # stop right after the last one taken: the rest go back to the tail, unread
        if cut < k:
            first, last = chunk[cut], chunk[k - 1]
            tail = nxt[s]
            for i in range(cut, k - 1):
                nxt[chunk[i]] = chunk[i + 1]
                prev[chunk[i + 1]] = chunk[i]
            prev[first] = s
            nxt[s] = first
            nxt[last] = tail
            prev[tail] = last
            sizes[min_seq % MAX_NR_GENS] += k - cut
        scanned += cut
        remaining -= cut
        # promoted: to the head of their generations' lists, by generation
        for g in range(MAX_NR_GENS):
            m = 0
            for i in range(cut):
                if kind[i] == 0 and seq[i] % MAX_NR_GENS == g:
                    buf[m] = chunk[i]
                    m += 1
            _add_head(nxt, prev, sentinels[g], buf, m)
            sizes[g] += m
            sorted_ += m
        # protected and under write-out: folio_inc_gen into min_seq + 1 (PG_reclaim on the
        # latter)
        m = 0
        for i in range(cut):
            if kind[i] == 2:
                hflags[frame_pid[chunk[i]]] |= PG_RECLAIM
        for i in range(cut):
            if kind[i] == 1 or kind[i] == 2:
                p = chunk[i]
                if kind[i] == 1 and not maxed[i]:
                    protected[tiers[i]] += 1
                    nprot += 1
                fl[p] = cfl[i] & ~LRU_REFS_FLAGS
                nr_pages[seq[i] % MAX_NR_GENS] -= 1
                gen[p] = (min_seq + 1) % _SEQ_MOD
                nr_pages[(min_seq + 1) % MAX_NR_GENS] += 1
                buf[m] = p
                m += 1
        _add_head(nxt, prev, up_s, buf, m)
        sizes[(min_seq + 1) % MAX_NR_GENS] += m
        sorted_ += m
        any_inc |= m > 0
        # isolate_folio: off the LRU; refs are kept only with PG_referenced
        for i in range(cut):
            if kind[i] == 3:
                p = chunk[i]
                f = cfl[i]
                if not f & PG_REFERENCED:
                    f &= ~LRU_REFS_MASK
                fl[p] = f & ~FL_LRU
                nr_pages[min_seq % MAX_NR_GENS] -= 1
                gen[p] = _OFF_LRU
                iso[n_iso] = p
                n_iso += 1
    return n_iso, scanned, remaining, sorted_, nprot, file_dirty, unqueued, any_inc


@numba.njit(cache=True, nogil=True, inline="always")
def _folio_seq1(
    fl: int, max_seq: int, min_anon: int, min_file: int, one_step: bool, has_file: bool
) -> int:
    """``Mglru._folio_seq`` (and ``_file_seq``) of one folio."""
    active = (fl & PG_ACTIVE) != 0
    ws = 1 if fl & PG_WORKINGSET else 0
    if has_file and fl & FL_FILE:
        if one_step:
            if active:
                return max_seq
            return min_file + 1 if min_file + MIN_NR_GENS < max_seq else min_file
        g = MIN_NR_GENS - ws if active else MAX_NR_GENS - ws
        return max(max_seq - g + 1, min_file)
    if one_step:
        return max_seq if active else max_seq - 1
    g = MIN_NR_GENS - ws if active else MIN_NR_GENS
    return max(max_seq - g + 1, min_anon)


@numba.njit(cache=True, nogil=True)
def _add_kernel(
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
    sentinels: NDArray[np.int64],
    gen: NDArray[np.uint8],
    fl: NDArray[np.uint8],
    nr_anon: NDArray[np.int64],
    nr_file: NDArray[np.int64],
    pfns: NDArray[np.int64],
    max_seq: int,
    min_anon: int,
    min_file: int,
    one_step: bool,
    has_file: bool,
    putback: bool,
    sizes: NDArray[np.int64],
) -> None:
    """``Mglru._lru_add_drain`` (``putback`` False) or ``Mglru._putback`` (True) of ``pfns``:
    each folio's ``lru_gen_folio_seq`` (a put-back one that would join the oldest generation
    is made PG_active first, its refs cleared), then ``_add``: anon folios onto their
    generations' lists in generation order, then file ones. ``sizes[type, gen]`` gets what
    each list's ``PageQueue._size`` gains."""
    n = len(pfns)
    seqs = np.empty(n, dtype=np.int64)
    for i in range(n):
        p = pfns[i]
        f = fl[p]
        sq = _folio_seq1(f, max_seq, min_anon, min_file, one_step, has_file)
        if putback and sq == min_anon:
            f = (f & ~LRU_REFS_FLAGS) | PG_ACTIVE
            fl[p] = f
            sq = _folio_seq1(f, max_seq, min_anon, min_file, one_step, has_file)
        seqs[i] = sq
        gen[p] = sq % _SEQ_MOD
        fl[p] = (f & ~(PG_ACTIVE | FL_BATCH)) | FL_LRU
    buf = np.empty(n, dtype=np.int64)
    for type_ in range(2 if has_file else 1):
        nr = nr_file if type_ == FILE else nr_anon
        for g in range(MAX_NR_GENS):
            m = 0
            for i in range(n):
                p = pfns[i]
                if (has_file and (fl[p] & FL_FILE) != 0) == (type_ == FILE) and (
                    seqs[i] % MAX_NR_GENS == g
                ):
                    buf[m] = p
                    m += 1
            nr[g] += m
            sizes[type_, g] += m
            _add_head(nxt, prev, sentinels[type_, g], buf, m)


@numba.njit(cache=True, nogil=True)
def _rotate_kernel(
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
    sentinels: NDArray[np.int64],
    gen: NDArray[np.uint8],
    dec: NDArray[np.int64],
    fl: NDArray[np.uint8],
    nr_pages: NDArray[np.int64],
    pfn: int,
    seq: int,
) -> None:
    """``Mglru.folio_rotate_reclaimable`` of one listed folio into generation ``seq`` of its
    type (``sentinels``, ``nr_pages``: that type's)."""
    a, b = prev[pfn], nxt[pfn]
    nxt[a] = b
    prev[b] = a
    nr_pages[dec[gen[pfn]] % MAX_NR_GENS] -= 1
    nr_pages[seq % MAX_NR_GENS] += 1
    gen[pfn] = seq % _SEQ_MOD
    fl[pfn] = fl[pfn] & ~PG_ACTIVE
    s = sentinels[seq % MAX_NR_GENS]
    tail = nxt[s]
    prev[pfn] = s
    nxt[s] = pfn
    nxt[pfn] = tail
    prev[tail] = pfn


@numba.njit(cache=True, nogil=True)
def _update_gen_kernel(
    gen: NDArray[np.uint8],
    dec: NDArray[np.int64],
    fl: NDArray[np.uint8],
    nr_pages: NDArray[np.int64],
    pfns: NDArray[np.int64],
    max_seq: int,
    promoted: int,
    one_step: bool,
) -> None:
    """``Mglru._folio_update_gen`` on young anon folios (``nr_pages``: anon's): every flag
    and generation read before any is written, as the numpy gathers do."""
    n = len(pfns)
    old = np.empty(n, dtype=np.uint8)
    old_seq = np.empty(n, dtype=np.int64)
    for i in range(n):
        old[i] = fl[pfns[i]]
        old_seq[i] = dec[gen[pfns[i]]]
    for i in range(n):
        p = pfns[i]
        f = old[i]
        if not one_step and (f & (PG_REFERENCED | PG_WORKINGSET)) == 0:
            fl[p] = (f & ~LRU_REFS_MASK) | PG_REFERENCED
            continue
        nr_pages[old_seq[i] % MAX_NR_GENS] -= 1
        gen[p] = max_seq % _SEQ_MOD
        nr_pages[max_seq % MAX_NR_GENS] += 1
        fl[p] = (f & ~LRU_REFS_FLAGS) | promoted


@numba.njit(cache=True, nogil=True)
def _check_refs_kernel(
    fl: NDArray[np.uint8],
    iso: NDArray[np.int64],
    young: NDArray[np.bool_],
    promoted: int,
    one_step: bool,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``lru_gen_folio_check_references`` on isolated anon folios after the look-around:
    young ones are kept with PG_referenced (first sighting) or activated into ``max_seq``;
    returns (kept, activated, the rest: victims), each in isolation order."""
    n = len(iso)
    keep = np.empty(n, dtype=np.int64)
    act = np.empty(n, dtype=np.int64)
    victims = np.empty(n, dtype=np.int64)
    nk = na = nv = 0
    for i in range(n):
        p = iso[i]
        if not young[i]:
            victims[nv] = p
            nv += 1
            continue
        f = fl[p]
        if not one_step and (f & (PG_REFERENCED | PG_WORKINGSET)) == 0:
            fl[p] = (f & ~LRU_REFS_MASK) | PG_REFERENCED
            keep[nk] = p
            nk += 1
        else:
            fl[p] = (f & ~LRU_REFS_FLAGS) | promoted | PG_ACTIVE
            act[na] = p
            na += 1
    return keep[:nk], act[:na], victims[:nv]


@numba.njit(cache=True, nogil=True)
def _eviction_kernel(
    fl: NDArray[np.uint8],
    pfns: NDArray[np.int64],
    min_anon: int,
    min_file: int,
    has_file: bool,
    evicted: NDArray[np.int64],
) -> NDArray[np.uint32]:
    """``Mglru.workingset_eviction``: ``evicted[type, tier]`` counts, the shadow tokens, the
    folios' flags cleared."""
    n = len(pfns)
    out = np.empty(n, dtype=np.uint32)
    for i in range(n):
        p = pfns[i]
        f = fl[p]
        tier, _ = _tier_of(f)
        refs = ((f & LRU_REFS_MASK) >> LRU_REFS_PGOFF) + 1 if f & PG_REFERENCED else 0
        file = has_file and (f & FL_FILE) != 0
        evicted[1 if file else 0, tier] += 1
        seq = min_file if file else min_anon
        ws = 1 if f & PG_WORKINGSET else 0
        out[i] = (ws << 31) | ((seq & _SEQ_MASK) << LRU_REFS_WIDTH) | max(refs - 1, 0)
    for i in range(n):
        fl[pfns[i]] = 0
    return out


class MglruConfig(ReclaimBase):
    """Multi-generational LRU (CONFIG_LRU_GEN on), anon only."""

    policy: Literal["mglru"] = "mglru"
    swappiness: int = Field(
        60,
        ge=0,
        le=200,
        description="vm.swappiness: 0 evicts file only (with anon only: nothing); otherwise "
        "it weighs anon against file in get_type_to_scan's refault comparison, and 200 scans "
        "anon first.",
    )
    min_ttl_ms: int = Field(
        0,
        ge=0,
        description="/sys/kernel/mm/lru_gen/min_ttl_ms: kswapd counts mglru_min_ttl_oom when "
        "the oldest generation is younger than this (the kernel OOM-kills); 0 = off.",
    )
    notifier_walk: bool = Field(
        True,
        description="6.12+: the aging walk and look-around call ptep_clear_young_notify on "
        "every present pte (one KVM clear_young each). Off: pre-6.12, they test and clear "
        "only host pte young bits.",
    )
    promotion: Literal["two_step", "one_step"] = Field(
        "two_step",
        description="two_step (6.14+, 'rework workingset protection'): a folio found young "
        "the first time only gets PG_referenced, the second time it moves to max_seq; faulted-in "
        "folios join max_seq - 1. one_step (6.1-6.13): every young sighting moves the folio to "
        "max_seq, and faulted-in folios join max_seq.",
    )


@dataclass(slots=True)
class _Walk:
    """One aging walk in progress (the mm-list iterator reclaimers share)."""

    seq: int
    ptes: Pfns  # the ptes met, as the walk's snapshot saw them
    pfns: Pfns  # the frames they mapped then
    pos: int = 0


@dataclass(slots=True)
class _CtrlPos:
    refaulted: int
    total: int
    gain: int


def _host_flags(reclaim: Reclaimer) -> tuple[NDArray[np.uint8], NDArray[np.int32]] | None:
    """The host's page flags and frame owners for the compiled scan, which does Vmscan's
    ``folio_test_writeback``, ``folio_test_dirty`` and ``folio_set_reclaim`` on them in place:
    when the fast path ``mglru_compiled`` is on and ``reclaim`` is the host's Vmscan, or a
    memcg's view of it (sim/reclaim/memcg.py, which keeps those three as Vmscan's). None for
    any other reclaimer (a test's stand-in): the numpy path."""
    if not fast.enabled("mglru_compiled"):
        return None
    host: Any = reclaim
    while not isinstance(host, Vmscan):
        host = getattr(host, "_reclaim", None)
        if host is None:
            return None
    return host.mem.flags, host.mem.frame_pid


def _isolation_batch(sc: ScanControl) -> int:
    """Folios ``scan_folios`` isolates before it stops (``isolated >= MIN_LRU_BATCH``): MGLRU's
    batch, not the classic SWAP_CLUSTER_MAX that ``sc.batch`` holds. Demand mode (``sc.batch``
    1: one victim per miss, for every policy) takes one at a time."""
    return 1 if sc.batch == 1 else MIN_LRU_BATCH


def _positive_ctrl_err(sp: _CtrlPos, pv: _CtrlPos) -> bool:
    """True if the PV has few refaults or a refault rate no worse than the SP's."""
    return pv.refaulted < MIN_LRU_BATCH or (
        pv.refaulted * (sp.total + MIN_LRU_BATCH) * sp.gain
        <= (sp.refaulted + 1) * pv.total * pv.gain
    )


class _GenType:
    """One type's half of ``struct lru_gen_folio``: its ``min_seq``, its generation lists
    (``folios[gen][type]``), its folios per generation (``nr_pages``) and its PID controller
    counts for the current ``min_seq`` plus their halving averages."""

    __slots__ = (
        "min_seq",
        "lists",
        "nr_pages",
        "refaulted",
        "evicted",
        "protected",
        "avg_refaulted",
        "avg_total",
    )

    def __init__(self, links: LruLinks) -> None:
        self.min_seq = 0  # lru_gen_init_lruvec
        self.lists = [PageQueue(links, sized=False) for _ in range(MAX_NR_GENS)]
        self.nr_pages = np.zeros(MAX_NR_GENS, dtype=np.int64)  # folios per gen (seq % 4)
        self.refaulted = [0] * MAX_NR_TIERS
        self.evicted = [0] * MAX_NR_TIERS
        self.protected = [0] * MAX_NR_TIERS
        self.avg_refaulted = [0] * MAX_NR_TIERS
        self.avg_total = [0] * MAX_NR_TIERS


class Mglru:
    """The multi-gen LRU for one lruvec: anon, plus the host page cache's file type.

    Args:
        cfg: policy knobs.
        nr_frames: frames on the host (per-frame state is indexed by pfn).
        vmstat: host counters (workingset_*, plus mglru_* counters of its own).
        rng: the policy's generator (unused: MGLRU is deterministic here).
        file: the lruvec holds page-cache folios too (``host_files``): a file type with its
            own ``min_seq``, generations and PID counts, and the per-type counters.
        memcg: the memcg whose lruvec this is, which its events are counted to as well
            (``count_memcg_events``, ``mod_lruvec_state``: ``memory.stat``); -1 counts them
            host-wide only (the node's one lruvec, and memcg worlds without a page cache).
    """

    name: ClassVar[str] = "mglru"
    observes_accesses: ClassVar[bool] = False
    needs_future: ClassVar[bool] = False
    # the memcg's protection as get_nr_to_scan reads it (memcg.py sets it per lruvec); None:
    # the node's one lruvec without memcgs, never scaled
    protection: Callable[[ScanControl], Protection] | None = None

    def __init__(
        self,
        cfg: MglruConfig,
        nr_frames: int,
        vmstat: Counter[str],
        rng: np.random.Generator,
        *,
        file: bool = False,
        memcg: int = -1,
    ) -> None:
        self.cfg, self.vmstat, self.file, self.memcg = cfg, vmstat, file, memcg
        # 6.14 marks promoted folios PG_workingset (tier 3); 6.13 left tiers to fd refs
        self._promoted = _U8(PG_WORKINGSET if cfg.promotion == "two_step" else 0)
        self.fl = np.zeros(nr_frames, dtype=np.uint8)
        self._gen = np.full(nr_frames, _OFF_LRU, dtype=np.uint8)  # seq % _SEQ_MOD (_seq_of)
        self._dec = np.full(256, -1, dtype=np.int64)  # byte -> sequence, for _dec_max
        self._dec_max = -1
        # A folio is on one list at a time, so the lists share their links. A lazily promoted
        # folio sits on an older generation's list than its own, so lists keep no sizes (as in
        # the kernel, folios are counted per generation, ``nr_pages``) and a folio leaves its
        # list without naming it (``lru_del``).
        self.nr_frames = nr_frames
        self.links = lru_links(nr_frames, MAX_NR_GENS * (2 if file else 1))
        # per type (anon, then file if any): min_seq, lists, nr_pages and the PID controller
        self.types = [_GenType(self.links) for _ in range(2 if file else 1)]
        # the lists' sentinels in the shared links, [type, seq % MAX_NR_GENS] (compiled path)
        self._sentinels = np.array([[q._s for q in g.lists] for g in self.types], dtype=np.int64)
        # lru_gen_init_lruvec: max_seq = MIN_NR_GENS + 1, min_seq = 0
        self.max_seq = MIN_NR_GENS + 1
        self._decoder()  # kept current as max_seq moves, whichever path reads it
        self.timestamps = np.zeros(MAX_NR_GENS, dtype=np.int64)  # birth of each gen (ns)
        self._batch: list[int] = []  # per-CPU lru_add batch
        self._walk: _Walk | None = None
        self._mm_seq = 0  # mm_state->seq: the last max_seq whose walk completed
        self.should_rotate = False  # try_to_shrink_lruvec's result: it aged (the memcg LRU)

    def _count_event(self, item: str, n: int = 1) -> None:
        """``count_vm_events``, or ``count_memcg_events`` for a memcg's lruvec."""
        if self.memcg < 0:
            self.vmstat[item] += n
        else:
            self.vmstat.count(item, n, self.memcg)  # type: ignore[attr-defined]

    # -- generations -------------------------------------------------------------------------
    def _seq_of(self, pfns: Pfns | slice) -> NDArray[np.int64]:
        """Folios' generation (sequence) numbers, -1 off the lists: the one number congruent
        to the stored byte within ``_SEQ_MOD`` up to ``max_seq + 1`` (a folio's generation is
        at most ``max_seq + 1``, in the swappiness-0 inversion, and at least ``min_seq``, at
        most ``MAX_NR_GENS - 1`` below ``max_seq``). A table per ``max_seq`` decodes the byte:
        one gather, as cheap as reading an int32."""
        return self._decoder()[self._gen[pfns]]

    def _decoder(self) -> NDArray[np.int64]:
        """The table from stored byte to sequence number for the current ``max_seq`` (renewed
        as soon as ``max_seq`` moves, so the numpy and compiled paths hold the same one)."""
        if self._dec_max != self.max_seq:
            top = self.max_seq + 1
            seqs = np.arange(top - _SEQ_MOD + 1, top + 1, dtype=np.int64)
            self._dec[seqs % _SEQ_MOD] = seqs
            self._dec_max = self.max_seq
        return self._dec

    def _store_seq(self, pfns: Pfns, seqs: NDArray[np.int64] | int) -> None:
        """Put folios into generations ``seqs`` (never negative: leaving the lists stores
        ``_OFF_LRU``)."""
        self._gen[pfns] = np.mod(seqs, _SEQ_MOD)

    @property
    def seq(self) -> NDArray[np.int64]:
        """Every frame's generation (sequence) number, -1 for folios on no list (tests)."""
        return self._seq_of(slice(None))

    # -- the anon type's state (what an anon-only lruvec has) ----------------------------------
    @property
    def min_seq(self) -> int:
        """``min_seq[LRU_GEN_ANON]``."""
        return self.types[ANON].min_seq

    @min_seq.setter
    def min_seq(self, seq: int) -> None:
        self.types[ANON].min_seq = seq

    @property
    def lists(self) -> list[PageQueue]:
        """The anon generation lists, by ``seq % MAX_NR_GENS``."""
        return self.types[ANON].lists

    @property
    def nr_pages(self) -> NDArray[np.int64]:
        """Anon folios per generation, by ``seq % MAX_NR_GENS``."""
        return self.types[ANON].nr_pages

    @property
    def refaulted(self) -> list[int]:
        """Anon refaults per tier for the current ``min_seq``."""
        return self.types[ANON].refaulted

    def _by_type(self, pfns: Pfns) -> list[tuple[int, Any]]:
        """(type, selector into ``pfns``) for each type present among the folios."""
        if not self.file:
            return [(ANON, slice(None))]
        file = (self.fl[pfns] & FL_FILE) != 0
        out: list[tuple[int, Any]] = []
        if not file.all():
            out.append((ANON, ~file))
        if file.any():
            out.append((FILE, file))
        return out

    def _evictable_types(self, swappiness: int) -> range:
        """``for_each_evictable_type``: file only at swappiness 0, else anon and file (anon
        only without a page cache)."""
        if not self.file:
            return range(ANON, FILE)
        return range(ANON if swappiness else FILE, FILE + 1)

    def _evictable_min_seq(self, swappiness: int) -> int:
        """``evictable_min_seq``: the lowest ``min_seq`` of the evictable types."""
        return min(self.types[t].min_seq for t in self._evictable_types(swappiness))

    def _evictable_size(self, swappiness: int) -> int:
        """Folios of the evictable types (``should_run_aging``, ``lruvec_is_sizable``)."""
        return sum(int(self.types[t].nr_pages.sum()) for t in self._evictable_types(swappiness))

    # -- flags and placement -----------------------------------------------------------------
    @staticmethod
    def _refs(fl: NDArray[np.uint8]) -> NDArray[np.int64]:
        """``folio_lru_refs``: accesses counted through fds, 0 unless PG_referenced."""
        refs = ((fl & LRU_REFS_MASK) >> LRU_REFS_PGOFF).astype(np.int64) + 1
        return np.where((fl & PG_REFERENCED) != 0, refs, 0)

    @classmethod
    def _tier(cls, fl: NDArray[np.uint8]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """``lru_tier_from_refs`` per folio, and whether refs + workingset are maxed."""
        refs = cls._refs(fl)
        ws = (fl & PG_WORKINGSET) != 0
        return np.where(ws, MAX_NR_TIERS - 1, _OB2[refs]), refs + ws == _MAXED

    def _folio_seq(self, fl: NDArray[np.uint8]) -> NDArray[np.int64]:
        """``lru_gen_folio_seq`` (not reclaiming): anon folios as not in the swap cache;
        page-cache folios (never PG_reclaim here: reclaim does not put them back) as the
        oldest generations allow, one younger with PG_workingset."""
        active = (fl & PG_ACTIVE) != 0
        if self.cfg.promotion == "one_step":  # 6.13: PG_active -> max_seq
            seq = np.where(active, self.max_seq, self.max_seq - 1)
        else:
            ws = ((fl & PG_WORKINGSET) != 0).astype(np.int64)
            g = np.where(active, MIN_NR_GENS - ws, MIN_NR_GENS)
            seq = np.maximum(self.max_seq - g + 1, self.min_seq)
        if not self.file:
            return seq
        file = (fl & FL_FILE) != 0
        if file.any():
            seq[file] = self._file_seq(fl[file])
        return seq

    def _file_seq(self, fl: NDArray[np.uint8]) -> NDArray[np.int64]:
        """``lru_gen_folio_seq`` for page-cache folios: PG_active ones as anon; the others
        ``MAX_NR_GENS - workingset`` back from ``max_seq`` (6.13: ``min_seq[file] + 1`` while
        the window allows), never older than ``min_seq[file]``."""
        active = (fl & PG_ACTIVE) != 0
        min_seq = self.types[FILE].min_seq
        if self.cfg.promotion == "one_step":
            young = min_seq + 1 if min_seq + MIN_NR_GENS < self.max_seq else min_seq
            return np.where(active, self.max_seq, young)
        ws = ((fl & PG_WORKINGSET) != 0).astype(np.int64)
        g = np.where(active, MIN_NR_GENS - ws, MAX_NR_GENS - ws)
        return np.maximum(self.max_seq - g + 1, min_seq)

    def _add(self, pfns: Pfns, seqs: NDArray[np.int64]) -> None:
        """``lru_gen_add_folio`` for each folio into generation ``seqs[i]`` of its type (at
        the head)."""
        if len(pfns) == 0:
            return
        self._store_seq(pfns, seqs)
        self.fl[pfns] = (self.fl[pfns] & ~_U8(PG_ACTIVE | FL_BATCH)) | _U8(FL_LRU)
        for type_, sel in self._by_type(pfns):
            s = seqs[sel]
            self.types[type_].nr_pages += np.bincount(s % MAX_NR_GENS, minlength=MAX_NR_GENS)
            self._move(pfns[sel], s, type_=type_)

    def _move(
        self, pfns: Pfns, seqs: NDArray[np.int64], tail: bool = False, type_: int = ANON
    ) -> None:
        """Put taken-off folios of one type on the lists of the generations ``seqs`` (head or
        tail), in order; their generation numbers and the page counts are already up to
        date."""
        if len(pfns) == 0:
            return
        lists = self.types[type_].lists
        gens = seqs % MAX_NR_GENS
        first = int(gens[0])
        groups = [(first, pfns)] if (gens == first).all() else None
        if groups is None:
            groups = [(g, pfns[gens == g]) for g in np.unique(gens).tolist()]
        for gen, sel in groups:
            if tail:
                lists[gen].add_tail(sel)
            else:
                lists[gen].add_head(sel)

    def _set_seq(self, pfns: Pfns, new: NDArray[np.int64] | int, type_: int = ANON) -> None:
        """Change listed folios' generations (all of type ``type_``), keeping the page
        counts."""
        nr_pages = self.types[type_].nr_pages
        old = self._seq_of(pfns) % MAX_NR_GENS
        nr_pages -= np.bincount(old, minlength=MAX_NR_GENS)
        self._store_seq(pfns, new)
        nr_pages += np.bincount(self._seq_of(pfns) % MAX_NR_GENS, minlength=MAX_NR_GENS)

    def _lru_add_drain(self) -> None:
        """Move the lru_add batch onto the generation lists."""
        if not self._batch:
            return
        pfns = np.array(self._batch, dtype=np.int64)
        self._batch = []
        if fast.enabled("mglru_compiled"):
            self._add_compiled(pfns, putback=False)
            return
        self._add(pfns, self._folio_seq(self.fl[pfns]))

    def _add_compiled(self, pfns: Pfns, *, putback: bool) -> None:
        """``_lru_add_drain`` or ``_putback`` of ``pfns`` as one compiled pass."""
        file = self.types[FILE if self.file else ANON]
        sizes = np.zeros(self._sentinels.shape, dtype=np.int64)
        _add_kernel(
            self.links.nxt,
            self.links.prev,
            self._sentinels,
            self._gen,
            self.fl,
            self.types[ANON].nr_pages,
            file.nr_pages,
            pfns,
            self.max_seq,
            self.min_seq,
            file.min_seq,
            self.cfg.promotion == "one_step",
            self.file,
            putback,
            sizes,
        )
        fast.took("mglru_compiled")
        self._sized(sizes)

    def _first_sighting(self, fl: NDArray[np.uint8]) -> NDArray[np.bool_]:
        """Young folios that only get PG_referenced this time (none under one_step)."""
        if self.cfg.promotion == "one_step":
            return np.zeros(len(fl), dtype=np.bool_)
        return (fl & (PG_REFERENCED | PG_WORKINGSET)) == 0

    def _folio_update_gen(self, pfns: Pfns) -> None:
        """``folio_update_gen`` on young folios: the first sighting only sets PG_referenced;
        later ones move the folio to ``max_seq`` with PG_workingset (lazily)."""
        if len(pfns) == 0:
            return
        if fast.enabled("mglru_compiled"):
            _update_gen_kernel(
                self._gen,
                self._decoder(),
                self.fl,
                self.types[ANON].nr_pages,
                pfns,
                self.max_seq,
                int(self._promoted),
                self.cfg.promotion == "one_step",
            )
            fast.took("mglru_compiled")
            return
        fl = self.fl[pfns]
        first = self._first_sighting(fl)
        self.fl[pfns[first]] = (fl[first] & ~_U8(LRU_REFS_MASK)) | _U8(PG_REFERENCED)
        hot = pfns[~first]
        if len(hot):
            self._set_seq(hot, self.max_seq)
            self.fl[hot] = (fl[~first] & ~_U8(LRU_REFS_FLAGS)) | self._promoted

    # -- PID controller ----------------------------------------------------------------------
    def _read_ctrl_pos(self, tier: int, gain: int, type_: int = ANON) -> _CtrlPos:
        """``read_ctrl_pos``: one tier of a type, or all of them for ``tier ==
        MAX_NR_TIERS``."""
        g = self.types[type_]
        tiers = range(MAX_NR_TIERS) if tier == MAX_NR_TIERS else (tier,)
        refaulted = sum(g.avg_refaulted[t] + g.refaulted[t] for t in tiers)
        total = sum(g.avg_total[t] + g.protected[t] + g.evicted[t] for t in tiers)
        return _CtrlPos(refaulted, total, gain)

    def _reset_ctrl_pos(self, type_: int = ANON) -> None:
        """``reset_ctrl_pos(carryover)`` when a type's min_seq advances: fold its counts into
        halving averages."""
        g = self.types[type_]
        for t in range(MAX_NR_TIERS):
            g.avg_refaulted[t] = (g.avg_refaulted[t] + g.refaulted[t]) // 2
            g.avg_total[t] = (g.avg_total[t] + g.protected[t] + g.evicted[t]) // 2
        g.refaulted = [0] * MAX_NR_TIERS
        g.evicted = [0] * MAX_NR_TIERS
        g.protected = [0] * MAX_NR_TIERS

    @staticmethod
    def _count(counts: list[int], tiers: NDArray[np.int64]) -> int:
        """Add one per folio to ``counts[tier]``; returns how many."""
        for t, n in enumerate(np.bincount(tiers, minlength=MAX_NR_TIERS).tolist()):
            counts[t] += n
        return len(tiers)

    def get_tier_idx(self, type_: int = ANON) -> int:
        """``get_tier_idx``: a type's tiers above the result are protected (gains 2:3 for
        margin)."""
        sp = self._read_ctrl_pos(0, 2, type_)
        tier = 1
        while tier < MAX_NR_TIERS:
            if not _positive_ctrl_err(sp, self._read_ctrl_pos(tier, 3, type_)):
                break
            tier += 1
        return tier - 1

    def get_type_to_scan(self, swappiness: int) -> int:
        """``get_type_to_scan``: file at swappiness 0 or 1, anon at 200; otherwise the
        refault rates of all tiers of anon (gain ``swappiness``) against file (gain
        ``MAX_SWAPPINESS - swappiness``): file unless it has refaulted more than that weighting
        allows (without a page cache file has no folios and no refaults)."""
        if swappiness <= 1:
            return FILE
        if swappiness >= MAX_SWAPPINESS:
            return ANON
        sp = self._read_ctrl_pos(MAX_NR_TIERS, swappiness)
        if self.file:
            pv = self._read_ctrl_pos(MAX_NR_TIERS, MAX_SWAPPINESS - swappiness, FILE)
        else:
            pv = _CtrlPos(0, 0, MAX_SWAPPINESS - swappiness)
        return FILE if _positive_ctrl_err(sp, pv) else ANON

    # -- aging -------------------------------------------------------------------------------
    def _inc_min_seq(self, type_: int, swappiness: int) -> None:
        """``inc_min_seq``: push a type's oldest generation into the next one
        (``folio_inc_gen``: refs cleared; counted as protected). Anon at swappiness 0 is not
        evictable and skips that: its oldest folios stay on their list, which the new
        ``max_seq`` takes over (the kernel's cold/hot inversion: they become the youngest);
        folios promoted lazily onto that list go to their own generations' lists."""
        g = self.types[type_]
        lst = g.lists[g.min_seq % MAX_NR_GENS]
        pfns = lst.isolate_tail(self.nr_frames)
        if len(pfns) and type_ == ANON and not swappiness:
            old = self._seq_of(pfns) == g.min_seq
            self._store_seq(pfns[old], self.max_seq + 1)  # same list index: the counts hold
            lst.add_tail(pfns[old])
            self._move(pfns[~old], self._seq_of(pfns[~old]), tail=True)
        elif len(pfns):
            fl = self.fl[pfns]
            tier, maxed = self._tier(fl)
            self.vmstat["mglru_protected"] += self._count(g.protected, tier[~maxed])
            old = self._seq_of(pfns) == g.min_seq
            self._set_seq(pfns[old], g.min_seq + 1, type_)  # folio_inc_gen
            self.fl[pfns[old]] = fl[old] & ~_U8(LRU_REFS_FLAGS)
            self._move(pfns, self._seq_of(pfns), tail=True, type_=type_)
        self._reset_ctrl_pos(type_)
        g.min_seq += 1

    def _inc_max_seq(self, seq: int, reclaim: Reclaimer, swappiness: int) -> bool:
        """``inc_max_seq``: open a new youngest generation (first making room in each type
        that has four)."""
        if seq != self.max_seq:
            return False
        for type_, g in enumerate(self.types):
            if self.max_seq - g.min_seq + 1 == MAX_NR_GENS:
                self._inc_min_seq(type_, swappiness)
        self.timestamps[(self.max_seq + 1) % MAX_NR_GENS] = reclaim.now()
        self.max_seq += 1
        self._decoder()
        self.vmstat["mglru_aging"] += 1
        return True

    def _walk_ptes(self, ptes: Pfns, pfns: Pfns, sc: ScanControl, reclaim: Reclaimer) -> None:
        """``walk_pte_range`` over one batch of present ptes mapping ``pfns`` (each pte's own
        young bit: a KSM folio mapped by several ptes is met, and updated, once per young
        pte)."""
        lru = (self.fl[pfns] & FL_LRU) != 0  # get_pfn_folio: folios on the LRU only
        on, ptes = pfns[lru], ptes[lru]
        if len(on) == 0:
            return
        if self.cfg.notifier_walk:  # mm_has_notifiers: every present pte, notifier included
            young = reclaim.clear_young_ptes(ptes, on, sc)
            self.vmstat["mglru_walk_ptes"] += len(on)
        else:  # pre-6.12: young host ptes only, no notifier
            young = reclaim.ptep_test_and_clear_young(on, sc)
            self.vmstat["mglru_walk_ptes"] += int(young.sum())
        hot = on[young]
        self.vmstat["mglru_walk_young"] += len(hot)
        self._update_gen_each(hot)

    def _update_gen_each(self, pfns: Pfns) -> None:
        """``folio_update_gen`` once per young pte in order: a folio met twice (a KSM folio
        mapped by two young ptes) gets its second sighting after its first."""
        while len(pfns):
            _, first = np.unique(pfns, return_index=True)
            if len(first) == len(pfns):
                self._folio_update_gen(pfns)
                return
            first.sort()
            self._folio_update_gen(pfns[first])
            rest = np.ones(len(pfns), dtype=np.bool_)
            rest[first] = False
            pfns = pfns[rest]

    def _try_to_inc_max_seq(
        self, seq: int, sc: ScanControl, reclaim: Reclaimer, swappiness: int
    ) -> Generator[None, None, bool]:
        """``try_to_inc_max_seq``: walk every mm, then ``inc_max_seq``; True if this caller
        finished the walk and advanced max_seq. At swappiness 0 ``should_skip_vma`` skips
        anonymous VMAs, which is all guest RAM: the walk finds nothing to age."""
        if seq <= self._mm_seq:
            return False
        walk = self._walk
        if walk is None or walk.seq != seq:
            ptes = reclaim.walk_mm() if swappiness else np.zeros(0, dtype=np.int64)
            walk = self._walk = _Walk(seq, ptes, reclaim.pte_pfns(ptes) if len(ptes) else ptes)
        while True:
            if self.max_seq != seq or self._mm_seq >= seq:
                return False  # another reclaimer finished this walk
            if walk.pos >= len(walk.pfns):
                break
            chunk = slice(walk.pos, walk.pos + WALK_BATCH)
            walk.pos += WALK_BATCH
            self._walk_ptes(walk.ptes[chunk], walk.pfns[chunk], sc, reclaim)
            yield
        self._mm_seq = seq
        self._walk = None
        return self._inc_max_seq(seq, reclaim, swappiness)

    # -- eviction ----------------------------------------------------------------------------
    def _try_to_inc_min_seq(self, swappiness: int) -> bool:
        """``try_to_inc_min_seq``: skip each evictable type's empty oldest generations (at
        least two remain); with both types evictable, neither may pass ``max_seq -
        MIN_NR_GENS`` while the other is behind it."""
        types = self._evictable_types(swappiness)
        min_seq = [g.min_seq for g in self.types]
        for t in types:
            lists = self.types[t].lists
            while (
                min_seq[t] + MIN_NR_GENS <= self.max_seq
                and lists[min_seq[t] % MAX_NR_GENS].is_empty()
            ):
                min_seq[t] += 1
        if min_seq == [g.min_seq for g in self.types]:
            return False
        if len(types) == 2:  # see the comment on lru_gen_folio
            seq = self.max_seq - MIN_NR_GENS
            if min_seq[ANON] > seq and min_seq[FILE] < seq:
                min_seq[ANON] = seq
            elif min_seq[FILE] > seq and min_seq[ANON] < seq:
                min_seq[FILE] = seq
        success = False
        for t in types:
            if min_seq[t] <= self.types[t].min_seq:
                continue
            self._reset_ctrl_pos(t)
            self.types[t].min_seq = min_seq[t]
            success = True
        return success

    def _scan_folios(
        self,
        nr_to_scan: int,
        sc: ScanControl,
        reclaim: Reclaimer,
        tier_idx: int,
        type_: int = ANON,
    ) -> tuple[int, Pfns]:
        """``scan_folios`` + ``sort_folio`` + ``isolate_folio`` on a type's oldest generation.
        ``sort_folio`` keeps back, one generation up with PG_reclaim, folios under write-back
        and dirty page-cache folios: reclaim leaves dirty file data to the flusher.

        As the kernel's loop: every folio met, sorted or isolated, uses one of the
        ``min(nr_to_scan, MAX_LRU_BATCH)`` budget; the scan stops when that is spent, the list
        is empty, or ``_isolation_batch`` folios (MIN_LRU_BATCH) are isolated. Returns the
        folios met (0 if none was isolated and budget remained: nothing eligible, so
        ``isolate_folios`` tries the other type) and the isolated ones."""
        none = np.zeros(0, dtype=np.int64)
        g = self.types[type_]
        if self.max_seq - g.min_seq + 1 <= MIN_NR_GENS:
            return 0, none
        host = _host_flags(reclaim)
        if host is not None:
            return self._scan_compiled(nr_to_scan, sc, host, tier_idx, type_)
        min_seq = g.min_seq
        lst = g.lists[min_seq % MAX_NR_GENS]
        remaining = min(nr_to_scan, MAX_LRU_BATCH)
        cap = _isolation_batch(sc)
        scanned = sorted_ = 0
        isolated: list[Pfns] = []
        n_iso = 0
        while remaining and n_iso < cap and not lst.is_empty():
            # a chunk of the tail; what is not reached is put back at the tail
            chunk = lst.isolate_tail(min(remaining, MIN_LRU_BATCH, max(8, 2 * (cap - n_iso))))
            seq, fl = self._seq_of(chunk), self.fl[chunk]
            promoted = seq != min_seq
            tier, maxed = self._tier(fl)
            protect = ~promoted & ((tier > tier_idx) | maxed)
            rest = ~promoted & ~protect
            writeback = np.zeros(len(chunk), dtype=np.bool_)
            dirty = np.zeros(len(chunk), dtype=np.bool_)
            if rest.any():
                writeback[rest] = reclaim.folio_test_writeback(chunk[rest])
                if type_ == FILE:  # type == LRU_GEN_FILE && dirty: waiting for the flusher
                    dirty[rest] = reclaim.folio_test_dirty(chunk[rest])
            queued = writeback.copy()
            writeback |= dirty
            take = rest & ~writeback
            cum = np.cumsum(take)
            cut = len(chunk)
            if len(cum) and cum[-1] >= cap - n_iso:  # stop right after the last one taken
                cut = int(np.searchsorted(cum, cap - n_iso)) + 1
                lst.add_tail(chunk[cut:])
                chunk, seq, fl, tier, maxed = (a[:cut] for a in (chunk, seq, fl, tier, maxed))
                promoted, protect, writeback, take, dirty, queued = (
                    a[:cut] for a in (promoted, protect, writeback, take, dirty, queued)
                )
            if type_ == FILE and dirty.any():  # sort_folio: nr.file_taken, nr.unqueued_dirty
                sc.nr_file_taken += int(np.count_nonzero(dirty))
                sc.nr_unqueued_dirty += int(np.count_nonzero(dirty & ~queued))
            scanned += cut
            remaining -= cut
            # promoted: to the head of its generation's list
            if promoted.any():
                self._move(chunk[promoted], seq[promoted], type_=type_)
            # protected (tier) and waiting for writeback: folio_inc_gen into min_seq + 1 (the
            # latter with PG_reclaim: folio_inc_gen(reclaiming))
            inc = protect | writeback
            if writeback.any():
                reclaim.folio_set_reclaim(chunk[writeback])
            if inc.any():
                counted = tier[protect & ~maxed]
                self.vmstat["mglru_protected"] += self._count(g.protected, counted)
                up = chunk[inc]
                self.fl[up] = fl[inc] & ~_U8(LRU_REFS_FLAGS)
                self._set_seq(up, min_seq + 1, type_)
                self._move(up, self._seq_of(up), type_=type_)
            sorted_ += int(promoted.sum() + inc.sum())
            # isolate_folio: off the LRU; refs are kept only with PG_referenced
            iso = chunk[take]
            if len(iso):
                ifl = fl[take]
                ifl = np.where((ifl & PG_REFERENCED) != 0, ifl, ifl & ~_U8(LRU_REFS_MASK))
                self.fl[iso] = ifl & ~_U8(FL_LRU)
                g.nr_pages[min_seq % MAX_NR_GENS] -= len(iso)
                self._gen[iso] = _OFF_LRU
                isolated.append(iso)
                n_iso += len(iso)
        sc.isolated(n_iso, file=type_ == FILE)  # pgscan: folios isolated (PGSCAN_ANON + type)
        sc.refilled(sorted_)  # pgrefill: folios sorted into other generations
        if type_ == FILE:
            sc.nr_file_taken += n_iso
        out = np.concatenate(isolated) if isolated else none
        return (scanned if n_iso or not remaining else 0), out

    def _sized(self, sizes: NDArray[np.int64], first_type: int = ANON) -> None:
        """Add a compiled pass's list size changes (``sizes[type - first_type, gen]``) to the
        lists' ``PageQueue._size``, which the numpy path's list calls keep (MGLRU's lists are
        unsized: nothing reads it)."""
        for t, row in enumerate(sizes.tolist()):
            lists = self.types[first_type + t].lists
            for gen, n in enumerate(row):
                if n:
                    lists[gen]._size += n

    def _scan_compiled(
        self,
        nr_to_scan: int,
        sc: ScanControl,
        host: tuple[NDArray[np.uint8], NDArray[np.int32]],
        tier_idx: int,
        type_: int,
    ) -> tuple[int, Pfns]:
        """``_scan_folios`` as one compiled pass (``_scan_kernel``), its counters here."""
        g = self.types[type_]
        cap = _isolation_batch(sc)
        iso = np.empty(cap, dtype=np.int64)
        protected = np.zeros(MAX_NR_TIERS, dtype=np.int64)
        sizes = np.zeros(MAX_NR_GENS, dtype=np.int64)
        n_iso, scanned, remaining, sorted_, nprot, dirty, unqueued, any_inc = _scan_kernel(
            self.links.nxt,
            self.links.prev,
            self._sentinels[type_],
            self._gen,
            self._decoder(),
            self.fl,
            host[0],
            host[1],
            g.nr_pages,
            protected,
            g.min_seq,
            tier_idx,
            type_ == FILE,
            min(nr_to_scan, MAX_LRU_BATCH),
            cap,
            iso,
            sizes,
        )
        fast.took("mglru_compiled")
        self._sized(sizes[None, :], type_)
        if any_inc:
            for t, n in enumerate(protected.tolist()):
                g.protected[t] += n
            self.vmstat["mglru_protected"] += nprot
        if dirty:
            sc.nr_file_taken += dirty
            sc.nr_unqueued_dirty += unqueued
        sc.isolated(n_iso, file=type_ == FILE)
        sc.refilled(sorted_)
        if type_ == FILE:
            sc.nr_file_taken += n_iso
        return (scanned if n_iso or not remaining else 0), iso[:n_iso]

    def _isolate_folios(
        self, nr_to_scan: int, sc: ScanControl, reclaim: Reclaimer, swappiness: int
    ) -> tuple[int, Pfns, int]:
        """``isolate_folios``: the type ``get_type_to_scan`` picks first, then the other if
        it is evictable; returns what was scanned, the isolated folios and their type."""
        type_ = self.get_type_to_scan(swappiness)
        for _ in range(len(self._evictable_types(swappiness)) if self.file else 2):
            if type_ < len(self.types):  # without a page cache the file type has no folios
                tier = self.get_tier_idx(type_)
                scanned, iso = self._scan_folios(nr_to_scan, sc, reclaim, tier, type_)
                if scanned:
                    return scanned, iso, type_
            type_ = 1 - type_
        return 0, np.zeros(0, dtype=np.int64), type_

    def _look_around(self, pfns: Pfns, sc: ScanControl, reclaim: Reclaimer) -> Any:
        """``folio_referenced`` under MGLRU: ``lru_gen_look_around`` on each isolated folio's
        pte; young neighbours on the LRU are promoted. Returns which folios were young."""
        if self.cfg.notifier_walk:  # 6.12+: ptep_clear_young_notify everywhere
            reclaim.folio_scanned(pfns)  # still folio_referenced's walk, for the log
            young = reclaim.clear_young(pfns, sc)
            centres = pfns[young]
        else:  # before 6.12: look around young host ptes, then ask KVM via folio_referenced
            host = reclaim.ptep_test_and_clear_young(pfns, sc)
            young = reclaim.folio_referenced(pfns, sc) | host
            centres = pfns[host]
        if len(centres):
            ptes = np.unique(
                np.concatenate([reclaim.lookaround(int(p), MIN_LRU_BATCH) for p in centres])
            )
            if len(ptes):
                near = reclaim.pte_pfns(ptes)
                order = np.lexsort((ptes, near))  # by frame, as the windows' folios
                near, ptes = near[order], ptes[order]
                lru = (self.fl[near] & FL_LRU) != 0
                near, ptes = near[lru], ptes[lru]
            if len(ptes):
                if self.cfg.notifier_walk:
                    ny = reclaim.clear_young_ptes(ptes, near, sc)
                else:
                    ny = reclaim.ptep_test_and_clear_young(near, sc)
                self.vmstat["mglru_lookaround_ptes"] += len(near)
                self.vmstat["mglru_lookaround_young"] += int(ny.sum())
                self._update_gen_each(near[ny])
        return young

    def _putback(self, pfns: Pfns) -> None:
        """``move_folios_to_lru`` for rejected folios, never into the oldest generation."""
        if len(pfns) == 0:
            return
        if fast.enabled("mglru_compiled"):
            self._add_compiled(pfns, putback=True)
            return
        fl = self.fl[pfns]
        seqs = self._folio_seq(fl)
        oldest = seqs == self.min_seq
        if oldest.any():  # set PG_active, clear LRU_REFS_FLAGS
            fl[oldest] = (fl[oldest] & ~_U8(LRU_REFS_FLAGS)) | _U8(PG_ACTIVE)
            self.fl[pfns] = fl
            seqs = self._folio_seq(fl)
        self._add(pfns, seqs)

    def _evict_folios(
        self, nr_to_scan: int, sc: ScanControl, reclaim: Reclaimer, swappiness: int
    ) -> int:
        """``evict_folios``: isolate from the oldest generation, check references, reclaim.
        Page-cache folios are unmapped, so ``folio_referenced`` finds no young pte and every
        isolated one is reclaimed; ``sort_folio`` kept the dirty ones back, so each leaves
        clean through ``__remove_mapping``, without I/O."""
        scanned, iso, type_ = self._isolate_folios(nr_to_scan, sc, reclaim, swappiness)
        scanned += self._try_to_inc_min_seq(swappiness)
        if self._evictable_min_seq(swappiness) + MIN_NR_GENS > self.max_seq:
            scanned = 0
        if len(iso) == 0:
            return scanned
        if type_ == FILE:
            reclaim.remove_file_folios(iso, sc)  # pgsteal_file (PGSTEAL_ANON + type)
            return scanned
        young = self._look_around(iso, sc, reclaim)
        # lru_gen_folio_check_references / lru_gen_set_refs
        if fast.enabled("mglru_compiled"):
            one_step = self.cfg.promotion == "one_step"
            keep, act, victims = _check_refs_kernel(
                self.fl, iso, young, int(self._promoted), one_step
            )
            fast.took("mglru_compiled")
        else:
            hot = iso[young]
            fl = self.fl[hot]
            first = self._first_sighting(fl)
            keep, act = hot[first], hot[~first]
            self.fl[keep] = (fl[first] & ~_U8(LRU_REFS_MASK)) | _U8(PG_REFERENCED)
            self.fl[act] = (fl[~first] & ~_U8(LRU_REFS_FLAGS)) | self._promoted | _U8(PG_ACTIVE)
            victims = iso[~young]
        failed = written = victims[:0]
        if len(victims):
            out = reclaim.shrink_folio_list(victims, sc)
            written = victims[out == Outcome.KEEP]
            failed = victims[out == Outcome.ACTIVATE]
        if len(failed):  # activate_locked
            reclaim.activate_locked(failed)
            self.fl[failed] |= _U8(PG_ACTIVE)
        sc.activated(len(act) + len(failed))
        self._putback(np.concatenate((keep, act, written, failed)))
        return scanned

    def _should_run_aging(self, swappiness: int) -> tuple[bool, int]:
        """``should_run_aging`` over the evictable types: (aging needed or better, folios to
        scan)."""
        min_seq = self._evictable_min_seq(swappiness)
        if min_seq + MIN_NR_GENS > self.max_seq:
            return True, 0
        return min_seq + MIN_NR_GENS == self.max_seq, self._evictable_size(swappiness)

    def _get_nr_to_scan(
        self, sc: ScanControl, reclaim: Reclaimer, swappiness: int
    ) -> Generator[None, None, int]:
        """``get_nr_to_scan`` (6.16+): -1 for a memcg below its memory.min
        (``mem_cgroup_below_min``, rechecked at every call: a memcg reclaimed down to its min
        mid-loop stops and is rotated); otherwise the evictable size, scaled by the memcg's
        protection (``apply_proportional_protection``, which sets ``sc.memcg_low_skipped``
        when it scales by memory.low), as the budget, or age first (-1 after a successful
        aging). Without memcgs (``protection`` None) nothing is scaled."""
        prot = self.protection(sc) if self.protection is not None else None
        if prot is not None and prot.below_min:
            return -1
        success, nr_to_scan = self._should_run_aging(swappiness)
        if prot is not None:
            nr_to_scan, low = apply_proportional_protection(
                nr_to_scan, prot.emin, prot.elow, prot.usage, sc.memcg_low_reclaim
            )
            sc.memcg_low_skipped |= low
        if not success or sc.priority == DEF_PRIORITY:
            return nr_to_scan >> sc.priority
        aged = yield from self._try_to_inc_max_seq(self.max_seq, sc, reclaim, swappiness)
        return -1 if aged else 0

    def _should_abort_scan(self, sc: ScanControl, reclaim: Reclaimer) -> bool:
        """``should_abort_scan``: never for limit reclaim (the kernel does not abort memcg
        reclaim, for fairness: ``try_to_shrink_lruvec`` spends its whole budget); for root
        reclaim, enough reclaimed, or (kswapd) the zone is comfortably above its high
        watermark."""
        if sc.target_memcg >= 0:  # !root_reclaim(sc)
            return False
        if sc.nr_reclaimed >= sc.nr_to_reclaim:
            return True
        if sc.direct:
            return False
        free, high = reclaim.free_and_high()
        return free >= high + MIN_LRU_BATCH

    def _try_to_shrink_lruvec(
        self, sc: ScanControl, reclaim: Reclaimer, swappiness: int
    ) -> Generator[None, None, bool]:
        """``try_to_shrink_lruvec``: evict (or age) until the budget is spent or enough is
        reclaimed, yielding after each batch; then wake the flushers if every file folio it
        met was dirty and unqueued. Returns whether it aged or scanned anything."""
        scanned = 0
        progress = False
        dirty0, taken0 = sc.nr_unqueued_dirty, sc.nr_file_taken  # sc->nr is per shrink_node
        while True:
            nr_to_scan = yield from self._get_nr_to_scan(sc, reclaim, swappiness)
            if nr_to_scan < 0:
                progress = True
            if nr_to_scan <= 0:
                break
            delta = self._evict_folios(nr_to_scan, sc, reclaim, swappiness)
            yield
            if not delta:
                break
            progress = True
            scanned += delta
            if scanned >= nr_to_scan or self._should_abort_scan(sc, reclaim):
                break
        # "If too many file cache in the coldest generation can't be evicted due to being
        # dirty, wake up the flusher": every file folio sorted or taken was unqueued dirty
        unqueued = sc.nr_unqueued_dirty - dirty0
        if unqueued and unqueued == sc.nr_file_taken - taken0:
            reclaim.wakeup_flusher_threads()
        self.should_rotate = nr_to_scan < 0  # "whether this lruvec should be rotated"
        return progress

    def _get_swappiness(self, reclaim: Reclaimer) -> int:
        """``get_swappiness``: 0 (anon not evictable) once fewer than MIN_LRU_BATCH swap slots
        are free to this lruvec (``mem_cgroup_get_nr_swap_pages``: the device's free slots,
        bounded by the memcg's memory.swap.max): a batch of anon could not be swapped out."""
        return self.cfg.swappiness if reclaim.nr_swap_pages() >= MIN_LRU_BATCH else 0

    # -- EvictionPolicy ----------------------------------------------------------------------
    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """A folio faulted in (maybe a refault): PG_active, into the lru_add batch."""
        fl = FL_BATCH | PG_ACTIVE  # lru_gen_in_fault(): every add here is inside a fault
        if shadow is not None:
            fl |= self._lru_gen_refault(shadow)
        self.fl[pfn] = fl
        self._batch.append(pfn)
        if len(self._batch) >= FOLIO_BATCH_SIZE:
            self._lru_add_drain()

    def file_add_lru(self, pfn: int, shadow: int | None, swap_ok: bool) -> None:
        """``filemap_add_folio`` -> ``folio_add_lru`` of a page-cache folio just read, through
        the lru_add batch. A read is not a fault, so the folio is not PG_active and joins the
        oldest generation its type allows (one younger if ``lru_gen_refault`` restored
        PG_workingset). ``swap_ok`` is unused: ``lru_gen_test_recent`` does not weigh swap."""
        fl = FL_BATCH | FL_FILE
        if shadow is not None:
            fl |= self._lru_gen_refault(shadow, FILE)
        self.fl[pfn] = fl
        self._batch.append(pfn)
        if len(self._batch) >= FOLIO_BATCH_SIZE:
            self._lru_add_drain()

    def _lru_gen_refault(self, shadow: int, type_: int = ANON) -> int:
        """``lru_gen_refault``: every refault with a shadow is counted (``workingset_refault``,
        since 6.5 also the old ones); only a recent one feeds the type's controller
        (``refaulted``) and restores PG_workingset (or the refs) from the shadow; an anon
        refault is in a fault, which counts ``workingset_activate`` (a page-cache read is not).
        Returns the flags to set."""
        count = self._count_event
        file = type_ == FILE
        count(WORKINGSET_REFAULT_FILE if file else VmStat.WORKINGSET_REFAULT)
        token_seq = (shadow >> LRU_REFS_WIDTH) & _SEQ_MASK
        if abs((self.max_seq & _SEQ_MASK) - token_seq) >= MAX_NR_GENS:
            return 0  # lru_gen_test_recent: too old
        workingset = bool(shadow >> 31)
        refs = (shadow & ((1 << LRU_REFS_WIDTH) - 1)) + 1
        tier = MAX_NR_TIERS - 1 if workingset else int(_OB2[refs])
        self.types[type_].refaulted[tier] += 1
        if not file:
            count(VmStat.WORKINGSET_ACTIVATE)  # in a fault: folio_add_lru sets PG_active
        if workingset:
            count(WORKINGSET_RESTORE_FILE if file else VmStat.WORKINGSET_RESTORE)
            return PG_WORKINGSET
        return (refs - 1) << LRU_REFS_PGOFF

    def folio_mark_accessed(self, pfn: int) -> None:
        """``lru_gen_inc_refs``: PG_referenced the first time, then one more ref per call, then
        PG_workingset once the refs are maxed. No PG_lru check: a folio still in the lru_add
        batch (or isolated) counts too."""
        fl = self.fl.item(pfn)
        if not fl & PG_REFERENCED:
            self.fl[pfn] = (fl & ~LRU_REFS_MASK) | PG_REFERENCED
        elif fl & LRU_REFS_MASK == LRU_REFS_MASK:
            self.fl[pfn] = fl | PG_WORKINGSET
        else:
            self.fl[pfn] = fl + (1 << LRU_REFS_PGOFF)

    def folio_add_lru_touched(self, pfns: Pfns) -> None:
        """New anon folios, in order, as the first-touch path leaves each: ``folio_add_lru``
        in a fault (PG_active, the lru_add batch, drained every ``FOLIO_BATCH_SIZE``) then
        ``folio_mark_accessed`` twice (``lru_gen_inc_refs``: PG_referenced, then one ref).
        The generation depends on neither mark, so the batch drains in one go; what the
        per-folio path would leave in the batch stays there. Batched for the prefault fill;
        ``tests/test_prefault_batch.py`` holds it equal to the per-folio calls."""
        if len(pfns) == 0:
            return
        pfns = np.asarray(pfns, dtype=np.int64)
        self.fl[pfns] = _U8(FL_BATCH | PG_ACTIVE | PG_REFERENCED | (1 << LRU_REFS_PGOFF))
        batch = np.concatenate([np.array(self._batch, dtype=np.int64), pfns])
        keep = len(batch) % FOLIO_BATCH_SIZE
        drained = batch[: len(batch) - keep]
        self._batch = batch[len(batch) - keep :].tolist()
        self._add(drained, self._folio_seq(self.fl[drained]))

    def folio_remove(self, pfns: Pfns) -> None:
        """Drop folios from whichever list (or the lru_add batch) holds them."""
        if len(pfns) == 0:
            return
        pfns = np.asarray(pfns, dtype=np.int64)
        if self._batch:
            gone = set(pfns.tolist())
            self._batch = [p for p in self._batch if p not in gone]
        on = pfns[(self.fl[pfns] & FL_LRU) != 0]
        if len(on):
            lru_del(self.links, on)
            for type_, sel in self._by_type(on):
                gens = self._seq_of(on[sel]) % MAX_NR_GENS
                self.types[type_].nr_pages -= np.bincount(gens, minlength=MAX_NR_GENS)
        self.fl[pfns] = 0
        self._gen[pfns] = _OFF_LRU

    def folio_rotate_reclaimable(self, pfn: int) -> None:
        """``lru_move_tail`` -> ``lru_gen_add_folio(reclaiming)``: to the tail of the oldest
        generation (``lru_gen_folio_seq`` with ``reclaiming``: MAX_NR_GENS back, at least
        min_seq), not active."""
        fl = self.fl.item(pfn)
        if not fl & FL_LRU:
            return
        type_ = FILE if fl & FL_FILE else ANON
        g = self.types[type_]
        seq = max(self.max_seq - MAX_NR_GENS + 1, g.min_seq)
        if fast.enabled("mglru_compiled"):
            nxt, prev, sentinels = self.links.nxt, self.links.prev, self._sentinels[type_]
            dec = self._decoder()
            _rotate_kernel(nxt, prev, sentinels, self._gen, dec, self.fl, g.nr_pages, pfn, seq)
            fast.took("mglru_compiled")
            g.lists[seq % MAX_NR_GENS]._size += 1  # as add_tail counts
            return
        lru_del(self.links, np.array([pfn], dtype=np.int64))
        g.nr_pages[int(self._seq_of(pfn)) % MAX_NR_GENS] -= 1
        g.nr_pages[seq % MAX_NR_GENS] += 1
        self._store_seq(pfn, seq)
        self.fl[pfn] = fl & ~PG_ACTIVE
        g.lists[seq % MAX_NR_GENS].add_tail(np.array([pfn], dtype=np.int64))

    def workingset_eviction(self, pfns: Pfns) -> NDArray[np.uint32]:
        """``lru_gen_eviction``: count the eviction per type and tier; token = (the type's
        min_seq, refs - 1, PG_workingset)."""
        if fast.enabled("mglru_compiled"):
            evicted = np.zeros((2, MAX_NR_TIERS), dtype=np.int64)
            file = self.types[FILE if self.file else ANON]
            pfns = np.asarray(pfns, dtype=np.int64)
            token = _eviction_kernel(self.fl, pfns, self.min_seq, file.min_seq, self.file, evicted)
            fast.took("mglru_compiled")
            for type_, counts in enumerate(evicted.tolist()[: len(self.types)]):
                for t, n in enumerate(counts):
                    self.types[type_].evicted[t] += n
            return token
        fl = self.fl[pfns]
        refs = self._refs(fl)
        tier, _ = self._tier(fl)
        min_seq: int | NDArray[np.int64] = self.min_seq
        for type_, sel in self._by_type(pfns):
            self._count(self.types[type_].evicted, tier[sel])
            if type_ == FILE:
                min_seq = np.where((fl & FL_FILE) != 0, self.types[FILE].min_seq, self.min_seq)
        ws = ((fl & PG_WORKINGSET) != 0).astype(np.int64)
        token = (ws << 31) | ((min_seq & _SEQ_MASK) << LRU_REFS_WIDTH) | np.maximum(refs - 1, 0)
        self.fl[pfns] = 0
        return token.astype(np.uint32)

    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``lru_gen_shrink_node`` -> ``try_to_shrink_lruvec`` at ``sc.priority``. With
        ``nr_to_reclaim == 1`` (demand mode) it goes on, lowering the priority and aging, until
        one folio is reclaimed or nothing is left to try."""
        self._lru_add_drain()
        swappiness = self._get_swappiness(reclaim)
        if not swappiness and not self.file:  # nothing evictable
            return
        if sc.nr_to_reclaim != 1:
            yield from self._try_to_shrink_lruvec(sc, reclaim, swappiness)
            return
        priority = sc.priority
        try:
            for _ in range(DEF_PRIORITY + 1 + 2 * MAX_NR_GENS):
                progress = yield from self._try_to_shrink_lruvec(sc, reclaim, swappiness)
                if sc.nr_reclaimed >= sc.nr_to_reclaim:
                    break
                if sc.priority > 0:
                    sc.priority -= 1
                elif not progress:
                    break
        finally:
            sc.priority = priority

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``lru_gen_age_node``: no aging here; the min_ttl thrashing check."""
        self._lru_add_drain()
        if self.cfg.min_ttl_ms and not self._lruvec_is_reclaimable(sc, reclaim):
            self.vmstat["mglru_min_ttl_oom"] += 1  # the kernel calls out_of_memory() here
        yield from ()

    def lruvec_is_sizable(self, sc: ScanControl, reclaim: Reclaimer) -> bool:
        """``lruvec_is_sizable``: the folios of the evictable types, shifted right by the
        priority, are not zero. Anon is not evictable at swappiness 0 (swap full, or the memcg
        at its swap.max), so without a page cache nothing is then. The kernel's test has no
        protection terms: ``shrink_one`` applies memory.min and memory.low before it and
        ``lruvec_is_reclaimable`` checks memory.min itself."""
        swappiness = self._get_swappiness(reclaim)
        if not swappiness and not self.file:
            return False
        return bool(self._evictable_size(swappiness) >> sc.priority)

    def _lruvec_is_reclaimable(self, sc: ScanControl, reclaim: Reclaimer) -> bool:
        """``lruvec_is_reclaimable``: big enough, and its oldest evictable generation older than
        min_ttl (memory.min is the caller's to check: memcg.py)."""
        if not self.lruvec_is_sizable(sc, reclaim):
            return False
        swappiness = self._get_swappiness(reclaim)
        birth = int(self.timestamps[self._evictable_min_seq(swappiness) % MAX_NR_GENS])
        return birth + self.cfg.min_ttl_ms * 1_000_000 < reclaim.now()

    def reclaim_cycle_end(self) -> None:
        """Nothing to snapshot (the controller updates as min_seq advances)."""

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:
        """Real policies see only accessed bits."""

    def set_future(self, next_use: NDArray[np.int64]) -> None:
        """Real policies do not know the future."""

    def nr_gens(self) -> int:
        """Generations in the window (2..4)."""
        return self.max_seq - self.min_seq + 1

    def lru_sizes(self) -> dict[str, int]:
        """Anon folios per generation by age (``gen0`` = max_seq, ``gen3`` = max_seq - 3), and
        the legacy split: active = the two youngest (plus the lru_add batch), inactive = older;
        with a page cache, the same split of the file type (``inactive_file``,
        ``active_file``)."""
        sizes = {}
        for k in range(MAX_NR_GENS):
            s = self.max_seq - k
            sizes[f"gen{k}"] = int(self.nr_pages[s % MAX_NR_GENS]) if s >= self.min_seq else 0
        nr_batch = len(self._batch)
        if self.file:
            fl = self.fl[np.array(self._batch, dtype=np.int64)]
            batch_file = int(np.count_nonzero(fl & FL_FILE))
            g = self.types[FILE]
            young = [self.max_seq - k for k in range(MIN_NR_GENS)]
            active = sum(int(g.nr_pages[s % MAX_NR_GENS]) for s in young if s >= g.min_seq)
            sizes["active_file"] = active + batch_file
            sizes["inactive_file"] = int(g.nr_pages.sum()) - active
            nr_batch -= batch_file
        sizes["active"] = sizes["gen0"] + sizes["gen1"] + nr_batch
        sizes["inactive"] = sizes["gen2"] + sizes["gen3"]
        return sizes

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Generation windows, list membership (each folio on its type's lists) and
        per-generation counts are consistent."""
        listed = []
        for type_, g in enumerate(self.types):
            nr_gens = self.max_seq - g.min_seq + 1
            assert MIN_NR_GENS <= nr_gens <= MAX_NR_GENS, "generation window out of range"
            typed = []
            for gen, lst in enumerate(g.lists):
                items = lst.snapshot()
                # the list of gen holds sequence s (s % 4 == gen) inside [min_seq, max_seq]
                s = g.min_seq + (gen - g.min_seq) % MAX_NR_GENS
                if s > self.max_seq:
                    assert len(items) == 0, "a list outside the generation window is not empty"
                    continue
                seq = self._seq_of(items)
                fl = self.fl[items]
                assert ((seq >= s) & (seq <= self.max_seq)).all(), "folio generation off its list"
                assert ((fl & (FL_LRU | FL_BATCH)) == FL_LRU).all(), "listed, not PG_lru"
                assert (((fl & FL_FILE) != 0) == (type_ == FILE)).all(), "folio of another type"
                typed.append(items)
            on = np.concatenate(typed) if typed else np.zeros(0, dtype=np.int64)
            counts = np.bincount(self._seq_of(on) % MAX_NR_GENS, minlength=MAX_NR_GENS)
            assert (counts == g.nr_pages).all(), "per-generation counts"
            listed.extend(typed)
        batch = np.array(self._batch, dtype=np.int64)
        assert ((self.fl[batch] & (FL_LRU | FL_BATCH)) == FL_BATCH).all(), "batch flags"
        both = np.concatenate([*listed, batch])
        assert len(np.unique(both)) == len(both), "a folio is tracked twice"
        tracked = np.zeros(len(on_lru), dtype=np.bool_)
        tracked[both] = True
        assert (tracked == on_lru).all(), "LRU lists disagree with the resident folios"
        assert not (self.fl[~tracked] & (FL_LRU | FL_BATCH | FL_FILE)).any(), (
            "untracked folio flagged"
        )

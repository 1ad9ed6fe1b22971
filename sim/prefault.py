"""Steady-state starts (``vms[].prefault``): guest memory placed as a long run leaves it.

Why
    A cold start spends its first seconds faulting every guest page in (a first-touch storm),
    then overcommitted hosts swap the cold part out: the measured run mixes that transient with
    the steady state one wants to measure. With ``prefault`` the world starts where such a run
    settles, without simulating it event by event.

Fill
    1. Which pages, and how hot: each prefaulted VM's workload is sampled on streams of its
       own (``<vm>.vcpu<j>.prefault``: the run's streams are untouched), ``PASSES`` accesses
       per working-set page over the VM (at most ``MAX_SAMPLE``), split over its vCPUs: a
       long run's worth, whatever the measured run's length; pages the sample never touches
       stay untouched (a long run's rarest pages, and pages outside the workload). A page's
       heat is its sampled accesses per second of guest time (ties: touched last is hotter),
       comparable across VMs with different rates.
    2. What fits: pages in order of heat get frames while free memory stays above the high
       watermark (``pgdat_balanced``: kswapd has nothing to do at time 0) and, for a VM in a
       memcg, while its ``memory.current`` stays at or under ``memory.max`` and
       ``memory.high`` (``try_charge_memcg`` would reclaim it back there; the frames are
       charged as ``nr_resident`` is the charge). The rest, coldest last, take swap slots while
       there are free ones and their memcg is under ``memory.swap.max``
       (``__mem_cgroup_try_charge_swap``: charged to ``memory.swap.current``), holding the
       shadow entries their own lruvec's ``workingset_eviction`` gives (taken on frames that
       are still free: the folios were evicted before time 0 and have no state to carry);
       without a slot they stay untouched.
    3. The compressed pool (zram, zswap): the swapped pages are stored as reclaim's writes
       store them, oldest eviction first: zram keeps every one (``zram_write_page``); zswap
       runs ``zswap_store`` a reclaim batch (SWAP_CLUSTER_MAX) at a time, with its pool limit,
       accept-threshold hysteresis and its rule for pages that do not compress (stored as they
       are since 6.18, else ``reject_compress_poor``), and ``shrink_worker`` sends
       the oldest entries to the device when a batch finds the pool full: the pool ends with
       the newest evictions, the rest on the device. The pool's frames (``zs_get_total_pages``)
       come from the same room above the high watermark, so residents shrink (coldest first)
       until residents and pool fit together: a few rounds, as each page moved out costs the
       pool only its compressed size, then a search if that does not settle. If even no
       resident page leaves room for the pool (pages compressing too poorly for the host: a
       long run would end in the OOM killer), the pool keeps the newest evictions that fit and
       the rest stay untouched.
    4. How: in one batch, the state the first-touch path leaves (``do_anonymous_page``: a
       dirty, young anon page; KVM maps a present, accessed spte, ``map_sptes``), then, coldest
       first so the hottest are the most recently used, the policy hooks that path calls
       (``folio_add_lru``, ``folio_mark_accessed`` for GUP's FOLL_TOUCH and for
       ``kvm_release_faultin_page``; batched as ``folio_add_lru_touched`` where the policy
       has it). With the classic two-list policy every page therefore
       starts active, as after a first touch, and kswapd's first pass deactivates the cold
       end; MGLRU starts them in its youngest generation.

With THP (``host.thp``, host/huge_memory.py)
    The unit is the 2 MiB block, as a long THP run leaves whole blocks: a first touch maps a
    THP over the block (``do_huge_pmd_anonymous_page``) while memory is above the watermarks,
    and reclaim swaps it out whole. A block's heat is :func:`block_heat`, the sum of its
    pages' rates (why: there). Touched blocks, hottest first, get 512 frames each under the
    same limits (high watermark; a memcg's memory.max and memory.high, 512 pages of charge a
    block): each is the THP the fault leaves, all 512 pages (``clear_huge_page`` zeroed the
    ones never touched) present and dirty, the PMD's young bit on the head, the block's 2 MiB
    spte (its 512 sptes present), one LRU entry (the head's frame) counted as 512 pages. The
    next, warmest first, start in swap while 512 slots are left for each (and 512 pages under
    memory.swap.max); the rest stay untouched, whole. Reclaim evicts them coldest first, so
    those take the wholly free clusters in turn and are left as ``_shrink_large`` leaves a
    THP: 512 pages in one aligned cluster with the folio's one shadow (the clock advancing 512
    pages per folio); one that finds no free cluster (at most one, since the fill takes whole
    blocks and the header's cluster has 511 slots), or every one without THP swap, is split
    and its pages evicted as 4 KiB pages through the order-0 allocator. zram stores them as
    its writes do; zswap stores each THP whole or not at all (``store_folio``, oldest
    eviction first, the shrink worker running after a store that found the pool full), then
    the split blocks' pages as above.

Counting
    Nothing of the fill is counted: not in vmstat (``pgfault``, ``pswpout``, ``pgsteal``,
    ``zswpout``, zswap's debugfs counters, ``memory.events``), nor as guest faults, nor in KVM's
    ``pf_fixed``: it did not happen in the measured run (zswap's rules run against a scratch
    counter set). The state is the run's own: memcg charges, pool objects and frames, zswap's
    LRU and its "full" flag carry on from the fill.

Simplifications
    With shadow paging only alias 0 of each page is mapped (the others fault minor on first
    use). The last-access stamps of the eviction log start at 0 for every placed page.
    With THP a block is a whole THP or wholly in swap. A page is never hotter than its block
    (a rate is at most the sum), so in a state where every resident LRU entry is hotter than
    every evicted one, a block swapped out has no page hotter than the coldest THP left: none
    of its pages belongs resident as a 4 KiB page. A long run can leave more blocks demoted
    than that (blocks swapped out during its transients keep the pages faulted back since as
    4 KiB pages until khugepaged collapses them): not modelled; the warm subpages of the
    swapped blocks refault from time 0 instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numba
import numpy as np
from numpy.typing import NDArray

from sim import fast
from sim.config import VmConfig
from sim.guest.workloads import AccessStream
from sim.host.huge_memory import (
    HEAD_NEW,
    HPAGE_PMD_NR,
    HPAGE_PMD_SHIFT,
    TAIL_NEW,
    THP_LARGE,
    THP_PMD,
)
from sim.host.memory import (
    PAGE_SIZE,
    PG_DIRTY,
    PG_RESIDENT,
    PG_SWAP,
    PTE_PRESENT,
    PTE_YOUNG,
    SWAP_CLUSTER_MAX,
)
from sim.host.vmstat import new_vmstat
from sim.host.zpool import Zpool
from sim.host.zswap import Zswap
from sim.machine import rng_for

if TYPE_CHECKING:
    from sim.engine import World

PASSES = 16  # sampled accesses per working-set page
MAX_SAMPLE = 1 << 24  # sampled accesses per VM, at most (bounds the fill's time and memory)
MAX_FIT_ROUNDS = 32  # rounds of shrinking the resident set for the pool's frames, then a search
_NEW_ANON = np.uint8(PTE_PRESENT | PTE_YOUNG | PG_DIRTY | PG_RESIDENT)


@numba.njit(cache=True, nogil=True)
def _tally(gfns: NDArray[np.int64], counts: NDArray[np.int64], last: NDArray[np.int64]) -> None:
    """Count each page's accesses in one vCPU's sample and keep the latest position any
    sample touched it at (``bincount`` and ``np.maximum.at`` over ``arange`` in one pass)."""
    for i in range(gfns.size):
        g = gfns[i]
        counts[g] += 1
        if i > last[g]:
            last[g] = i


def heat(w: World, index: int, cfg: VmConfig) -> NDArray[np.float64]:
    """Sampled accesses per second of guest time of each page of VM ``index`` (0: untouched in
    the sample), plus a fraction under one for recency (pages touched later rank higher)."""
    sc, vm = w.sc, w.vms[index]
    n = vm.mm.nr_pages
    ws = sc.host.pages(cfg.working_set_mib or cfg.memory_mib)
    per_vcpu = max(1, min(PASSES * ws, MAX_SAMPLE) // cfg.vcpus)
    counts = np.zeros(n, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    for j in range(cfg.vcpus):
        stream = AccessStream(
            cfg.workload,
            vm_pages=n,
            working_set_pages=ws,
            access_rate_per_s=cfg.access_rate_per_s,
            write_ratio=cfg.write_ratio,
            vcpu=j,
            nr_vcpus=cfg.vcpus,
            rng=rng_for(sc.seed, f"{vm.name}.vcpu{j}.prefault"),
        )
        gfns, _ = stream.next(per_vcpu)
        _tally(gfns, counts, last)
    seconds = per_vcpu / cfg.access_rate_per_s
    recency = (last + 1) / (per_vcpu + 1)  # in [0, 1): breaks ties between equal counts
    return np.where(counts > 0, counts / seconds + recency / seconds, 0.0)


def prefault(w: World, cfgs: Sequence[VmConfig]) -> None:
    """Place the pages of every VM with ``prefault`` as the module docstring says."""
    mem, swap = w.mem, w.swap
    thp = w.thp
    pids, hot = [], []
    for i, cfg in enumerate(cfgs):
        if not cfg.prefault:
            continue
        h = heat(w, i, cfg)
        base = w.vms[i].mm.pid_base
        if thp is not None:  # the unit is the 2 MiB block, named by its head page
            h = block_heat(h)
            touched = np.flatnonzero(h > 0)
            pids.append((touched << HPAGE_PMD_SHIFT) + base)
        else:
            touched = np.flatnonzero(h > 0)
            pids.append(touched + base)
        hot.append(h[touched])
    pid = np.concatenate(pids)
    del pids
    heats = np.concatenate(hot)
    del hot
    np.negative(heats, out=heats)
    # hottest first; ties: lower pid (pid ascends, and the sort is stable)
    pid = pid[np.argsort(heats, kind="stable")]
    del heats
    if thp is not None:
        _prefault_thp(w, pid)
        return
    owner = mem.page_owners(pid)
    fits = _fits(w, owner, 1)
    room = max(0, mem.nr_free - mem.wmark.high - 1)  # stay above high: nr_free > high
    k = min(room, int(fits.sum()))
    for _ in range(MAX_FIT_ROUNDS):  # fewer resident pages, more in the pool, until both fit
        resident, swapped = _split(w, pid, owner, fits, k)
        frames = _pool_frames(w, swapped)
        if k + frames <= room or k == 0:
            break
        k = min(k - 1, room - frames) if room > frames else 0
    else:  # the pool grows about as fast as residents shrink: search instead

        def fit(m: int) -> bool:
            return m + _pool_frames(w, _split(w, pid, owner, fits, m)[1]) <= room

        k = _largest(k, fit)
        resident, swapped = _split(w, pid, owner, fits, k)
    if k + _pool_frames(w, swapped) > room:  # a pool too big even alone: keep what fits
        n_ok = _largest(len(swapped), lambda m: _pool_frames(w, swapped[:m]) <= room - k)
        swapped = swapped[:n_ok]
    got = swap.alloc_slots(len(swapped), swapped[::-1])  # evicted coldest first
    assert got == len(swapped), "the fill took more slots than were free"
    _place_swapped(w, swapped)
    if len(resident):
        _place_resident(w, resident)
    if swap.zpool is not None:
        swap.zpool.fit()


def block_heat(h: NDArray[np.float64]) -> NDArray[np.float64]:
    """The heat of each 2 MiB block of a VM whose pages have heats ``h``: the sum of its pages'
    access rates. A THP is one LRU entry, referenced when any of its subpages was accessed
    since the last aging pass (one young subpage keeps it young); with accesses arriving at
    rates ``r_i``, the block is referenced within an interval ``T`` with probability
    ``1 - exp(-T * sum(r_i))``, which orders blocks as the sum does whatever ``T`` is (the
    hottest page alone, or the mean, would rank a block with one hot page above a block with
    many warm ones that is young just as often or more)."""
    return h.reshape(-1, HPAGE_PMD_NR).sum(axis=1)


def _pages(heads: NDArray[np.int64]) -> NDArray[np.int64]:
    """The pages of the blocks whose heads are ``heads``, block after block, head first."""
    return (heads[:, None] + np.arange(HPAGE_PMD_NR, dtype=np.int64)).ravel()


def _prefault_thp(w: World, heads: NDArray[np.int64]) -> None:
    """The fill with THP-backed guest RAM (``host.thp``), in whole blocks (``heads``: the
    touched blocks' head pages, hottest first): the same rules as for pages (module
    docstring), each block costing 512 frames, 512 pages of charge, 512 swap slots."""
    mem, swap = w.mem, w.swap
    owner = mem.page_owners(heads)
    fits = _fits(w, owner, HPAGE_PMD_NR)
    room = max(0, mem.nr_free - mem.wmark.high - 1)  # stay above high: nr_free > high
    k = min(room // HPAGE_PMD_NR, int(fits.sum()))

    def pool(m: int) -> int:
        return _pool_frames_thp(w, _split(w, heads, owner, fits, m, HPAGE_PMD_NR)[1])

    if swap.zpool is not None and k * HPAGE_PMD_NR + pool(k) > room:
        k = _largest(k, lambda m: m * HPAGE_PMD_NR + pool(m) <= room)
    resident, swapped = _split(w, heads, owner, fits, k, HPAGE_PMD_NR)
    left = room - k * HPAGE_PMD_NR
    if swap.zpool is not None and _pool_frames_thp(w, swapped) > left:  # keep what fits
        out = swapped
        swapped = out[: _largest(len(out), lambda m: _pool_frames_thp(w, out[:m]) <= left)]
    _place_swapped_thp(w, swapped)
    if len(resident):
        _place_resident_thp(w, resident)
    if swap.zpool is not None:
        swap.zpool.fit()


def _rank(owner: NDArray[np.intp], nr: int) -> NDArray[np.int64]:
    """Each page's place among its own VM's pages, in the given order (0: first)."""
    rank = np.empty(len(owner), dtype=np.int64)
    for i in range(nr):
        idx = np.flatnonzero(owner == i)
        rank[idx] = np.arange(len(idx))
    return rank


def _fits(w: World, owner: NDArray[np.intp], unit: int) -> NDArray[np.bool_]:
    """Which units of ``unit`` pages (``owner``: each one's VM, hottest first) fit under their
    memcg's memory.max and memory.high if every hotter unit of that VM is resident."""
    if w.memcg is None:
        return np.ones(len(owner), dtype=np.bool_)
    lim, nr = w.memcg.limits, len(w.vms)
    cap = np.minimum(lim.max, lim.high) - w.mem.nr_resident[:nr] - lim.overhead[:nr]
    return (_rank(owner, nr) + 1) * unit <= cap[owner]


def _split(
    w: World,
    pid: NDArray[np.int64],
    owner: NDArray[np.intp],
    fits: NDArray[np.bool_],
    k: int,
    unit: int = 1,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The ``k`` hottest units (pages, or with ``unit`` 512 whole THP blocks named by their
    heads) that fit their memcg get frames; of the others, warmest first, those with ``unit``
    free swap slots left for them and room for ``unit`` more pages under their memcg's
    memory.swap.max start in swap. Returns (resident, swapped), both hottest first."""
    chosen = np.zeros(len(pid), dtype=np.bool_)
    chosen[np.flatnonzero(fits)[:k]] = True
    rest, rest_owner = pid[~chosen], owner[~chosen]
    if w.memcg is not None:
        allow = np.asarray(w.memcg.limits.swap_max, dtype=np.int64) - w.memcg.swap_usage
        rest = rest[(_rank(rest_owner, len(w.vms)) + 1) * unit <= allow[rest_owner]]
    return pid[chosen], rest[: w.swap.nr_free_slots // unit]


def _pool_frames(w: World, swapped: NDArray[np.int64]) -> int:
    """Frames the compressed pool would hold with ``swapped`` stored as evictions would store
    them (0 without a pool); nothing is changed."""
    pool, zswap = w.swap.zpool, w.swap.zswap
    if pool is None or len(swapped) == 0:
        return 0
    size = pool.obj_bytes[swapped]
    if zswap is not None:
        size = size[zswap.accepts(swapped)]  # zswap_compress rejects the rest
    frames = -(-int(size.sum(dtype=np.int64)) // PAGE_SIZE)
    if zswap is None or frames < zswap.max_pages:  # zram, or a zswap that never fills
        return frames
    scratch = Zpool(w.mem, pool.obj_bytes, track_lru=pool.track_lru)
    _store(w, scratch, swapped[::-1])
    return scratch.frames_needed()


def _store(w: World, pool: Zpool, cold_first: NDArray[np.int64]) -> Zswap | None:
    """Store pages into ``pool`` as reclaim's writes would, oldest eviction first: zram keeps
    every one; zswap goes through ``zswap_store`` (its pool limit with the accept threshold,
    pages that do not compress stored as they are or rejected) a reclaim batch at a time, its
    shrink worker sending the oldest entries on to the device when the pool fills. Counts go
    to a scratch vmstat (the fill is not part of the measured run). Returns the zswap that did
    it (its limit state), or None for zram."""
    swap = w.swap
    if swap.zswap is None:
        pool.store(cold_first)
        return None
    zswap = Zswap(swap.zswap.cfg, pool, w.nr_frames, new_vmstat(len(w.vms)))
    _store_batches(w, zswap, cold_first)
    return zswap


def _store_batches(w: World, zswap: Zswap, cold_first: NDArray[np.int64]) -> None:
    """``zswap_store`` of 4 KiB pages a reclaim batch (SWAP_CLUSTER_MAX) at a time, oldest
    eviction first, the shrink worker after a batch that found the pool full."""
    owners = w.mem.page_owners(cold_first)
    for lo in range(0, len(cold_first), SWAP_CLUSTER_MAX):
        hi = lo + SWAP_CLUSTER_MAX
        _, _, full = zswap.store(cold_first[lo:hi].astype(np.int32), owners[lo:hi])
        if full:
            zswap.shrink()


def _largest(n: int, ok: Callable[[int], bool]) -> int:
    """The largest ``m`` in [0, n] with ``ok(m)`` (``ok`` holds at 0 and is monotone)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _place_swapped(w: World, swapped: NDArray[np.int64], *, store: bool = True) -> None:
    """Pages evicted before time 0, coldest longest ago: PG_SWAP with the shadow their own
    lruvec's ``workingset_eviction`` gives (taken on free frames: the folios have no state to
    carry), charged to their memcg's memory.swap.current, stored in the compressed pool
    (unless ``store`` is false: the caller stores them)."""
    if len(swapped) == 0:
        return
    mem, policy = w.mem, w.policy
    cold_first = swapped[::-1]
    scratch = mem.free_list()[: len(cold_first)]
    lruvecs = getattr(policy, "lruvecs", None) if w.memcg is not None else None
    shadows = np.empty(len(cold_first), dtype=np.uint32)
    owners = mem.page_owners(cold_first)
    for i in range(len(w.vms)) if lruvecs is not None else (-1,):
        idx = np.flatnonzero(owners == i) if i >= 0 else np.arange(len(cold_first))
        if len(idx) == 0:
            continue
        lruvec = lruvecs[i] if lruvecs is not None else policy
        for part in np.array_split(idx, -(-len(idx) // max(1, len(scratch)))):
            shadows[part] = lruvec.workingset_eviction(scratch[: len(part)])
    mem.flags[cold_first] = np.uint8(PG_SWAP)
    mem.pfn[cold_first] = shadows
    mem.nr_swapped += np.bincount(owners, minlength=len(mem.nr_swapped))
    if w.memcg is not None:
        w.memcg.charge_swap(cold_first)
    if store and w.swap.zpool is not None:
        zswap = _store(w, w.swap.zpool, cold_first)
        if zswap is not None and w.swap.zswap is not None:
            w.swap.zswap.reached_full = zswap.reached_full


def _place_resident(w: World, resident: NDArray[np.int64]) -> None:
    """The state the first-touch path leaves, then its policy hooks, coldest first."""
    mem = w.mem
    cold_first = resident[::-1]
    pfns = mem.alloc_frames(cold_first)
    mem.flags[cold_first] = _NEW_ANON
    _map_and_add(w, cold_first, pfns)


def _map_and_add(w: World, pages: NDArray[np.int64], folios: NDArray[np.int64]) -> None:
    """KVM maps the sptes of ``pages`` (``map_sptes``, each VM its own), then the first-touch
    path's policy hooks run on ``folios`` (their LRU entries' frames, in LRU order)."""
    policy = w.policy
    owners = w.mem.page_owners(pages)
    for vm in w.vms:
        mine = owners == vm.index
        if mine.any():
            vm.mmu.map_sptes(pages[mine] - vm.mm.pid_base)
    batched = getattr(policy, "folio_add_lru_touched", None)
    if batched is not None and fast.enabled("prefault_batch"):  # the same hooks, many folios
        batched(folios)  # at once (two_list, MGLRU)
        fast.took("prefault_batch")
        return
    for pfn in folios.tolist():  # the first-touch path's hooks, in LRU order
        policy.folio_add_lru(pfn, None)
        policy.folio_mark_accessed(pfn)  # GUP's FOLL_TOUCH
        policy.folio_mark_accessed(pfn)  # kvm_release_faultin_page


def _place_swapped_thp(w: World, swapped: NDArray[np.int64]) -> None:
    """Blocks evicted before time 0, coldest longest ago (``swapped``: heads, hottest first).
    Reclaim takes them coldest first: each finds a wholly free cluster while one is left (and
    THP swap is on) and leaves whole, as ``_shrink_large`` does it: its 512 pages take the
    cluster's slots in order, all ``PG_SWAP`` with the one shadow ``workingset_eviction`` gives
    the folio (the clock advancing 512 pages), the block no longer large. The warmer ones
    after the free clusters ran out (at most one, as the fill takes whole blocks of the slots
    left, and the header's cluster has 511), or every one without THP swap, are split
    (``split_folio_to_list``) and their 512 base pages evicted one by one through the
    order-0 allocator, as :func:`_place_swapped` places pages."""
    if len(swapped) == 0:
        return
    mem, swap = w.mem, w.swap
    whole, split = _divide(w, swapped)
    if len(whole):
        pages = _pages(whole)
        swap.alloc_clusters(pages)
        shadows = _large_shadows(w, whole)
        mem.flags[pages] = np.uint8(PG_SWAP)
        mem.pfn[pages] = np.repeat(shadows, HPAGE_PMD_NR)
        owners = mem.page_owners(whole)
        mem.nr_swapped += np.bincount(owners, minlength=len(mem.nr_swapped)) * HPAGE_PMD_NR
        if w.memcg is not None:
            w.memcg.charge_swap(pages)
    if len(split):
        pages = _pages(split)
        got = swap.alloc_slots(len(pages), pages)
        assert got == len(pages), "the fill took more slots than were free"
        _place_swapped(w, pages[::-1], store=False)
    if swap.zpool is not None:
        zswap = _store_thp(w, swap.zpool, whole, split)
        if zswap is not None and swap.zswap is not None:
            swap.zswap.reached_full = zswap.reached_full


def _divide(w: World, swapped: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The blocks ``swapped`` (heads, hottest first) in eviction order, coldest first: those
    that find a wholly free cluster and leave whole, then those split (THP swap off, or no
    free cluster left)."""
    thp = w.thp
    assert thp is not None
    cold_first = swapped[::-1]
    nr_whole = min(len(cold_first), w.swap.nr_free_clusters()) if thp.cfg.swap else 0
    return cold_first[:nr_whole], cold_first[nr_whole:]


def _store_thp(
    w: World, pool: Zpool, whole: NDArray[np.int64], split: NDArray[np.int64]
) -> Zswap | None:
    """:func:`_store` for blocks evicted in this order: ``whole`` (heads) as THPs, then the
    pages of the ``split`` ones. zram keeps every page; zswap stores each THP whole or not at
    all (``store_folio``: the limit checked once for the folio; before 6.18 a page that does
    not compress fails it), its shrink worker running after a store found the pool full (a
    THP is a reclaim batch of its own), then the split pages a reclaim batch at a time."""
    swap = w.swap
    pages = _pages(split)
    if swap.zswap is None:
        pool.store(np.concatenate((_pages(whole), pages)))
        return None
    zswap = Zswap(swap.zswap.cfg, pool, w.nr_frames, new_vmstat(len(w.vms)))
    for head, mm in zip(whole.tolist(), w.mem.page_owners(whole).tolist(), strict=True):
        _, _, full = zswap.store_folio(_pages(np.array([head], dtype=np.int64)), mm)
        if full:
            zswap.shrink()
    _store_batches(w, zswap, pages)
    return zswap


def _pool_frames_thp(w: World, swapped: NDArray[np.int64]) -> int:
    """:func:`_pool_frames` for the blocks ``swapped`` (heads, hottest first)."""
    pool, zswap = w.swap.zpool, w.swap.zswap
    if pool is None or len(swapped) == 0:
        return 0
    whole, split = _divide(w, swapped)
    if zswap is None:
        size = int(pool.obj_bytes[_pages(swapped)].sum(dtype=np.int64))
        return -(-size // PAGE_SIZE)
    wp = _pages(whole).reshape(-1, HPAGE_PMD_NR)
    ok = zswap.accepts(wp.ravel()).reshape(-1, HPAGE_PMD_NR).all(axis=1)  # stored whole
    sp = _pages(split)
    size = int(pool.obj_bytes[wp[ok]].sum(dtype=np.int64))
    size += int(pool.obj_bytes[sp[zswap.accepts(sp)]].sum(dtype=np.int64))
    frames = -(-size // PAGE_SIZE)
    if frames < zswap.max_pages:  # a pool that never fills
        return frames
    scratch = Zpool(w.mem, pool.obj_bytes, track_lru=pool.track_lru)
    _store_thp(w, scratch, whole, split)
    return scratch.frames_needed()


def _large_shadows(w: World, heads: NDArray[np.int64]) -> NDArray[np.uint32]:
    """The shadow ``workingset_eviction`` gives each of these large folios (evicted in this
    order) on its own lruvec: taken on free frames standing in for their heads (marked as a
    large folio's head for the call, then free again: the folios have no state to carry)."""
    mem, thp = w.mem, w.thp
    assert thp is not None
    scratch = mem.free_list()[: len(heads)]
    out = np.empty(len(heads), dtype=np.uint32)
    blocks = heads >> HPAGE_PMD_SHIFT
    for part in np.array_split(np.arange(len(heads)), -(-len(heads) // max(1, len(scratch)))):
        s = scratch[: len(part)]
        mem.frame_pid[s] = heads[part]
        thp.block[blocks[part]] = THP_LARGE
        out[part] = w.policy.workingset_eviction(s)
        thp.block[blocks[part]] = 0
        mem.frame_pid[s] = -1
    return out


def _place_resident_thp(w: World, resident: NDArray[np.int64]) -> None:
    """The state ``do_huge_pmd_anonymous_page`` leaves for each block (``resident``: heads,
    hottest first): 512 frames (every page, touched or not: ``clear_huge_page`` zeroed them
    all), the PMD mapping them dirty, its young bit on the head; KVM's 2 MiB spte (the block's
    512 sptes present); one LRU entry, the head's frame, counted as 512 pages. Then the
    first-touch hooks on those entries, coldest first, as :func:`_place_resident`."""
    mem, thp = w.mem, w.thp
    assert thp is not None
    cold_first = resident[::-1]
    pages = _pages(cold_first)
    pfns = mem.alloc_frames(pages)
    mem.flags[pages] = np.uint8(TAIL_NEW)
    mem.flags[cold_first] = np.uint8(HEAD_NEW)
    thp.block[cold_first >> HPAGE_PMD_SHIFT] = THP_LARGE | THP_PMD
    _map_and_add(w, pages, pfns[::HPAGE_PMD_NR])  # a THP: one entry, its head's frame

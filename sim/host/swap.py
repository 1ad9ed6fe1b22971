"""The swap device: slots, a latency distribution, and a queue of bounded depth.

Models
    One swap area (``swapon``) of ``size_mib`` in slots of one simulated page, on a device that
    serves up to ``queue_depth`` requests at once, each taking a latency drawn from a lognormal
    distribution (mean and coefficient of variation per direction). Requests beyond the queue
    depth wait, FIFO. The block layer in front of it has ``nr_requests`` request tags: a
    request holds one from submission to completion, and a task that submits when all are
    taken sleeps until one frees (``blk_mq_get_tag``), so kswapd writing out folios is
    throttled by the device and the pages under write-back are bounded by the tags. Every
    request is counted where the kernel counts it, at submission (``count_swpout_vm_event``,
    ``PSWPIN`` in ``swap_read_folio``), into the host's vmstat, with the VM it belongs to.
    ``synchronous`` is a ``SWP_SYNCHRONOUS_IO`` device on which an I/O completes before the
    submitting call returns (demand mode's device, which takes no time; and zram, whose
    pages live compressed in a :class:`~sim.host.zpool.Zpool` of host frames and cost
    compression and decompression instead of a queue). With ``zswap`` a compressed pool
    stands in front of the device (zswap.py): the writes it stores never reach the queue.

Large folios
    The latencies are those of a 4 KiB request. A THP swapped whole (``host.thp``) moves as one
    request, as CONFIG_THP_SWAP writes it (``thp_swpout``; :meth:`SwapDevice.submit_folio`),
    and its other 2 MiB - 4 KiB cross the device's link at ``*_bandwidth_mib_per_s`` after the
    access latency. The link carries one transfer at a time (in submission order) while the
    request holds its queue slot, so deep queues of THPs are bandwidth-bound, not 32x faster.
    A 4 KiB request has no transfer term.

Kernel reference
    mm/swapfile.c (``get_swap_pages``, ``swap_free``, ``vm_swap_full``: more than half the slots
    used), mm/page_io.c (``swap_writepage``, ``swap_read_folio``). Latencies: docs/MODEL.md
    section 6.

Simplifications
    The queue is computed analytically rather than with one SimPy process per request: a request
    submitted at ``t`` gets a tag at ``max(t, earliest tag free)``, starts at ``max(tag, earliest
    server free)`` and ends after its latency; the submitter is busy until its last request got a
    tag (``blocked_until``), and its state changes (the folios it unmapped) take effect when it
    calls, not when it wakes. This is exactly a ``simpy.Resource(capacity=queue_depth)`` with FIFO
    grants (a test holds the two to identical completion times) at a fraction of the cost.
    Readahead (``page_cluster``) is VMA-based (swap_state.py) unless the device is
    ``rotational``, so it needs no slot locality; no latency depends on where a page sits on the
    device, so slots are interchangeable: only their count is kept. A page's swap entry is
    implied by its ``PG_SWAP`` flag, and the workingset shadow the kernel keeps in the swap cache
    lives in the page's ``pfn`` entry while it has no frame (memory.py).

Slot identities (``rotational``)
    Cluster readahead reads the pages in the slots next to the faulting page's, so a rotational
    device gives each slot an owner: ``slot_owner`` (slot -> pid, -1 free) and ``page_slot``
    (pid -> slot, -1 none). The allocator is ``cluster_alloc_swap_entry``'s for one CPU and
    order 0 (memsim reclaims in one context at a time): a current cluster of
    ``SWAPFILE_CLUSTER`` slots hands out its free slots in increasing offset order from a
    cursor; when it has none left past the cursor the next cluster is the first non-full one
    (some slots in use, some free) after it (circularly), else the first entirely free one,
    scanned from its start: the kernel prefers non-full clusters unless the device discards
    (``SWP_PAGE_DISCARD``), so freed slots are refilled before fresh clusters are opened. Slot
    0 is the swap header (``si->max`` is ``nr_slots + 1``). Simplified: the kernel's free and
    non-full cluster lists (FIFO) are a circular scan by cluster number.

Invariants
    ``0 <= nr_free_slots <= nr_slots``; the slots in use are the pages flagged ``PG_SWAP``; with
    slot identities, exactly those pages own a slot, each a different one that names it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numba
import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from sim.host.memory import PAGE_SIZE
from sim.host.vmstat import VmEvents
from sim.host.zpool import CompressorConfig, Zpool
from sim.host.zswap import Zswap, ZswapConfig
from sim.schema import Strict

MAX_SWAP_MIB = 1 << 30  # 1 PiB: slots are only counted, so this bounds nothing but typos
MAX_LATENCY_US = 10_000_000.0  # 10 s per request
MAX_BANDWIDTH_MIB_PER_S = 10_000_000.0  # 10 TiB/s
SWAPFILE_CLUSTER = 512  # slots per allocation cluster (HPAGE_PMD_NR on x86-64)
SLOT_HEADER = -2  # slot_owner of the swap header and of slots past the end of the last cluster


class SwapConfig(Strict):
    """The host's swap device."""

    size_mib: int = Field(
        4096, ge=0, le=MAX_SWAP_MIB, description="Swap capacity; 0 means no swap."
    )
    read_latency_us: float = Field(
        80.0,
        gt=0.0,
        le=MAX_LATENCY_US,
        description="Mean 4 KiB read latency (NVMe TLC QD1: 60-120 us).",
    )
    write_latency_us: float = Field(
        30.0,
        gt=0.0,
        le=MAX_LATENCY_US,
        description="Mean 4 KiB write latency (into the device cache: 10-30 us).",
    )
    latency_cv: float = Field(
        0.3,
        ge=0.0,
        le=10.0,
        description="Coefficient of variation of latencies (lognormal); 0 makes them constant.",
    )
    queue_depth: int = Field(32, ge=1, le=65536, description="Requests served concurrently.")
    nr_requests: int = Field(
        256,
        ge=1,
        le=1 << 20,
        description="Block-layer request tags (q->nr_requests: 2 x min(depth, 128) with "
        "mq-deadline; an NVMe queue without a scheduler has 1023): a submitter finding them all "
        "in flight sleeps until one completes, which bounds the pages under write-back.",
    )
    read_bandwidth_mib_per_s: float = Field(
        3000.0,
        ge=1.0,
        le=MAX_BANDWIDTH_MIB_PER_S,
        description="Sequential read bandwidth (NVMe TLC: 2-7 GB/s); moves the bytes of a page "
        "beyond its first 4 KiB (THPs swapped whole only).",
    )
    write_bandwidth_mib_per_s: float = Field(
        2000.0,
        ge=1.0,
        le=MAX_BANDWIDTH_MIB_PER_S,
        description="Sequential write bandwidth (NVMe TLC: 1-5 GB/s); as read_bandwidth_mib_per_s.",
    )
    device: Literal["disk", "zram"] = Field(
        "disk",
        description="disk: the block device above (latencies, queue, request tags). zram: a "
        "compressed RAM disk (SWP_SYNCHRONOUS_IO): a write compresses the page into frames "
        "taken from the host (vms[].compress_ratio), a read decompresses it (compressor "
        "costs, no queue), swap-in bypasses the swap cache and readahead and frees the slot.",
    )
    zswap: ZswapConfig = Field(
        default_factory=ZswapConfig,
        description="zswap: a compressed pool in RAM in front of the disk device.",
    )
    compressor: CompressorConfig = Field(
        default_factory=CompressorConfig,
        description="Compression CPU costs of zram and zswap.",
    )
    page_cluster: int = Field(
        0,
        ge=0,
        le=31,
        description="vm.page-cluster: swap readahead reads up to 2^page_cluster pages around a "
        "major fault (by address, at most 32; by slot with rotational; swap_state.py); 0 turns "
        "readahead off. The kernel's default is 3; memsim keeps 0 so results without readahead "
        "stay as they were.",
    )
    rotational: bool = Field(
        False,
        description="The swap device is rotational (an HDD, or a virtual disk that reports "
        "rotational, as many do): the kernel then reads ahead by swap slot "
        "(swap_cluster_readahead: the 2^page_cluster slots aligned around the faulting page's, "
        "whichever pages, of any VM, own them) for every swap-in instead of by address; "
        "slots get identities from the kernel's cluster allocator. zram is never rotational.",
    )

    @model_validator(mode="after")
    def _not_zram(self) -> SwapConfig:
        if self.rotational and self.device == "zram":
            raise ValueError(
                "rotational: zram is a RAM disk, never rotational; use device: disk or drop it"
            )
        return self


class SwapDevice:
    """Swap slots plus the device queue. Synchronous: callers schedule the completion events.

    Args:
        cfg: device parameters.
        nr_slots: capacity in pages.
        rng: generator for latency samples.
    """

    def __init__(
        self,
        cfg: SwapConfig,
        nr_slots: int,
        rng: np.random.Generator,
        *,
        vmstat: VmEvents | None = None,
        synchronous: bool = False,
    ) -> None:
        self.cfg, self.nr_slots, self.rng = cfg, nr_slots, rng
        self.vmstat = vmstat if vmstat is not None else VmEvents()
        self.zram = cfg.device == "zram"
        self.synchronous = synchronous or self.zram
        self.zpool: Zpool | None = None  # zram's or zswap's memory (made by the engine)
        self.zswap: Zswap | None = None  # zswap in front of this device, if enabled
        # mem_cgroup_uncharge_swap, when VMs have memcgs
        self.on_free_slots: Callable[[NDArray[np.integer] | Sequence[int]], None] | None = None
        self.compress_ns = cfg.compressor.compress_ns
        self.decompress_ns = cfg.compressor.decompress_ns
        self.nr_free_slots = nr_slots
        # slot identities (rotational only; see track_slots): empty arrays otherwise
        self.slot_owner = np.zeros(0, dtype=np.int32)
        self.page_slot = np.zeros(0, dtype=np.int32)
        self._cl_used = np.zeros(0, dtype=np.int32)  # unavailable slots per cluster
        self._cluster = -1  # the allocator's current cluster
        self._cursor = -SWAPFILE_CLUSTER  # next offset it scans in it (none yet: cluster 0 next)
        self._servers = np.zeros(cfg.queue_depth, dtype=np.int64)  # when each is free (a heap)
        self._params = {
            False: self._lognormal(cfg.read_latency_us * 1000.0, cfg.latency_cv),
            True: self._lognormal(cfg.write_latency_us * 1000.0, cfg.latency_cv),
        }
        # pre-drawn latencies, used in the order drawn from position _pos on
        self._pool = {False: np.zeros(0, dtype=np.int64), True: np.zeros(0, dtype=np.int64)}
        self._pos = {False: 0, True: 0}
        # completion times of the requests holding a tag (a heap of _q[Q_TAGS] entries)
        self._tags = np.zeros(cfg.nr_requests + 1, dtype=np.int64)
        self._q = np.zeros(Q_SIZE, dtype=np.int64)  # the queue's scalars (see _queue)
        self._done = np.zeros(64, dtype=np.int64)

    @property
    def blocked_until(self) -> int:
        """When the last submitter got its last request tag."""
        return int(self._q[Q_BLOCKED])

    @property
    def busy_ns(self) -> int:
        """Sum of service times (device utilisation = busy / (time * depth))."""
        return int(self._q[Q_BUSY])

    @property
    def wait_ns(self) -> int:
        """Sum of queueing delays before service (and before the link, for THPs)."""
        return int(self._q[Q_WAIT])

    @staticmethod
    def _lognormal(mean_ns: float, cv: float) -> tuple[float, float, float]:
        if cv <= 0.0:
            return (mean_ns, 0.0, 0.0)
        sigma2 = math.log1p(cv * cv)
        return (mean_ns, math.log(mean_ns) - sigma2 / 2.0, math.sqrt(sigma2))

    # -- slots -------------------------------------------------------------------------------
    @property
    def tracks_slots(self) -> bool:
        """Slots have identities (a rotational device: cluster readahead needs them)."""
        return len(self.page_slot) > 0

    def track_slots(self, nr_pages: int) -> None:
        """Give slots identities for pids below ``nr_pages``; before any slot is taken."""
        assert self.nr_free_slots == self.nr_slots, "slots taken before they had identities"
        size = self.nr_slots + 1  # si->max: the header and the slots
        nr_clusters = -(-size // SWAPFILE_CLUSTER)
        self.slot_owner = np.full(size, -1, dtype=np.int32)
        self.slot_owner[0] = SLOT_HEADER
        self.page_slot = np.full(max(nr_pages, 1), -1, dtype=np.int32)
        self._cl_used = np.zeros(nr_clusters, dtype=np.int32)
        self._cl_used[0] = 1  # the header
        self._cl_used[-1] += nr_clusters * SWAPFILE_CLUSTER - size  # past si->max

    def alloc_slots(self, n: int, pids: NDArray[np.integer] | Sequence[int] = ()) -> int:
        """``get_swap_pages`` for ``n`` pages; returns how many got a slot (fewer when full).
        With slot identities the first of ``pids`` get theirs, in order."""
        got = min(n, self.nr_free_slots)
        self.nr_free_slots -= got
        if self.tracks_slots and got:
            assert len(pids) >= got, "slot identities need the pages that take them"
            self._assign(np.asarray(pids, dtype=np.int64)[:got])
        return got

    def has_free_cluster(self) -> bool:
        """Some cluster is wholly free (an order-9 allocation would succeed)."""
        return bool((self._cl_used == 0).any())

    def alloc_cluster(self, pids: NDArray[np.integer]) -> bool:
        """``get_swap_pages`` of order 9 (a PMD-sized folio, THP_SWAP): the 512 ``pids`` take
        the slots of an entirely free cluster, in order (``cluster_alloc_swap_entry`` takes
        large allocations from the free cluster list only); False, nothing taken, when no
        cluster is wholly free. Needs slot identities."""
        assert self.tracks_slots, "THP swap-out needs slot identities"
        assert len(pids) == SWAPFILE_CLUSTER, "a cluster for a THP"
        free = np.flatnonzero(self._cl_used == 0)
        if len(free) == 0:
            return False
        c = int(free[0])
        slots = np.arange(c * SWAPFILE_CLUSTER, (c + 1) * SWAPFILE_CLUSTER, dtype=np.int64)
        p = np.asarray(pids, dtype=np.int64)
        self.slot_owner[slots] = p
        self.page_slot[p] = slots
        self._cl_used[c] = SWAPFILE_CLUSTER
        self.nr_free_slots -= SWAPFILE_CLUSTER
        return True

    def alloc_clusters(self, pids: NDArray[np.integer]) -> None:
        """:meth:`alloc_cluster` for many PMD-sized folios in turn (the steady-state fill):
        ``pids`` holds their pages, folio after folio, 512 each; each folio takes the lowest
        wholly free cluster left, as the calls one by one would. There are enough."""
        assert self.tracks_slots, "THP swap-out needs slot identities"
        p = np.asarray(pids, dtype=np.int64)
        m = len(p) // SWAPFILE_CLUSTER
        assert len(p) == m * SWAPFILE_CLUSTER, "whole clusters for THPs"
        c = np.flatnonzero(self._cl_used == 0)[:m]
        assert len(c) == m, "alloc_clusters with too few free clusters"
        slots = (c[:, None] * SWAPFILE_CLUSTER + np.arange(SWAPFILE_CLUSTER)).ravel()
        self.slot_owner[slots] = p
        self.page_slot[p] = slots
        self._cl_used[c] = SWAPFILE_CLUSTER
        self.nr_free_slots -= len(p)

    def nr_free_clusters(self) -> int:
        """Clusters wholly free (order-9 allocations that would succeed, one after another)."""
        return int(np.count_nonzero(self._cl_used == 0))

    def submit_folio(self, now_ns: int, write: bool, nr_pages: int, per_mm: int) -> int:
        """One request for a large folio of ``nr_pages`` 4 KiB pages (a THP's 2 MiB written
        whole): counted as ``nr_pages`` (``count_swpout_vm_event``: ``pswpout`` +=
        ``folio_nr_pages``); its data beyond the first 4 KiB crosses the link at the device's
        bandwidth after the access latency. Returns when it completes."""
        self._count(write, nr_pages, per_mm)
        if self.synchronous:
            self._q[Q_BLOCKED] = now_ns
            return now_ns
        bw = self.cfg.write_bandwidth_mib_per_s if write else self.cfg.read_bandwidth_mib_per_s
        xfer = round((nr_pages - 1) * PAGE_SIZE * 1e9 / (bw * (1 << 20)))
        _queue(
            now_ns,
            self._draw(write, 1),
            self._servers,
            self._tags,
            self._q,
            self.cfg.nr_requests,
            xfer,
            self._done,
        )
        return int(self._done[0])

    def _assign(self, pids: NDArray[np.int64]) -> None:
        """``cluster_alloc_swap_entry`` for each page in turn (there are enough free slots)."""
        owner, n = self.slot_owner, len(pids)
        slots = np.empty(n, dtype=np.int64)
        k = 0
        while k < n:
            if self._cluster < 0:
                self._cluster = self._next_cluster()
                self._cursor = self._cluster * SWAPFILE_CLUSTER
            end = min((self._cluster + 1) * SWAPFILE_CLUSTER, len(owner))
            free = np.flatnonzero(owner[self._cursor : end] == -1)[: n - k] + self._cursor
            slots[k : k + len(free)] = free
            owner[free] = pids[k : k + len(free)]  # taken now: the next cluster sees them
            self._cl_used[self._cluster] += len(free)
            k += len(free)
            if len(free) and free[-1] + 1 < end:
                self._cursor = int(free[-1]) + 1
            else:  # the cluster has nothing left past the cursor: take another next time
                self._cluster = -1
        self.page_slot[pids] = slots

    def _next_cluster(self) -> int:
        """The allocator's next cluster: a non-full one (some slots in use, some free), else an
        entirely free one, the first after the last one used (circularly). Non-full first is
        the kernel's order for a device without discard (``swapon`` without ``--discard``):
        only a discarding device prefers fresh clusters, to spread its writes."""
        used = self._cl_used
        last = self._cursor // SWAPFILE_CLUSTER
        nonfull = (used > 0) & (used < SWAPFILE_CLUSTER)
        for cand in (np.flatnonzero(nonfull), np.flatnonzero(used == 0)):
            if len(cand):
                after = cand[cand > last]
                return int(after[0] if len(after) else cand[0])
        raise AssertionError("no free slot though the count has some")

    def free_slots(self, n: int, pids: NDArray[np.integer] | Sequence[int] = ()) -> None:
        """``swap_free_nr``: the ``n`` slots of pages ``pids`` are free again; what a compressed
        store (zram, zswap) held for them goes too (``zram_slot_free_notify``,
        ``zswap_invalidate``)."""
        assert 0 <= n <= self.nr_slots - self.nr_free_slots, "freeing slots not in use"
        self.nr_free_slots += n
        if self.tracks_slots and n:
            assert len(pids) == n, "slot identities need the pages whose slots are freed"
            p = np.asarray(pids, dtype=np.int64)
            slots = self.page_slot[p].astype(np.int64)
            assert (slots > 0).all(), "freeing the slot of a page that holds none"
            self.slot_owner[slots] = -1
            self.page_slot[p] = -1
            self._cl_used -= np.bincount(slots // SWAPFILE_CLUSTER, minlength=len(self._cl_used))
        if self.on_free_slots is not None:
            assert len(pids) == n, "swap charges need the pages whose slots are freed"
            self.on_free_slots(pids)
        if self.zpool is not None:
            assert len(pids) == n, "a compressed store needs the pages whose slots are freed"
            self.zpool.free(pids)

    def check_slots(self, swapped: NDArray[np.integer]) -> None:
        """Assert that the pages ``swapped`` (PG_SWAP) own exactly the slots in use (tests)."""
        if not self.tracks_slots:
            return
        owner, ps = self.slot_owner, self.page_slot
        used = np.flatnonzero(owner >= 0)
        assert len(used) == self.nr_slots - self.nr_free_slots, "slot identities miscounted"
        assert (ps[owner[used]] == used).all(), "a slot's owner does not name it"
        holders = np.flatnonzero(ps >= 0)
        assert np.array_equal(holders, np.sort(np.asarray(swapped))), "slot holders != PG_SWAP"
        assert owner[0] == SLOT_HEADER, "the swap header slot was taken"
        taken = np.bincount(used // SWAPFILE_CLUSTER, minlength=len(self._cl_used))
        reserved = self._cl_used - taken
        assert reserved[0] >= 1, "the header's cluster miscounted"
        assert (reserved >= 0).all(), "cluster counts miscounted"
        assert int(reserved.sum()) == len(self._cl_used) * SWAPFILE_CLUSTER - self.nr_slots, (
            "cluster counts miscounted"
        )

    def vm_swap_full(self) -> bool:
        """``vm_swap_full``: more than half the swap space is in use."""
        return self.nr_free_slots * 2 < self.nr_slots

    # -- I/O ---------------------------------------------------------------------------------
    def latency_ns(self, write: bool, n: int) -> NDArray[np.int64]:
        """Draw ``n`` service times for reads or writes."""
        mean, mu, sigma = self._params[write]
        if sigma == 0.0:
            return np.full(n, max(1, round(mean)), dtype=np.int64)
        return np.maximum(1, np.rint(self.rng.lognormal(mu, sigma, n))).astype(np.int64)

    def _draw(self, write: bool, n: int) -> NDArray[np.int64]:
        """Service times from a pool drawn 4096 at a time (same stream, fewer numpy calls)."""
        pool, pos = self._pool[write], self._pos[write]
        while len(pool) - pos < n:
            pool = np.concatenate((pool[pos:], self.latency_ns(write, 4096)))
            pos = 0
        self._pool[write], self._pos[write] = pool, pos + n
        return pool[pos : pos + n]

    def submit(
        self,
        now_ns: int,
        write: bool,
        n: int = 1,
        per_mm: int | list[int] = -1,
        *,
        swap_io: bool = True,
    ) -> list[int]:
        """Queue ``n`` page I/Os at ``now_ns``; return their completion times (FIFO grants).

        Counts them (``pswpout``/``pswpin``) for mm ``per_mm``, or ``per_mm[i]`` pages for each
        mm ``i``, unless ``swap_io`` is false (other I/O to the same device: a guest's file
        reads on its virtual disk). ``blocked_until`` is then when the submitter got its last
        request tag.
        """
        if swap_io:
            self._count(write, n, per_mm)
        if self.synchronous:
            self._q[Q_BLOCKED] = now_ns
            return [now_ns] * n
        if n > len(self._done):
            self._done = np.zeros(max(n, 2 * len(self._done)), dtype=np.int64)
        _queue(
            now_ns,
            self._draw(write, n),
            self._servers,
            self._tags,
            self._q,
            self.cfg.nr_requests,
            0,  # a 4 KiB request: its data is in the latency
            self._done,
        )
        return self._done[:n].tolist()

    def _count(self, write: bool, n: int, per_mm: int | list[int]) -> None:
        item = "pswpout" if write else "pswpin"
        if isinstance(per_mm, int):
            self.vmstat.count(item, n, per_mm)
        else:
            self.vmstat.count_per_mm(item, per_mm)

    def share_queue(self, other: SwapDevice) -> None:
        """Serve this device's requests in ``other``'s queue (one physical device: its
        servers, request tags and queue scalars), keeping this one's latencies and counters:
        a guest's virtual disk whose image lies on the host's swap device."""
        assert self.cfg.queue_depth == other.cfg.queue_depth, "one queue, one depth"
        assert self.cfg.nr_requests == other.cfg.nr_requests, "one queue, one set of tags"
        self._servers, self._tags, self._q = other._servers, other._tags, other._q

    def in_flight(self, now_ns: int) -> int:
        """Requests holding a tag at ``now_ns`` (submitted, not yet completed)."""
        return int(np.count_nonzero(self._tags[: self._q[Q_TAGS]] > now_ns))


# _queue's scalars: tags held, when the link is free, queueing delay, service time, last tag
Q_TAGS, Q_LINK, Q_WAIT, Q_BUSY, Q_BLOCKED = range(5)
Q_SIZE = 5


@numba.njit(cache=True, nogil=True, inline="always")
def _sift_down(h: NDArray[np.int64], n: int, v: int) -> None:
    """Put ``v`` at the root of the min-heap ``h[:n]`` and restore the heap below it."""
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and h[c + 1] < h[c]:
            c += 1
        if h[c] >= v:
            break
        h[i] = h[c]
        i = c
    h[i] = v


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_pop(h: NDArray[np.int64], n: int) -> int:
    """Remove and return the least of the min-heap ``h[:n]`` (its new size is ``n - 1``)."""
    top = h[0]
    if n > 1:
        _sift_down(h, n - 1, h[n - 1])
    return top


@numba.njit(cache=True, nogil=True, inline="always")
def _heap_push(h: NDArray[np.int64], n: int, v: int) -> None:
    """Add ``v`` to the min-heap ``h[:n]`` (its new size is ``n + 1``)."""
    i = n
    while i > 0:
        p = (i - 1) // 2
        if h[p] <= v:
            break
        h[i] = h[p]
        i = p
    h[i] = v


@numba.njit(cache=True, nogil=True)
def _queue(
    now: int,
    svc: NDArray[np.int64],
    servers: NDArray[np.int64],
    tags: NDArray[np.int64],
    q: NDArray[np.int64],
    limit: int,
    xfer: int,
    done: NDArray[np.int64],
) -> None:
    """The device queue for ``len(svc)`` requests submitted at ``now``, in order: each takes a
    request tag (``nr_requests`` of them; the submitter sleeps until the first one frees when
    all are held), then the first free server (``queue_depth`` of them, FIFO), then, for a
    large folio (``xfer`` > 0), the link for the rest of its data; ``done[i]`` is when request
    ``i`` completes."""
    ntags = q[Q_TAGS]
    tag_at = now
    for i in range(svc.size):
        while ntags and tags[0] <= tag_at:  # completed: their tags are free
            _heap_pop(tags, ntags)
            ntags -= 1
        if ntags >= limit:  # all taken: sleep until the first one frees
            tag_at = _heap_pop(tags, ntags)
            ntags -= 1
        free_at = servers[0]
        start = tag_at if free_at < tag_at else free_at
        end = start + svc[i]
        q[Q_WAIT] += start - now
        q[Q_BUSY] += svc[i]
        if xfer:  # a large folio: the rest of the data, one transfer at a time on the link
            t0 = max(end, q[Q_LINK])
            q[Q_WAIT] += t0 - end
            q[Q_BUSY] += xfer
            end = t0 + xfer
            q[Q_LINK] = end
        _sift_down(servers, servers.size, end)  # heapreplace: the server is busy until end
        _heap_push(tags, ntags, end)
        ntags += 1
        done[i] = end
    q[Q_TAGS] = ntags
    q[Q_BLOCKED] = tag_at

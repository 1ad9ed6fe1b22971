"""Free page reporting (``VIRTIO_BALLOON_F_REPORTING``): the guest tells the host which of its
free memory it may take back, and the host discards it.

Models
    The guest kernel's page_reporting for one guest (QEMU ``free-page-reporting=on``, the
    virtio-balloon driver registering with ``page_reporting_register``). The unit is a free
    block of ``page_reporting_order`` (default ``pageblock_order``, 9: 512 4 KiB pages, a
    2 MiB-aligned run of gfns) whose pages are all free.

    Scheduling: a free that completes such a block (``__free_one_page`` ->
    ``page_reporting_notify_free(order)`` with the merged order at or above the reporting
    order) requests reporting; ``__page_reporting_request`` moves the state from IDLE to
    REQUESTED and queues the work ``PAGE_REPORTING_DELAY`` (2 s) later, and does nothing while
    a request is pending. Registration requests once, so every block free at boot is
    reported. The work (``page_reporting_process``) sets the state ACTIVE; at its end, if a
    request came in meanwhile (the state is REQUESTED again) it queues itself 2 s later,
    otherwise it goes IDLE.

    A pass (``page_reporting_process_zone``) does nothing unless the zone has more free pages
    than its low watermark plus ``PAGE_REPORTING_CAPACITY << order``. It then walks the free
    blocks that are not ``PageReported``, lowest gfn first (``page_reporting_cycle``), and
    isolates each into a scatterlist of ``PAGE_REPORTING_CAPACITY`` (32) entries while the
    zone keeps more than its min watermark plus one block (``__isolate_free_page``); a failed
    isolation ends the pass. A full list found with another unreported block behind it is
    reported and the walk goes on; the budget (``DIV_ROUND_UP(area->nr_free,
    PAGE_REPORTING_CAPACITY * 16)``, the free blocks reported or not, taken when the pass
    starts) allows that many full requests plus one: when the walk finds an unreported block
    with the budget spent, it sets the state REQUESTED (the next pass in 2 s goes on) and stops.
    What the list holds at the end is reported as the leftover request. So an idle guest's
    free memory is reported a sixteenth per pass.

    A request (``virtballoon_free_page_report``) adds the list to the reporting virtqueue,
    kicks and waits for QEMU's ack; QEMU's ``virtio_balloon_handle_report`` calls
    ``ram_block_discard_range`` on each entry (``madvise(MADV_DONTNEED)`` of the block:
    ``Machine.discard``, sim/host/madvise.py) and pushes the buffer back. The driver's
    ``page_reporting_drain`` then puts each block back with ``__putback_isolated_page``
    (``FPI_TO_TAIL``: the tail of the free list, so reported memory is allocated last) and
    sets ``PageReported``. Allocating any page of a reported block takes the block off the
    free list (``del_page_from_free_list`` -> ``__ClearPageReported``) and splits it: the
    whole block loses the flag, the rest of it goes back at the head of the free lists
    (``expand``), and once the block is whole and free again it is reported again.

    In memsim the guest's free frames are HostMemory's stack: reported blocks sit at its
    bottom (``HostMemory.move_to_tail``; ``tail`` frames, whole blocks, contiguous), and an
    allocation reaching into them calls :meth:`PageReporting._tail_taken`, which clears the
    flag of each block it reached into and leaves that block's other frames at the stack's top.
    The host's own allocator never has a tail (``tail`` 0): its cost is one comparison.

Costs
    :class:`PageReportingCosts`, [EST] figures: guest CPU per request (the walk under the zone
    lock, ``virtqueue_add_inbuf``, the wake-up on the ack, the drain) and per block
    (``__isolate_free_page``, ``__putback_isolated_page``), a VM exit per kick, QEMU's work per
    request (pop, push, interrupt) and per block (``ram_block_discard_range``: one
    ``madvise`` call, and the zap and free of its pages). The work item waits for all of it;
    the counters split it between the guest (``reporting_guest_ns``) and QEMU
    (``reporting_qemu_ns``).

Counting
    No kernel counter is modelled for reporting; memsim's own per-VM counters, in the VM's
    ``balloon`` summary: ``reporting_passes`` (work items run), ``reporting_requests``
    (virtqueue requests), ``reporting_blocks`` and ``reporting_pages`` (reported, pages of the
    simulated size), ``reporting_freed`` (host frames the discards freed at once,
    ``Machine.discard``'s return; folios with I/O in flight are freed when it ends and not
    counted), ``reporting_vmexits``, ``reporting_guest_ns``, ``reporting_qemu_ns``. The
    discarded pages are the VM's ``pages_discarded`` too (counted there, by the discard).

Kernel reference
    mm/page_reporting.c (``PAGE_REPORTING_DELAY``, ``__page_reporting_request``,
    ``__page_reporting_notify``, ``page_reporting_cycle``, ``page_reporting_process_zone``,
    ``page_reporting_process``, ``page_reporting_drain``, ``page_reporting_register``,
    ``page_reporting_order``), mm/page_reporting.h (``page_reporting_notify_free``),
    include/linux/page_reporting.h (``PAGE_REPORTING_CAPACITY``), mm/page_alloc.c
    (``__free_one_page``, ``__isolate_free_page``, ``__putback_isolated_page``,
    ``del_page_from_free_list``, ``expand``), drivers/virtio/virtio_balloon.c
    (``virtballoon_free_page_report``, ``virtballoon_probe``); QEMU hw/virtio/virtio-balloon.c
    (``virtio_balloon_handle_report``).

Simplifications
    One zone, one free list: a block is exactly ``2**order`` 4 KiB pages, aligned, all free
    (the buddy allocator would also report larger merged blocks, one scatterlist entry each,
    with budgets per order and migratetype). A request's blocks are isolated, discarded on
    the host and put back reported at the instant it is sent; then the work item waits out
    the request's time (the kernel keeps them off the free lists until QEMU acks, some tens of
    microseconds). QEMU's time per block is fixed, whatever the discard finds. Guest RAM past
    the last whole block is never reported.

Invariants
    Every page of a reported block is free in the guest; the free stack's tail holds exactly
    the reported blocks' frames, block by block; a reported gfn has no host frame (unless its
    folio's I/O is in flight: ``Mm.zapped``), no host swap copy and no spte
    (:meth:`PageReporting.check`, :func:`check_discarded`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from numpy.typing import NDArray
from pydantic import Field

from sim.host.memory import HAS_FRAME, PG_SWAP, PTE_PRESENT, HostMemory
from sim.host.mm import Mm
from sim.schema import Strict

PAGE_REPORTING_CAPACITY = 32  # scatterlist entries per request (include/linux/page_reporting.h)
PAGE_REPORTING_DELAY_MS = 2000  # PAGE_REPORTING_DELAY: 2 * HZ
PAGEBLOCK_ORDER = 9  # x86-64 pageblock_order (HPAGE_PMD_ORDER): the default reporting order
MAX_PAGE_ORDER = 10  # the buddy allocator's largest order
BUDGET_FRACTION = 16  # page_reporting_cycle: a sixteenth of the free list per pass
MAX_COST_NS = 10**9  # one operation costing more than a second of CPU is a typo
NS_PER_MS = 1_000_000

IDLE, REQUESTED, ACTIVE = 0, 1, 2  # PAGE_REPORTING_IDLE, _REQUESTED, _ACTIVE


class PageReportingCosts(Strict):
    """CPU costs of free page reporting (ns); [EST]: estimates to calibrate (function_graph
    on ``page_reporting_process``, QEMU's ``virtio_balloon_handle_report``)."""

    request_ns: int = Field(
        3000,
        ge=0,
        le=MAX_COST_NS,
        description="Guest per request: page_reporting_cycle's walk under the zone lock, "
        "virtqueue_add_inbuf, the wake-up on QEMU's ack and page_reporting_drain [EST 2-5 us].",
    )
    block_ns: int = Field(
        300,
        ge=0,
        le=MAX_COST_NS,
        description="Guest per block: __isolate_free_page and __putback_isolated_page "
        "(__free_one_page to the tail, __SetPageReported) [EST].",
    )
    vmexit_ns: int = Field(
        800,
        ge=0,
        le=MAX_COST_NS,
        description="VM exit and re-entry of the kick (ioeventfd) [EST; as costs.vmexit_ns].",
    )
    qemu_request_ns: int = Field(
        3000,
        ge=0,
        le=MAX_COST_NS,
        description="QEMU per request: wake-up on the ioeventfd, virtqueue_pop/push and "
        "virtio_notify (irqfd) [EST 2-5 us].",
    )
    discard_block_ns: int = Field(
        30_000,
        ge=0,
        le=MAX_COST_NS,
        description="QEMU per block: qemu_ram_block_from_host and ram_block_discard_range, one "
        "madvise(MADV_DONTNEED) of the block (2 MiB at order 9: 512 ptes zapped, frames "
        "freed, one mmu notifier invalidation) [EST 10-60 us]; the flush's cost to the vCPUs "
        "is the host model's.",
    )


class FreePageReportingConfig(Strict):
    """Free page reporting on a VM's virtio-balloon (QEMU ``free-page-reporting=on``)."""

    enabled: bool = Field(
        False,
        description="VIRTIO_BALLOON_F_REPORTING: the guest reports its free blocks and QEMU "
        "discards them on the host; needs balloon.enabled (works whether or not the balloon "
        "inflates).",
    )
    order: int = Field(
        PAGEBLOCK_ORDER,
        ge=0,
        le=MAX_PAGE_ORDER,
        description="page_reporting_order: the smallest free block reported is 2**order "
        "4 KiB pages, aligned (default pageblock_order 9: 2 MiB).",
    )
    delay_ms: int = Field(
        PAGE_REPORTING_DELAY_MS,
        ge=1,
        le=3_600_000,
        description="PAGE_REPORTING_DELAY: from the free that asks for reporting to the "
        "pass, and between passes while more is asked (the kernel's is 2 s).",
    )
    costs: PageReportingCosts = Field(
        default_factory=PageReportingCosts, description="Free page reporting costs."
    )


@dataclass
class PageReportingCounts:
    """Per-VM free page reporting counters (memsim's own)."""

    reporting_passes: int = 0  # page_reporting_process runs
    reporting_requests: int = 0  # virtqueue requests (virtballoon_free_page_report calls)
    reporting_blocks: int = 0  # blocks reported (scatterlist entries)
    reporting_pages: int = 0  # 4 KiB pages in them
    reporting_freed: int = 0  # host frames the discards freed at once
    reporting_vmexits: int = 0  # kicks
    reporting_guest_ns: int = 0  # the guest's CPU time
    reporting_qemu_ns: int = 0  # QEMU's time on the reporting queue

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for the results."""
        return dict(self.__dict__)


def whole_free_blocks(mem: HostMemory, nb: int) -> NDArray[np.bool_]:
    """Whether each aligned block of ``nb`` frames is wholly free (the buddy allocator's free
    list of that order: a block it holds whole)."""
    nr_blocks = mem.nr_frames // nb
    return (mem.frame_pid[: nr_blocks * nb].reshape(nr_blocks, nb) == -1).all(axis=1)


class PageReporting:
    """The guest's page_reporting device info and work item, with QEMU's reporting queue.

    Args:
        env: the simulation environment.
        mem: the guest kernel's memory (its frames are the gfns).
        discard: QEMU's ``ram_block_discard_range`` of some gfns (``Machine.discard`` for the
            VM); returns the host frames it freed at once.
        cfg: the feature's config.
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        discard: Callable[[NDArray[np.int64]], int],
        cfg: FreePageReportingConfig,
    ) -> None:
        self.env, self.mem, self.cfg = env, mem, cfg
        self._discard = discard
        self.nb = nb = 1 << cfg.order  # 4 KiB pages per block
        self.nr_blocks = mem.nr_frames // nb
        self.reported = np.zeros(self.nr_blocks, dtype=np.bool_)  # PageReported, per block
        self._offsets = np.arange(nb, dtype=np.int64)
        self.counts = PageReportingCounts()
        self.state = IDLE
        self.delay_ns = cfg.delay_ms * NS_PER_MS
        self._prev_on_free = mem.on_free
        mem.on_free = self._frames_freed
        mem.on_tail_taken = self._tail_taken
        self._request()  # page_reporting_register: the initial flush of what is free at boot

    # -- the state machine ------------------------------------------------------------------
    def _request(self) -> None:
        """``__page_reporting_request``: REQUESTED; queue the work 2 s on if it was IDLE."""
        if self.state == REQUESTED:
            return
        old, self.state = self.state, REQUESTED
        if old == IDLE:
            self.env.process(self._work())

    def _work(self) -> Generator[simpy.Event, Any, None]:
        """The delayed work: ``page_reporting_process`` after ``PAGE_REPORTING_DELAY``,
        queued again if a request came in while it ran."""
        yield self.env.timeout(self.delay_ns)
        self.state = ACTIVE
        self.counts.reporting_passes += 1
        yield from self._process_zone()
        if self.state == REQUESTED:
            self.env.process(self._work())
        else:
            self.state = IDLE

    def _frames_freed(self, n: int) -> None:
        """``on_free``: after the allocator's own hook, ``page_reporting_notify_free`` if the
        free completed a block (its pages are all free now)."""
        if self._prev_on_free is not None:
            self._prev_on_free(n)
        if self.state == REQUESTED or n == 0:
            return
        blocks = np.unique(self.mem.last_freed(n) // self.nb).astype(np.int64)
        blocks = blocks[blocks < self.nr_blocks]
        if len(blocks) and self._all_free(blocks).any():
            self._request()

    def _all_free(self, blocks: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which of ``blocks`` have every page free."""
        pfns = blocks[:, None] * self.nb + self._offsets
        return (self.mem.frame_pid[pfns] == -1).all(axis=1)

    def _free_blocks(self) -> NDArray[np.bool_]:
        """Every block's being whole and free (the order's free list)."""
        return whole_free_blocks(self.mem, self.nb)

    # -- a pass -----------------------------------------------------------------------------
    def _isolatable(self) -> int:
        """How many blocks ``__isolate_free_page`` would take one after another now: each
        leaves more free pages than min plus one block."""
        mem, nb = self.mem, self.nb
        room = mem.nr_free - mem.wmark.min - nb
        return -(-room // nb) if room > 0 else 0

    def _process_zone(self) -> Generator[simpy.Event, Any, None]:
        """``page_reporting_process_zone`` and ``page_reporting_cycle`` on the one list."""
        mem, cap = self.mem, PAGE_REPORTING_CAPACITY
        if mem.nr_free <= mem.wmark.low + cap * self.nb:
            return
        free = self._free_blocks()
        budget = -(-int(np.count_nonzero(free)) // (cap * BUDGET_FRACTION))
        while True:
            cand = np.flatnonzero(free & ~self.reported)
            if len(cand) == 0:
                return
            if budget < 0:  # budget spent with blocks left: go on in the next pass
                self.state = REQUESTED
                return
            k = min(cap, len(cand), self._isolatable())
            if k == 0:
                return
            yield from self._report(cand[:k])
            if k < cap or len(cand) == k:  # the leftover request: the pass ends
                return
            budget -= 1
            free = self._free_blocks()

    def _report(self, blocks: NDArray[np.int64]) -> Generator[simpy.Event, Any, None]:
        """One request: isolate, ``virtballoon_free_page_report`` (QEMU discards each block),
        drain to the tail with ``PageReported``; then wait out its time."""
        n, nb, c = len(blocks), self.nb, self.cfg.costs
        gfns = blocks[:, None] * nb + self._offsets
        freed = sum(self._discard(g) for g in gfns)  # ram_block_discard_range per entry
        self.reported[blocks] = True
        self.mem.move_to_tail(gfns.ravel()[::-1])  # the lowest gfn allocated first
        guest_ns = c.request_ns + n * c.block_ns
        qemu_ns = c.qemu_request_ns + n * c.discard_block_ns
        k = self.counts
        k.reporting_requests += 1
        k.reporting_blocks += n
        k.reporting_pages += n * nb
        k.reporting_freed += int(freed)
        k.reporting_vmexits += 1
        k.reporting_guest_ns += guest_ns
        k.reporting_qemu_ns += qemu_ns
        yield self.env.timeout(guest_ns + c.vmexit_ns + qemu_ns)

    # -- allocation from the tail -----------------------------------------------------------
    def _tail_taken(self, frames: NDArray[np.uint32]) -> None:
        """An allocation took reported ``frames``: ``del_page_from_free_list`` clears their
        blocks' ``PageReported`` and ``expand`` leaves the rest of each at the head (the
        stack's top: the tail ends below the lowest block reached)."""
        self.reported[frames // self.nb] = False
        self.mem.tail = self.mem.tail // self.nb * self.nb

    # -- reports and checks -----------------------------------------------------------------
    def reported_gfns(self) -> NDArray[np.int64]:
        """The gfns of every reported block."""
        return (np.flatnonzero(self.reported)[:, None] * self.nb + self._offsets).ravel()

    def check(self) -> None:
        """Reported blocks are wholly free, and the free stack's tail is exactly their frames,
        one block after another."""
        mem, nb = self.mem, self.nb
        gfns = self.reported_gfns()
        assert (mem.frame_pid[gfns] == -1).all(), "a reported page is in use"
        assert mem.tail == len(gfns), "the free stack's tail is not the reported blocks"
        tail = mem.free_list()[: mem.tail].reshape(-1, nb) // nb
        assert (tail == tail[:, :1]).all(), "a block split in the tail"
        assert self.reported[tail[:, 0]].all(), "an unreported block in the tail"


def check_discarded(mm: Mm, host: HostMemory, spte: NDArray[Any], gfns: NDArray[np.int64]) -> None:
    """Reported gfns of ``mm`` have nothing on the host: no frame (but for folios whose I/O is
    still in flight, ``Mm.zapped`` and THP pages zapped from them), no swap copy, no pte and
    no spte (``spte``: one row of spte slots per gfn)."""
    if mm.dead or len(gfns) == 0:
        return
    pids = mm.pid_base + gfns
    if mm.zapped:
        pids = pids[~np.isin(pids, np.fromiter(mm.zapped, dtype=np.int64))]
    if host.thp_zapped is not None:  # zapped from a THP under I/O: freed when it ends
        pids = pids[~host.thp_zapped[pids]]
    f = host.flags[pids]
    assert not (f & np.uint8(HAS_FRAME | PG_SWAP | PTE_PRESENT)).any(), (
        "a reported gfn is backed on the host"
    )
    assert not spte[pids - mm.pid_base].any(), "a reported gfn has an spte"

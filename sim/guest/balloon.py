"""virtio-balloon: the guest driver and QEMU's device for one VM, as SimPy processes.

Models
    QEMU's device holds the config space: ``num_pages``, the balloon size the host asks for
    (set by ``virtio_balloon_to_target`` from the ``balloon`` monitor command, that is libvirt's
    ``setMemory`` or MOM), and ``actual``, the size the driver last reported. Setting
    ``num_pages`` raises a config interrupt; the driver's ``virtballoon_changed`` queues
    ``update_balloon_size_func``, which compares the target with the pages it holds
    (``towards_target``) and runs one ``fill_balloon`` or ``leak_balloon`` of at most
    ``VIRTIO_BALLOON_ARRAY_PFNS_MAX`` (256) pages, writes ``actual`` back
    (``update_balloon_size``) and queues itself again while a difference remains.

    Inflate (``fill_balloon``): the driver allocates the chunk's pages one by one with
    ``balloon_page_alloc`` (``__GFP_NORETRY | __GFP_NOMEMALLOC``: at most one round of direct
    reclaim, no reserves; here :meth:`BalloonGuest.balloon_alloc`). When an allocation fails it
    logs "Out of puff!", sleeps 200 ms (``msleep(200)``) and stops; the pages it did get are
    enqueued and sent with ``tell_host`` (the pfn array as one inflate-virtqueue request, a
    kick, then a wait for QEMU's ack); the work item queues itself again, so the retry follows
    the sleep. QEMU's ``virtio_balloon_handle_output`` -> ``balloon_inflate_page`` ->
    ``ram_block_discard_range`` discards each page (``MADV_DONTNEED``: the host frees the frame
    and KVM zaps its spte; here the ``discard`` callable).

    Deflate (``leak_balloon``): the driver dequeues up to a chunk of pages, most recently
    inflated first (``balloon_page_dequeue`` takes the head of the list ``balloon_page_insert``
    adds to), tells the host on the deflate virtqueue, then gives the pages back to the guest
    (``release_pages_balloon``). QEMU's ``balloon_deflate_page`` only advises
    ``MADV_WILLNEED``, which finds nothing to read on a discarded anonymous page: the guest's
    next touch is a zero-fill fault on the host.

    Deflate on OOM (``VIRTIO_BALLOON_F_DEFLATE_ON_OOM``): the driver registers an OOM notifier
    (``virtio_balloon_oom_notify``) that leaks ``VIRTIO_BALLOON_OOM_NR_PAGES`` (256) pages and
    returns them as freed, so ``out_of_memory`` retries the allocation instead of killing.
    Without the feature the balloon's pages also leave MemTotal (``adjust_managed_page_count``),
    so the stats report MemTotal less the balloon; with it they do not.

    Stats queue (``VIRTIO_BALLOON_F_STATS_VQ``): the driver primes the queue with one buffer at
    probe. QEMU's timer (``guest-stats-polling-interval`` seconds, ``balloon_stats_poll_cb``)
    hands the buffer back; the driver's ``stats_request`` -> ``stats_handle_request`` ->
    ``update_balloon_stats`` fills in the guest's figures and kicks; QEMU's
    ``virtio_balloon_receive_stats`` stores them and re-arms the timer, so one poll period is
    the interval plus the round trip. 0 disables polling (QEMU's default; libvirt sets it when
    told, MOM sets it to its guest-monitor interval).

Costs
    :class:`BalloonCosts`, [EST] figures: guest CPU per page allocated and freed, a VM exit per
    virtqueue kick and per write of ``actual``, QEMU's work per request (pop, push, interrupt
    back) and per pfn, its ``madvise`` per page (one ``MADV_DONTNEED`` per 4 KiB page on the
    inflate queue, one ``MADV_WILLNEED`` on the deflate queue) and the stats round trip. The
    driver's work item waits for all of it in turn (``tell_host`` waits for the ack); the
    counters split the time between the guest (``guest_ns``) and QEMU's thread (``qemu_ns``).
    Costs are per 4 KiB page.

Simplifications
    One work item in flight at a time, one vCPU's worth of CPU for it, not charged to any vCPU
    here. QEMU discards a request's pages when it takes the request;
    the time it spends on them follows, before the ack. Balloon compaction
    (``virtballoon_migratepage``) is not modelled; free page reporting is
    sim/guest/page_reporting.py, free page hinting sim/guest/free_page_hint.py. The OOM
    notifier runs inside the guest's allocation path and cannot wait: its pages are freed at
    once and its deflate request (a kick, QEMU's work) is counted but takes no simulated time;
    it leaks only pages whose inflate request QEMU has
    acked (the kernel's notifier would wait on ``balloon_lock`` for an inflate in flight).

Sources
    drivers/virtio/virtio_balloon.c (``fill_balloon``, ``leak_balloon``, ``tell_host``,
    ``towards_target``, ``update_balloon_size_func``, ``update_balloon_stats``,
    ``virtio_balloon_oom_notify``, ``init_vqs``), include/uapi/linux/virtio_balloon.h
    (``VIRTIO_BALLOON_S_*``), mm/balloon_compaction.c (``balloon_page_alloc``,
    ``balloon_page_enqueue``, ``balloon_page_dequeue``: the ``BALLOON_INFLATE`` and
    ``BALLOON_DEFLATE`` events); QEMU hw/virtio/virtio-balloon.c
    (``virtio_balloon_handle_output``, ``balloon_inflate_page``, ``balloon_deflate_page``,
    ``virtio_balloon_to_target``, ``virtio_balloon_stat``, ``balloon_stats_poll_cb``,
    ``virtio_balloon_receive_stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import simpy
from numpy.typing import NDArray
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from sim.guest.free_page_hint import FreePageHintConfig, FreePageHinting
from sim.guest.page_reporting import FreePageReportingConfig, PageReporting
from sim.schema import Strict

VIRTIO_BALLOON_ARRAY_PFNS_MAX = 256  # pfns in one inflate/deflate request (the driver's array)
VIRTIO_BALLOON_OOM_NR_PAGES = 256  # 4 KiB pages the OOM notifier leaks per call
VIRTIO_BALLOON_PFN_KIB = 4  # the balloon's page unit (VIRTIO_BALLOON_PFN_SHIFT 12)
OUT_OF_PUFF_SLEEP_NS = 200_000_000  # fill_balloon's msleep(200) after a failed allocation
MAX_COST_NS = 10**9  # one operation costing more than a second of CPU is a typo
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class GuestMeminfo:
    """The guest figures ``update_balloon_stats`` sends (``VIRTIO_BALLOON_S_*``), in pages and
    counts: MemTotal, MemFree, MemAvailable, disk caches (``NR_FILE_PAGES``), pages swapped in
    and out (``PSWPIN``/``PSWPOUT``), major and all page faults (``PGMAJFAULT``/``PGFAULT``).
    ``total`` is MemTotal without the balloon; the driver takes the balloon out when it adjusts
    the managed page count (no deflate-on-OOM)."""

    total: int  # VIRTIO_BALLOON_S_MEMTOT
    free: int  # VIRTIO_BALLOON_S_MEMFREE
    available: int  # VIRTIO_BALLOON_S_AVAIL
    cached: int  # VIRTIO_BALLOON_S_CACHES
    swap_in: int  # VIRTIO_BALLOON_S_SWAP_IN (sent in bytes; pages here)
    swap_out: int  # VIRTIO_BALLOON_S_SWAP_OUT
    major_faults: int  # VIRTIO_BALLOON_S_MAJFLT
    minor_faults: int  # VIRTIO_BALLOON_S_MINFLT


class BalloonGuest(Protocol):
    """What the balloon driver needs of the guest kernel."""

    nr_pages: int  # guest RAM in pages (MemTotal before the balloon)

    def balloon_alloc(self, n: int) -> Generator[simpy.Event, Any, NDArray[np.int64]]:
        """Allocate up to n guest pages for the balloon (balloon_page_alloc's gfp:
        __GFP_NORETRY, __GFP_NOMEMALLOC: one attempt of direct reclaim at most); returns their
        gfns, fewer than n (possibly none) when the guest cannot spare them. May wait (guest
        direct reclaim)."""
        ...

    def balloon_free(self, gfns: NDArray[np.int64]) -> None:
        """Give pages back to the guest's free lists (deflate)."""
        ...

    def meminfo(self) -> GuestMeminfo:
        """The guest's /proc/meminfo and vmstat figures the stats queue reports."""
        ...

    def register_oom_notifier(self, fn: Callable[[], int]) -> None:
        """fn is called when the guest is about to OOM-kill; it returns pages freed."""
        ...


class BalloonCosts(Strict):
    """CPU costs of ballooning (ns per operation, per 4 KiB page); [EST]:
    estimates to calibrate with tracepoints (``virtio_balloon`` trace events in QEMU,
    function_graph on ``fill_balloon``)."""

    alloc_page_ns: int = Field(
        250,
        ge=0,
        le=MAX_COST_NS,
        description="Guest: balloon_page_alloc from the per-CPU free lists, "
        "balloon_page_enqueue (page lock, list insert) and set_page_pfns, per page [EST].",
    )
    free_page_ns: int = Field(
        200,
        ge=0,
        le=MAX_COST_NS,
        description="Guest: balloon_page_dequeue and put_page back to the buddy allocator, "
        "per page [EST].",
    )
    vmexit_ns: int = Field(
        800,
        ge=0,
        le=MAX_COST_NS,
        description="VM exit and re-entry of a virtqueue kick (ioeventfd) or of the config "
        "write of actual [EST; as costs.vmexit_ns].",
    )
    request_ns: int = Field(
        3000,
        ge=0,
        le=MAX_COST_NS,
        description="QEMU's work per virtqueue request besides its pages: wake-up on the "
        "ioeventfd, virtqueue_pop/push, virtio_notify (irqfd) and the guest's interrupt "
        "waking the driver (balloon_ack) [EST 2-5 us].",
    )
    qemu_page_ns: int = Field(
        150,
        ge=0,
        le=MAX_COST_NS,
        description="QEMU per pfn of a request: memory_region_find, "
        "qemu_ram_block_from_host [EST].",
    )
    discard_page_ns: int = Field(
        2000,
        ge=0,
        le=MAX_COST_NS,
        description="QEMU per inflated page: ram_block_discard_range's "
        "madvise(MADV_DONTNEED) of one page (syscall, zap of one pte with its mmu notifier "
        "invalidation, frame freed) [EST 1-5 us]; the flush's cost to the vCPUs is the "
        "host model's.",
    )
    willneed_page_ns: int = Field(
        500,
        ge=0,
        le=MAX_COST_NS,
        description="QEMU per deflated page: balloon_deflate_page's madvise(MADV_WILLNEED), "
        "a syscall that finds no swap entry to read [EST].",
    )
    stats_ns: int = Field(
        5000,
        ge=0,
        le=MAX_COST_NS,
        description="Guest: update_balloon_stats (all_vm_events sums the per-CPU event "
        "counters, si_meminfo, si_mem_available) and its work item [EST 2-10 us].",
    )


class BalloonConfig(Strict):
    """One VM's virtio-balloon device (``-device virtio-balloon``; libvirt ``<memballoon>``)."""

    enabled: bool = Field(False, description="Give the VM a balloon device and driver.")
    deflate_on_oom: bool = Field(
        False,
        description="VIRTIO_BALLOON_F_DEFLATE_ON_OOM (QEMU deflate-on-oom=on, default off): "
        "the guest's OOM notifier leaks 256 4 KiB pages instead of killing, and the "
        "balloon's pages stay in MemTotal.",
    )
    stats_interval_s: int = Field(
        5,
        ge=0,
        le=86_400,
        description="QEMU's guest-stats-polling-interval in seconds; 0 disables polling "
        "(QEMU's default). 5 is what MOM sets through libvirt (its guest-monitor-interval).",
    )
    initial_target_mib: int | None = Field(
        None,
        ge=1,
        le=1 << 40,
        description="Guest memory the balloon aims at from boot (QEMU's balloon command, "
        "libvirt's currentMemory); None: no balloon until a manager sets a target.",
    )
    costs: BalloonCosts = Field(default_factory=BalloonCosts, description="Balloon costs.")
    free_page_reporting: FreePageReportingConfig = Field(
        default_factory=FreePageReportingConfig,
        description="Free page reporting (QEMU free-page-reporting=on): the guest reports its "
        "free 2 MiB blocks and the host discards them.",
    )
    free_page_hint: FreePageHintConfig = Field(
        default_factory=FreePageHintConfig,
        description="Free page hinting (QEMU free-page-hint=on) and the live migrations that "
        "use it: the guest lends its free 4 MiB blocks to each migration until it ends.",
    )

    @model_serializer(mode="wrap")
    def _without_unset_hint(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``free_page_hint`` out of dumps when off, so configs written before it
        existed dump (and hash) as they did."""
        out: dict[str, Any] = handler(self)
        if out.get("free_page_hint") == FreePageHintConfig().model_dump():
            del out["free_page_hint"]
        return out

    @model_validator(mode="after")
    def _reporting_needs_the_device(self) -> BalloonConfig:
        if self.free_page_reporting.enabled and not self.enabled:
            raise ValueError(
                "balloon.free_page_reporting needs the balloon device: set balloon.enabled "
                "true or free_page_reporting.enabled false"
            )
        if self.free_page_hint.enabled and not self.enabled:
            raise ValueError(
                "balloon.free_page_hint needs the balloon device: set balloon.enabled true "
                "or free_page_hint.enabled false"
            )
        return self


@dataclass
class BalloonCounts:
    """Per-VM balloon counters (the guest's vmstat names where there are some)."""

    balloon_inflate: int = 0  # pages enqueued (vmstat balloon_inflate)
    balloon_deflate: int = 0  # pages dequeued (vmstat balloon_deflate)
    inflate_requests: int = 0  # inflate-virtqueue requests (chunks told to the host)
    deflate_requests: int = 0  # deflate-virtqueue requests
    out_of_puff: int = 0  # fill_balloon gave up on a failed allocation and slept
    oom_deflates: int = 0  # OOM notifier calls that freed pages
    oom_deflate_pages: int = 0  # pages those calls freed
    stats_requests: int = 0  # stats buffers QEMU received
    vmexits: int = 0  # kicks and config writes
    guest_ns: int = 0  # the driver's CPU time
    qemu_ns: int = 0  # QEMU's thread's time on the balloon's queues

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for the results."""
        return dict(self.__dict__)


class BalloonDevice:
    """QEMU's virtio-balloon device: the config space, the request handlers, the stats."""

    def __init__(
        self,
        ram_pages: int,
        discard: Callable[[NDArray[np.int64]], object],
        costs: BalloonCosts,
        counts: BalloonCounts,
    ) -> None:
        self.ram_pages = ram_pages  # the VM's RAM (ram_size; MOM's balloon_max)
        self.num_pages = 0  # config num_pages: the balloon size asked for
        self.actual = 0  # config actual: the size the driver last reported
        self.stats: GuestMeminfo | None = None  # last stats received
        self.stats_last_update_ns = -1
        self._discard = discard
        self._costs = costs
        self._counts = counts
        # the config interrupt's handler: the driver's virtballoon_changed once it probes
        self.config_changed: Callable[[], None] = lambda: None

    def to_target(self, target_pages: int) -> None:
        """``virtio_balloon_to_target``: the guest should have ``target_pages`` of RAM; the
        balloon takes the rest. A target above RAM is RAM; a target of 0 is ignored."""
        target = min(int(target_pages), self.ram_pages)
        if target > 0:
            self.set_num_pages(self.ram_pages - target)

    def set_num_pages(self, num_pages: int) -> None:
        """Write config ``num_pages`` and raise the config interrupt (``virtio_notify_config``),
        even when unchanged: the driver re-checks its size at every write."""
        self.num_pages = int(num_pages)
        self.config_changed()

    def balloon_cur(self) -> int:
        """Guest memory as QEMU reports it (``virtio_balloon_stat``: ram_size less actual):
        MOM's ``balloon_cur``, libvirt's current memory."""
        return self.ram_pages - self.actual

    def stat_free_memory(self) -> int | None:
        """``stat-free-memory`` (MemFree) of the last stats, None before any (libvirt's
        ``unused``, MOM's ``mem_unused``)."""
        return None if self.stats is None else self.stats.free

    def handle_inflate(self, gfns: NDArray[np.int64]) -> int:
        """``virtio_balloon_handle_output`` on the inflate queue: ``balloon_inflate_page`` ->
        ``ram_block_discard_range`` for each pfn. Returns the time it took (ns)."""
        self._discard(gfns)
        c = self._costs
        ns = c.request_ns + len(gfns) * (c.qemu_page_ns + c.discard_page_ns)
        self._counts.qemu_ns += ns
        self._counts.inflate_requests += 1
        return ns

    def handle_deflate(self, n: int) -> int:
        """The deflate queue: ``balloon_deflate_page`` (``MADV_WILLNEED``) for each pfn;
        nothing changes on the host. Returns the time it took (ns)."""
        c = self._costs
        ns = c.request_ns + n * (c.qemu_page_ns + c.willneed_page_ns)
        self._counts.qemu_ns += ns
        self._counts.deflate_requests += 1
        return ns

    def receive_stats(self, stats: GuestMeminfo, now_ns: int) -> None:
        """``virtio_balloon_receive_stats``: keep the buffer's figures and their time."""
        self.stats = stats
        self.stats_last_update_ns = now_ns
        self._counts.stats_requests += 1


class BalloonDriver:
    """The guest's virtio_balloon driver: the size work item and the stats work item."""

    def __init__(
        self,
        env: simpy.Environment,
        guest: BalloonGuest,
        device: BalloonDevice,
        cfg: BalloonConfig,
        counts: BalloonCounts,
        chunk: int = VIRTIO_BALLOON_ARRAY_PFNS_MAX,
        oom_chunk: int = VIRTIO_BALLOON_OOM_NR_PAGES,
    ) -> None:
        self.env = env
        self.guest = guest
        self.device = device
        self.cfg = cfg
        self.counts = counts
        self.chunk = chunk
        self.oom_chunk = oom_chunk
        self.num_pages = 0  # vb->num_pages: pages enqueued, acked or not
        # vb_dev_info->pages: acked pages, a stack (the list's head is its top)
        self._pages = np.empty(guest.nr_pages, dtype=np.int64)
        self._top = 0
        self._wake: simpy.Event | None = None
        self.busy = False  # the size work item is queued or running
        device.config_changed = self.virtballoon_changed
        if cfg.deflate_on_oom:
            guest.register_oom_notifier(self.oom_notify)
        device.receive_stats(self._stats(), int(env.now))  # init_vqs primes the stats queue
        env.process(self._update_balloon_size_work())
        if cfg.stats_interval_s > 0:
            env.process(self._stats_poll())

    @property
    def pages(self) -> NDArray[np.int64]:
        """The gfns the balloon holds whose inflate QEMU has acked, oldest first."""
        return self._pages[: self._top]

    def towards_target(self) -> int:
        """``towards_target``: pages still to inflate (> 0) or deflate (< 0)."""
        return self.device.num_pages - self.num_pages

    def virtballoon_changed(self) -> None:
        """The config interrupt: queue the size work item if it is idle."""
        if self._wake is not None and not self._wake.triggered:
            self.busy = True
            self._wake.succeed()

    def _update_balloon_size_work(self) -> Generator[simpy.Event, Any, None]:
        """``update_balloon_size_func``: one chunk per run, requeued while a difference
        remains."""
        while True:
            diff = self.towards_target()
            if diff == 0:
                self.busy = False
                self._wake = self.env.event()
                yield self._wake
                self._wake = None
                continue
            self.busy = True
            if diff > 0:
                yield from self._fill_balloon(min(diff, self.chunk))
            else:
                yield from self._leak_balloon(min(-diff, self.chunk))
            yield from self._update_balloon_size()

    def _fill_balloon(self, num: int) -> Generator[simpy.Event, Any, None]:
        """``fill_balloon``: allocate, sleep 200 ms if short ("Out of puff!"), enqueue, tell
        the host."""
        gfns = np.asarray((yield from self.guest.balloon_alloc(num)), dtype=np.int64)
        got = len(gfns)
        c = self.cfg.costs
        if got:
            self.counts.guest_ns += got * c.alloc_page_ns
            yield self.env.timeout(got * c.alloc_page_ns)
        if got < num:
            self.counts.out_of_puff += 1
            yield self.env.timeout(OUT_OF_PUFF_SLEEP_NS)
        if got == 0:
            return
        self.num_pages += got
        self.counts.balloon_inflate += got
        yield from self._tell_host_inflate(gfns)
        self._pages[self._top : self._top + got] = gfns
        self._top += got

    def _tell_host_inflate(self, gfns: NDArray[np.int64]) -> Generator[simpy.Event, Any, None]:
        """``tell_host`` on the inflate queue: kick, QEMU discards, ack."""
        yield from self._exit()
        yield self.env.timeout(self.device.handle_inflate(gfns))

    def _leak_balloon(self, num: int) -> Generator[simpy.Event, Any, None]:
        """``leak_balloon``: dequeue the newest pages, tell the host, then free them."""
        n = min(num, self._top)
        if n == 0:
            return
        gfns = self._pop(n)
        cost = n * self.cfg.costs.free_page_ns
        self.counts.guest_ns += cost
        yield self.env.timeout(cost)
        yield from self._exit()
        yield self.env.timeout(self.device.handle_deflate(n))
        self.guest.balloon_free(gfns)

    def _pop(self, n: int) -> NDArray[np.int64]:
        """Dequeue ``n`` pages from the top of the stack (``balloon_page_dequeue``)."""
        self._top -= n
        gfns = self._pages[self._top : self._top + n].copy()
        self.num_pages -= n
        self.counts.balloon_deflate += n
        return gfns

    def _update_balloon_size(self) -> Generator[simpy.Event, Any, None]:
        """``update_balloon_size``: write ``actual`` (a config write: a VM exit)."""
        yield from self._exit()
        self.device.actual = self.num_pages

    def _exit(self) -> Generator[simpy.Event, Any, None]:
        self.counts.vmexits += 1
        yield self.env.timeout(self.cfg.costs.vmexit_ns)

    def oom_notify(self) -> int:
        """``virtio_balloon_oom_notify``: leak up to ``VIRTIO_BALLOON_OOM_NR_PAGES`` acked pages
        at once and return how many were freed."""
        n = min(self.oom_chunk, self._top)
        if n == 0:
            return 0
        gfns = self._pop(n)
        c = self.cfg.costs
        self.counts.guest_ns += n * c.free_page_ns
        self.counts.vmexits += 2  # the deflate kick and the write of actual
        self.device.handle_deflate(n)
        self.guest.balloon_free(gfns)
        self.device.actual = self.num_pages
        self.counts.oom_deflates += 1
        self.counts.oom_deflate_pages += n
        return n

    def _stats(self) -> GuestMeminfo:
        """``update_balloon_stats``: MemTotal loses the balloon unless deflate-on-OOM."""
        mi = self.guest.meminfo()
        if self.cfg.deflate_on_oom:
            return mi
        return GuestMeminfo(
            total=mi.total - self.num_pages,
            free=mi.free,
            available=mi.available,
            cached=mi.cached,
            swap_in=mi.swap_in,
            swap_out=mi.swap_out,
            major_faults=mi.major_faults,
            minor_faults=mi.minor_faults,
        )

    def _stats_poll(self) -> Generator[simpy.Event, Any, None]:
        """QEMU's stats timer and the driver's answer: ``balloon_stats_poll_cb`` hands the
        buffer back (QEMU's push and interrupt), ``stats_handle_request`` fills and kicks it,
        ``virtio_balloon_receive_stats`` re-arms the timer for the interval."""
        c = self.cfg.costs
        interval_ns = self.cfg.stats_interval_s * NS_PER_S
        while True:
            self.counts.qemu_ns += c.request_ns
            yield self.env.timeout(c.request_ns)
            self.counts.guest_ns += c.stats_ns
            yield self.env.timeout(c.stats_ns)
            stats = self._stats()
            yield from self._exit()
            self.device.receive_stats(stats, int(self.env.now))
            yield self.env.timeout(interval_ns)


@dataclass
class VirtioBalloon:
    """One VM's balloon: QEMU's device and the guest's driver, wired together."""

    device: BalloonDevice
    driver: BalloonDriver
    counts: BalloonCounts
    reporting: PageReporting | None = None  # free page reporting, when the device offers it
    hinting: FreePageHinting | None = None  # free page hinting, when the device offers it

    def counters(self) -> dict[str, int]:
        """The counters (free page reporting's too, if on) and the pages the balloon holds
        (``balloon_pages``), for the results."""
        out = {**self.counts.as_dict(), "balloon_pages": self.driver.num_pages}
        if self.reporting is not None:
            out.update(self.reporting.counts.as_dict())
        if self.hinting is not None:
            out.update(self.hinting.counts.as_dict())
        return out

    @classmethod
    def create(
        cls,
        env: simpy.Environment,
        guest: BalloonGuest,
        discard: Callable[[NDArray[np.int64]], object],
        cfg: BalloonConfig,
    ) -> VirtioBalloon:
        """Realize the device, probe the driver, and apply ``initial_target_mib``."""
        counts = BalloonCounts()
        device = BalloonDevice(guest.nr_pages, discard, cfg.costs, counts)
        driver = BalloonDriver(
            env,
            guest,
            device,
            cfg,
            counts,
        )
        if cfg.initial_target_mib is not None:
            device.to_target(cfg.initial_target_mib * 1024 // VIRTIO_BALLOON_PFN_KIB)
        return cls(device, driver, counts)

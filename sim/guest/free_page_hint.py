"""Free page hinting: the guest lends its free memory to a live migration, and gets it back late.

Models
    ``VIRTIO_BALLOON_F_FREE_PAGE_HINT`` (QEMU ``free-page-hint=on``) serves live migration: when
    a precopy migration of the VM starts, QEMU's ``virtio_balloon_free_page_start`` gives the
    device a new command id and raises a config interrupt; the driver's
    ``report_free_page_func`` -> ``send_free_pages`` then allocates free blocks of
    ``VIRTIO_BALLOON_HINT_BLOCK_ORDER`` (the largest buddy order, 10: 4 MiB) one after
    another with ``VIRTIO_BALLOON_FREE_PAGE_ALLOC_FLAG`` (``__GFP_NORETRY | __GFP_NOWARN |
    __GFP_NOMEMALLOC``, no reclaim flag: the allocator takes a block while the zone stays
    above its min watermark, wakes no kswapd and never reclaims) until none is left, and
    sends each block's address on the free-page virtqueue. QEMU clears those pages in the
    migration's dirty bitmap (``qemu_guest_free_page_hint``): the bulk stage does not send
    them. The driver keeps the blocks on its ``free_page_list`` until the migration ends and
    QEMU writes ``VIRTIO_BALLOON_CMD_ID_DONE`` (``return_free_pages_to_mm``).

    Meanwhile the guest is short of the memory it lent: its next allocations find the zone at
    min, wake kswapd and reclaim. The driver's shrinker (``virtio_balloon_shrinker_count``:
    the hinted pages; ``virtio_balloon_shrinker_scan`` -> ``shrink_free_pages``: whole blocks,
    rounding up) gives blocks back only as ``shrink_slab`` asks, after each LRU pass:
    ``do_shrink_slab`` scans ``(freeable >> priority) * 4 / seeks`` objects plus the deferred
    work ``>> priority``, in batches of ``SHRINK_BATCH`` (128), and only once that total
    reaches a batch or all of the shrinker's objects. At the guest's first priorities that is
    nothing, so the guest swaps and drops page cache while it still holds hinted free memory,
    and gets the blocks back only when reclaim is desperate or the migration ends.

    The host's memory does not change: hinted pages stay backed (QEMU skips them, it does not
    discard them). What changes is the guest's reclaim and the migration's bulk stage
    (``hint_pages``: pages it did not have to send).

Simplifications
    Hinting is instant at the migration's start (the driver's CPU, the virtqueue kicks and
    QEMU's bitmap work take no simulated time) and the migration itself is its start time and
    ``precopy_s`` (no dirty-page rounds, no downtime, no destination). A block is an aligned
    run of wholly free gfns, taken lowest first. One migration at a time.

Sources
    drivers/virtio/virtio_balloon.c (``virtio_balloon_queue_free_page_work``,
    ``report_free_page_func``, ``send_free_pages``, ``get_free_page_and_send``,
    ``return_free_pages_to_mm``, ``shrink_free_pages``, ``virtio_balloon_shrinker_scan``,
    ``virtio_balloon_shrinker_count``); mm/shrinker.c ``do_shrink_slab``; mm/page_alloc.c
    ``__zone_watermark_ok``; QEMU hw/virtio/virtio-balloon.c
    (``virtio_balloon_free_page_start``, ``_stop``, ``_done``,
    ``virtio_balloon_free_page_hint_notify``), migration/ram.c
    (``qemu_guest_free_page_hint``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from numpy.typing import NDArray
from pydantic import Field, model_validator

from sim.guest.page_reporting import whole_free_blocks
from sim.host.memory import HostMemory
from sim.host.vmscan import ScanControl
from sim.schema import Strict

HINT_BLOCK_ORDER = 10  # VIRTIO_BALLOON_HINT_BLOCK_ORDER (MAX_PAGE_ORDER on x86-64)
SHRINK_BATCH = 128  # mm/shrinker.c: objects per scan_objects call
DEFAULT_SEEKS = 2  # the shrinker's seeks (shrinker_alloc's default)


class FreePageHintConfig(Strict):
    """Free page hinting on a VM's virtio-balloon (QEMU ``free-page-hint=on``) and the live
    migrations that use it."""

    enabled: bool = Field(
        False,
        description="VIRTIO_BALLOON_F_FREE_PAGE_HINT: at each live migration's start the "
        "guest lends QEMU its free 4 MiB blocks (the bulk stage skips them) until the "
        "migration ends; needs balloon.enabled.",
    )
    migrations_s: list[float] = Field(
        default_factory=list,
        max_length=1000,
        description="When live migrations of this VM start (seconds of simulated time, "
        "ascending; each must end before the next starts).",
    )
    precopy_s: float = Field(
        10.0,
        gt=0.0,
        le=1e6,
        description="How long each migration runs before QEMU says DONE and the guest gets "
        "its hinted blocks back.",
    )

    @model_validator(mode="after")
    def _one_at_a_time(self) -> FreePageHintConfig:
        times = self.migrations_s
        if any(t < 0 for t in times):
            raise ValueError("free_page_hint.migrations_s: times must be >= 0")
        for a, b in zip(times, times[1:], strict=False):
            if b < a + self.precopy_s:
                raise ValueError(
                    f"free_page_hint.migrations_s: the migration at {b} s starts before the "
                    f"one at {a} s ends ({a + self.precopy_s} s): space them by precopy_s"
                )
        return self


@dataclass
class FreePageHintCounts:
    """Per-VM free page hinting counters (memsim's own)."""

    hint_migrations: int = 0  # command ids the driver answered
    hint_blocks: int = 0  # blocks hinted (free-page virtqueue buffers)
    hint_pages: int = 0  # pages in them: what the migrations' bulk stage did not send
    hint_shrunk_blocks: int = 0  # blocks the shrinker gave back before the migration ended
    hint_shrinker_calls: int = 0  # scan_objects calls

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for the results."""
        return dict(self.__dict__)


class FreePageHinting:
    """The driver's free page hinting and its shrinker, with QEMU's migrations driving it.

    Args:
        env: the simulation environment.
        mem: the guest kernel's memory (its frames are the gfns).
        take: allocate the given free gfns to the driver (kernel pages, no LRU).
        give_back: free gfns the driver held.
        cfg: the feature's config.
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        take: Callable[[NDArray[np.int64]], None],
        give_back: Callable[[NDArray[np.int64]], None],
        cfg: FreePageHintConfig,
    ) -> None:
        self.env, self.mem, self.cfg = env, mem, cfg
        self._take, self._give_back = take, give_back
        self.nb = 1 << HINT_BLOCK_ORDER  # 4 KiB pages per block
        self.held: list[int] = []  # free_page_list: the hinted blocks, oldest first
        self.nr_deferred = 0  # the shrinker's deferred work (shrinker->nr_deferred)
        self.counts = FreePageHintCounts()
        self._offsets = np.arange(self.nb, dtype=np.int64)
        for t in cfg.migrations_s:
            env.process(self._migration(round(t * 1e9), round(cfg.precopy_s * 1e9)))

    def _gfns(self, blocks: list[int]) -> NDArray[np.int64]:
        return (np.asarray(blocks, dtype=np.int64)[:, None] * self.nb + self._offsets).ravel()

    def _migration(self, start_ns: int, precopy_ns: int) -> Generator[simpy.Event, Any, None]:
        """One live migration: START (a new command id), the driver hints, then DONE."""
        yield self.env.timeout(start_ns)
        self.send_free_pages()
        yield self.env.timeout(precopy_ns)
        self.return_free_pages(len(self.held))

    def send_free_pages(self) -> None:
        """``send_free_pages``: take wholly free aligned blocks, lowest first, while each
        allocation leaves the zone above min (``__zone_watermark_ok`` at order 10), and hint
        them."""
        mem, nb = self.mem, self.nb
        self.counts.hint_migrations += 1
        for b in np.flatnonzero(whole_free_blocks(mem, nb)).tolist():
            if mem.nr_free - nb < mem.wmark.min:
                break
            self._take(self._gfns([b]))
            self.held.append(b)
            self.counts.hint_blocks += 1
            self.counts.hint_pages += nb

    def return_free_pages(self, n: int) -> int:
        """``return_free_pages_to_mm``: give the ``n`` most recently hinted blocks back to the
        guest's free lists; returns how many there were."""
        n = min(n, len(self.held))
        if n == 0:
            return 0
        blocks = self.held[len(self.held) - n :]
        del self.held[len(self.held) - n :]
        self._give_back(self._gfns(blocks))
        return n

    def shrink(self, sc: ScanControl) -> None:
        """``do_shrink_slab`` for the driver's shrinker at ``sc.priority``: whole blocks back
        to the free lists, counted as reclaimed."""
        freeable = len(self.held) * self.nb
        if freeable == 0:
            return
        nr = self.nr_deferred
        self.nr_deferred = 0
        delta = (freeable >> sc.priority) * 4 // DEFAULT_SEEKS
        total = min((nr >> sc.priority) + delta, 2 * freeable)
        scanned = 0
        while total >= SHRINK_BATCH or total >= freeable:
            if not self.held:
                break
            todo = min(SHRINK_BATCH, total)
            blocks = -(-todo // self.nb)  # shrink_free_pages rounds up to whole blocks
            freed = self.return_free_pages(blocks)
            self.counts.hint_shrinker_calls += 1
            self.counts.hint_shrunk_blocks += freed
            sc.nr_reclaimed += freed * self.nb
            total -= todo
            scanned += todo
        self.nr_deferred = min(max(nr + delta - scanned, 0), 2 * freeable)

    def hinted_gfns(self) -> NDArray[np.int64]:
        """The gfns the driver holds."""
        return self._gfns(self.held) if self.held else np.zeros(0, dtype=np.int64)

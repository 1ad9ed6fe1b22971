"""Kernel samepage merging: ksmd merges identical guest pages into one write-protected KSM page.

Models
    ``ksmd`` (a SimPy process) wakes every ``sleep_ms`` and visits ``pages_to_scan`` pages of the
    mergeable VMs' guest RAM, in address order round-robin over the VMs (``ksm_do_scan``,
    ``scan_get_next_rmap_item``); when its cursor wraps it counts ``full_scans`` and empties the
    unstable tree. A page not mapped by QEMU's pte, or with no frame of its own, is skipped
    (``follow_page`` finds nothing); a page already sharing a KSM page needs nothing. Otherwise
    (``cmp_and_merge_page``):

    1. the stable tree is searched by content (``stable_tree_search``): a KSM page with the same
       content and fewer than ``max_page_sharing`` sharers takes the page
       (``try_to_merge_with_ksm_page``);
    2. the checksum gate (``calc_checksum``): a page whose content changed since ksmd last
       visited it (or never visited: a new rmap_item's checksum is 0) only records its checksum
       and is volatile for this pass;
    3. with ``use_zero_pages`` a zero-filled page is mapped to the shared zero page
       (``try_to_merge_with_zero_page``: ``ksm_zero_pages``; no frame, never on an LRU);
    4. the unstable tree is searched by content (``unstable_tree_search_insert``): a match merges
       both pages into a new KSM page made of the *current* page's frame
       (``try_to_merge_two_pages``, then ``stable_tree_insert``); else the page is inserted.

    Merging one page (``write_protect_page`` + ``replace_page``) is bracketed by
    ``mmu_notifier_invalidate_range_start/end`` on its hva, so KVM zaps its spte and flushes;
    its pte then maps the KSM frame read-only and its own frame is freed. A guest write to a
    sharer faults (its spte is write-protected, kvm/spte.py) and the host breaks the sharing
    (``do_wp_page`` -> ``wp_page_copy``): a new frame, the copy, an invalidation of the old
    pte, ``cow_ksm``; the KSM page is freed with its last sharer.

    Aging a KSM folio walks every sharer's mapping (``rmap_walk_ksm``): N host ptes tested and
    cleared, N notifier calls (N KVM rmap walks), ``rmap_walked`` N (sim/host/rmap.py).

    Reclaim swaps a KSM folio as any anon folio, with one swap slot: ``try_to_unmap`` walks
    every mapped sharer (N invalidations, N KVM zaps and flushes) and turns each pte into a swap
    entry to that slot. While the folio is in the swap cache a sharer's fault maps it again
    (``ksm_might_need_to_copy`` returns a KSM folio as it is). Once it is freed its stable node
    leaves the tree (``remove_node_from_stable_tree``, as ``get_ksm_page`` finds its page gone)
    and stays only as the slot the sharers' swap entries name: the first sharer to fault reads
    the slot into a page of its own (the read-in folio is not KSM); a later one copies that page
    while it is still in memory (``ksm_swpin_copy``) or reads the slot again; the slot is freed
    with the last swap entry.

Memory cgroups
    A KSM folio is charged to the memcg of the page whose frame it became (the first page of
    ``try_to_merge_two_pages`` keeps its charge: the charge is on the folio), and a page merged
    into it is uncharged when its own frame is freed (``replace_page`` drops the last reference;
    the free uncharges). So a KSM page's memory is paid by one VM while the others save theirs:
    a memcg saves ``ksm_merging_pages - ksm_pages`` (its pages mapping KSM pages, less the KSM
    folios charged to it; summed over the memcgs, ``pages_sharing``). The folio lives on its
    memcg's lruvec; that memcg's limit reclaim can take it, and ``rmap_walk_ksm`` then ages and
    unmaps every sharer whatever its memcg (counted ``rmap_walked_other_memcg``). Its one swap
    slot is charged to its memcg's ``memory.swap.current`` (``__mem_cgroup_try_charge_swap``
    charges the folio's memcg). A COW copy is charged to the writer's memcg (``wp_page_copy``:
    ``mem_cgroup_charge`` with the faulting mm), and so is a ``ksm_swpin_copy``
    (``ksm_might_need_to_copy``).

zswap and zram
    A KSM folio is compressed once for all its sharers: one object of the size of the page it
    was made of (its content), in zswap's pool in front of the disk or in zram, under its one
    slot. The first sharer to fault after the folio was freed decompresses it (``zswpin``, no
    disk read; zram: the faulting task decompresses); the object stays the node's until its
    slot goes with the last sharer (the kernel's first reader holds the data in its swap-cache
    folio, dirty, and compresses it again if that is reclaimed), so a later re-read is a load
    again, unless zswap's shrinker wrote it back to the disk meanwhile.

THP
    With ``host.thp`` ksmd visits a THP's subpages one by one (the scan walks addresses;
    ``folio_walk_start`` returns the subpage). The stable-tree search, the checksum and the
    unstable-tree search only read the page, so a THP with no twin of any page is never split.
    Merging splits: ``try_to_merge_one_page`` calls ``split_huge_page`` on the large folio of
    each page it merges (the page made a KSM page, the page merged into one, a page mapped to
    the zero page): the PMD is split (``thp_split_pmd``; the notifiers invalidate the 2 MiB
    range, KVM zaps its huge spte and maps 4 KiB sptes from then on) and the folio becomes 512
    base folios on its LRU list (``thp_split_page``; deferred_split.py ``split_in_place``).
    When both pages of an unstable-tree match lie in one THP, each pins it and the split fails
    (``try_to_merge_two_pages`` returns NULL); ``cmp_and_merge_page`` then splits it and the
    pair merges on a later pass. A folio under I/O is not split (``folio_trylock`` fails), nor
    one in the swap cache (ksmd skips swap-cache pages: below): nothing merges this pass. A
    COW of a merged page takes a 4 KiB page; the block stays split (a first touch maps a THP
    only over an empty PMD, and a sharer whose KSM folio is swapped out holds a swap entry
    there: host/huge_memory.py). khugepaged counts KSM's ptes and unmerges them when it
    collapses (host/khugepaged.py).

Content
    Each guest page of a VM with a ``content`` section gets a content key at build, drawn from
    the run's seed (``<vm>.content``): ZERO, a block of a shared image (uniform over the image's
    blocks; VMs naming the same image share the key space), or UNIQUE. A guest write makes the
    page's content its own (UNIQUE): the compiled touch walk marks written pages in
    ``HostMemory.written`` (only with KSM on) and KVM's fault path does for faulting writes.

Data model
    Every stable node is a pseudo-page: a pid after every VM's pages, owned by a KSM pseudo-mm
    (ranges after the VMs', as the page cache's files are pseudo-mms). With memcgs there is one
    KSM pseudo-mm per mergeable VM, holding the nodes made of that VM's pages and charged to its
    memcg, so ``memory.current`` (the frames of a memcg's page owners) counts its KSM folios with
    no second count; without memcgs one holds them all. The node pid
    owns the KSM frame (``frame_pid``), is the folio on the anon LRU and holds its folio flags
    (PG_RESIDENT, PG_DIRTY; PTE_PRESENT while mapped). A sharer is a guest page whose flags hold
    only its own pte's PTE_PRESENT and PTE_YOUNG, whose ``pfn`` is the KSM frame, and whose
    ``ksm_node`` names the node (``ZERO_NODE``: the shared zero page, ``pfn`` NO_PFN). Trees are
    dicts keyed by content; counts per node and sharer lists per node, no per-page objects.

Counting
    The sysfs counters (``pages_shared``: stable nodes, ``pages_sharing``: sharers beyond the
    first per node, ``pages_unshared``, ``pages_volatile``, ``full_scans``, ``ksm_zero_pages``)
    and the vmstat events ``cow_ksm`` and ``ksm_swpin_copy`` are counted here once
    (:class:`KsmStats`) and reported in summary.json's ``host.ksm``; with memcgs each mm's
    ``ksm_merging_pages`` (``/proc/<pid>/ksm_stat``: its pages mapping a KSM page in the stable
    tree, ``stable_tree_append`` up, ``remove_rmap_item_from_tree`` down) is counted here too.
    ksmd's CPU (``cpu_ns``: ``page_scan_ns`` per page visited, ``memcmp_ns`` per tree
    comparison, ~log2(tree size) per lookup, plus its remote TLB flushes at
    ``tlb_flush_exit_ns``) is its own host CPU's, never a vCPU's.

Kernel reference
    mm/ksm.c: ``ksm_do_scan``, ``scan_get_next_rmap_item``, ``cmp_and_merge_page``,
    ``stable_tree_search``, ``unstable_tree_search_insert``, ``try_to_merge_two_pages``,
    ``try_to_merge_with_ksm_page``, ``try_to_merge_one_page``, ``write_protect_page``,
    ``replace_page``, ``calc_checksum``, ``rmap_walk_ksm``, ``get_ksm_page``,
    ``remove_node_from_stable_tree``, ``ksm_might_need_to_copy``, ``stable_tree_append``;
    mm/huge_memory.c: ``split_huge_page_to_list_to_order``, ``__split_huge_pmd``;
    mm/memory.c: ``do_wp_page``, ``wp_page_copy``, ``do_swap_page``; mm/memcontrol.c:
    ``mem_cgroup_charge``, ``__mem_cgroup_try_charge_swap``, ``mem_cgroup_swapin_charge_folio``;
    Documentation/admin-guide/mm/ksm.rst (the sysfs counters).

Simplifications
    Content is a key, not bytes: comparisons are counted, never made. ksmd merges only pages
    with no swap slot and no I/O in flight (a swap-cache page is skipped this pass). A batch's
    merges happen at its start; ksmd then sleeps ``sleep_ms`` plus the batch's CPU time. A COW
    copy, and a swap-in copy, is priced as a first touch (allocate and fill one page).
    ``stable_node_chain`` dups are a list per content key. After a swapped KSM folio is read
    back, the slot stays the node's until its last sharer faults (the kernel's first reader
    holds it in its swap cache folio); "still in memory" for ``ksm_swpin_copy`` is "the first
    reader's page is mapped". No swap readahead around a sharer's swap entry. A KSM folio's
    I/O counts for the VM whose frame it was. With memcgs, the first sharer to read a freed
    KSM folio's slot back is charged for its page in its own memcg (the kernel's
    ``mem_cgroup_swapin_charge_folio`` charges the memcg recorded for the slot, the KSM folio's,
    while it is online: one page per swapped KSM folio charged elsewhere until it is freed).
    KSM runs only where its paths are modelled (config.py says which settings it needs:
    two_list or MGLRU (its 6.12+ walk) watermark reclaim, no guest kernels, balloons, mom,
    prefault); on a rotational device a KSM folio's slot has an identity like any page's and
    cluster readahead skips it (host/fault.py); a guest TLB's entries hold the write permission
    (sim/guest/tlb.py); MGLRU's walk over a KSM folio's ptes is
    sim/reclaim/mglru.py's. Under shadow paging every shadow spte of a sharer's gfn maps the
    KSM page read-only (KVM's ``hva_to_pfn`` found the host pte read-only, as under TDP), and
    the COW's invalidation zaps them all. A host page cache's files are pseudo-mms after the
    nodes; ksmd never scans them (page cache is not ``MADV_MERGEABLE``). With THP, an
    unstable-tree match whose tree page's folio is under I/O merges nothing (the kernel splits
    and makes the current page a KSM page first, then breaks it again); a split costs ksmd only
    its TLB flushes.

Invariants
    A node's sharers all map its frame and its sharer count is their number; a sharer owns no
    frame; a node is mapped iff a sharer is; an unmapped sharer's node holds a slot; a node
    without sharers is free or waiting for its write to end; ``pages_shared``/``pages_sharing``
    equal the sums over the nodes in the stable tree; every zero-page sharer is counted in
    ``ksm_zero_pages``; each mm's ``ksm_merging_pages`` is its sharers of nodes in the stable
    tree; a node is in the pool of the VM whose page it was made of; no sharer was written
    (every write to one faulted and copied it first, a guest TLB's cached entry too); with THP
    no sharer lies in a large folio's block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.host.huge_memory import HPAGE_PMD_NR, HPAGE_PMD_SHIFT, THP_LARGE
from sim.host.memory import (
    NO_PFN,
    PAGE_SIZE,
    PG_DIRTY,
    PG_LOCKED,
    PG_RESIDENT,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTE_YOUNG,
    HostMemory,
)
from sim.host.mm import Mm
from sim.host.mmu_notifier import NotifierWork
from sim.schema import Strict

if TYPE_CHECKING:
    import simpy

    from sim.host.deferred_split import DeferredSplit
    from sim.host.huge_memory import HugeMemory
    from sim.host.rmap import Rmap
    from sim.host.swap import SwapDevice
    from sim.reclaim.base import EvictionPolicy

UNIQUE = -1  # content key of a page no other page equals
ZERO = 0  # content key of a zero-filled page
NO_NODE = -1  # ksm_node of a page that shares no KSM page
ZERO_NODE = -2  # ksm_node of a page mapping the shared zero page (use_zero_pages)
_NO_SUM = -2  # no rmap_item: ksmd never visited the page
_NEW_ITEM = -3  # a fresh rmap_item's checksum (0 in the kernel): no content key equals it
_SHARER_FLAGS = PTE_PRESENT | PTE_YOUNG  # a sharer's own pte bits; the folio's are the node's
_CANDIDATE = PTE_PRESENT | PG_RESIDENT  # mapped, with a frame of its own
PG_BUSY = PG_WRITEBACK | PG_LOCKED  # I/O in flight: the folio waits for its end


class KsmConfig(Strict):
    """``/sys/kernel/mm/ksm``: ksmd's pace and limits, and its CPU costs."""

    pages_to_scan: int = Field(
        100, ge=1, le=1 << 20, description="Pages ksmd visits per wake-up (pages_to_scan)."
    )
    sleep_ms: float = Field(
        20.0, gt=0.0, le=3_600_000.0, description="ksmd's sleep between batches (sleep_millisecs)."
    )
    max_page_sharing: int = Field(
        256,
        ge=2,
        le=1 << 20,
        description="Most sharers of one KSM page; more identical pages start another KSM page "
        "of the same content (max_page_sharing).",
    )
    use_zero_pages: bool = Field(
        False,
        description="Map zero-filled pages to the shared zero page instead of a KSM page "
        "(use_zero_pages; counted in ksm_zero_pages).",
    )
    page_scan_ns: int = Field(
        400,
        ge=0,
        le=10**9,
        description="ksmd CPU per page visited: follow_page and the checksum of the page "
        "(xxhash of 4 KiB).",
    )
    memcmp_ns: int = Field(
        150,
        ge=0,
        le=10**9,
        description="ksmd CPU per tree comparison (memcmp of two pages); a lookup makes "
        "about log2(tree size) of them.",
    )


class ContentConfig(Strict):
    """What a VM's guest pages hold, for KSM: shares of zero-filled pages and of blocks of a
    shared image (identical across VMs of that image); the rest are unique."""

    zero_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of guest pages that are zero-filled."
    )
    image_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of guest pages holding a block of the image (uniform over its "
        "blocks, so VMs of the same image hold the same blocks).",
    )
    image: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]+$",
        max_length=128,
        description="Name of the image (a guest OS and its page cache); VMs naming the same "
        "image share its blocks.",
    )
    image_mib: int = Field(
        256,
        gt=0,
        le=1 << 26,
        description="Distinct contents of the image (MiB of distinct pages); VMs naming the "
        "same image must agree on it.",
    )
    mergeable: bool = Field(
        True,
        description="QEMU marks guest RAM MADV_MERGEABLE (mem-merge=on); false: ksmd skips "
        "this VM.",
    )

    def shares_ok(self) -> str | None:
        """Why the shares are wrong (None: they sum to at most 1)."""
        if self.zero_share + self.image_share > 1.0 + 1e-12:
            return (
                f"zero_share {self.zero_share:g} + image_share {self.image_share:g} exceed 1; "
                "lower one of them (the rest of the pages are unique)"
            )
        return None


def draw_content(
    cfg: ContentConfig,
    nr_pages: int,
    image_offset: int,
    image_blocks: int,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """The content keys of one VM's pages: ZERO, ``1 + image_offset + block`` (a block of the
    image, uniform over its ``image_blocks``), or UNIQUE."""
    u = rng.random(nr_pages)
    blocks = rng.integers(0, image_blocks, nr_pages, dtype=np.int64)
    key = np.full(nr_pages, UNIQUE, dtype=np.int64)
    key[u < cfg.zero_share] = ZERO
    img = (u >= cfg.zero_share) & (u < cfg.zero_share + cfg.image_share)
    key[img] = 1 + image_offset + blocks[img]
    return key


@dataclass(slots=True)
class KsmWork:
    """ksmd's notifier work (the ``NotifierWork`` counters KVM adds to)."""

    nr_notifier_calls: int = 0
    nr_sptes_walked: int = 0
    nr_ptes_scanned: int = 0
    nr_tlb_flushes: int = 0


@dataclass(slots=True)
class KsmStats:
    """The sysfs counters of ``/sys/kernel/mm/ksm`` and vmstat's ``cow_ksm``, counted once."""

    pages_shared: int = 0  # stable nodes (KSM pages in use)
    pages_sharing: int = 0  # sharers beyond the first of each node (the pages saved)
    pages_unshared: int = 0  # pages in the unstable tree
    rmap_items: int = 0  # pages ksmd has visited and tracks (its rmap_items)
    full_scans: int = 0
    ksm_zero_pages: int = 0  # ptes mapping the shared zero page
    pages_scanned: int = 0  # pages ksmd visited (pages_scanned)
    cow_ksm: int = 0  # vmstat COW_KSM: write faults that broke a KSM sharing
    ksm_swpin_copy: int = 0  # vmstat KSM_SWPIN_COPY: a swap-in copied for another VM
    tree_cmps: int = 0  # page comparisons in tree lookups (memcmp_pages)
    merges: int = 0  # pages merged into a KSM page (write_protect_page + replace_page)
    cpu_ns: int = 0  # ksmd's CPU (its own host CPU)
    # rmap_walk_ksm's mappings in another memcg than the folio's (only with memcgs)
    rmap_walked_other_memcg: int = 0
    thp_splits: int = 0  # large folios ksmd split to merge a subpage (only with THP)
    work: KsmWork = field(default_factory=KsmWork)

    @property
    def pages_volatile(self) -> int:
        """``pages_volatile``: tracked pages in neither tree (changing too fast to merge)."""
        return self.rmap_items - self.pages_shared - self.pages_sharing - self.pages_unshared

    def summary(self, frames: int = 0, memcgs: bool = False, thp: bool = False) -> dict[str, int]:
        """The counters as summary.json's ``host.ksm`` reports them, with ``frames`` (the KSM
        folios in memory at the end: counted in no VM's ``resident_pages``); with ``memcgs``
        the walks across memcgs too; with ``thp`` the large folios ksmd split (a part of
        vmstat's ``thp_split_page``, which reclaim's splits count too)."""
        out = {
            "frames_end": frames,
            "pages_shared": self.pages_shared,
            "pages_sharing": self.pages_sharing,
            "pages_unshared": self.pages_unshared,
            "pages_volatile": self.pages_volatile,
            "full_scans": self.full_scans,
            "ksm_zero_pages": self.ksm_zero_pages,
            "pages_scanned": self.pages_scanned,
            "cow_ksm": self.cow_ksm,
            "ksm_swpin_copy": self.ksm_swpin_copy,
            "merges": self.merges,
            "tree_cmps": self.tree_cmps,
            "ksmd_cpu_ns": self.cpu_ns,
            "notifier_calls": self.work.nr_notifier_calls,
            "tlb_flushes": self.work.nr_tlb_flushes,
        }
        if memcgs:
            out["rmap_walked_other_memcg"] = self.rmap_walked_other_memcg
        if thp:
            out["thp_splits"] = self.thp_splits
        return out


class Ksm:
    """ksmd's state: content keys, checksums, the two trees and the stable nodes.

    Args:
        cfg: the sysfs knobs.
        mem: host memory; its ``ksm_node`` and ``written`` arrays exist (KSM is on).
        mms: the VMs' mms (not the KSM pseudo-mm).
        key: every guest page's content key (UNIQUE for VMs without content).
        mergeable: the mms ksmd scans (``MADV_MERGEABLE``), in scan order.
        node_base: the first node pid (the first KSM pseudo-mm's first page).
        nr_nodes: node pids available.
        tlb_flush_ns: a remote TLB flush's cost, to price ksmd's merges.
        pool_mm: with memcgs, the VM each KSM pseudo-mm (one per mergeable VM, in order from
            ``node_base``) holds the nodes of: a node is made of a page of that VM, so its
            folio stays charged to that VM's memcg. Empty: one KSM pseudo-mm for every node.
        memcg_of: with memcgs, the memcg of each page owner (to count ``rmap_walk_ksm``'s
            mappings in memcgs other than the folio's).
    """

    def __init__(
        self,
        cfg: KsmConfig,
        mem: HostMemory,
        mms: Sequence[Mm],
        key: NDArray[np.int64],
        mergeable: Sequence[Mm],
        node_base: int,
        nr_nodes: int,
        tlb_flush_ns: int = 0,
        pool_mm: Sequence[int] = (),
        memcg_of: Sequence[int] = (),
    ) -> None:
        self.cfg, self.mem, self.mms, self.key = cfg, mem, list(mms), key
        self.node_base, self.nr_nodes = node_base, nr_nodes
        first = mem.page_owner(node_base)  # the first KSM pseudo-mm's index
        self.pool_owners = list(range(first, first + max(1, len(pool_mm))))
        self._pool_of_mm = {mm: k for k, mm in enumerate(pool_mm)}
        self.memcg_of = np.asarray(memcg_of, dtype=np.int64)
        self.tlb_flush_ns = tlb_flush_ns
        self.policy: EvictionPolicy  # set by the world once the policy exists
        self.swap: SwapDevice  # set by the world: a node's slot is freed with it
        # with THP (set by the world): merging a subpage splits its large folio first
        self.thp: HugeMemory | None = None
        self.deferred: DeferredSplit | None = None  # its split (split_in_place)
        self.rmap: Rmap | None = None  # its PMD split (split_huge_pmd)
        self.stats = KsmStats()
        n = len(key)
        self.oldsum = np.full(n, _NO_SUM, dtype=np.int64)  # rmap_item->oldchecksum
        self.in_unstable = np.zeros(n, dtype=np.bool_)  # UNSTABLE_FLAG
        self.unstable: dict[int, int] = {}  # content key -> the page in the unstable tree
        self.stable: dict[int, list[int]] = {}  # content key -> its nodes (a chain of dups)
        self.node_key = np.full(nr_nodes, UNIQUE, dtype=np.int64)
        self.node_mm = np.zeros(nr_nodes, dtype=np.int64)  # the VM whose frame the folio was
        self.pruned = np.zeros(nr_nodes, dtype=np.bool_)  # out of the stable tree: swapped
        self.swapin_src = np.full(nr_nodes, -1, dtype=np.int64)  # its first sharer read back
        self.sharers: list[list[int]] = [[] for _ in range(nr_nodes)]  # the node's rmap_items
        # each pool's free nodes, lowest on top
        ends = mem.pid_base[first : first + len(self.pool_owners)] - node_base
        ends = [*ends.tolist(), nr_nodes]
        self._free_nodes = [list(range(hi - 1, lo - 1, -1)) for lo, hi in itertools.pairwise(ends)]
        # mm->ksm_merging_pages: each mm's pages mapping a KSM page of the stable tree
        self.merging = np.zeros(len(self.mms), dtype=np.int64)
        # the scan order: every mergeable mm's pages, mm after mm
        ranges = [np.arange(mm.pid_base, mm.pid_base + mm.nr_pages) for mm in mergeable]
        self.order = np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)
        self.cursor = 0

    # -- ksmd --------------------------------------------------------------------------------
    def ksmd(self, env: simpy.Environment) -> simpy.events.ProcessGenerator:
        """The ksmd thread: a batch, then sleep (``ksm_scan_thread``)."""
        sleep_ns = round(self.cfg.sleep_ms * 1e6)
        while True:
            before = self.stats.cpu_ns
            self.ksm_do_scan(self.cfg.pages_to_scan)
            yield env.timeout(sleep_ns + self.stats.cpu_ns - before)

    def ksm_do_scan(self, scan_npages: int) -> None:
        """Visit ``scan_npages`` pages from the cursor on (``ksm_do_scan``)."""
        if len(self.order) == 0:
            return
        st, mem, cfg = self.stats, self.mem, self.cfg
        for _ in range(scan_npages):
            pid = int(self.order[self.cursor])
            self.cursor += 1
            if self.cursor == len(self.order):  # scan_get_next_rmap_item: a full scan ends
                self.cursor = 0
                st.full_scans += 1
                self.unstable.clear()  # root_unstable_tree = RB_ROOT
            if self.mms[mem.page_owner(pid)].dead:
                continue
            f = mem.flags.item(pid)
            if not f & PTE_PRESENT:  # follow_page: nothing mapped
                continue
            st.pages_scanned += 1
            st.cpu_ns += cfg.page_scan_ns
            if self.oldsum.item(pid) == _NO_SUM:
                st.rmap_items += 1
                self.oldsum[pid] = _NEW_ITEM
            if mem.ksm_node.item(pid) != NO_NODE:  # already a KSM sharer: nothing to do
                continue
            if f & ~(_CANDIDATE | PTE_YOUNG | PG_DIRTY) or not f & PG_RESIDENT:
                continue  # a swap-cache page or I/O in flight: skipped this pass
            self.cmp_and_merge_page(pid)

    def _content(self, pid: int) -> int:
        """The page's content key now: a page written since ksmd last looked is unique."""
        if self.mem.written.item(pid):
            self.mem.written[pid] = 0
            self.key[pid] = UNIQUE
            return UNIQUE
        return int(self.key.item(pid))

    def _lookups(self, size: int) -> None:
        """One tree lookup in a tree of ``size`` nodes: ~log2(size) comparisons."""
        n = max(1, math.ceil(math.log2(size + 1)))
        self.stats.tree_cmps += n
        self.stats.cpu_ns += n * self.cfg.memcmp_ns

    def cmp_and_merge_page(self, pid: int) -> None:
        """``cmp_and_merge_page`` for a mapped page with its own frame, not yet a sharer."""
        st = self.stats
        if self.in_unstable.item(pid):  # remove_rmap_item_from_tree
            self.in_unstable[pid] = False
            st.pages_unshared -= 1
            k = int(self.key.item(pid))
            if self.unstable.get(k, -1) == pid:
                del self.unstable[k]
        written = bool(self.mem.written.item(pid))
        key = self._content(pid)
        # stable_tree_search
        self._lookups(st.pages_shared)
        if key != UNIQUE:
            for node in self.stable.get(key, ()):
                if len(self.sharers[node]) < self.cfg.max_page_sharing:
                    if self._split_large(pid):  # try_to_merge_one_page: split_huge_page
                        self._replace_page(pid, node)
                    return
        # calc_checksum: unchanged since the last visit, or volatile this pass
        changed = written or self.oldsum.item(pid) != key
        self.oldsum[pid] = key
        if changed:
            return
        if self.cfg.use_zero_pages and key == ZERO and self._split_large(pid):
            self._merge_zero_page(pid)  # try_to_merge_with_zero_page (else: the unstable tree)
            return
        # unstable_tree_search_insert
        self._lookups(len(self.unstable))
        other = self.unstable.get(key, -1) if key != UNIQUE else -1
        if other >= 0 and not self._free_nodes[self._pool_of_mm.get(self.mem.page_owner(pid), 0)]:
            return  # every node of the pool is a folio still under write-out: a later pass
        if other >= 0 and self._still_same(other, key):
            if self._same_large(pid, other):
                # try_to_merge_two_pages failed: both pages pin one large folio, so its split
                # failed; cmp_and_merge_page splits it now and merges nothing this pass
                self._split_large(pid)
                return
            if not (self._large_ok(pid) and self._large_ok(other)):
                return  # a folio under I/O: folio_trylock fails, a later pass
            self._split_large(pid)  # try_to_merge_one_page of each page splits its folio
            self._split_large(other)
            del self.unstable[key]
            self.in_unstable[other] = False
            st.pages_unshared -= 1
            node = self._new_node(pid, key)  # try_to_merge_two_pages: this page's frame
            self._replace_page(other, node)
            return
        if key != UNIQUE:
            self.unstable[key] = pid
        self.in_unstable[pid] = True
        st.pages_unshared += 1

    def _still_same(self, pid: int, key: int) -> bool:
        """The unstable tree's page still holds ``key`` and can merge (the memcmp that finds
        the tree page changed under it fails)."""
        f = self.mem.flags.item(pid)
        return (
            not self.mms[self.mem.page_owner(pid)].dead
            and f & _CANDIDATE == _CANDIDATE
            and not f & ~(_CANDIDATE | PTE_YOUNG | PG_DIRTY)
            and self.mem.ksm_node.item(pid) == NO_NODE
            and self._content(pid) == key
        )

    # -- THP ---------------------------------------------------------------------------------
    def _large_ok(self, pid: int) -> bool:
        """The page is a base folio, or its large folio could be split now: not under I/O
        (``folio_trylock`` in ``try_to_merge_one_page``) and not in the swap cache."""
        thp = self.thp
        if thp is None or not thp.is_large(pid):
            return True
        return not self.mem.flags.item(pid & ~(HPAGE_PMD_NR - 1)) & (PG_BUSY | PG_SWAP)

    def _same_large(self, pid: int, other: int) -> bool:
        """Both pages are subpages of one large folio (``cmp_and_merge_page``'s ``split``)."""
        thp = self.thp
        return (
            thp is not None
            and pid & ~(HPAGE_PMD_NR - 1) == other & ~(HPAGE_PMD_NR - 1)
            and thp.is_large(pid)
        )

    def _split_large(self, pid: int) -> bool:
        """``split_huge_page`` of the large folio of a page about to be merged
        (``try_to_merge_one_page``): its PMD is split (``thp_split_pmd``: the notifiers
        invalidate the 2 MiB range, KVM zaps its huge spte), then the folio becomes 512 base
        folios on its LRU list (``thp_split_page``, deferred_split.py ``split_in_place``).
        False when the folio cannot be split now (:meth:`_large_ok`); True for a base folio."""
        thp = self.thp
        if thp is None or not thp.is_large(pid):
            return True
        if not self._large_ok(pid):
            return False
        assert self.deferred is not None
        assert self.rmap is not None
        head = pid & ~(HPAGE_PMD_NR - 1)
        w = self.stats.work
        flushes = w.nr_tlb_flushes
        self.rmap.split_huge_pmd(head, w)  # type: ignore[arg-type]
        self.stats.cpu_ns += (w.nr_tlb_flushes - flushes) * self.tlb_flush_ns
        self.deferred.split_in_place(head)
        self.stats.thp_splits += 1
        return True

    # -- merging -----------------------------------------------------------------------------
    def _invalidate(self, pid: int) -> None:
        """``mmu_notifier_invalidate_range_start/end`` on the page's hva (KVM zaps its spte
        and flushes; a dirty spte's dirt goes to the folio first)."""
        mm = self.mms[self.mem.page_owner(pid)]
        hva = mm.hva(np.array([pid], dtype=np.int64))
        w = self.stats.work
        flushes = w.nr_tlb_flushes
        mm.notifiers.invalidate_range_start(hva, hva + PAGE_SIZE, w)
        mm.notifiers.invalidate_range_end(hva, hva + PAGE_SIZE, w)
        self.stats.cpu_ns += (w.nr_tlb_flushes - flushes) * self.tlb_flush_ns

    def _new_node(self, pid: int, key: int) -> int:
        """``try_to_merge_with_ksm_page(page, NULL)`` + ``stable_tree_insert``: the page's own
        frame becomes a KSM folio, a new stable node, with the page its first sharer."""
        mem = self.mem
        self._invalidate(pid)  # write_protect_page
        owner = mem.page_owner(pid)
        node = self._free_nodes[self._pool_of_mm.get(owner, 0)].pop()
        npid = self.node_base + node
        pfn = mem.pfn.item(pid)
        f = mem.flags.item(pid)
        mem.transfer_frame(pfn, npid, mem.page_owner(npid))  # the charge stays the VM's
        zpool = self.swap.zpool
        if zpool is not None:  # zram, zswap: the folio compresses as the page's content
            zpool.obj_bytes[npid] = zpool.obj_bytes.item(pid)
        self.node_mm[node] = owner
        self.merging[owner] += 1
        self.pruned[node] = False
        self.swapin_src[node] = -1
        mem.flags[npid] = PG_RESIDENT | PTE_PRESENT | (f & PG_DIRTY)
        mem.flags[pid] = f & _SHARER_FLAGS
        mem.pfn[pid] = pfn
        mem.ksm_node[pid] = node
        self.node_key[node] = key
        self.sharers[node] = [pid]
        self.stable.setdefault(key, []).append(node)
        self.stats.pages_shared += 1
        self.stats.merges += 1
        return node

    def _replace_page(self, pid: int, node: int) -> None:
        """``write_protect_page`` + ``replace_page``: the page's pte maps the node's frame
        read-only and its own frame is freed."""
        mem = self.mem
        self._invalidate(pid)
        pfn = mem.pfn.item(pid)
        f = mem.flags.item(pid)
        self.policy.folio_remove(np.array([pfn], dtype=np.int64))
        mem.free_frame(pfn)
        mem.flags[pid] = f & _SHARER_FLAGS
        npid = self.node_base + node
        mem.pfn[pid] = mem.pfn.item(npid)
        mem.flags[npid] = mem.flags.item(npid) | PTE_PRESENT  # mapped again, if it was not
        mem.ksm_node[pid] = node
        self.sharers[node].append(pid)
        self.merging[mem.page_owner(pid)] += 1
        self.stats.pages_sharing += 1
        self.stats.merges += 1

    def _merge_zero_page(self, pid: int) -> None:
        """``try_to_merge_with_zero_page``: the pte maps the shared zero page (read-only)."""
        mem = self.mem
        self._invalidate(pid)
        pfn = mem.pfn.item(pid)
        f = mem.flags.item(pid)
        self.policy.folio_remove(np.array([pfn], dtype=np.int64))
        mem.free_frame(pfn)
        mem.flags[pid] = f & _SHARER_FLAGS
        mem.ksm_node[pid] = ZERO_NODE
        self.stats.ksm_zero_pages += 1
        self.stats.merges += 1

    # -- leaving -----------------------------------------------------------------------------
    def leave(self, pid: int) -> None:
        """The page stops sharing (its COW, its swap-in, or its mm's exit): it leaves its node,
        which goes with its last sharer: its frame freed (the folio's last mapping gone; at the
        end of its I/O if some is in flight) and its swap slot (the last swap entry gone). The
        page's own state is the caller's."""
        mem = self.mem
        node = mem.ksm_node.item(pid)
        mem.ksm_node[pid] = NO_NODE
        if node == ZERO_NODE:
            self.stats.ksm_zero_pages -= 1
            return
        sharers = self.sharers[node]
        sharers.remove(pid)
        if not self.pruned.item(node):
            self.merging[mem.page_owner(pid)] -= 1
            if sharers:
                self.stats.pages_sharing -= 1
            else:
                self.stats.pages_shared -= 1
        npid = self.node_base + node
        if not sharers:
            self._unlink(node)
            if not mem.flags.item(npid) & PG_BUSY:
                self._free_node(node)
            return
        present = mem.flags[np.array(sharers, dtype=np.int64)] & PTE_PRESENT
        if not present.any():
            mem.flags[npid] = mem.flags.item(npid) & ~PTE_PRESENT

    def _unlink(self, node: int) -> None:
        """The node leaves the stable tree (if still in it)."""
        if self.pruned.item(node):
            return
        self.pruned[node] = True
        chain = self.stable[int(self.node_key[node])]
        chain.remove(node)
        if not chain:
            del self.stable[int(self.node_key[node])]

    def _free_node(self, node: int) -> None:
        """A node with no sharer and no I/O in flight: its frame and slot go, its pid is free."""
        mem = self.mem
        npid = self.node_base + node
        f = mem.flags.item(npid)
        if f & PG_SWAP:
            self.swap.free_slots(1, (npid,))
            if not f & PG_RESIDENT:
                mem.nr_swapped[mem.page_owner(npid)] -= 1
        if f & PG_RESIDENT:
            pfn = mem.pfn.item(npid)
            self.policy.folio_remove(np.array([pfn], dtype=np.int64))
            mem.free_frame(pfn)
        mem.flags[npid] = 0
        mem.pfn[npid] = NO_PFN
        self.node_key[node] = UNIQUE
        self.pruned[node] = False
        self.swapin_src[node] = -1
        self._free_nodes[mem.page_owner(npid) - self.pool_owners[0]].append(node)

    def node_io_done(self, npid: int) -> bool:
        """A node's write-out ended (``folio_end_writeback``): a node whose sharers all left
        meanwhile goes now. True if it went."""
        node = npid - self.node_base
        if self.sharers[node]:
            return False
        self._free_node(node)
        return True

    # -- swap ------------------------------------------------------------------------------
    def unmap(self, npid: int, work: NotifierWork) -> int:
        """``try_to_unmap`` of a KSM folio (``rmap_walk_ksm`` -> ``try_to_unmap_one`` per
        sharer): each mapped sharer's hva invalidated through its mm (KVM zaps its spte and
        flushes) and its pte made a swap entry to the folio's one slot. Returns the mappings
        walked."""
        mem = self.mem
        sharers = self.mapped_sharers(npid)
        for pid in sharers.tolist():
            mm = self.mms[mem.page_owner(pid)]
            hva = mm.hva(np.array([pid], dtype=np.int64))
            mm.notifiers.invalidate_range_start(hva, hva + PAGE_SIZE, work)
            mem.flags[pid] = 0
            mem.pfn[pid] = NO_PFN
            mm.notifiers.invalidate_range_end(hva, hva + PAGE_SIZE, work)
        mem.flags[npid] = mem.flags.item(npid) & ~(PTE_PRESENT | PTE_YOUNG)
        return len(sharers)

    def folio_freed(self, npids: NDArray[np.integer]) -> None:
        """KSM folios left memory (``__remove_mapping``; their slot keeps the data): each node
        leaves the stable tree (``get_ksm_page`` finds its page gone and
        ``remove_node_from_stable_tree`` prunes it; its rmap_items are no longer shared), and
        stays only as its sharers' swap entry."""
        for npid in np.asarray(npids, dtype=np.int64).tolist():
            node = npid - self.node_base
            if not self.pruned.item(node):
                self.stats.pages_shared -= 1
                self.stats.pages_sharing -= len(self.sharers[node]) - 1
                sharers = np.array(self.sharers[node], dtype=np.int64)
                self.merging -= np.bincount(
                    self.mem.page_owners(sharers), minlength=len(self.merging)
                )
            self._unlink(node)

    def map_swapcache(self, pid: int) -> None:
        """``do_swap_page`` finds the KSM folio in the swap cache (``ksm_might_need_to_copy``
        returns it: still KSM, still in the stable tree): the sharer's pte maps it again."""
        mem = self.mem
        npid = self.node_base + mem.ksm_node.item(pid)
        mem.flags[pid] = PTE_PRESENT | PTE_YOUNG
        mem.pfn[pid] = mem.pfn.item(npid)
        mem.flags[npid] = mem.flags.item(npid) | PTE_PRESENT

    def node_of(self, pid: int) -> int:
        """The node pid a sharer's swap entry names."""
        return self.node_base + self.mem.ksm_node.item(pid)

    def owners(self, pids: NDArray[np.integer]) -> NDArray[np.intp]:
        """``HostMemory.page_owners``, with a KSM folio counted to the VM whose frame it was
        (its I/O counted for that mm, as its memcg charge stays)."""
        owners = self.mem.page_owners(pids)
        nodes = self.is_node(pids)
        if nodes.any():
            owners[nodes] = self.node_mm[np.asarray(pids)[nodes] - self.node_base]
        return owners

    def break_cow(self, pid: int) -> None:
        """``do_wp_page`` -> ``wp_page_copy`` on a sharer whose new frame the caller has just
        allocated (``pfn[pid]`` is it): the old pte is invalidated (KVM zaps the read-only
        spte), the page leaves its KSM page and maps its copy, now its own content
        (``cow_ksm`` unless it was the zero page)."""
        mem = self.mem
        zero = mem.ksm_node.item(pid) == ZERO_NODE
        mm = self.mms[mem.page_owner(pid)]
        hva = mm.hva(np.array([pid], dtype=np.int64))
        w = KsmWork()
        mm.notifiers.invalidate_range_start(hva, hva + PAGE_SIZE, w)
        self.leave(pid)
        mm.notifiers.invalidate_range_end(hva, hva + PAGE_SIZE, w)
        self.key[pid] = UNIQUE
        mem.written[pid] = 1
        if not zero:
            self.stats.cow_ksm += 1

    def exit_mmap(self, pids: NDArray[np.int64]) -> NDArray[np.int64]:
        """An mm exits: its sharers leave their nodes. Returns its pages that were not
        sharers (the rest of the teardown is theirs)."""
        node = self.mem.ksm_node[pids]
        for pid in pids[node != NO_NODE].tolist():
            self.leave(pid)
            self.mem.flags[pid] = 0
            self.mem.pfn[pid] = NO_PFN
        gone = self.in_unstable[pids]
        self.stats.pages_unshared -= int(gone.sum())
        self.in_unstable[pids] = False
        tracked = self.oldsum[pids] != _NO_SUM
        self.stats.rmap_items -= int(tracked.sum())
        self.oldsum[pids] = _NO_SUM
        return pids[node == NO_NODE]

    # -- reclaim -----------------------------------------------------------------------------
    def is_node(self, pids: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Which pids are stable nodes (KSM folios)."""
        p = np.asarray(pids)
        return (p >= self.node_base) & (p < self.node_base + self.nr_nodes)

    def mapped_sharers(self, npid: int) -> NDArray[np.int64]:
        """The sharers of node pid ``npid`` whose pte maps it: the mappings ``rmap_walk_ksm``
        visits (its rmap_items, each in its own mm, whatever that mm's memcg). With memcgs,
        those in another memcg than the folio's are counted (``rmap_walked_other_memcg``)."""
        mem = self.mem
        sharers = np.array(self.sharers[npid - self.node_base], dtype=np.int64)
        sharers = sharers[(mem.flags[sharers] & PTE_PRESENT) != 0]
        if len(self.memcg_of) and len(sharers):
            own = self.memcg_of.item(mem.page_owner(npid))
            other = self.memcg_of[mem.page_owners(sharers)] != own
            self.stats.rmap_walked_other_memcg += int(np.count_nonzero(other))
        return sharers

    def frames(self) -> int:
        """KSM folios in memory (each pool's frames)."""
        return int(sum(self.mem.nr_resident.item(o) for o in self.pool_owners))

    def charged(self, mm: int) -> int:
        """KSM folios in memory charged to VM ``mm``'s memcg (made of its pages)."""
        k = self._pool_of_mm.get(mm)
        return 0 if k is None else self.mem.nr_resident.item(self.pool_owners[k])

    # -- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        """Assert the KSM invariants (tests; O(pages))."""
        mem, st = self.mem, self.stats
        node = mem.ksm_node
        live = [n for n in range(self.nr_nodes) if self.sharers[n]]
        tree = [n for n in live if not self.pruned[n]]
        assert st.pages_shared == len(tree), "pages_shared is not the nodes in the stable tree"
        total = sum(len(self.sharers[n]) for n in tree)
        assert st.pages_sharing == total - len(tree), "pages_sharing"
        linked = sum(len(self.sharers[n]) for n in live)
        assert int((node >= 0).sum()) == linked, "sharers not all on their nodes' lists"
        assert int((node == ZERO_NODE).sum()) == st.ksm_zero_pages, "ksm_zero_pages"
        assert st.pages_unshared == int(self.in_unstable.sum()), "pages_unshared"
        for n in live:
            npid = self.node_base + n
            nf = mem.flags.item(npid)
            s = np.array(self.sharers[n], dtype=np.int64)
            assert (node[s] == n).all(), "a sharer on another node's list"
            present = (mem.flags[s] & PTE_PRESENT) != 0
            assert bool(nf & PTE_PRESENT) == bool(present.any()), "node mapped iff a sharer is"
            if nf & PG_RESIDENT:
                kpfn = mem.pfn.item(npid)
                assert (mem.pfn[s[present]] == kpfn).all(), "a sharer maps another frame"
            else:
                assert nf == PG_SWAP, "a node with neither frame nor slot"
                assert not present.any(), "a sharer mapping a swapped-out node"
            assert not (mem.flags[s[~present]]).any(), "an unmapped sharer with flags"
            if not present.all():
                assert nf & PG_SWAP, "a sharer's swap entry with no slot behind it"
            chain = self.stable.get(int(self.node_key[n]), [])
            assert (n in chain) != bool(self.pruned[n]), "stable tree and pruned disagree"
        merging = np.zeros(len(self.merging), dtype=np.int64)
        for n in tree:
            merging += np.bincount(
                mem.page_owners(np.array(self.sharers[n], dtype=np.int64)),
                minlength=len(merging),
            )
        assert (merging == self.merging).all(), "ksm_merging_pages is not each mm's sharers"
        for n in live:  # a folio charged to the VM whose page it was made of (its pool)
            pool = mem.page_owner(self.node_base + n) - self.pool_owners[0]
            assert pool == self._pool_of_mm.get(int(self.node_mm[n]), 0), "node in another pool"
        for n in range(self.nr_nodes):  # nodes kept only for their I/O, or free
            if not self.sharers[n]:
                nf = mem.flags.item(self.node_base + n)
                assert nf == 0 or nf & PG_BUSY, "a node without sharers and no I/O in flight"
        share = np.flatnonzero(node != NO_NODE)
        f = mem.flags[share]
        assert not (f & ~np.uint8(_SHARER_FLAGS)).any(), "a sharer with folio flags"
        # a write that completed on a sharer (a stale writable or cached translation)
        assert not mem.written[share].any(), "a KSM page written without breaking its sharing"
        zero = share[node[share] == ZERO_NODE]
        assert (mem.pfn[zero] == NO_PFN).all(), "a zero-page sharer holds a pfn"
        if self.thp is not None:  # every merge split its page's large folio first
            large = (self.thp.block[share >> HPAGE_PMD_SHIFT] & THP_LARGE) != 0
            assert not large.any(), "a KSM sharer inside a large folio's block"
        assert (mem.flags[zero] & PTE_PRESENT).all(), "an unmapped zero-page sharer"

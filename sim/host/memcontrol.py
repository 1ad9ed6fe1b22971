"""Memory cgroups (cgroup v2) for VMs as libvirt places them: one memcg per QEMU process.

Models
    Each VM with a ``memcg`` section is a memcg directly under the root. Its ``memory.current``
    is the frames its pages own (``HostMemory.nr_resident``: a folio is charged when it gets a
    frame and uncharged when it is freed, so the charge is that count and is not kept twice),
    plus what the VMM charges besides guest RAM (``vmm_overhead_kib``: its heap and stacks,
    KVM's page tables), a constant that no reclaim can free, so guest RAM is held to
    ``memory.max`` minus it;
    its ``memory.swap.current`` is the swap slots its pages hold. A fault that would take
    ``memory.current`` above ``memory.max`` reclaims from that memcg's own lruvec in the
    faulting vCPU's context (``try_to_free_mem_cgroup_pages``: no watermarks, priority 12 down
    to 0), retrying while reclaim makes progress and up to MAX_RECLAIM_RETRIES times without,
    then invokes the memcg OOM killer, which kills that VM only. A charge that leaves the memcg
    above ``memory.high`` makes the vCPU reclaim the excess and, if that does not bring it
    back, sleep a penalty that grows with the square of the overage, at most 2 s per return
    (``mem_cgroup_handle_over_high``). A swap-out that would take ``memory.swap.current``
    above ``memory.swap.max`` fails as ``add_to_swap`` failing (the folio stays, activated).
    ``memory.zswap.writeback`` 0 keeps the memcg's pages off the swap device: zswap keeps them
    or reclaim activates them (sim/host/zswap.py, sim/host/vmscan.py).
    ``memory.min`` and ``memory.low`` protect a memcg from global reclaim (vmscan's
    ``shrink_node_memcgs``; the per-lruvec scan in sim/reclaim/memcg.py).

    THP (``host.thp``): a THP is one charge of 512 pages (``mem_cgroup_charge`` of the large
    folio in ``do_huge_pmd_anonymous_page``). Over ``memory.max`` it reclaims the memcg as a
    4 KiB charge does, but a charge above ``1 << PAGE_ALLOC_COSTLY_ORDER`` pages does not
    retry on progress, and ``mem_cgroup_oom`` skips costly orders: the charge fails and the
    fault falls back to a 4 KiB page (``thp_fault_fallback_charge``). A whole-THP swap-out
    charges its cluster's 512 slots together (``__mem_cgroup_try_charge_swap``); zram's
    large swap-in charges 512 pages as a fault does (``mem_cgroup_swapin_charge_folio``),
    falling back to a 4 KiB swap-in.
    ``memory.stat``'s ``anon_thp`` is read from the THP block array and its THP events from
    vmstat's per-mm breakdown (:meth:`MemCgroups.thp_stat`).

    Page cache (``host_files`` with ``memcg``): a file folio is charged to the memcg of the
    task that reads it in (``filemap_add_folio`` -> ``mem_cgroup_charge``), here the VM whose
    QEMU reads its disk image; the charge is the frames of every page owner charged to the
    memcg (the VM's mm and its files), so ``memory.current`` counts file pages too, and the
    reader reclaims, is throttled and OOM-killed as a vCPU is. Page cache with no memcg is
    charged to the root memcg: no limits, its own lruvec (index ``nr_vms``), visited first.

    KSM (sim/host/ksm.py): a KSM folio is charged to the memcg of the VM whose page it was made
    of (its frames are a KSM pseudo-mm charged to that memcg), and its swap slot too; its
    ``memory.stat`` shows ``ksm_pages`` (those folios, in ``current_pages``) and the VM's
    ``ksm_merging_pages``.

    Write-back in memcg reclaim follows cgroup v2 (``writeback_throttling_sane``): a folio
    under write-out is activated and counted (``shrink_folio_list`` case 2, as direct reclaim
    does), never waited for (case 3 is cgroup v1 only), and memcg reclaim is not throttled
    for it (``shrink_node``'s ``nr.immediate`` throttle is kswapd's; ``shrink_inactive_list``'s
    WRITEBACK throttle is v1's): the OOM comes after the 16 retries whatever is in flight.

    Statistics (``host.memcg_stats: lazy``): the memcgs' lruvec counters are flushed (rstat)
    when the world starts, by ``flush_stats_dwork`` every period (the root: all memcgs), when
    a driver reads a memcg's memory.stat (``flush_stats``), at a memcg OOM (its report prints
    memory.stat), and by ``prepare_scan_control``'s ratelimited flush when the periodic one is
    late; two_list reclaim reads them in between (sim/reclaim/two_list.py).

Counting
    ``memory.events`` are vmstat counters broken down per mm (one mm per memcg):
    ``memcg_low``, ``memcg_high``, ``memcg_max``, ``memcg_oom``, ``memcg_swap_max``
    (``memory.swap.events max``) and ``oom_kill``; they exist only in runs with a memcg, so a
    run without one keeps its counters (and its summary) as before.

Kernel reference
    mm/memcontrol.c: ``try_charge_memcg``, ``mem_cgroup_handle_over_high``,
    ``mem_cgroup_flush_stats``, ``mem_cgroup_flush_stats_ratelimited``,
    ``flush_memcg_stats_dwork``,
    ``calculate_overage``, ``calculate_high_delay``, ``reclaim_high``,
    ``mem_cgroup_out_of_memory``, ``__mem_cgroup_try_charge_swap``, ``memcg_memory_event``;
    mm/page_counter.c: ``page_counter_calculate_protection``, ``effective_protection``;
    mm/vmscan.c: ``try_to_free_mem_cgroup_pages``, ``get_scan_count`` (the protection scaling),
    include/linux/memcontrol.h: ``mem_cgroup_protection``, ``mem_cgroup_below_min``/``_low``.

Simplifications
    One level under the root (libvirt's machine.slice adds levels that set nothing). Charges
    are per page at the fault, not in MEMCG_CHARGE_BATCH stock: a charge happens before the
    frame is taken, so concurrent faults of one VM can overshoot ``memory.max`` by the number
    of its vCPUs at most. The compressed pool (zram, zswap) is not charged. No
    ``memory.swap.high``. ``memory.high`` penalties are computed for the nominal batch of
    MEMCG_CHARGE_BATCH pages the kernel's stock charges at a time. khugepaged's charge of a
    collapse does not reclaim: it is taken when the 512 pages fit under ``memory.max``, and
    the block is skipped otherwise.

Invariants
    ``memory.current`` of each memcg equals the frames its pages own plus its overhead, and passes
    ``memory.max`` by at most one page per vCPU of its VM (charges granted, frames not yet
    taken); ``memory.swap.current`` equals the slots its pages hold (``PG_SWAP``). A THP's
    512 pages hold swap slots all or none, and its memcg's ``anon_thp`` is within its
    ``memory.current``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import simpy
from numpy.typing import NDArray
from pydantic import Field, model_validator

from sim.host.huge_memory import (
    HPAGE_PMD_NR,
    HPAGE_PMD_SHIFT,
    THP_FAULT_ALLOC,
    THP_LARGE,
    THP_PMD,
    THP_SWPOUT,
    THP_SWPOUT_FALLBACK,
)
from sim.host.khugepaged import THP_COLLAPSE_ALLOC
from sim.host.memory import (
    DEF_PRIORITY,
    MAX_RECLAIM_RETRIES,
    PAGE_SIZE,
    PG_DIRTY,
    PG_SWAP,
    PG_WRITEBACK,
    SWAP_CLUSTER_MAX,
    HostMemory,
)
from sim.host.vmscan import ScanControl
from sim.host.vmstat import VmEvents, VmStat
from sim.schema import Strict

if TYPE_CHECKING:
    from sim.host.ksm import Ksm
    from sim.host.kswapd import Reclaim
    from sim.host.mm import Mm
    from sim.host.oom import OomKiller

ProcessGen = Generator[simpy.Event, Any, Any]

MAX_MIB = 64 * 1024 * 1024  # 64 TiB, as config.MAX_MEMORY_MIB
HZ = 250
JIFFY_NS = 1_000_000_000 // HZ
MEMCG_CHARGE_BATCH = 64  # pages the per-CPU stock charges at a time
MEMCG_DELAY_PRECISION_SHIFT = 20
MEMCG_DELAY_SCALING_SHIFT = 14
MEMCG_MAX_HIGH_DELAY_JIFFIES = 2 * HZ  # at most 2 s of penalty per return to the guest
PAGE_COUNTER_MAX = 1 << 62  # an unset limit ("max")
PAGE_ALLOC_COSTLY_ORDER = 3  # charges above 8 pages neither retry on progress nor OOM

MEMCG_LOW = "memcg_low"
MEMCG_HIGH = "memcg_high"
MEMCG_MAX = "memcg_max"
MEMCG_OOM = "memcg_oom"
MEMCG_SWAP_MAX = "memcg_swap_max"
MEMCG_EVENTS: tuple[str, ...] = (MEMCG_LOW, MEMCG_HIGH, MEMCG_MAX, MEMCG_OOM, MEMCG_SWAP_MAX)
"""vmstat keys of ``memory.events`` (only in runs where some VM has a memcg)."""


MEMCG_THP_EVENTS = (THP_FAULT_ALLOC, THP_COLLAPSE_ALLOC, THP_SWPOUT, THP_SWPOUT_FALLBACK)
"""The THP events ``memory.stat`` lists (``memcg_vm_event_stat``)."""


class MemcgConfig(Strict):
    """A VM's memory cgroup (cgroup v2 files); each limit left out is unset ("max" / 0)."""

    max_mib: int | None = Field(
        None,
        ge=0,
        le=MAX_MIB,
        description="memory.max: hard limit on the VM's resident pages; above it the VM "
        "reclaims its own pages, and OOM-kills itself when that fails.",
    )
    high_mib: int | None = Field(
        None,
        ge=0,
        le=MAX_MIB,
        description="memory.high: above it the faulting vCPU reclaims the excess and is "
        "throttled (a delay quadratic in the overage, at most 2 s per fault).",
    )
    low_mib: int | None = Field(
        None,
        ge=0,
        le=MAX_MIB,
        description="memory.low: best-effort protection from host-wide reclaim while the "
        "VM's resident pages are at or below it.",
    )
    min_mib: int | None = Field(
        None,
        ge=0,
        le=MAX_MIB,
        description="memory.min: hard protection from host-wide reclaim while the VM's "
        "resident pages are at or below it.",
    )
    swap_max_mib: int | None = Field(
        None,
        ge=0,
        le=MAX_MIB,
        description="memory.swap.max: swap space the VM's pages may hold; a swap-out beyond "
        "it fails and the page stays resident.",
    )
    zswap_writeback: bool = Field(
        True,
        description="memory.zswap.writeback (6.8+, systemd MemoryZSwapWriteback=): false keeps "
        "the VM's pages off the swap device. zswap keeps them compressed in RAM and never "
        "writes them back; a page zswap does not take (a full pool, a page that does not "
        "compress below a page) stays resident, unmapped and activated; without zswap the VM "
        "does not swap at all.",
    )

    vmm_overhead_kib: int = Field(
        0,
        ge=0,
        le=MAX_MIB << 10,
        description="Memory the VMM charges to this memcg besides guest RAM (its own heap and "
        "stacks, KVM's page tables); counted in memory.current and never reclaimed, so guest "
        "RAM gets memory.max minus this. Rounded up to whole pages.",
    )

    @model_validator(mode="after")
    def _overhead_below_max(self) -> MemcgConfig:
        over = self.max_mib is not None and self.vmm_overhead_kib >= self.max_mib << 10
        if over and self.vmm_overhead_kib:  # memory.max 0 on its own stays allowed
            raise ValueError(
                f"vmm_overhead_kib: {self.vmm_overhead_kib} KiB leaves no room for guest RAM "
                f"under max_mib ({self.max_mib} MiB); lower it below {self.max_mib << 10} or "
                "raise max_mib"
            )
        return self

    def sizes(self) -> list[tuple[str, int | None]]:
        """Each size in MiB with its field name (page-multiple checks)."""
        return [(k, getattr(self, k)) for k in type(self).model_fields if k.endswith("_mib")]


@dataclass(slots=True)
class MemcgLimits:
    """Every VM memcg's settings in pages, indexed by mm (unset: PAGE_COUNTER_MAX / 0), and
    which memcg each page owner (the VMs' mms, then the page cache's files) is charged to."""

    max: list[int]
    high: list[int]
    low: list[int]
    min: list[int]
    swap_max: list[int]
    # memory.zswap.writeback of each memcg (the root's: on)
    zswap_writeback: list[bool] = field(default_factory=list)
    owner_memcg: list[int] = field(default_factory=list)  # memcg of each page owner
    owners: list[list[int]] = field(default_factory=list)  # page owners of each memcg
    # pages each memcg has charged for good besides its owners' frames (the VMM's own memory)
    overhead: list[int] = field(default_factory=list)
    # frames each memcg's owners hold in hugetlb pages: charged to the hugetlb controller,
    # not to memory.current (host/hugetlb.py)
    hugetlb: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.owner_memcg:  # no page cache: each VM's mm is its memcg's only owner
            self.owner_memcg = list(range(len(self.max)))
            self.owners = [[i] for i in self.owner_memcg]
        self.overhead += [0] * (len(self.owners) - len(self.overhead))  # the root's: none
        self.hugetlb += [0] * (len(self.owners) - len(self.hugetlb))
        self.zswap_writeback += [True] * (len(self.owners) - len(self.zswap_writeback))

    def no_writeback(self) -> NDArray[np.bool_] | None:
        """Per page owner: whether its memcg has ``memory.zswap.writeback`` 0
        (``mem_cgroup_zswap_writeback_enabled`` false: the memcg and its ancestors, here the
        memcg, its only ancestor being the root, which cannot turn it off); None when every
        memcg keeps the default."""
        if all(self.zswap_writeback):
            return None
        off = [not self.zswap_writeback[m] for m in self.owner_memcg]
        return np.array(off, dtype=np.bool_)

    def set_hugetlb(self, per_vm: Sequence[int]) -> None:
        """The hugetlb pages of each VM's mm, which its memcg holds outside memory.current."""
        for vm, n in enumerate(per_vm):
            self.hugetlb[self.owner_memcg[vm]] += n

    @property
    def root(self) -> int:
        """The root memcg's index (after the VMs'): page cache charged to no VM."""
        return len(self.max)

    @property
    def nr_memcgs(self) -> int:
        """Memcgs with pages: the VMs', and the root's when some page cache is charged there."""
        return len(self.owners)

    def usage(self, nr_resident: NDArray[np.int64], memcg: int) -> int:
        """``memory.current`` of ``memcg``: the frames of every page owner charged to it, and
        the VMM's overhead."""
        owners = self.owners[memcg]
        extra = self.overhead[memcg] - self.hugetlb[memcg]
        if len(owners) == 1:
            return nr_resident.item(owners[0]) + extra
        return sum(nr_resident.item(o) for o in owners) + extra

    @classmethod
    def from_configs(
        cls,
        cfgs: Sequence[MemcgConfig | None],
        pages_per_mib: float,
        file_memcgs: Sequence[int | None] = (),
    ) -> MemcgLimits:
        """Limits of each mm from its VM's ``memcg`` section (None: an unlimited memcg);
        ``file_memcgs``: the VM each page-cache file is charged to (None: the root).
        ``vmm_overhead_kib`` becomes whole pages, rounded up (a partly used page is charged)."""

        def pages(mib: int | None, unset: int) -> int:
            return unset if mib is None else int(mib * pages_per_mib)

        page_kib = round(1024 / pages_per_mib)

        none = MemcgConfig()
        cs = [c or none for c in cfgs]
        root = len(cs)
        owner_memcg = list(range(root)) + [root if m is None else m for m in file_memcgs]
        owners: list[list[int]] = [[] for _ in range(max(owner_memcg) + 1)]
        for o, m in enumerate(owner_memcg):
            owners[m].append(o)
        return cls(
            max=[pages(c.max_mib, PAGE_COUNTER_MAX) for c in cs],
            high=[pages(c.high_mib, PAGE_COUNTER_MAX) for c in cs],
            low=[pages(c.low_mib, 0) for c in cs],
            min=[pages(c.min_mib, 0) for c in cs],
            swap_max=[pages(c.swap_max_mib, PAGE_COUNTER_MAX) for c in cs],
            zswap_writeback=[c.zswap_writeback for c in cs],
            owner_memcg=owner_memcg,
            owners=owners,
            overhead=[-(-c.vmm_overhead_kib // page_kib) for c in cs],
        )


def effective_protection(
    usage: int, parent_usage: int, setting: int, parent_effective: int, siblings_protected: int
) -> int:
    """``effective_protection`` (mm/page_counter.c, without recursive_protection): the
    protection used (``min(usage, setting)``), scaled down in proportion when the siblings
    together claim more than the parent's effective protection."""
    protected = min(usage, setting)
    if siblings_protected > parent_effective:
        return protected * parent_effective // max(siblings_protected, 1)
    return protected


def mem_cgroup_protection(limits: MemcgLimits, target: int, memcg: int) -> tuple[int, int]:
    """``mem_cgroup_protection`` after ``mem_cgroup_calculate_protection``: (emin, elow) of
    ``memcg`` in reclaim of ``target`` (-1: the root, global reclaim). A memcg right under the
    root gets its own settings; the target of limit reclaim and the root get none."""
    if target == memcg or memcg == limits.root:
        return 0, 0
    return limits.min[memcg], limits.low[memcg]


class Protection(NamedTuple):
    """What MGLRU's ``get_nr_to_scan`` reads of a memcg at each call: whether it is below its
    memory.min in this reclaim (``mem_cgroup_below_min``), its (emin, elow) from
    ``mem_cgroup_protection`` and its usage (``page_counter_read``, memory.current)."""

    below_min: bool
    emin: int
    elow: int
    usage: int


def apply_proportional_protection(
    lruvec_size: int, emin: int, elow: int, cgroup_size: int, memcg_low_reclaim: bool
) -> tuple[int, bool]:
    """``apply_proportional_protection`` (mm/vmscan.c; factored out of ``get_scan_count`` in
    6.16 and called by MGLRU's ``get_nr_to_scan`` too): the scan, before ``>> priority``,
    shrinks in proportion to the protected share of the memcg's usage,
    ``scan - scan * protection // (max(usage, protection) + 1)``, but not below
    SWAP_CLUSTER_MAX; the protection is elow if it exceeds emin and this is not the
    ``memcg_low_reclaim`` retry, else emin. Returns (scan, whether memory.low was applied:
    ``memcg_low_skipped``)."""
    if not (emin or elow):
        return lruvec_size, False
    skipped = False
    if not memcg_low_reclaim and elow > emin:
        protection, skipped = elow, True
    else:
        protection = emin
    cgroup_size = max(cgroup_size, protection)
    scan = lruvec_size - lruvec_size * protection // (cgroup_size + 1)
    return max(scan, SWAP_CLUSTER_MAX), skipped


def calculate_overage(usage: int, high: int) -> int:
    """``calculate_overage``: how far above ``high``, in 2^-20 units of ``high``."""
    if usage <= high:
        return 0
    high = max(high, 1)
    return ((usage - high) << MEMCG_DELAY_PRECISION_SHIFT) // high


def calculate_high_delay(max_overage: int, nr_pages: int = MEMCG_CHARGE_BATCH) -> int:
    """``calculate_high_delay``: penalty jiffies, quadratic in the overage, scaled by the
    task's charge against the nominal MEMCG_CHARGE_BATCH (not yet clamped)."""
    if not max_overage:
        return 0
    penalty = max_overage * max_overage * HZ
    penalty >>= MEMCG_DELAY_PRECISION_SHIFT
    penalty >>= MEMCG_DELAY_SCALING_SHIFT
    return penalty * nr_pages // MEMCG_CHARGE_BATCH


class MemCgroups:
    """The memcgs of the VMs: charging, limit reclaim, memory.high throttling, swap charges.

    Args:
        env: simulation environment.
        mem: host memory (``nr_resident`` is each memcg's ``memory.current``).
        limits: settings in pages.
        mms: the mms, by index (one memcg each).
        vmstat: host counters (``memory.events`` broken down per mm).
        reclaim: runs and paces a reclaim pass of the policy (the per-memcg lruvecs).
        oom: the OOM killer (its ``kill`` for a memcg OOM).
        vcpus: tasks charging to each VM's memcg (its vCPUs and its file readers): charges in
            flight at once, so how far ``memory.current`` may pass ``memory.max`` (a charge is
            granted before its frame is taken).
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        limits: MemcgLimits,
        mms: Sequence[Mm],
        vmstat: VmEvents,
        reclaim: Reclaim,
        oom: OomKiller,
        vcpus: Sequence[int],
    ) -> None:
        self.env, self.mem, self.limits, self.mms = env, mem, limits, list(mms)
        self.vmstat, self.reclaim, self.oom = vmstat, reclaim, oom
        self.swap_usage = np.zeros(len(self.mms), dtype=np.int64)  # memory.swap.current
        self._owner_memcg = np.asarray(limits.owner_memcg, dtype=np.int64)
        # per page owner: memory.zswap.writeback 0 (None: no memcg turned it off)
        self.no_writeback = limits.no_writeback()
        self.ksm: Ksm | None = None  # KSM, when on: the folios each memcg is charged for
        self.vcpus = list(vcpus)
        # lazy statistics (use_lazy_stats): the policy whose lruvecs read flushed counters
        self.stats_policy: Any = None
        self.flush_period_ns = 0  # FLUSH_TIME: flush_memcg_stats_dwork's period
        self.flush_last_ns = 0  # flush_last_time: the last flush of the root

    # -- statistics (rstat) ------------------------------------------------------------------
    def use_lazy_stats(self, policy: Any, period_ns: int) -> None:
        """Make ``policy``'s memcg lruvecs read their counters as of the last flush, flushed
        every ``period_ns`` by ``flush_stats_dwork`` (which the world starts)."""
        self.stats_policy, self.flush_period_ns = policy, period_ns
        policy.use_lazy_stats()

    def flush_stats(self, memcg: int | None = None) -> None:
        """``mem_cgroup_flush_stats``: a reader of the memcg's ``memory.stat`` (or the OOM
        report) flushes its subtree; None flushes the root, the whole tree, and sets
        ``flush_last_time``. Every flush is taken to have enough pending updates
        (``memcg_vmstats_needs_flush``). A no-op with exact statistics."""
        if self.stats_policy is None:
            return
        self.stats_policy.flush_stats(memcg)
        if memcg is None:
            self.flush_last_ns = int(self.env.now)

    def flush_stats_ratelimited(self, memcg: int) -> None:
        """``mem_cgroup_flush_stats_ratelimited`` (``prepare_scan_control``; -1: global
        reclaim, the root): a flush only when the periodic one is a full period late. The
        periodic worker here never is, so this matters only if a driver stops it."""
        if self.stats_policy is None:
            return
        if int(self.env.now) > self.flush_last_ns + 2 * self.flush_period_ns:
            self.flush_stats(None if memcg < 0 else memcg)

    def flush_stats_dwork(self) -> ProcessGen:
        """``flush_memcg_stats_dwork``: flush the root every period, forever."""
        while True:
            yield self.env.timeout(self.flush_period_ns)
            self.flush_stats()

    # -- memory ------------------------------------------------------------------------------
    def usage(self, memcg: int) -> int:
        """``memory.current`` in pages."""
        return self.limits.usage(self.mem.nr_resident, memcg)

    def memcgs_of(self, pids: NDArray[np.integer]) -> NDArray[np.int64]:
        """``memcg_of`` of every page in ``pids`` (a KSM folio: the memcg its pool charges)."""
        return self._owner_memcg[self.mem.page_owners(pids)]

    def memcg_of(self, pid: int) -> int:
        """The memcg page ``pid`` is charged to (``folio_memcg``)."""
        return self.limits.owner_memcg[self.mem.page_owner(pid)]

    def charge_fast(self, pid: int, nr_pages: int = 1) -> bool:
        """Whether ``nr_pages`` more pages fit under memory.max and memory.high with nothing
        to do (``consume_stock``/``page_counter_try_charge`` succeeding without over-high
        work); the root memcg has no limits."""
        i = self.memcg_of(pid)
        if i == self.limits.root:
            return True
        u = self.usage(i) + nr_pages
        return u <= self.limits.max[i] and u <= self.limits.high[i]

    def fits(self, pid: int, nr_pages: int) -> bool:
        """``nr_pages`` more pages fit under the memcg's memory.max (``page_counter_try_charge``
        succeeding; memory.high is the charging task's business on its way back to user
        mode, which a kernel thread never takes)."""
        i = self.memcg_of(pid)
        return i == self.limits.root or self.usage(i) + nr_pages <= self.limits.max[i]

    def try_charge(self, pid: int, nr_pages: int = 1) -> ProcessGen:
        """``try_charge_memcg`` for ``nr_pages`` pages of ``pid``'s memcg: reclaim the memcg
        while over memory.max, retrying on progress (only for a charge of at most
        ``1 << PAGE_ALLOC_COSTLY_ORDER`` pages: "huge pages are rather unlikely to succeed so
        close to the limit") and MAX_RECLAIM_RETRIES times without, then the memcg OOM, which
        ``mem_cgroup_oom`` skips for a costly order (a THP's charge fails instead: -ENOMEM).
        Returns False when the charge failed or the VM was killed (by this OOM or before)."""
        i = self.memcg_of(pid)
        if i == self.limits.root:
            return True
        mm = self.mms[i]
        nr_retries = MAX_RECLAIM_RETRIES
        costly = nr_pages > 1 << PAGE_ALLOC_COSTLY_ORDER
        while not mm.dead:
            if self.usage(i) + nr_pages <= self.limits.max[i]:
                return True
            self.vmstat.count(MEMCG_MAX, 1, i)
            reclaimed = yield from self.try_to_free_mem_cgroup_pages(i, nr_pages)
            if self.usage(i) + nr_pages <= self.limits.max[i] or (reclaimed and not costly):
                continue
            if nr_retries:
                nr_retries -= 1
                continue
            if costly:  # mem_cgroup_oom: OOM_SKIPPED above PAGE_ALLOC_COSTLY_ORDER
                return False
            self.mem_cgroup_out_of_memory(i)
            nr_retries = MAX_RECLAIM_RETRIES
        return False

    def mem_cgroup_out_of_memory(self, memcg: int) -> None:
        """The memcg OOM: the only task in the memcg is the VM's QEMU; it is killed."""
        self.vmstat.count(MEMCG_OOM, 1, memcg)
        self.flush_stats(memcg)  # the OOM report prints memory.stat
        self.oom.kill(self.mms[memcg])

    def try_to_free_mem_cgroup_pages(self, memcg: int, nr_pages: int) -> ProcessGen:
        """``try_to_free_mem_cgroup_pages``: reclaim from the memcg's own lruvec only, at
        priority 12 down to 0 until ``max(nr_pages, SWAP_CLUSTER_MAX)`` are freed; no
        protection applies to the target. Returns the pages freed."""
        sc = ScanControl(
            nr_to_reclaim=max(nr_pages, SWAP_CLUSTER_MAX),
            direct=True,
            vmstat=self.vmstat,
            target_memcg=memcg,
        )
        paid = [0]
        for priority in range(DEF_PRIORITY, -1, -1):
            sc.priority = priority
            yield from self.reclaim.shrink_node(sc, paid)
            if sc.nr_reclaimed >= sc.nr_to_reclaim:
                break
        if self.stats_policy is not None:
            self.stats_policy.snapshot_refaults(memcg)
        return sc.nr_reclaimed

    def over_high(self, memcg: int) -> bool:
        """``memory.current`` above ``memory.high``."""
        return self.usage(memcg) > self.limits.high[memcg]

    def handle_over_high(self, memcg: int) -> ProcessGen:
        """``mem_cgroup_handle_over_high`` on the vCPU's return to the guest: reclaim the
        excess (``reclaim_high``), retry while that makes progress or up to
        MAX_RECLAIM_RETRIES times, then sleep the penalty (``calculate_high_delay``, at most
        2 s; none at or below HZ/100 jiffies)."""
        if memcg == self.limits.root or self.mms[memcg].dead or not self.over_high(memcg):
            return
        nr_pages = MEMCG_CHARGE_BATCH
        nr_retries = MAX_RECLAIM_RETRIES
        in_retry = False
        while True:
            reclaimed = 0
            if self.over_high(memcg):  # reclaim_high
                self.vmstat.count(MEMCG_HIGH, 1, memcg)
                reclaimed = yield from self.try_to_free_mem_cgroup_pages(
                    memcg, SWAP_CLUSTER_MAX if in_retry else nr_pages
                )
            overage = calculate_overage(self.usage(memcg), self.limits.high[memcg])
            penalty = min(calculate_high_delay(overage, nr_pages), MEMCG_MAX_HIGH_DELAY_JIFFIES)
            if penalty <= HZ // 100 or self.mms[memcg].dead:
                return
            if reclaimed:
                in_retry = True
                continue
            if nr_retries:
                nr_retries -= 1
                in_retry = True
                continue
            yield self.env.timeout(penalty * JIFFY_NS)
            return

    # -- swap --------------------------------------------------------------------------------
    def swap_allowed(self, pids: NDArray[np.integer]) -> NDArray[np.bool_]:
        """``__mem_cgroup_try_charge_swap``'s test, in order: which pages' memcgs have room
        under memory.swap.max for one more slot each (counting those before them); the others
        count ``memory.swap.events max``."""
        owners = self.memcgs_of(pids).tolist()
        ok = np.ones(len(owners), dtype=np.bool_)
        extra: dict[int, int] = {}
        for k, i in enumerate(owners):
            n = extra.get(i, 0)
            if self.swap_usage.item(i) + n + 1 > self.limits.swap_max[i]:
                ok[k] = False
                self.vmstat.count(MEMCG_SWAP_MAX, 1, i)
            else:
                extra[i] = n + 1
        return ok

    def swap_full(self, owners: NDArray[np.integer]) -> NDArray[np.bool_]:
        """``mem_cgroup_swap_full`` per page owner: its memcg uses at least half of its
        memory.swap.max, so a swapped-in or activated folio gives its slot back (the
        node-wide half-full test, ``vm_swap_full``, is the caller's). Without it a memcg whose
        swap.max holds only its cold pages would keep slots for pages already back in RAM
        and be OOM-killed with swap room to spare."""
        own = self._owner_memcg[np.asarray(owners, dtype=np.int64)]
        lim = np.asarray(self.limits.swap_max, dtype=np.int64)
        out = np.zeros(len(own), dtype=np.bool_)
        vm = own < len(lim)  # the root's page cache has no swap
        out[vm] = self.swap_usage[own[vm]] * 2 >= lim[own[vm]]
        return out

    def swap_allowed_folio(self, head: int, nr_pages: int) -> bool:
        """``__mem_cgroup_try_charge_swap`` for a large folio: its ``nr_pages`` slots fit
        under its memcg's memory.swap.max, all or none; a failure counts
        ``memory.swap.events max`` once."""
        i = self.mem.page_owner(head)
        if i >= len(self.swap_usage):
            return True
        if self.swap_usage.item(i) + nr_pages > self.limits.swap_max[i]:
            self.vmstat.count(MEMCG_SWAP_MAX, 1, i)
            return False
        return True

    def charge_swap(self, pids: NDArray[np.integer]) -> None:
        """The pages got swap slots: charge each to its memcg's ``memory.swap.current``."""
        if len(pids):
            self.swap_usage += np.bincount(self.memcgs_of(pids), minlength=len(self.swap_usage))

    def uncharge_swap(self, pids: NDArray[np.integer] | Sequence[int]) -> None:
        """``mem_cgroup_uncharge_swap``: the pages' slots were freed."""
        if len(pids):
            memcgs = self.memcgs_of(np.asarray(pids, dtype=np.int64))
            self.swap_usage -= np.bincount(memcgs, minlength=len(self.swap_usage))

    def check(self) -> None:
        """Memory charges equal the frames each memcg's pages own (its VM's and its files'),
        swap charges the slots they hold; none negative."""
        mem, lim = self.mem, self.limits
        owned = mem.frame_pid[mem.frame_pid >= 0]
        memcgs = np.asarray(lim.owner_memcg, dtype=np.int64)[mem.page_owners(owned)]
        frames = np.bincount(memcgs, minlength=lim.nr_memcgs)
        charges = [self.usage(i) - lim.overhead[i] + lim.hugetlb[i] for i in range(lim.nr_memcgs)]
        assert frames.tolist() == charges, "memcg charges != frames owned (and the overhead)"
        for i, mm in enumerate(self.mms):
            over = self.usage(i) - self.limits.max[i]
            assert mm.dead or over <= self.vcpus[i], f"memcg {i}: {over} pages over memory.max"
        held = np.flatnonzero((mem.flags & PG_SWAP) != 0)
        per = np.bincount(self.memcgs_of(held), minlength=len(self.swap_usage))
        assert (per == self.swap_usage).all(), "memcg swap charges != slots held"
        if mem.thp is not None:  # a THP is charged whole, to memory and to swap
            large = (mem.thp & THP_LARGE) != 0
            n = len(mem.thp) << HPAGE_PMD_SHIFT
            sw = ((mem.flags[:n] & PG_SWAP) != 0).reshape(-1, HPAGE_PMD_NR)[large]
            assert (sw.all(axis=1) | ~sw.any(axis=1)).all(), "a THP's swap charge split"
            for i in range(len(self.mms)):
                thp_pages = self.thp_stat(i)["anon_thp"] // PAGE_SIZE
                assert thp_pages <= self.usage(i) - lim.overhead[i], "anon_thp > memory.current"
        assert (mem.nr_resident >= 0).all(), "a negative memory charge"

    def _first_file(self) -> int:
        """The first page-cache owner: after the VMs' mms and KSM's pseudo-mms."""
        return len(self.mms) + (len(self.ksm.pool_owners) if self.ksm is not None else 0)

    def file_stat(self, memcg: int) -> dict[str, int]:
        """``memory.stat``'s page-cache sizes of the memcg, in pages: ``file`` (resident),
        ``file_dirty``, ``file_writeback``."""
        mem = self.mem
        ends = [*mem.pid_base.tolist()[1:], mem.nr_pages]
        out = {"file_pages": 0, "file_dirty_pages": 0, "file_writeback_pages": 0}
        for o in self.limits.owners[memcg]:
            if o < self._first_file():
                continue
            f = mem.flags[int(mem.pid_base[o]) : ends[o]]
            out["file_pages"] += int(mem.nr_resident[o])
            out["file_dirty_pages"] += int(np.count_nonzero(f & PG_DIRTY))
            out["file_writeback_pages"] += int(np.count_nonzero(f & PG_WRITEBACK))
        return out

    def thp_stat(self, memcg: int) -> dict[str, int]:
        """``memory.stat``'s THP lines of a VM's memcg (host.thp): ``anon_thp``, the bytes of
        its PMD-mapped THPs (``NR_ANON_THPS``: added by ``__folio_add_anon_rmap`` at the PMD
        level, dropped when the PMD is split), read from the block array; and the THP events
        of ``memcg_vm_event_stat``, read from vmstat's breakdown of its mm."""
        mem = self.mem
        assert mem.thp is not None
        mm = self.mms[memcg]
        first = mm.pid_base >> HPAGE_PMD_SHIFT
        blocks = mem.thp[first : first + (mm.nr_pages >> HPAGE_PMD_SHIFT)]
        pmd = int(np.count_nonzero(blocks & THP_PMD))
        pm = self.vmstat.per_mm[memcg]
        return {
            "anon_thp": pmd * HPAGE_PMD_NR * PAGE_SIZE,
            **{k: pm[k] for k in MEMCG_THP_EVENTS},
        }

    def stat(self, memcg: int) -> dict[str, Any]:
        """The memcg's settings, usage and ``memory.events`` (summary); with a page cache,
        its file sizes too; with host.thp, its THP lines of ``memory.stat``."""
        lim = self.limits
        pm = self.vmstat.per_mm[memcg]

        def setting(v: int) -> int | None:
            return None if v >= PAGE_COUNTER_MAX else v

        files = self.file_stat(memcg) if self._first_file() < len(lim.owner_memcg) else {}
        if self.ksm is not None and memcg < len(self.mms):
            # the KSM folios charged here (in current_pages, as memory.stat's anon counts
            # them), and /proc/<pid>/ksm_stat's ksm_merging_pages of the memcg's QEMU
            files = {
                **files,
                "ksm_pages": self.ksm.charged(memcg),
                "ksm_merging_pages": int(self.ksm.merging[memcg]),
            }
        if self.mem.thp is not None:
            files = {**files, "thp": self.thp_stat(memcg)}
        return {
            "max_pages": setting(lim.max[memcg]),
            "high_pages": setting(lim.high[memcg]),
            "low_pages": lim.low[memcg],
            "min_pages": lim.min[memcg],
            "swap_max_pages": setting(lim.swap_max[memcg]),
            "current_pages": self.usage(memcg),  # with the VMM's overhead, as memory.current
            "swap_current_pages": int(self.swap_usage[memcg]),
            "events": {
                "low": pm[MEMCG_LOW],
                "high": pm[MEMCG_HIGH],
                "max": pm[MEMCG_MAX],
                "oom": pm[MEMCG_OOM],
                "oom_kill": pm[VmStat.OOM_KILL],
                "swap_max": pm[MEMCG_SWAP_MAX],
            },
            **files,
        }

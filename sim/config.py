"""Scenario configuration: YAML -> pydantic models, ``--set`` overrides, one-line errors.

Every field carries its unit in its name (``memory_mib``, ``latency_us``, ``duration_s``) and a
description (shown in the README's config reference). Unknown keys are errors; cross-field rules
(watermarks inside host memory, phase regions inside guest memory) are validators. The resolved
config (defaults filled in) is written beside every result.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)

from sim.costs import CostsConfig
from sim.errors import SHOWN_CHARS, ConfigError, UserError, clip, shown, shown_path
from sim.guest.balloon import BalloonConfig
from sim.guest.kernel import GuestConfig
from sim.guest.workloads import (
    PhasesConfig,
    SimpleWorkload,
    TraceConfig,
    WorkloadConfig,
    ZipfConfig,
)
from sim.host.huge_memory import ThpConfig
from sim.host.ksm import ContentConfig, KsmConfig
from sim.host.memcontrol import MemcgConfig
from sim.host.memory import Watermarks, setup_per_zone_wmarks
from sim.host.mom import MomConfig
from sim.host.swap import SwapConfig
from sim.inputs import load_yaml, open_regular, read_yaml_file
from sim.reclaim import DEFAULT_RECLAIM, ReclaimConfig
from sim.results import ResultName
from sim.schema import Strict

MAX_DURATION_S = 4000.0  # last-access stamps are uint32 microseconds (~71 min)
MIN_DURATION_S = 1e-6  # the engine steps through a run in 100 increments of whole ns
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64 TiB; what fits this machine is checked before a run
MAX_VMS = 4096  # VMs of a scenario, all profiles together
MAX_VCPUS = 16384  # vCPUs of a scenario: one SimPy process and access buffers each
MAX_SAMPLES = 10_000_000  # timeline samples of a run (duration / sample interval)
MAX_WINDOWS = 1_000_000  # stall windows of a run (two int64 per VM each)


# fields added after configs were first hashed, left out of dumps at their unset values
_UNSET_LEFT_OUT: tuple[tuple[str, Any], ...] = (
    ("memcg", None),
    ("guest_tlb", None),
    ("guest", None),
    ("balloon", None),
    ("async_pf", 0.0),
    ("mom", None),
    ("ksm", None),
    ("thp", None),
    ("content", None),
    ("rmap", "anon_vma"),
    ("shadow_rmap", True),
)


class _MemcgOptional(Strict):
    """A section whose later optional fields (``memcg``, ``guest_tlb``, ``async_pf``) are left
    out of dumps when unset, so configs written before they existed dump (and hash) as they
    did."""

    @model_serializer(mode="wrap")
    def _without_unset_memcg(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``memcg`` out of dumps when unset, so configs without one read as before."""
        out: dict[str, Any] = handler(self)
        for key, unset in _UNSET_LEFT_OUT:
            if key in out and out[key] == unset and type(out[key]) is type(unset):
                del out[key]
        return out


class HostConfig(_MemcgOptional):
    """The host: memory available to guests and the zone watermarks."""

    memory_mib: int = Field(gt=0, le=MAX_MEMORY_MIB, description="Memory for guest RAM.")
    min_free_kbytes: int | None = Field(
        None,
        ge=0,
        le=MAX_MEMORY_MIB * 1024,
        description="vm.min_free_kbytes; default as the kernel derives it "
        "(clamp(int_sqrt(kB * 16), 128, 262144)).",
    )
    watermark_scale_factor: int = Field(
        10, ge=1, le=3000, description="vm.watermark_scale_factor (1/10000 of memory per gap)."
    )
    dirty_ratio: int = Field(
        20,
        ge=1,
        le=100,
        description="vm.dirty_ratio: percent of the dirtyable memory (free above the reserve "
        "plus page cache) that dirty and write-back page cache may reach before a writer is "
        "throttled (balance_dirty_pages; throttling starts halfway from the background "
        "threshold). Only runs with host_files writes use it.",
    )
    dirty_background_ratio: int = Field(
        10,
        ge=0,
        le=100,
        description="vm.dirty_background_ratio: percent of the dirtyable memory above which the "
        "flusher writes dirty page cache at once (background write-back); at or above "
        "dirty_ratio it is half of that.",
    )
    page_size_kib: Literal[4, 2048] = Field(
        4,
        description="Size of the simulated page: 4 (KiB). 2048 is a shorthand for THP-backed "
        "guest RAM: it is expanded into 4 with thp: {enabled: always} (the other thp fields at "
        "their defaults), and the resolved config written beside results is the expanded one.",
    )
    memcg_stats: Literal["exact", "lazy"] = Field(
        "exact",
        description="How two_list reclaim of a VM's memcg reads the memcg's statistics "
        "(lruvec_page_state: the list sizes inactive_is_low compares and the refault counts "
        "that allow deactivation, the sizes the refault distance is judged against). lazy: "
        "as the kernel aggregates them (rstat), the values at the memcg's last flush, which "
        "happens every memcg_stats_flush_ms and when something reads its memory.stat; a "
        "memcg whose last flush saw no low inactive list never deactivates, and a KVM guest "
        "whose pages all start active can be OOM-killed at its memory.max. exact: always "
        "current, as on a host where something reads memory.stat continuously.",
    )
    memcg_stats_flush_ms: float = Field(
        2000.0,
        ge=1.0,
        le=3_600_000.0,
        description="Period of the kernel's periodic memcg statistics flush "
        "(flush_memcg_stats_dwork, FLUSH_TIME = 2 s); used with memcg_stats lazy.",
    )
    ksm: KsmConfig | None = Field(
        None,
        description="Kernel samepage merging: ksmd merges identical guest pages (vms[].content "
        "says which are) into write-protected KSM pages (absent: no KSM).",
    )
    thp: ThpConfig | None = Field(
        None,
        description="Transparent huge pages backing guest RAM at 4 KiB granularity "
        "(/sys/kernel/mm/transparent_hugepage; absent: 4 KiB pages only): 2 MiB folios on "
        "first touch, PMD aging, whole-THP swap-out or split (host/huge_memory.py).",
    )
    rmap: Literal["anon_vma", "none"] = Field(
        "anon_vma",
        description="How reclaim finds the ptes that map an anonymous folio. anon_vma: the "
        "reverse map (one walk per mapping, as since Linux 2.6.7). none: the counterfactual "
        "without one: every folio_referenced and try_to_unmap scans the page tables of every "
        "VM's mm (512 ptes per page table any page of its 2 MiB range was ever touched), "
        "counted in rmap_pte_scans and priced by costs.pte_scan_ns. Reclaim's decisions are "
        "the same; only its CPU time changes.",
    )

    _thp_shorthand: bool = PrivateAttr(False)

    @model_validator(mode="wrap")
    @classmethod
    def _expand_thp_shorthand(
        cls, data: Any, handler: ModelWrapValidatorHandler[HostConfig]
    ) -> HostConfig:
        """``page_size_kib: 2048`` becomes ``page_size_kib: 4`` with ``thp: {enabled: always}``,
        so a run and its resolved config are the THP model's; the host remembers the shorthand
        so that THP's refusals can name it."""
        short = isinstance(data, dict) and data.get("page_size_kib") == 2048
        if short:
            if data.get("thp") is not None:
                raise ValueError(
                    "page_size_kib: 2048 is the shorthand for thp: {enabled: always}; use "
                    "one of them (drop page_size_kib, or thp)"
                )
            data = {**data, "page_size_kib": 4, "thp": {"enabled": "always"}}
        host = handler(data)
        host._thp_shorthand = short
        return host

    @property
    def thp_named(self) -> str:
        """How the config asked for THP (the shorthand or the section), for its refusals."""
        return "host.page_size_kib: 2048" if self._thp_shorthand else "host.thp"

    def pages(self, mib: int) -> int:
        """``mib`` MiB in 4 KiB pages."""
        return mib << 8

    def watermarks(self) -> Watermarks:
        """``__setup_per_zone_wmarks`` for this host's frames and sysctls."""
        return setup_per_zone_wmarks(
            self.pages(self.memory_mib), self.min_free_kbytes, self.watermark_scale_factor
        )


class KvmConfig(_MemcgOptional):
    """KVM's MMU and its notifier hooks."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tdp_mmu" in data:
            raise ValueError(
                "tdp_mmu was replaced by mmu: tdp | legacy_tdp | shadow (tdp_mmu: false used "
                "to mean shadow paging: write mmu: shadow; tdp_mmu: true is mmu: tdp)"
            )
        return data

    mmu_notifiers: bool = Field(
        True,
        description="Register the aging notifiers (clear_flush_young, clear_young, "
        "test_young). Off: the host sees only QEMU's own pte young bits.",
    )
    ept_ad_bits: bool = Field(
        True,
        description="EPT accessed/dirty bits. Off: aging marks sptes access-tracked and "
        "the next guest touch takes a fast page fault.",
    )
    mmu: Literal["tdp", "legacy_tdp", "shadow"] = Field(
        "tdp",
        description="KVM's MMU: tdp (EPT/NPT with the TDP MMU, tdp_mmu=Y: one spte per gfn, "
        "walked in the table itself), legacy_tdp (EPT/NPT with the legacy MMU, tdp_mmu=N: one "
        "spte per gfn, found through KVM's rmap) or shadow (ept=0/npt=0, or a paravirtual "
        "KVM: shadow page tables, shadow_sptes_per_gfn aliases per gfn on KVM's rmap).",
    )
    shadow_sptes_per_gfn: int = Field(
        2,
        ge=1,
        le=16,
        description="With mmu: shadow: sptes mapping each guest page "
        "(aliases through different guest page tables), all chained in KVM's rmap.",
    )
    flush_on_age: bool = Field(
        False, description="Pre-6.13 KVM: a young clear_flush_young flushes remote TLBs."
    )
    dirty_on_map: bool = Field(
        True,
        description="KVM marks a page dirty when it maps it writable after a fault "
        "(so every evicted guest page is written). Off: dirty only if the guest wrote it, and "
        "clean pages with a valid swap copy are dropped without a write.",
    )
    shadow_rmap: bool = Field(
        True,
        description="With mmu: shadow, KVM's rmap (gfn -> sptes) finds the sptes an aging or "
        "unmap notifier call must visit. Off: the counterfactual without it: each such call "
        "scans every present spte of the VM, counted in kvm_spte_scans and priced by "
        "costs.pte_scan_ns. With tdp or legacy_tdp nothing changes: the EPT/NPT table is "
        "indexed by gfn, so its walk needs no rmap.",
    )


class GuestTlbConfig(Strict):
    """One vCPU's TLB (guest/tlb.py): the EPT accessed bit is set only when a translation is
    filled, so pages hit in the TLB look idle to aging until their entry goes."""

    entries: int = Field(
        1536,
        ge=1,
        le=1 << 16,
        description="Translations cached per vCPU (a second-level TLB holds 1536-2048 4 KiB "
        "translations on current x86 cores).",
    )
    ways: int = Field(12, ge=1, le=1 << 16, description="Associativity (entries per set).")
    context_switch_us: float = Field(
        0.0,
        ge=0.0,
        le=1e9,
        description="Guest time between context switches that flush the whole TLB (a guest "
        "without PCID); 0: none do (with PCID, entries survive a switch).",
    )

    @model_validator(mode="after")
    def _sets(self) -> GuestTlbConfig:
        if self.entries % self.ways:
            raise ValueError(
                f"entries ({self.entries}) is not a multiple of ways ({self.ways}); "
                "use whole sets, e.g. entries 1536 with ways 12"
            )
        return self


class VmConfig(_MemcgOptional):
    """One VM profile; ``count`` > 1 makes that many identical VMs (``name0``, ``name1``, ...)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", max_length=128, description="VM name (log label)."
    )
    count: int = Field(1, ge=1, le=4096, description="Identical VMs of this profile.")
    memory_mib: int = Field(gt=0, le=MAX_MEMORY_MIB, description="Guest RAM.")
    vcpus: int = Field(1, ge=1, le=256, description="vCPUs.")
    working_set_mib: int | None = Field(
        None,
        gt=0,
        le=MAX_MEMORY_MIB,
        description="Part of guest RAM the workload touches (default: all of it).",
    )
    access_rate_per_s: int = Field(
        1_000_000, gt=0, le=10**10, description="Page-granular accesses per second per vCPU."
    )
    write_ratio: float = Field(0.3, ge=0.0, le=1.0, description="Share of accesses that write.")
    workload: WorkloadConfig = Field(
        default_factory=ZipfConfig, description="Access pattern (default zipf, alpha 0.99)."
    )
    compress_ratio: float = Field(
        3.0,
        ge=1.0,
        le=100.0,
        description="Mean compression ratio of this VM's pages (uncompressed / compressed "
        "bytes) under zram or zswap; typical anon memory: 2-4 with lzo-rle/lz4. Each page's "
        "ratio is drawn once from the seed (lognormal).",
    )
    compress_ratio_cv: float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="Coefficient of variation of the per-page ratio (0: every page "
        "compress_ratio); pages drawn below 1 do not compress (zram keeps them whole, and so "
        "does zswap unless swap.zswap.store_incompressible is false: then it rejects them).",
    )
    prefault: bool = Field(
        False,
        description="Start in steady state: before time 0 the pages the workload touches are "
        "placed as a long run leaves them (hottest most recently used; what does not fit above "
        "the high watermark, or under the VM's memcg memory.max and memory.high, starts in "
        "swap while slots and memory.swap.max allow, else untouched; with zram or zswap the "
        "swapped pages are stored in the compressed pool as evictions would store them, its "
        "frames counted against host memory). With host.thp the unit is the 2 MiB block: "
        "every touched block is a whole THP or wholly in swap. The fill is not counted in "
        "vmstat. Watermark reclaim only.",
    )
    async_pf: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the faults that must wait which KVM makes asynchronous (a guest "
        "user-mode fault with another task to run): the guest runs on and the access completes "
        "when its page is ready; such faults stall no vCPU. Watermark reclaim only (demand "
        "mode has no time).",
    )
    guest_tlb: GuestTlbConfig | None = Field(
        None,
        description="Model each vCPU's TLB: accesses through cached translations set no EPT "
        "accessed bit, and with guest no guest pte accessed bit either (the TLB then caches "
        "the guest process's pages and the guest's unmaps flush it); absent: every access "
        "sets them, as if nothing were cached.",
    )
    guest: GuestConfig | None = Field(
        None,
        description="Model the guest kernel's memory: the workload runs in a guest process "
        "whose pages the guest maps to gfns, ages with its own LRU and swaps to a virtual "
        "disk (absent: the workload touches gfns directly, as if the guest never reclaimed). "
        "Watermark reclaim only.",
    )
    balloon: BalloonConfig | None = Field(
        None,
        description="A virtio-balloon device and its guest driver (needs guest: the balloon "
        "takes its pages from the guest kernel); its target is set by initial_target_mib "
        "and by the host's balloon manager (mom).",
    )
    content: ContentConfig | None = Field(
        None,
        description="What the guest's pages hold, for KSM (host.ksm): shares of zero-filled "
        "pages and of a shared image's blocks; absent: every page unique (nothing to merge).",
    )
    memcg: MemcgConfig | None = Field(
        None,
        description="The VM's memory cgroup (libvirt's per-VM cgroup, v2): memory.max, "
        "memory.high, memory.low, memory.min, memory.swap.max; absent: unlimited and "
        "unprotected. two_list or mglru reclaim with watermarks only.",
    )
    memory_backing: Literal["anonymous", "hugetlbfs"] = Field(
        "anonymous",
        description="What backs guest RAM. anonymous: host anonymous memory (QEMU's mmap), "
        "faulted in, aged, reclaimed and swapped. hugetlbfs: preallocated huge pages from the "
        "host's hugetlb pool (QEMU -mem-path /dev/hugepages -mem-prealloc; libvirt "
        "<hugepages/>): every page resident from the start, mapped by KVM, on no LRU list, "
        "never reclaimed, and not charged to the memcg's memory.current (host/hugetlb.py).",
    )
    hugepage_size_kib: Literal[2048, 1048576] = Field(
        2048,
        description="The hugetlbfs page size (hstate): 2048 (2 MiB) or 1048576 (1 GiB); "
        "memory_mib must be a whole number of them. Only with memory_backing: hugetlbfs.",
    )

    @property
    def workload_mib(self) -> int:
        """The memory the workload's accesses name: guest RAM, or with a guest kernel its
        process's footprint."""
        if self.guest is not None:
            return (self.guest.footprint_mib or self.memory_mib) + self.guest.file_mib
        return self.memory_mib

    @model_validator(mode="after")
    def _fits(self) -> VmConfig:
        space = "memory_mib"
        if self.workload_mib != self.memory_mib:
            space = "guest.footprint_mib + guest.file_mib"
        if self.working_set_mib is not None and self.working_set_mib > self.workload_mib:
            raise ValueError(
                f"working_set_mib ({self.working_set_mib}) exceeds {space} "
                f"({self.workload_mib}); lower it or raise {space}"
            )
        if isinstance(self.workload, PhasesConfig):
            ws = self.working_set_mib or self.workload_mib
            for i, ph in enumerate(self.workload.phases):
                end = ph.offset_mib + (ph.working_set_mib or ws)
                if end > self.workload_mib:
                    raise ValueError(
                        f"workload.phases[{i}]: offset_mib + working_set_mib = {end} exceeds "
                        f"{space} ({self.workload_mib})"
                    )
        if self.memory_backing == "anonymous" and self.hugepage_size_kib != 2048:
            raise ValueError(
                "hugepage_size_kib: only hugetlbfs-backed guest RAM has a huge page size; set "
                "memory_backing: hugetlbfs or remove hugepage_size_kib"
            )
        if self.memory_backing == "hugetlbfs" and (self.memory_mib << 10) % self.hugepage_size_kib:
            per = self.hugepage_size_kib >> 10
            raise ValueError(
                f"memory_mib: {self.memory_mib} is not a whole number of "
                f"{self.hugepage_size_kib} KiB huge pages (memory_backing: hugetlbfs); use a "
                f"multiple of {per}"
            )
        if self.balloon is not None and self.balloon.enabled and self.guest is None:
            raise ValueError(
                "balloon needs guest (the balloon driver takes its pages from the guest "
                "kernel's allocator): add a guest section or remove balloon"
            )
        return self

    def names(self) -> list[str]:
        """Names of the VMs this profile expands to."""
        return [self.name] if self.count == 1 else [f"{self.name}{i}" for i in range(self.count)]


class EngineConfig(Strict):
    """Simulation engine knobs (speed/accuracy trade-offs)."""

    batch_accesses: int = Field(
        1024, ge=1, le=1 << 20, description="Largest batch of accesses a vCPU applies at once."
    )
    sample_interval_ms: float = Field(
        10.0,
        ge=0.01,
        le=MAX_DURATION_S * 1000,
        description="Timeline sampling period (simulated time).",
    )


class MetricsConfig(Strict):
    """How the summary measures tails over time."""

    window_ms: float = Field(
        100.0,
        ge=0.01,
        le=MAX_DURATION_S * 1000,
        description="Window over which each VM's stall fraction is measured; summary.json "
        "gives p50/p99/max over the windows after the warm-up.",
    )


class OutputConfig(Strict):
    """Which event tables to write."""

    evictions: bool = Field(True, description="Write evictions.parquet.")
    faults: bool = Field(True, description="Write faults.parquet.")
    timeline: bool = Field(True, description="Write timeline.parquet.")
    oracle_gaps: bool = Field(
        True,
        description="Demand mode: replay the same reference string with exact LRU and "
        "OPT at the same memory size and report the gaps in summary.json (8 bytes/access).",
    )
    chunk_rows: int = Field(
        65536,
        ge=1024,
        le=1 << 24,
        description="Rows buffered per table before a row group is written (bounds memory).",
    )


class HostFilesConfig(_MemcgOptional):
    """A host file workload reading through the host page cache (for example a QEMU disk image
    opened with cache=writeback, or a host service): file pages on their own LRU lists."""

    size_mib: int = Field(ge=1, le=1 << 20, description="Size of the file data read (MiB).")
    access_rate_per_s: int = Field(
        1_000_000,
        ge=1,
        le=10**9,
        description="Page reads per second of simulated time (a hit costs nothing else).",
    )
    workload: SimpleWorkload = Field(
        default_factory=ZipfConfig,
        description="Which file pages are read: type uniform, zipf, hotcold or scan, as in "
        "vms[].workload.",
    )
    read_latency_us: float = Field(
        100.0,
        gt=0.0,
        le=1e6,
        description="Device read time of one page-cache miss (us), taken one after another.",
    )
    write_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the accesses that write (dirty) the page; a write miss reads "
        "the page first.",
    )
    writeback_mib_per_s: float = Field(
        500.0,
        gt=0.0,
        le=1e6,
        description="The flusher's write speed to the file's device (MiB/s).",
    )
    dirty_writeback_ms: float = Field(
        5000.0,
        gt=0.0,
        le=3.6e6,
        description="vm.dirty_writeback_centisecs, in ms: how often the flusher wakes.",
    )
    dirty_expire_ms: float = Field(
        30000.0,
        ge=0.0,
        le=3.6e6,
        description="vm.dirty_expire_centisecs, in ms: how old dirty data is when the flusher "
        "writes it.",
    )
    memcg: str | None = Field(
        None,
        max_length=128,
        description="Name of the VM whose memory cgroup the file's page cache is charged to "
        "(QEMU reading the VM's disk image; that VM needs a memcg section); absent: the root "
        "cgroup (a host service).",
    )


HostFiles = Annotated[
    Annotated[HostFilesConfig, Tag("one")] | Annotated[list[HostFilesConfig], Tag("many")],
    Discriminator(lambda v: "many" if isinstance(v, list) else "one"),
]
"""``host_files``: one section, or a list of them (each its own file and reader)."""


class Scenario(_MemcgOptional):
    """A complete run: host, reclaim policy, swap, KVM, costs, VMs."""

    name: ResultName = Field(
        "scenario",
        description="Run name (default: the config file name).",
    )
    seed: int = Field(
        1,
        ge=0,
        lt=2**63,
        description="Master seed; every component derives its own stream from it and its name.",
    )
    duration_s: float = Field(ge=MIN_DURATION_S, le=MAX_DURATION_S, description="Simulated time.")
    warmup_s: float = Field(
        0.0,
        ge=0.0,
        le=MAX_DURATION_S,
        description="Simulated time at the start excluded from every summary metric (less "
        "than duration_s); host vmstat stays whole-run beside vmstat_after_warmup.",
    )
    host: HostConfig = Field(description="Host memory and watermarks.")
    reclaim: ReclaimConfig = Field(
        default_factory=DEFAULT_RECLAIM, description="Eviction policy and its knobs."
    )
    swap: SwapConfig = Field(default_factory=SwapConfig, description="The swap device.")
    kvm: KvmConfig = Field(default_factory=KvmConfig, description="KVM MMU and notifiers.")
    costs: CostsConfig = Field(
        default_factory=CostsConfig, description="CPU costs of kernel/KVM operations (ns)."
    )
    vms: list[VmConfig] = Field(min_length=1, description="VM profiles (at least one).")
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="Batch size and sampling period."
    )
    output: OutputConfig = Field(default_factory=OutputConfig, description="Which tables to write.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Windows of the tail metrics."
    )
    mom: MomConfig | None = Field(
        None,
        description="A host balloon manager modelled on oVirt MOM's default balloon.rules: "
        "from host free memory and each ballooned guest's reported free memory it sets the "
        "VMs' balloon targets (none: no manager).",
    )
    host_files: HostFiles | None = Field(
        None,
        description="A host file workload through the page cache (none: guest RAM only), or "
        "a list of them (each its own file and reader). Needs reclaim.policy two_list or mglru, "
        "and watermark reclaim.",
    )

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        frames = self.host.pages(self.host.memory_mib)
        wm = self.host.watermarks()
        if wm.high >= frames:
            raise ValueError(
                f"host: watermarks min/low/high = {wm.min}/{wm.low}/{wm.high} pages reach host "
                f"memory ({frames} pages); lower host.min_free_kbytes or "
                f"host.watermark_scale_factor, or raise host.memory_mib"
            )
        if self.swap.device == "zram" and self.reclaim.trigger == "demand":
            raise ValueError(
                "swap.device: zram takes frames from the host, which demand mode's fixed frame "
                "budget has no room for; use swap.device: disk or reclaim.trigger: watermark"
            )
        if self.swap.zswap.enabled and self.swap.device == "zram":
            raise ValueError(
                "swap.zswap.enabled: zswap in front of zram compresses twice; use "
                "swap.device: disk with zswap, or turn zswap off"
            )
        if self.swap.zswap.enabled and self.reclaim.trigger == "demand":
            raise ValueError(
                "swap.zswap.enabled: the zswap pool takes frames from the host, which demand "
                "mode's fixed frame budget has no room for; use reclaim.trigger: watermark"
            )
        if self.reclaim.policy == "opt" and self.reclaim.trigger != "demand":
            raise ValueError(
                "reclaim: policy opt needs the future, which is fixed only in demand mode; "
                "set reclaim.trigger: demand"
            )
        n_vms = sum(vm.count for vm in self.vms)
        if n_vms > MAX_VMS:
            raise ValueError(f"vms: {n_vms:,} VMs in all; at most {MAX_VMS:,} (lower the counts)")
        n_vcpus = sum(vm.count * vm.vcpus for vm in self.vms)
        if n_vcpus > MAX_VCPUS:
            raise ValueError(
                f"vms: {n_vcpus:,} vCPUs in all; at most {MAX_VCPUS:,} (lower counts or vcpus)"
            )
        samples = self.duration_s * 1000 / self.engine.sample_interval_ms
        if self.output.timeline and samples > MAX_SAMPLES:
            raise ValueError(
                f"engine.sample_interval_ms: {self.engine.sample_interval_ms:g} ms over "
                f"duration_s {self.duration_s:g} s is {samples:,.0f} timeline samples; at most "
                f"{MAX_SAMPLES:,} (raise the interval)"
            )
        self._check_steady()
        self._check_memcg()
        self._check_guest()
        self._check_host_files()
        self._check_ksm()
        self._check_thp()
        self._check_hugetlb()
        names = [n for vm in self.vms for n in vm.names()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"vms: duplicate VM name(s) {', '.join(dup)}; names must be unique")
        return self

    def file_sections(self) -> list[HostFilesConfig]:
        """The ``host_files`` sections as a list (none, one, or the list given)."""
        hf = self.host_files
        if hf is None:
            return []
        return list(hf) if isinstance(hf, list) else [hf]

    def _check_host_files(self) -> None:
        """The page cache is modelled on two_list's and MGLRU's lruvecs (the node's, or every
        memcg's), under watermark reclaim; a section's memcg names a VM with a memcg section."""
        if self.host_files is None:
            return
        if self.reclaim.policy not in ("two_list", "mglru") or self.reclaim.trigger != "watermark":
            raise ValueError(
                "host_files: the page cache is modelled for reclaim.policy two_list or mglru "
                "with reclaim.trigger watermark only; set those or remove host_files"
            )
        many = isinstance(self.host_files, list)
        if many and not self.host_files:
            raise ValueError("host_files: an empty list; give one section at least or remove it")
        vms = dict(self.vm_list())
        for k, hf in enumerate(self.file_sections()):
            at = f"host_files[{k}]" if many else "host_files"
            if self.host.pages(hf.size_mib) < 1:
                raise ValueError(
                    f"{at}.size_mib: less than one host page; raise it to a page at least"
                )
            if hf.memcg is None:
                continue
            vm = vms.get(hf.memcg)
            if vm is None:
                raise ValueError(
                    f"{at}.memcg: no VM named {shown(hf.memcg)}; name one of "
                    f"{clip(', '.join(vms), 2 * SHOWN_CHARS)} or remove memcg"
                )
            if vm.memcg is None:
                raise ValueError(
                    f"{at}.memcg: VM {shown(hf.memcg)} has no memcg section to charge to; give "
                    "it one (memcg: {} for an unlimited one) or remove memcg"
                )

    def _check_memcg(self) -> None:
        """Memcgs are modelled for two-list and MGLRU watermark reclaim."""
        i = next((i for i, vm in enumerate(self.vms) if vm.memcg is not None), None)
        if i is None:
            return
        if self.reclaim.policy not in ("two_list", "mglru"):
            raise ValueError(
                f"vms[{i}].memcg: per-memcg reclaim is modelled for reclaim.policy two_list "
                f"and mglru only, not {self.reclaim.policy} (a global list or oracle); remove "
                "memcg or use two_list or mglru"
            )
        if self.reclaim.trigger != "watermark":
            raise ValueError(
                f"vms[{i}].memcg: needs watermark reclaim (demand mode has no charges or "
                "limit reclaim); set reclaim.trigger: watermark or remove memcg"
            )
        for i, vm in enumerate(self.vms):
            if vm.prefault and vm.memcg is not None and not vm.memcg.zswap_writeback:
                raise ValueError(
                    f"vms[{i}].memcg.zswap_writeback: false is not modelled with prefault "
                    "(its steady state would keep the pages zswap refuses resident); set "
                    "prefault: false or zswap_writeback: true"
                )

    def _check_guest(self) -> None:
        """A guest kernel runs in simulated time over 4 KiB host pages, from cold; a balloon
        manager needs a balloon to manage."""
        managed = any(vm.balloon is not None and vm.balloon.enabled for vm in self.vms)
        if self.mom is not None and self.mom.enabled and not managed:
            raise ValueError(
                "mom: no VM has a balloon to manage; add vms[].balloon (enabled: true, "
                "with a guest section) or remove mom"
            )
        i = next((i for i, vm in enumerate(self.vms) if vm.guest is not None), None)
        if i is None:
            return
        if self.reclaim.trigger != "watermark":
            raise ValueError(
                f"vms[{i}].guest: needs watermark reclaim (the guest's kswapd and I/O take "
                "time); set reclaim.trigger: watermark or remove guest"
            )
        shared = next(
            (i for i, vm in enumerate(self.vms) if vm.guest and vm.guest.disk == "host_swap"),
            None,
        )
        if shared is not None and self.swap.device == "zram":
            raise ValueError(
                f"vms[{shared}].guest.disk: host_swap needs a disk swap device, not zram; "
                "set guest.disk: own or swap.device: disk"
            )
        cached = next(
            (i for i, vm in enumerate(self.vms) if vm.guest and vm.guest.disk_cache != "none"),
            None,
        )
        if cached is not None and self.reclaim.policy not in ("two_list", "mglru"):
            raise ValueError(
                f"vms[{cached}].guest.disk_cache: the host page cache holding the disk image "
                "is modelled for reclaim.policy two_list or mglru only; set one of those or "
                "disk_cache: none"
            )
        if self.vms[i].prefault:
            raise ValueError(
                f"vms[{i}].prefault: not modelled with a guest kernel (the steady state "
                "would need the guest's too); set prefault: false or remove guest"
            )

    def _check_ksm(self) -> None:
        """Content shares add up; KSM runs where its paths are modelled (host/ksm.py)."""
        images: dict[str, int] = {}
        for i, vm in enumerate(self.vms):
            c = vm.content
            if c is None:
                continue
            if self.host.ksm is None:
                raise ValueError(
                    f"vms[{i}].content: needs host.ksm (ksmd); add it or remove content"
                )
            bad = c.shares_ok()
            if bad is not None:
                raise ValueError(f"vms[{i}].content: {bad}")
            if images.setdefault(c.image, c.image_mib) != c.image_mib:
                raise ValueError(
                    f"vms[{i}].content.image_mib: image {shown(c.image)} has "
                    f"{images[c.image]} MiB in another VM; give every VM of one image the same "
                    "image_mib"
                )
        if self.host.ksm is None:
            return
        if self.reclaim.trigger != "watermark" or self.reclaim.policy not in ("two_list", "mglru"):
            what = (
                "reclaim.trigger demand"
                if self.reclaim.trigger != "watermark"
                else f"reclaim.policy {self.reclaim.policy}"
            )
            raise ValueError(
                f"host.ksm: {what} replays accesses against private pages (its eviction "
                "order and oracle are defined on pages one VM owns, not on a KSM page mapped by "
                "many); use reclaim.policy two_list with reclaim.trigger watermark, or remove "
                "host.ksm"
            )
        walk = getattr(self.reclaim, "notifier_walk", True)
        needs = [
            (not walk, "reclaim.notifier_walk: true (the 6.12+ walk)"),
            (self.mom is not None, "no mom"),
        ]
        for i, vm in enumerate(self.vms):
            for key in ("guest", "balloon"):
                needs.append((getattr(vm, key) is not None, f"no vms[{i}].{key}"))
            needs.append((vm.prefault, f"vms[{i}].prefault: false"))
        _only_with("host.ksm", "KSM", needs)

    def _check_thp(self) -> None:
        """THP runs where its paths are modelled (host/huge_memory.py), on whole 2 MiB blocks."""
        thp = self.host.thp
        if thp is None:
            return
        for i, vm in enumerate(self.vms):
            if vm.memory_mib % 2:
                raise ValueError(
                    f"vms[{i}].memory_mib: {vm.memory_mib} is not a whole number of 2 MiB "
                    f"THP blocks ({self.host.thp_named}); use {vm.memory_mib - 1} or "
                    f"{vm.memory_mib + 1}"
                )
        needs = [
            (self.reclaim.trigger != "watermark", "reclaim.trigger: watermark"),
            (
                self.reclaim.policy != "two_list",
                "reclaim.policy: two_list (no THP aging in the others yet)",
            ),
            (
                self.kvm.mmu == "shadow",
                "kvm.mmu: tdp or legacy_tdp (a shadow MMU maps the guest's own 4 KiB mappings)",
            ),
        ]
        _only_with(self.host.thp_named, "THP", needs)

    def _check_hugetlb(self) -> None:
        """hugetlbfs-backed VMs (host/hugetlb.py): their pool fits beside the watermarks, and
        nothing that would fault, age, merge or give back their pages is asked of them."""
        hug = [i for i, vm in enumerate(self.vms) if vm.memory_backing == "hugetlbfs"]
        if not hug:
            return
        i = hug[0]
        frames = self.host.pages(self.host.memory_mib)
        pool = sum(self.host.pages(self.vms[k].memory_mib) * self.vms[k].count for k in hug)
        high = self.host.watermarks().high
        if pool + high >= frames:
            raise ValueError(
                f"vms[{i}].memory_backing: the hugetlbfs VMs' pool ({pool} pages) and the high "
                f"watermark ({high} pages) fill host memory ({frames} pages); raise "
                "host.memory_mib or lower those VMs' memory_mib"
            )
        needs = [
            (self.reclaim.trigger != "watermark", "reclaim.trigger: watermark"),
            (
                self.reclaim.policy not in ("two_list", "mglru"),
                "reclaim.policy: two_list or mglru (the others track every access's frame)",
            ),
            (
                self.kvm.mmu == "shadow",
                "kvm.mmu: tdp or legacy_tdp (a shadow MMU maps the guest's own 4 KiB mappings)",
            ),
            (self.host.rmap != "anon_vma", "host.rmap: anon_vma"),
        ]
        _only_with(f"vms[{i}].memory_backing", "hugetlbfs-backed guest RAM", needs)
        for i in hug:
            vm = self.vms[i]
            for key, bad, fix in (
                ("prefault", vm.prefault, "prefault: false (it is all resident from the start)"),
                ("async_pf", vm.async_pf > 0, "async_pf: 0 (it never faults)"),
                ("guest", vm.guest is not None, "remove guest"),
                ("balloon", vm.balloon is not None, "remove balloon (its pages stay resident)"),
                ("content", vm.content is not None, "remove content (KSM merges no hugetlb page)"),
            ):
                if bad:
                    raise ValueError(
                        f"vms[{i}].{key}: not modelled for a hugetlbfs-backed VM; {fix}, or "
                        "set memory_backing: anonymous"
                    )

    def _check_steady(self) -> None:
        """Warm-up and windows fit the run; prefault and warm-up need simulated time."""
        if self.warmup_s and self.warmup_s >= self.duration_s:
            raise ValueError(
                f"warmup_s: {self.warmup_s:g} s is not shorter than duration_s "
                f"({self.duration_s:g} s); lower warmup_s or raise duration_s"
            )
        windows = self.duration_s * 1000 / self.metrics.window_ms
        if windows > MAX_WINDOWS:
            raise ValueError(
                f"metrics.window_ms: {self.metrics.window_ms:g} ms over duration_s "
                f"{self.duration_s:g} s is {windows:,.0f} windows; at most {MAX_WINDOWS:,} "
                "(raise the window)"
            )
        if self.reclaim.trigger == "demand" and self.warmup_s:
            raise ValueError(
                "warmup_s: demand mode has no vCPU time to warm up; set warmup_s: 0 or "
                "reclaim.trigger: watermark"
            )
        i = next((i for i, vm in enumerate(self.vms) if vm.prefault), None)
        if i is not None and self.reclaim.trigger == "demand":
            raise ValueError(
                f"vms[{i}].prefault: needs watermark reclaim (demand mode counts every "
                "miss from empty); set prefault: false or reclaim.trigger: watermark"
            )
        i = next(
            (
                i
                for i, vm in enumerate(self.vms)
                if isinstance(vm.workload, TraceConfig) and not vm.workload.repeat
            ),
            None,
        )
        if i is not None and self.reclaim.trigger == "demand":
            raise ValueError(
                f"vms[{i}].workload.repeat: false needs watermark reclaim (demand mode has no "
                "vCPUs to halt); set repeat: true or reclaim.trigger: watermark"
            )

    def disk_images(self) -> list[tuple[int, int]]:
        """The VMs whose virtual disk's image is read and written through the host page cache
        (``guest.disk_cache`` other than none), as (VM index, image pages: the guest's swap
        area with its header page, then the guest's file), in VM order."""
        return [
            (i, self.host.pages(vm.guest.swap.size_mib) + 1 + self.host.pages(vm.guest.file_mib))
            for i, (_, vm) in enumerate(self.vm_list())
            if vm.guest is not None and vm.guest.disk_cache != "none"
        ]

    def vm_list(self) -> list[tuple[str, VmConfig]]:
        """Every VM (profiles expanded by ``count``), in order."""
        return [(n, vm) for vm in self.vms for n in vm.names()]

    def config_hash(self) -> str:
        """Short hash of the resolved config and the contents of the trace files it reads
        (names result directories, so a sweep never reuses a run made from another trace).

        A trace enters the hash by its contents, not its path: the same config replaying the
        same file gives the same hash wherever the file (or the checkout) lies, so sweeps
        resume and ``--dask`` workers agree, and a file rewritten in place gives another.
        """
        config = self.model_dump(mode="json")
        _drop_defaults(config)
        config.get("costs", {}).pop("profile", None)  # its values are merged in: path-free
        for vm in config["vms"]:
            if vm["workload"]["type"] == "trace":
                vm["workload"]["path"] = "sha256:" + file_digest(Path(vm["workload"]["path"]))
        # "traces" stays in the blob (empty) so configs without traces keep their hashes
        blob = json.dumps({"config": config, "traces": {}}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def trace_digests(self) -> dict[str, str]:
        """SHA-256 of each trace file a VM replays (``missing`` if it cannot be read)."""
        return {
            vm.workload.path: file_digest(Path(vm.workload.path))
            for vm in self.vms
            if isinstance(vm.workload, TraceConfig)
        }

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _drop_defaults(config: dict[str, Any]) -> None:
    """Leave out of the hash the fields added after results were first named by it, while they
    hold their defaults (so those results keep their directories and sweeps resume)."""
    if config.get("warmup_s") == 0.0:
        del config["warmup_s"]
    if config.get("metrics") == MetricsConfig().model_dump(mode="json"):
        del config["metrics"]
    host = config["host"]
    for key, default in (
        ("dirty_ratio", 20),
        ("dirty_background_ratio", 10),
        ("memcg_stats", "exact"),
        ("memcg_stats_flush_ms", 2000.0),
    ):
        if host.get(key) == default:
            del host[key]
    if config["swap"].get("rotational") is False:
        del config["swap"]["rotational"]
    zswap = config["swap"].get("zswap")
    if isinstance(zswap, dict) and not zswap.get("enabled"):
        # zswap's store_incompressible came when 6.18's rule became the default: runs without
        # zswap keep their names; runs with it are new results and take new ones
        zswap.pop("store_incompressible", None)
    for vm in config["vms"]:
        if vm.get("prefault") is False:
            del vm["prefault"]
        if vm.get("memory_backing") == "anonymous":
            del vm["memory_backing"]
        if vm.get("hugepage_size_kib") == 2048:
            del vm["hugepage_size_kib"]
        if vm["workload"].get("type") == "trace" and vm["workload"].get("repeat") is True:
            del vm["workload"]["repeat"]
        memcg = vm.get("memcg")
        if isinstance(memcg, dict) and memcg.get("vmm_overhead_kib") == 0:
            del memcg["vmm_overhead_kib"]
        if isinstance(memcg, dict) and memcg.get("zswap_writeback") is True:
            del memcg["zswap_writeback"]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, cached per (path, size, mtime) for the life of the process
    (``missing`` if it is not a readable regular file)."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing"
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        try:
            with open_regular(path) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except UserError:
            return "missing"
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def resolve_paths(raw: Any, base: Path) -> Any:
    """Make the relative file paths of a raw scenario absolute, against ``base``: the
    directory of the file that names them (the current directory for ``--set``).

    Paths already absolute (and ``~`` paths, expanded) are kept; only trace workloads name
    files. Called on each source as it is read, so every path is taken relative to the file
    that names it, whatever file later includes or overrides it.
    """
    vms = raw.get("vms") if isinstance(raw, dict) else None
    for vm in vms if isinstance(vms, list) else []:
        wl = vm.get("workload") if isinstance(vm, dict) else None
        if isinstance(wl, dict) and wl.get("type") == "trace":
            wl["path"] = resolve_path(wl.get("path"), base)
    costs = raw.get("costs") if isinstance(raw, dict) else None
    if isinstance(costs, dict) and "profile" in costs:
        costs["profile"] = resolve_path(costs["profile"], base)
    return raw


PROFILE_SECTIONS = ("costs", "swap", "measured")


def apply_cost_profile(raw: dict[str, Any]) -> dict[str, Any]:
    """Merge the cost profile ``costs.profile`` names (a file ``memsim calibrate`` writes)
    under the scenario: its ``costs`` and ``swap`` values apply where the scenario sets none;
    its ``measured`` section is a record only. A bad profile is a one-line ConfigError."""
    costs = raw.get("costs")
    if not isinstance(costs, dict) or not isinstance(costs.get("profile"), str):
        return raw
    path = Path(costs["profile"])
    try:
        prof = read_yaml(path)
    except ConfigError as exc:
        raise ConfigError(f"costs.profile: {exc}") from None
    extra = sorted(set(prof) - set(PROFILE_SECTIONS))
    if extra:
        raise ConfigError(
            f"{shown_path(path)}: unknown section {extra[0]!r} in a cost profile "
            f"(valid: {', '.join(PROFILE_SECTIONS)})"
        )
    out = dict(raw)
    for key in ("costs", "swap"):
        section = prof.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{shown_path(path)}: {key} must be a mapping of {key} keys")
        mine = out.get(key)
        out[key] = {**section, **(mine if isinstance(mine, dict) else {})}
    return out


def resolve_path(path: Any, base: Path) -> Any:
    """``path`` against ``base`` if it is a relative path string; anything else unchanged
    (the model then says what is wrong with it)."""
    if not isinstance(path, str) or not path or "\0" in path:
        return path
    full = os.path.join(os.path.abspath(base), os.path.expanduser(path))
    return os.path.normpath(full)


# --------------------------------------------------------------------------------------------
# loading and errors


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _strip_tags(loc: tuple[Any, ...], raw: Any, missing: bool = False) -> tuple[Any, ...]:
    """Drop the union tags pydantic puts in error paths (``workload.zipf.alpha`` ->
    ``workload.alpha``): a string part the raw data has no key for (unless it is the last
    part of a ``missing`` error, which names the absent key), or a string part under a list
    or scalar (which has no keys at all)."""
    out: list[Any] = []
    data = raw
    for i, part in enumerate(loc):
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and part < len(data) else None
        elif isinstance(data, dict):
            if part not in data and (i + 1 < len(loc) or not missing):
                continue
            data = data.get(part)
        elif data is not None:
            continue
        out.append(part)
    return tuple(out)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> type[BaseModel] | None:
    """Follow ``loc`` through nested models (for "did you mean" hints on unknown keys)."""
    cur: Any = model
    data = raw
    for part in loc:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and part < len(data) else None
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        fld = cur.model_fields.get(str(part))
        if fld is None:
            # a discriminated-union tag, e.g. 'zipf' in ('workload', 'zipf')
            continue
        data = data.get(part) if isinstance(data, dict) else None
        cur = _resolve(fld.annotation, data)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _resolve(ann: Any, data: Any) -> Any:
    """Pick the model class an annotation means for ``data`` (lists, optionals, unions)."""
    import typing

    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _resolve(typing.get_args(ann)[0], data)
    if origin is list:
        return _resolve(typing.get_args(ann)[0], None)
    if origin is dict:
        return _resolve(typing.get_args(ann)[1], None)
    if origin in (typing.Union, __import__("types").UnionType):
        args = [_resolve(a, data) for a in typing.get_args(ann)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        models = list(dict.fromkeys(models))  # one model, alone or as a list of it
        for m in models:
            tag = next((f for f in ("type", "policy") if f in m.model_fields), None)
            if tag and isinstance(data, dict) and data.get(tag) == m.model_fields[tag].default:
                return m
        return models[0] if len(models) == 1 else None
    return ann


_UNITS = (
    ("_mib_per_s", " MiB/s"),
    ("_per_s", " per s"),
    ("_mib", " MiB"),
    ("_kib", " KiB"),
    ("_kbytes", " kB"),
    ("_ns", " ns"),
    ("_us", " us"),
    ("_ms", " ms"),
    ("_s", " s"),
)
_BOUNDS = {
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
}


def _unit(field: Any) -> str:
    """The unit a field's name carries (``memory_mib`` -> `` MiB``), or nothing."""
    name = str(field)
    return next((u for suffix, u in _UNITS if name.endswith(suffix)), "")


def _number(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def format_validation_error(
    err: ValidationError, raw: Any, source: str, model: type[BaseModel] | None = None
) -> str:
    """One line: where, what, and how to fix it (``model``: the class validated, for "did you
    mean" hints; a scenario by default). Echoed keys and values are cut short."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])  # typos first
    loc = tuple(e["loc"])
    where = clip(
        _loc(_strip_tags(loc, raw, e["type"] == "missing")) or "(top level)", 2 * SHOWN_CHARS
    )
    if e["type"] == "extra_forbidden":
        parent = _model_at(model or Scenario, loc[:-1], raw)
        key = str(loc[-1])
        hint = ""
        if parent is not None:
            valid = sorted(f.alias or n for n, f in parent.model_fields.items())
            close = difflib.get_close_matches(key, valid, n=1)
            hint = (
                f"; did you mean '{close[0]}'?" if close else ""
            ) + f" (valid keys: {', '.join(valid)})"
        return f"{source}: {where}: unknown key{hint}"
    if e["type"] == "union_tag_invalid":
        ctx = e.get("ctx", {})
        key = str(ctx.get("discriminator", "type")).strip("'")
        tag = ctx.get("tag")
        return (
            f"{source}: {where}.{key}: unknown value {shown(tag)}; expected one of "
            f"{ctx.get('expected_tags')}" + (_YAML_BOOL if tag in ("True", "False") else "")
        )
    if e["type"] == "missing":
        return f"{source}: {where}: required field is missing"
    msg = e["msg"]
    if e["type"] in _BOUNDS and loc:
        bound, word = _BOUNDS[e["type"]]
        msg = f"must be {word} {_number(e.get('ctx', {}).get(bound))}{_unit(loc[-1])}"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = clip(msg, 4 * SHOWN_CHARS)
    if not loc:
        return f"{source}: {msg}"
    got = e.get("input")
    echo = "" if isinstance(got, dict | list) or got is None else f" (got {shown(got)})"
    if isinstance(got, bool) and e["type"] in ("literal_error", "enum", "string_type"):
        echo += _YAML_BOOL
    return f"{source}: {where}: {msg}{echo}"


def _only_with(where: str, what: str, needs: list[tuple[bool, str]]) -> None:
    """Refuse a mechanism in a run with a setting it is not modelled with: one line naming the
    first such setting (``needs``: (the run has it wrong, the setting it needs)) and how many
    more there are."""
    missing = [need for bad, need in needs if bad]
    if missing:
        raise ValueError(
            f"{where}: {what} is modelled so far only with {missing[0]}"
            + (f" (and {len(missing) - 1} more such settings)" if len(missing) > 1 else "")
            + f"; set it or remove {where}"
        )


_YAML_BOOL = "; YAML reads an unquoted yes/no/on/off as true/false: quote the value"


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set ``raw[a][b]...`` for a dotted ``key`` (list items by index), creating mappings."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{where}: empty path component in {shown(key)}")
    cur: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        at = clip(".".join(parts[: i + 1]))
        if isinstance(cur, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(cur):
                raise ConfigError(
                    f"{where}: {at}: no list item {shown(part)} (the list has {len(cur)} items)"
                )
            if last:
                cur[int(part)] = value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
            else:
                cur = cur.setdefault(part, {})
        else:
            raise ConfigError(f"{where}: {at}: cannot index into a {type(cur).__name__}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set dotted.key=value`` overrides (values parsed as YAML) to a raw config."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"--set {shown(item)}: expected dotted.key=value, e.g. kvm.ept_ad_bits=false"
            )
        key, _, text = item.partition("=")
        where = f"--set {clip(key.strip())}"
        value = load_yaml(text, f"{where}: cannot parse value {shown(text)}")
        set_dotted(raw, key, value, where)
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (bounded, duplicate keys refused), with one-line errors."""
    raw = read_yaml_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{shown_path(path)}: expected a mapping of config keys, got {type(raw).__name__}"
        )
    return raw


def parse_scenario(raw: dict[str, Any], source: str = "config") -> Scenario:
    """Validate a raw config dict into a :class:`Scenario` (its cost profile merged in)."""
    raw = apply_cost_profile(raw)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, raw, source)) from None


def load_scenario(
    path: Path, overrides: list[str] | None = None, seed: int | None = None
) -> Scenario:
    """Load a scenario file, apply ``--set`` overrides and ``--seed``, validate.

    Trace paths in the file are relative to its directory; those given with ``--set`` to the
    current directory.
    """
    raw = resolve_paths(read_yaml(path), path.parent)
    raw.setdefault("name", path.stem)
    if overrides:
        raw = resolve_paths(apply_overrides(raw, overrides), Path.cwd())
    if seed is not None:
        raw["seed"] = seed
    return parse_scenario(raw, shown_path(path))

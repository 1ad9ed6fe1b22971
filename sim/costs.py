"""Prices of kernel and hardware operations, in simulated nanoseconds.

Models
    "Count work, then price it": reclaim and fault paths count what they did (pages scanned, rmap
    entries walked, notifier calls, TLB flushes); this module turns the counts into time. Every
    default comes from docs/MODEL.md section 6, where each figure's source or its status as an
    estimate ([EST]) is given; calibrate them with perf and tracepoints on your own hardware.
    Costs are per 4 KiB page; a THP's first touch (``clear_huge_page``: 512 base pages) adds
    511 ``clear_page_ns`` (kvm/fault.py).

Simplifications
    Costs are constants (no contention on ``mmu_lock``, no cache effects). Device latencies live in
    the swap config, because they are a distribution with a queue, not a constant.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from sim.schema import Strict

MAX_COST_NS = 10**9  # one operation costing more than a second of CPU is a typo


class CostsConfig(Strict):
    """CPU-side costs (ns). Defaults and sources: docs/MODEL.md section 6."""

    profile: str | None = Field(
        None,
        max_length=4096,
        description="Cost profile (YAML) that memsim calibrate wrote: its costs and swap "
        "latencies apply where this config sets none; a relative path is relative to the file "
        "that names it.",
    )
    vmexit_ns: int = Field(
        800,
        ge=0,
        le=MAX_COST_NS,
        description="VM exit + re-entry round trip (KVM_RUN round trip ~2,500 cycles).",
    )
    ept_fault_ns: int = Field(
        2000,
        ge=0,
        le=MAX_COST_NS,
        description="EPT violation resolved on a resident host page (GUP fast path, "
        "spte install) [EST 1-3 us].",
    )
    first_touch_ns: int = Field(
        4000,
        ge=0,
        le=MAX_COST_NS,
        description="EPT violation on a never-touched page: GUP slow path, "
        "do_anonymous_page, 4 KiB zeroing, LRU add [EST].",
    )
    clear_page_ns: int = Field(
        400,
        ge=0,
        le=MAX_COST_NS,
        description="Zeroing one more 4 KiB page (clear_page at ~10 GB/s) [EST]; a 2 MiB "
        "first touch (clear_huge_page) adds 511 of them to first_touch_ns.",
    )
    fast_fault_ns: int = Field(
        700,
        ge=0,
        le=MAX_COST_NS,
        description="Fast page fault restoring an access-tracked spte (exit + cmpxchg) "
        "[EST 0.5-1 us].",
    )
    swapcache_fault_ns: int = Field(
        3000,
        ge=0,
        le=MAX_COST_NS,
        description="EPT violation whose host fault hits the swap cache (page still "
        "in memory under writeback) [EST].",
    )
    swapin_kernel_ns: int = Field(
        10000,
        ge=0,
        le=MAX_COST_NS,
        description="Kernel software path of a swap-in on top of the device read "
        "(fault, swap cache, bio, completion, map) [EST 5-20 us].",
    )
    tlb_flush_ipi_ns: int = Field(
        4000,
        ge=0,
        le=MAX_COST_NS,
        description="Initiator's cost of a KVM remote TLB flush: kick the VM's "
        "running vCPUs, wait for acks [EST 2-10 us].",
    )
    tlb_flush_exit_ns: int = Field(
        1000,
        ge=0,
        le=MAX_COST_NS,
        description="Cost to each kicked vCPU: forced exit + flush on re-entry [EST].",
    )
    rmap_walk_ns: int = Field(
        250,
        ge=0,
        le=MAX_COST_NS,
        description="Host rmap walk per mapping visited (anon_vma, pte lookup) [EST].",
    )
    notifier_call_ns: int = Field(
        500,
        ge=0,
        le=MAX_COST_NS,
        description="One KVM notifier call: memslot lookup, mmu_lock, spte walk [EST].",
    )
    spte_walk_ns: int = Field(
        50,
        ge=0,
        le=MAX_COST_NS,
        description="Each spte visited through KVM's rmap (shadow paging) [EST].",
    )
    scan_page_ns: int = Field(
        300,
        ge=0,
        le=MAX_COST_NS,
        description="Isolating and checking one folio on an LRU list [EST].",
    )
    reclaim_page_ns: int = Field(
        3000,
        ge=0,
        le=MAX_COST_NS,
        description="Unmapping one folio and submitting its swap-out (or dropping "
        "its clean copy) [EST 2-10 us per page].",
    )
    pte_scan_ns: int = Field(
        1,
        ge=0,
        le=MAX_COST_NS,
        description="Each page-table entry scanned in sequence for want of a reverse map "
        "(host.rmap: none, kvm.shadow_rmap: false): a present/pfn test on consecutive 8-byte "
        "entries, mostly from cache [EST ~1 ns].",
    )

    @model_serializer(mode="wrap")
    def _without_default_scan(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``pte_scan_ns`` out of dumps at its default, so configs written before it
        existed dump (and hash) as they did."""
        out: dict[str, Any] = handler(self)
        if out.get("pte_scan_ns") == 1:
            del out["pte_scan_ns"]
        return out


class Work(Protocol):
    """The counts a reclaim pass fills in (implemented by ``ScanControl``)."""

    nr_scanned: int
    nr_reclaimed: int
    nr_rmap_walked: int
    nr_notifier_calls: int
    nr_sptes_walked: int
    nr_ptes_scanned: int
    nr_tlb_flushes: int
    nr_compressed: int
    nr_decompressed: int


class CostModel:
    """Turns counted work into simulated time (integer ns).

    Args:
        cfg: CPU costs.
        compress_ns: compressing one page into zram or zswap (``SwapDevice.compress_ns``).
        decompress_ns: decompressing one (zswap write-back).
    """

    def __init__(self, cfg: CostsConfig, compress_ns: int = 0, decompress_ns: int = 0) -> None:
        self.cfg, self.compress_ns, self.decompress_ns = cfg, compress_ns, decompress_ns

    def reclaim_ns(self, w: Work) -> int:
        """CPU time of a reclaim pass (kswapd's own, or a direct reclaimer's stall)."""
        c = self.cfg
        return (
            w.nr_scanned * c.scan_page_ns
            + w.nr_reclaimed * c.reclaim_page_ns
            + w.nr_rmap_walked * c.rmap_walk_ns
            + w.nr_notifier_calls * c.notifier_call_ns
            + w.nr_sptes_walked * c.spte_walk_ns
            + w.nr_ptes_scanned * c.pte_scan_ns
            + w.nr_tlb_flushes * c.tlb_flush_ipi_ns
            + w.nr_compressed * self.compress_ns
            + w.nr_decompressed * self.decompress_ns
        )

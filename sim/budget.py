"""How much memory a command may use, and sizes for messages.

The limit is what the user gives with ``--max-memory`` (on ``run``, ``replay``, ``sweep``,
``plan`` and ``validate``) or else the kernel's ``MemAvailable``: what can be allocated without
swapping. Work that would need more is refused before it allocates, with a one-line error
saying how much it would need, instead of grinding into swap or a ``MemoryError`` halfway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.errors import UserError, shown

if TYPE_CHECKING:
    from sim.config import Scenario

_limit: int | None = None  # --max-memory, for this process (and forked sweep workers)

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Bytes from ``512M``, ``4G``, ``1.5GiB``, ``2T`` or a plain byte count (powers of 1024)."""
    m = _SIZE.fullmatch(text)
    if m is None or float(m.group(1)) <= 0:
        raise UserError(f"{option} {shown(text)}: expected a size such as 512M, 4G or 1.5GiB")
    n = int(float(m.group(1)) * (1 << _SHIFT[m.group(2).lower()]))
    if n < 1 << 20:
        raise UserError(f"{option} {shown(text)}: at least 1M is needed to run anything")
    return n


def set_memory_limit(n: int | None) -> None:
    """Use ``n`` bytes as this process's limit (``--max-memory``); None: ``MemAvailable``."""
    global _limit
    _limit = n


def available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo``, or None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_limit() -> tuple[int | None, str]:
    """The limit in bytes (None: unknown, no check) and what it is, for messages."""
    if _limit is not None:
        return _limit, "allowed by --max-memory"
    return available_bytes(), "available (MemAvailable; another limit: --max-memory)"


def fmt_bytes(n: float) -> str:
    """``1.5 GiB``, ``320 MiB``, ``12 KiB``."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.1f} {unit}" if v < 10 else f"{v:,.0f} {unit}"
    return f"{n:.0f} B"


def check_fits(needed: int | Estimate, what: str, error: type[UserError] = UserError) -> None:
    """Raise ``error`` if ``needed`` bytes exceed the limit: ``WHAT needs about X of memory
    (its largest parts), more than the Y available``."""
    limit, source = memory_limit()
    total = needed.total if isinstance(needed, Estimate) else needed
    if limit is not None and total > limit:
        parts = f" ({needed.largest()})" if isinstance(needed, Estimate) else ""
        raise error(
            f"{what} needs about {fmt_bytes(total)} of memory{parts}, more than the "
            f"{fmt_bytes(limit)} {source}"
        )


# --------------------------------------------------------------------------------------------
# estimates: bytes a run needs, from what its config says (measured with tracemalloc on the
# engine's own allocations, then rounded up; see ``estimate_run``)

PAGE_BYTES = 6  # per guest page: flags 1, pfn or shadow 4, spte 1
READAHEAD_PAGE_BYTES = 1  # swap readahead on: PG_readahead
SLOT_BYTES = 4  # rotational swap: each slot's owner, and each page's slot (int32)
COMPRESSED_PAGE_BYTES = 5  # zram or zswap: each page's compressed size 4, stored 1
ZSWAP_PAGE_BYTES = 8  # zswap: each page's store number (its LRU position)
ZSWAP_ENTRY_BYTES = 32  # zswap: its LRU queue, per swap slot at worst (two int64, doubled)
STAMP_PAGE_BYTES = 4  # last-access stamp per page, kept while the eviction log is written
FRAME_BYTES = 18  # per frame: rmap 4, LRU link 4, policy flags 1, plus transient int64 scans
POLICY_FRAME_BYTES = {"mglru": 5, "lru": 8, "opt": 8, "random": 16}
MGLRU_LRUVEC_FRAME_BYTES = 13  # per frame and per memcg lruvec beyond one: flags, seq, 2 links
STAMP_FRAME_BYTES = 1  # scans survived, with the eviction log
GUEST_PAGE_BYTES = 6  # per guest process page: guest pte/folio flags 1, gfn or shadow 4, PG_ra 1
FILE_PAGE_BYTES = 13  # per page of a host_files file: flags 1, pfn or shadow 4, dirtied-at 8
PREFAULT_PAGE_BYTES = 56  # per working-set page of prefaulted VMs, while the fill ranks them
VM_BYTES = 64 << 10  # per VM: mm, KVM MMU, notifier, counters, Python objects
VCPU_BYTES = 64 << 10  # per vCPU: SimPy process, access-stream buffers (4,096 accesses)
ROW_BYTES = {"evictions": 450, "faults": 220, "timeline": 1300}  # a buffered row, as Python
EVICTED_PAGE_BYTES = 120  # eviction log: the row of each page out in swap (a dict entry)
STRING_BYTES = 32  # demand mode with oracle gaps: each access kept, then replayed twice
OPT_BYTES = 56  # demand mode under OPT: the whole reference string materialised
TRACE_BYTES = 48  # per trace access: while loading and renumbering; 17 kept
RUN_BASE = 64 << 20  # per run: parquet writers, pyarrow pools, SimPy, temporaries
MARGIN = 1.25  # the formula is rounded up by this much


@dataclass(frozen=True, slots=True)
class Estimate:
    """Bytes a piece of work needs, and its largest parts (for the message)."""

    total: int
    parts: tuple[tuple[str, int], ...]

    def largest(self) -> str:
        """``guest pages 800 MiB, host frames 300 MiB``: its two largest parts."""
        top = sorted(self.parts, key=lambda p: -p[1])[:2]
        return ", ".join(f"{k} {fmt_bytes(v)}" for k, v in top)

    def times(self, n: int) -> Estimate:
        """``n`` of this at once (parallel runs), as one estimate."""
        return Estimate(self.total * n, tuple((k, v * n) for k, v in self.parts))


def _finish(parts: dict[str, float]) -> Estimate:
    total = int(sum(parts.values()) * MARGIN)
    return Estimate(total, tuple((k, int(v)) for k, v in parts.items() if v))


def estimate_run(sc: Scenario, trace_accesses: dict[str, int] | None = None) -> Estimate:
    """Memory a run of ``sc`` needs at its peak (without growth that depends on what the run
    does: the eviction log keeps 16 bytes per refault until the end, the fault-latency tails 8
    bytes per fault after the warm-up).

    ``trace_accesses``: accesses of each trace file it replays, if known (a trace is loaded
    once, whatever the VMs replaying it).

    The formula is per page, per frame, per VM, per vCPU and per buffered log row; measured
    with ``tracemalloc`` over building and running worlds of 64-1024 MiB, 1-4,096 VMs and 1-4
    vCPUs each, under every policy, then rounded up (``MARGIN``).
    """
    vms = sc.vm_list()
    pages = sum(sc.host.pages(cfg.memory_mib) for _, cfg in vms)
    frames = sc.host.pages(sc.host.memory_mib)
    vcpus = sum(cfg.vcpus for _, cfg in vms)
    log = sc.output.evictions
    k = sc.kvm.shadow_sptes_per_gfn if sc.kvm.mmu == "shadow" else 1
    per_page = PAGE_BYTES + (STAMP_PAGE_BYTES if log else 0) + (k if k > 1 else 0)
    per_page += READAHEAD_PAGE_BYTES * (sc.swap.page_cluster > 0)
    per_page += SLOT_BYTES * sc.swap.rotational
    zswap = sc.swap.zswap.enabled
    if sc.swap.device == "zram" or zswap:
        per_page += COMPRESSED_PAGE_BYTES + ZSWAP_PAGE_BYTES * zswap
    policy = sc.reclaim.policy
    per_frame = FRAME_BYTES + POLICY_FRAME_BYTES.get(policy, 0) + STAMP_FRAME_BYTES * log
    samples = sc.duration_s * 1000 / sc.engine.sample_interval_ms + 1
    out, chunk = sc.output, sc.output.chunk_rows
    rows = {
        "evictions": chunk * out.evictions,
        "faults": chunk * out.faults,
        "timeline": min(chunk, samples * len(vms)) * out.timeline,
    }
    parts: dict[str, float] = {
        "guest pages": pages * per_page,
        "host frames": frames * per_frame,
        "VMs": len(vms) * VM_BYTES + vcpus * VCPU_BYTES,
        "log buffers": sum(n * ROW_BYTES[t] for t, n in rows.items()),
        "eviction log": EVICTED_PAGE_BYTES * min(pages, sc.host.pages(sc.swap.size_mib)) * log,
        "swap slots": SLOT_BYTES * (sc.host.pages(sc.swap.size_mib) + 1) * sc.swap.rotational,
        "zswap LRU": ZSWAP_ENTRY_BYTES * min(pages, sc.host.pages(sc.swap.size_mib)) * zswap,
        "memcg lruvecs": frames
        * MGLRU_LRUVEC_FRAME_BYTES
        * (
            len(vms)
            - 1
            + (
                any(hf.memcg is None for hf in sc.file_sections())
                or any(vms[i][1].memcg is None for i, _ in sc.disk_images())
            )
        )  # + the root's
        * (policy == "mglru" and any(cfg.memcg is not None for _, cfg in vms)),
        "base": RUN_BASE,
    }
    if sc.reclaim.trigger != "demand":
        windows = sc.duration_s * 1000 / sc.metrics.window_ms + 1
        parts["stall windows"] = 16 * windows * len(vms)
    guests = [cfg for _, cfg in vms if cfg.guest is not None]
    if guests:  # each guest kernel: its process's pages, its frames (the gfns), its lists
        parts["guest kernels"] = sum(
            GUEST_PAGE_BYTES * sc.host.pages(cfg.workload_mib)
            + (FRAME_BYTES + POLICY_FRAME_BYTES.get(cfg.guest.reclaim.policy, 0))
            * sc.host.pages(cfg.memory_mib)
            for cfg in guests
            if cfg.guest is not None
        )
    file_pages = sum(sc.host.pages(hf.size_mib) for hf in sc.file_sections())
    file_pages += sum(n for _, n in sc.disk_images())  # cache=writeback disk images
    if file_pages:  # page-cache pids: flags, pfn or shadow, dirtied-at stamp
        parts["page cache"] = FILE_PAGE_BYTES * file_pages
    prefaulted = [cfg for _, cfg in vms if cfg.prefault]
    if prefaulted:  # one vCPU's sample at a time (sim/prefault.py): gfns, writes, positions
        parts["prefault sample"] = max(
            17 * min(16 * sc.host.pages(cfg.memory_mib), 1 << 24) // cfg.vcpus
            + 16 * sc.host.pages(cfg.memory_mib)
            for cfg in prefaulted
        )
        # then every prefaulted VM's touched pages at once, ranked and split (pids, heats,
        # order, owners, masks): measured 51 bytes per working-set page at 32 and 64 GiB
        parts["prefault ranking"] = PREFAULT_PAGE_BYTES * sum(
            sc.host.pages(min(cfg.working_set_mib or cfg.memory_mib, cfg.memory_mib))
            for cfg in prefaulted
        )
    if sc.reclaim.trigger == "demand":
        accesses = sc.duration_s * sum(cfg.vcpus * cfg.access_rate_per_s for _, cfg in vms)
        parts["reference string"] = accesses * (
            STRING_BYTES * sc.output.oracle_gaps + OPT_BYTES * (policy == "opt")
        )
    if trace_accesses:
        parts["traces"] = TRACE_BYTES * sum(trace_accesses.values())
    return _finish(parts)


def estimate_replay(accesses: int, distinct: int, frames: int, engine: str) -> Estimate:
    """Memory ``memsim replay`` needs beyond the loaded trace: the fast kernels keep a few
    int64 arrays per access and per distinct page; the general engine runs a demand world of
    ``min(frames, distinct)`` frames over the distinct pages and keeps the reference string."""
    parts: dict[str, float] = {"base": RUN_BASE, "trace": TRACE_BYTES * accesses}
    if engine == "fast":
        parts["kernel"] = 24 * accesses + 24 * distinct
    else:
        used = min(frames, distinct)
        parts["pages"] = distinct * (PAGE_BYTES + STAMP_PAGE_BYTES)
        parts["frames"] = used * (FRAME_BYTES + max(POLICY_FRAME_BYTES.values()))
        parts["reference string"] = (STRING_BYTES + OPT_BYTES) * accesses
    return _finish(parts)

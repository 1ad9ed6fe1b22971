"""Demand paging: exactly N frames, one eviction per miss, no time (the textbook model).

Models
    The model page-replacement theory (and the exact oracles) is defined on: a fixed reference
    string, N frames, and on a miss with memory full exactly one page evicted by the policy.
    The mechanism is the real one: accesses set spte accessed/dirty bits, misses go through
    KVM's fault path and the host's GUP, eviction through the policy, ``folio_referenced`` (the
    host rmap and the notifier chain into KVM), ``try_to_unmap`` (KVM zaps the sptes) and swap
    slots. So CLOCK or the two-list LRU see guest accesses only if KVM's aging notifiers are on,
    exactly as under kswapd. What demand mode removes is time: faults, reclaim and I/O take
    none, write-back completes at once and there are no watermarks, kswapd or vCPU processes.

    The reference string is either a trace (``memsim replay``) or a scenario's synthetic vCPU
    streams merged by guest time: access ``i`` of a vCPU with rate ``r`` happens at
    ``i * 1e9 // r`` ns, ties broken by VM then vCPU order. Because nothing here takes time,
    the string does not depend on the policy, which is what makes OPT (which must know it in
    advance) and exact comparisons between policies possible.

The shared paths
    The string is walked as a vCPU walks its batch: the same compiled touch walk
    (``guest/touch.py``: hits set the spte bits, the first access that needs a fault stops it)
    and, for that access, the same KVM fault generator as the watermark world
    (``kvm_page_fault``), stepped to completion at once: the host here has no clock, so the
    allocator evicts and a swap-in reads at once, and the generator never waits (an assertion
    says so). The fault is counted and logged by the vCPU's bookkeeping (``fault_done``), and
    the access is retried. The walk reads each spte when it reaches it, so a page evicted (or
    access-tracked) while an earlier fault was handled faults when its turn comes, and a policy
    deciding a victim has seen every earlier access.

    ``memsim replay`` of ``lru``, ``opt``, ``fifo`` and ``clock`` without ``--set`` takes the
    compiled textbook replays of fastpath.py instead; everything else (any other policy, any
    change to the mechanism, ``--engine general``, every scenario with ``reclaim.trigger:
    demand``) runs here.

Simplifications
    Swap is never the limit (its capacity is at least the guest memory).

Invariants
    Resident pages never exceed N; every fault with memory full evicts exactly one page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim.config import Scenario
from sim.guest.tlb import NO_ROWS, tlb_touch
from sim.guest.touch import ept_touch
from sim.host.fault import HostFaultHandler
from sim.host.kswapd import ProcessGen
from sim.host.memory import HostMemory, Watermarks
from sim.host.oom import OomKiller
from sim.host.vmscan import ScanControl, Vmscan
from sim.kvm.fault import fault_done, kvm_page_fault
from sim.machine import Machine, rng_for, vcpu_stream
from sim.reclaim.base import EvictionPolicy

WINDOW = 65536  # accesses taken from the string at a time
# With EPT A/D off, windows stay as short as when they bounded a recheck of the window after
# each aging pass: timeline samples fall at window ends and shadow-paging aliases are drawn
# per window, so results depend on the size.
WINDOW_ACCESS_TRACKING = 2048
_NO_STAMPS = np.empty(0, dtype=np.uint32)  # ept_touch stamps nothing; _hits stamps per access
_NO_WRITTEN = np.empty(0, dtype=np.uint8)  # no KSM in demand mode: no write marks


def _at_once(gen: ProcessGen) -> Any:
    """Step a process generator (KVM's fault path) to its end and return its value; in demand
    mode nothing takes time, so it must finish without yielding an event."""
    try:
        event = next(gen)
    except StopIteration as done:
        return done.value
    gen.close()
    raise AssertionError(f"demand mode: the fault path waited ({event!r})")


@dataclass(frozen=True, slots=True)
class Window:
    """A run of the reference string: one entry per access, in order."""

    vm: NDArray[np.int64]
    vcpu: NDArray[np.int64]
    gfn: NDArray[np.int64]
    write: NDArray[np.bool_]
    t_ns: NDArray[np.int64]


class DemandAllocator:
    """A free frame if there is one; else the policy evicts exactly one page first."""

    def __init__(
        self,
        mem: HostMemory,
        vmscan: Vmscan,
        policy: EvictionPolicy,
        vmstat: Counter[str],
        oom: Callable[[], bool],
    ) -> None:
        self.mem, self.vmscan, self.policy, self.vmstat, self.oom = mem, vmscan, policy, vmstat, oom

    @property
    def evictions(self) -> int:
        """Pages the policy freed for misses (every demand reclaim is direct: pgsteal_direct)."""
        return self.vmstat["pgsteal_direct"]

    def alloc_fast(self, pid: int) -> int:
        """Never waits and never fails: evicts one page when memory is full."""
        if self.mem.nr_free == 0:
            self.evict_one()
        return self.mem.alloc_frame(pid)

    def evict_one(self) -> None:
        """Run the policy's reclaim for exactly one page.

        One victim per miss has no use for the kernel's priority ladder (which sizes batch
        passes): the pass runs at priority 0 (the whole list as budget), one folio at a time
        (``sc.batch = 1``), with a target of one page; the policy's own loop decides when it is
        done, so whatever it does around each reclaim step (the two-list LRU deactivates an
        active folio for every inactive one it scans) still happens. A pass may only clear
        referenced bits; the next one evicts.
        """
        sc = ScanControl(nr_to_reclaim=1, batch=1, direct=True, priority=0, vmstat=self.vmstat)
        for _ in range(3):
            for _ in self.policy.shrink_node(sc, self.vmscan):
                pass
            if sc.nr_reclaimed:
                break
        self.policy.reclaim_cycle_end()
        if self.mem.nr_free == 0 and not (self.oom() and self.mem.nr_free > 0):
            raise RuntimeError("demand paging: the policy found nothing to evict")


class DemandWorld(Machine):
    """A host in demand mode, driven by a reference string.

    Args:
        sc: the scenario (policy, KVM switches; host.memory_mib gives N unless ``nr_frames``).
        outdir: where event tables go (None: no tables).
        nr_frames: N, overriding the scenario's host memory (trace replay).
        vm_pages: (name, pages) per VM, overriding the scenario's VMs (trace replay).
        source: the reference string as windows, overriding the scenario's merged streams.
        future_pages: for OPT, the whole string as global page ids (else it is materialised).
    """

    def __init__(
        self,
        sc: Scenario,
        outdir: Path | None = None,
        *,
        nr_frames: int | None = None,
        vm_pages: list[tuple[str, int]] | None = None,
        source: Callable[[], Iterator[Window]] | None = None,
    ) -> None:
        vms = sc.vm_list()
        if vm_pages is None:
            vm_pages = [(name, sc.host.pages(cfg.memory_mib)) for name, cfg in vms]
        if nr_frames is None:
            nr_frames = sc.host.pages(sc.host.memory_mib)
        total = sum(n for _, n in vm_pages)
        self._t = 0
        super().__init__(
            sc,
            nr_frames=nr_frames,
            wmark=Watermarks(0, 0, 0, 0),
            vm_pages=vm_pages,
            swap_slots=max(sc.host.pages(sc.swap.size_mib), total),
            now=lambda: self._t,
            schedule=lambda _t, fn: fn(),  # write-back completes at once
            outdir=outdir,
        )
        self.oom = OomKiller(
            self.mms, self.mem, self.swap, self.policy, self.vmstat, now=lambda: self._t
        )
        self.oom_kills = self.oom.kills
        self.alloc = DemandAllocator(self.mem, self.vmscan, self.policy, self.vmstat, self.oom)
        self.host_fault = HostFaultHandler(
            None, self.mem, self.swap, self.alloc, self.policy, self.mms, self.vmstat
        )
        self.horizon_ns = round(sc.duration_s * 1e9)
        self.window = WINDOW if sc.kvm.ept_ad_bits else WINDOW_ACCESS_TRACKING
        self._source = source if source is not None else self._merged
        self._alias_rng = rng_for(sc.seed, "demand.alias")
        self._seq = 0
        self._string: list[NDArray[np.int64]] = []  # the reference string, for oracle gaps
        self.accesses = 0
        self._next_sample = 0
        self._sample_ns = max(1, round(sc.engine.sample_interval_ms * 1e6))
        for vm, (_, cfg) in zip(self.vms, vms, strict=False):
            vm.nr_vcpus = cfg.vcpus
        # each VM's first TLB row (its vCPUs' rows follow)
        self._tlb_row0 = np.array([vm.tlb_rows.start for vm in self.vms], dtype=np.int64)

    # -- reference strings -------------------------------------------------------------------
    def _merged(self) -> Iterator[Window]:
        """The scenario's vCPU streams merged by guest time, in windows."""
        sc = self.sc
        entries = []
        for vi, (name, cfg) in enumerate(sc.vm_list()):
            for j in range(cfg.vcpus):
                stream = vcpu_stream(sc, name, cfg, self.vms[vi].mm.nr_pages, j)
                entries.append((vi, j, stream, cfg.access_rate_per_s))
        total_rate = sum(e[3] for e in entries)
        step = max(1, self.window * 1_000_000_000 // total_rate)
        done = [0] * len(entries)
        t = 0
        while t < self.horizon_ns:
            t1 = min(t + step, self.horizon_ns)
            parts = []
            for k, (vi, j, stream, rate) in enumerate(entries):
                end = (t1 * rate + 999_999_999) // 1_000_000_000
                n = end - done[k]
                if n <= 0:
                    continue
                g, w = stream.next(n)
                ts = np.arange(done[k], end, dtype=np.int64) * 1_000_000_000 // rate
                done[k] = end
                parts.append((np.full(n, vi), np.full(n, j), g, w, ts, np.full(n, k)))
            t = t1
            if not parts:
                continue
            vm, vcpu, g, w, ts, order_key = (np.concatenate(x) for x in zip(*parts, strict=True))
            order = np.lexsort((order_key, ts))
            yield Window(vm[order], vcpu[order], g[order], w[order], ts[order])

    # -- the engine --------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> None:
        """Replay the whole reference string."""
        windows: Iterator[Window] = self._source()
        if self.policy.needs_future:
            from sim.fastpath import next_use

            materialised = list(windows)
            pids = np.concatenate(
                [self.vm_base[w.vm] + w.gfn for w in materialised] or [np.empty(0, np.int64)]
            )
            self.policy.set_future(next_use(pids))
            windows = iter(materialised)
        keep = self.sc.output.oracle_gaps
        for w in windows:
            if keep:
                self._string.append(self.vm_base[w.vm] + w.gfn)
            self._step(w)
            if progress is not None and self.horizon_ns:
                progress(min(1.0, self._t / self.horizon_ns))
        if progress is not None:
            progress(1.0)

    def _step(self, w: Window) -> None:
        """Walk the window's accesses in order as the vCPU walks its batch (``ept_touch``):
        runs of hits, each ended by an EPT violation that KVM's fault path resolves at once.
        The walk reads every spte as it reaches it, so a page evicted or aged while an earlier
        fault was handled faults when its turn comes."""
        n = len(w.gfn)
        if n == 0:
            return
        k, spte = self.k, self.spte
        pid = self.vm_base[w.vm] + w.gfn
        alias = self._alias_rng.integers(0, k, n) if k > 1 else 0
        gidx = pid * k + alias
        writes = np.ascontiguousarray(w.write, dtype=np.bool_)
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        pos = 0
        tlbs = self.tlbs
        rows = NO_ROWS if tlbs is None else self._tlb_row0[w.vm] + w.vcpu
        while True:
            lo = pos
            if tlbs is None:
                pos = ept_touch(spte, gidx, pid, writes, _NO_STAMPS, 0, 0, lo, n, _NO_WRITTEN)
            else:
                pos = tlb_touch(
                    spte,
                    gidx,
                    pid,
                    writes,
                    _NO_STAMPS,
                    0,
                    0,
                    lo,
                    n,
                    rows,
                    0,
                    tlbs.tags,
                    tlbs.used,
                    tlbs.dirty,
                    tlbs.st,
                    _NO_WRITTEN,
                )
            if pos > lo:
                self._hits(w, pid, seq, lo, pos)
            if pos >= n:
                break
            self._fault(w, pid, int(gidx[pos]), pos)  # the access is then retried: a hit
            if self._t >= self._next_sample:
                self._sample()
        self._seq += n
        self.accesses += n
        counts = np.bincount(w.vm, minlength=len(self.vms))
        for vm, c in zip(self.vms, counts.tolist(), strict=True):
            vm.stats.accesses += c
        self._t = int(w.t_ns[-1])
        if self._t >= self._next_sample:
            self._sample()

    def _fault(self, w: Window, pid: NDArray[np.int64], ix: int, b: int) -> None:
        """The EPT violation of access ``b`` (spte ``ix``), through KVM's fault path."""
        self._t = int(w.t_ns[b])
        p, g = int(pid[b]), int(w.gfn[b])
        vm = self.vms[int(w.vm[b])]
        refault = self.host_fault.is_refault(p)
        kind, _, _ = _at_once(
            kvm_page_fault(
                vm.mmu,
                vm.mm,
                self.host_fault,
                self.costs,
                pid=p,
                gfn=g,
                alias=ix - p * self.k,
                write=bool(w.write[b]),
            )
        )
        fault_done(
            vm,
            self.recorder,
            t_ns=self._t,
            vcpu=int(w.vcpu[b]),
            gfn=g,
            pid=p,
            kind=kind,
            refault=refault,
            latency_ns=0,  # no time passes
        )

    def _hits(
        self,
        w: Window,
        pid: NDArray[np.int64],
        seq: NDArray[np.int64],
        lo: int,
        hi: int,
    ) -> None:
        """Accesses ``lo:hi`` hit (``ept_touch`` set their bits): stamp each page with its
        access's own time (analysis only) and tell an oracle policy."""
        p = pid[lo:hi]
        if self.mem.stamps:
            np.maximum.at(self.mem.last_access_us, p, (w.t_ns[lo:hi] // 1000).astype(np.uint32))
        if self.policy.observes_accesses:
            self.policy.on_access(self.mem.pfn[p].astype(np.int64), seq[lo:hi])

    def _sample(self) -> None:
        if self.recorder is not None and self.recorder.tl is not None:
            self.sample(self._t)
        self._next_sample = (self._t // self._sample_ns + 1) * self._sample_ns

    def oracle_gaps(self) -> dict[str, Any]:
        """This run's misses against exact LRU and OPT on the same string and memory size."""
        from sim import fastpath

        pids = np.concatenate(self._string)
        faults = sum(v.stats.faults["first_touch"] + v.stats.faults["major"] for v in self.vms)
        opt = fastpath.opt(pids, self.nr_frames).faults
        lru = fastpath.lru(pids, self.nr_frames).faults
        return {"frames": self.nr_frames, **_gaps(faults, opt, lru)}

    def summary(self, wall_s: float, sim_time_ns: int | None = None) -> dict[str, Any]:
        """The run's totals; in demand mode faults cost no time, so stalls are zero."""
        out = super().summary(wall_s, self._t if sim_time_ns is None else sim_time_ns)
        if self._string:
            out["quality"] = self.oracle_gaps()
        out["host"]["demand"] = {
            "frames": self.nr_frames,
            "accesses": self.accesses,
            "evictions": self.alloc.evictions,
        }
        return out


def _gaps(faults: int, opt: int, lru: int) -> dict[str, Any]:
    return {
        "faults": faults,
        "opt_faults": opt,
        "lru_faults": lru,
        "opt_gap": faults / opt if opt else None,
        "lru_gap": faults / lru if lru else None,
    }


def trace_source(
    vm_gfns: NDArray[np.int64], writes: NDArray[np.bool_], window: int = WINDOW
) -> Callable[[], Iterator[Window]]:
    """A one-VM, one-vCPU reference string (a trace); time is the access index."""

    def windows() -> Iterator[Window]:
        n = len(vm_gfns)
        for lo in range(0, n, window):
            hi = min(n, lo + window)
            m = hi - lo
            yield Window(
                np.zeros(m, dtype=np.int64),
                np.zeros(m, dtype=np.int64),
                vm_gfns[lo:hi],
                writes[lo:hi],
                np.arange(lo, hi, dtype=np.int64),
            )

    return windows

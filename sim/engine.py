"""Run a scenario: the watermark world (SimPy processes) and the result directory.

``World`` is the kernel's own dynamics: on top of the mechanism (machine.py) it runs kswapd,
the page allocator with direct reclaim and the OOM killer, one SimPy process per vCPU, and a
timeline sampler. ``run_scenario`` builds the world a config asks for (the watermark world,
or the demand world of demand.py for ``reclaim.trigger: demand``), runs it, and publishes its
result directory atomically through ``sim.results``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from heapq import heappush
from pathlib import Path
from typing import Any

import numpy as np
import simpy
from simpy.core import StopSimulation
from simpy.events import NORMAL

from sim.config import HostFilesConfig, Scenario
from sim.core import core_for
from sim.costs import CostModel
from sim.faultcore import fault_core_for
from sim.guest.balloon import VirtioBalloon
from sim.guest.free_page_hint import FreePageHinting
from sim.guest.kernel import GuestKernel
from sim.guest.page_reporting import PageReporting, check_discarded
from sim.guest.tlb import GuestShootdown
from sim.guest.vcpu import Vcpu
from sim.guest.vdisk import DiskImage
from sim.guest.workloads import AccessStream, TraceConfig
from sim.host.fault import HostFaultHandler
from sim.host.filemap import FileReader
from sim.host.khugepaged import Khugepaged
from sim.host.kswapd import DirectReclaim, Kswapd, ProcessGen, ReclaimThrottle
from sim.host.memcontrol import MemCgroups
from sim.host.mom import HostMem, Mom
from sim.host.oom import OomKiller
from sim.host.page_alloc import PageAllocator
from sim.host.page_writeback import DirtyControl
from sim.lifecycle import checkpoint
from sim.machine import Machine, rng_for, vcpu_stream
from sim.reclaim.memcg import MemcgTwoList
from sim.reclaim.two_list import TwoList
from sim.results import staged, write_manifest
from sim.tails import FaultLatencies, VcpuTime
from sim.wbdrain import E_ID, E_PFN, E_PID, E_T, WritebackDrain, writeback_drain_for

__all__ = ["RunResult", "World", "default_outdir", "rng_for", "run_scenario"]


# the flusher's period and expiry for disk images: the kernel's defaults (vm.dirty_*_centisecs)
_DEFAULT_WRITEBACK_MS = HostFilesConfig.model_fields["dirty_writeback_ms"].default
_DEFAULT_EXPIRE_MS = HostFilesConfig.model_fields["dirty_expire_ms"].default


def _shootdown(vm: Any, _pids: Any) -> None:
    """The guest unmapped pages: its TLB shootdown reaches every vCPU of the VM, and a step
    in flight that goes on to use one of them is cut there."""
    vm.revoked()


class World(Machine):
    """The simulated host with its VMs under watermark-driven reclaim, ready to run.

    Args:
        sc: the scenario.
        outdir: where the recorder writes event tables (None: no tables).
    """

    def __init__(self, sc: Scenario, outdir: Path | None = None) -> None:
        self.env = env = simpy.Environment()
        vms = sc.vm_list()
        pages = sc.host.pages
        nr_frames = pages(sc.host.memory_mib)
        super().__init__(
            sc,
            nr_frames=nr_frames,
            wmark=sc.host.watermarks(),
            vm_pages=[(name, pages(cfg.memory_mib)) for name, cfg in vms],
            swap_slots=pages(sc.swap.size_mib),
            now=lambda: int(env.now),
            schedule=self._schedule,
            outdir=outdir,
        )
        mem, policy, vmstat, swap = self.mem, self.policy, self.vmstat, self.swap
        cost = CostModel(self.costs, swap.compress_ns, swap.decompress_ns)
        self.throttle = throttle = ReclaimThrottle(env, mem, vmstat)
        self.vmscan.on_writeback_end = throttle.writeback_ended
        self.vmscan.schedule_each = self._schedule_each
        # a batch's write-back ends drained compiled, where the policy allows (sim/wbdrain.py)
        self.wb_drain = writeback_drain_for(self.vmscan, throttle)
        if self.wb_drain is not None:
            self.vmscan.schedule_ends = self._schedule_ends
        self.kswapd = Kswapd(env, mem, self.vmscan, policy, cost, vmstat, throttle)
        direct = DirectReclaim(env, mem, self.vmscan, policy, cost, vmstat, throttle)
        self.oom = OomKiller(self.mms, mem, swap, policy, vmstat, now=lambda: int(env.now))
        self.oom_kills = self.oom.kills
        self.oom.ksm = self.ksm
        hugetlb = 0
        if self.hugetlb is not None:  # hugetlb folios are on no LRU (host/hugetlb.py)
            self.oom.hugetlb = frozenset(self.hugetlb.vms)
            hugetlb = self.hugetlb.nr_pages

        files = sc.file_sections()
        images = sc.disk_images()  # the guests' disk images, files after those
        first_file = mem.page_owner(mem.file_base)  # after the VMs' (and KSM's) pseudo-mms
        file_owners = slice(first_file, first_file + len(files) + len(images))

        def reclaimable() -> int:  # zone_reclaimable_pages: file pages; anon if swap has room
            # neither the compressed pool nor the hugetlb pool is on it
            lru = mem.nr_frames - mem.nr_free - mem.nr_pool - hugetlb
            if swap.nr_free_slots > 0:
                return lru
            return int(mem.nr_resident[file_owners].sum()) if self.file_pages else 0

        self.alloc = PageAllocator(env, mem, self.kswapd, direct, vmstat, self.oom, reclaimable)
        names = [name for name, _ in vms]
        readers = [names.index(hf.memcg) for hf in files if hf.memcg is not None]
        readers += [i for i, _ in images]  # QEMU's task adding image folios
        if self.memcg_limits is not None:  # the VMs' memcgs: charging, limits, protection
            self.memcg = MemCgroups(
                env,
                mem,
                self.memcg_limits,
                self.mms,
                vmstat,
                direct,
                self.oom,
                vcpus=[cfg.vcpus + readers.count(i) for i, (_, cfg) in enumerate(vms)],
            )
            self.alloc.memcg = self.vmscan.memcg = self.memcg
            self.memcg.ksm = self.ksm
            if sc.host.memcg_stats == "lazy" and isinstance(policy, MemcgTwoList):
                self.memcg.use_lazy_stats(policy, round(sc.host.memcg_stats_flush_ms * 1e6))
            swap.on_free_slots = self.memcg.uncharge_swap
        # the compiled reclaim batch, where it applies (two-list lruvecs run whole passes in it)
        self.vmscan.core = core = core_for(self.vmscan)
        lruvecs = policy.lruvecs if isinstance(policy, MemcgTwoList) else [policy]
        for lruvec in lruvecs:
            if isinstance(lruvec, TwoList):
                lruvec.core = core
        self.host_fault = HostFaultHandler(
            env,
            mem,
            self.swap,
            self.alloc,
            policy,
            self.mms,
            vmstat,
            page_cluster=sc.swap.page_cluster,
            rotational=sc.swap.rotational,
        )
        self.host_fault.memcg = self.memcg
        self.host_fault.ksm = self.ksm
        self.host_fault.thp = self.thp
        if self.deferred is not None:  # partial unmaps of THPs (host/deferred_split.py)
            self.deferred.env = env
            self.host_fault.deferred = self.deferred
            for r in (self.kswapd, direct):  # the deferred split shrinker, in shrink_slab
                r.shrinkers.append(self.deferred.shrink)
        self.khugepaged: Khugepaged | None = None
        thp = sc.host.thp
        if self.thp is not None and thp is not None and thp.khugepaged.enabled:
            self.khugepaged = Khugepaged(
                thp.khugepaged,
                self.thp,
                mem,
                self.swap,
                self.mms,
                policy,
                vmstat,
                self.host_fault.page_busy,
                self.costs.clear_page_ns,
            )
            self.khugepaged.memcg = self.memcg
            self.khugepaged.ksm = self.ksm
            if self.hugetlb is not None:
                self.khugepaged.skip = self.hugetlb.mask
        on_access = self._on_access if policy.observes_accesses else None
        self.horizon_ns = round(sc.duration_s * 1e9)
        self.accrual = VcpuTime(
            len(self.vms), self.horizon_ns, max(1, round(sc.metrics.window_ms * 1e6))
        )
        self.latencies = FaultLatencies(
            len(self.vms), self.warmup_ns, self.recorder, self.fault_kinds
        )
        self.guests: list[GuestKernel | None] = []
        self.balloons: list[VirtioBalloon | None] = []
        for vm, (name, cfg) in zip(self.vms, vms, strict=True):
            vm.nr_vcpus = cfg.vcpus
            guest = None
            if cfg.guest is not None:  # the guest kernel's own memory management
                guest = GuestKernel(
                    env,
                    cfg.guest,
                    name=name,
                    nr_gfns=vm.mm.nr_pages,
                    costs=self.costs,
                    rng=rng_for(sc.seed, f"{name}.guest"),
                    schedule=self._schedule,
                    host_pid_base=vm.mm.pid_base,
                    host_mem=mem,
                    host_fault=self.host_fault,
                    host_swap=swap,
                )
                guest.rmap.on_unmap = partial(_shootdown, vm)
                if vm.tlbs is not None:  # the guest's TLB flushes reach its vCPUs' TLBs
                    guest.tlb = guest.rmap.tlb = GuestShootdown(vm.tlbs, vm.tlb_rows)
                    guest.rmap.nr_cpus = cfg.vcpus
                guest.on_exit = vm.revoked  # the exited process's steps in flight are cut
                if self.recorder is not None:
                    guest.log_evictions(self.recorder.guest_evicted, vm.index)
            self.guests.append(guest)
            vm.guest = guest
            balloon = None
            if guest is not None and cfg.balloon is not None and cfg.balloon.enabled:
                balloon = VirtioBalloon.create(
                    env, guest, partial(self.discard, vm.index), cfg.balloon
                )
                if cfg.balloon.free_page_reporting.enabled:  # VIRTIO_BALLOON_F_REPORTING
                    balloon.reporting = PageReporting(
                        env,
                        guest.mem,
                        partial(self.discard, vm.index),
                        cfg.balloon.free_page_reporting,
                    )
                if cfg.balloon.free_page_hint.enabled:  # VIRTIO_BALLOON_F_FREE_PAGE_HINT
                    balloon.hinting = FreePageHinting(
                        env,
                        guest.mem,
                        guest.hint_take,
                        guest.hint_give_back,
                        cfg.balloon.free_page_hint,
                    )
                    for r in (guest.kswapd, guest.direct):  # its shrinker, in shrink_slab
                        r.shrinkers.append(balloon.hinting.shrink)
            self.balloons.append(balloon)
            vm.balloon = balloon
            for j in range(cfg.vcpus):
                pages = vm.mm.nr_pages if guest is None else guest.nr_vpages
                stream = vcpu_stream(sc, name, cfg, pages, j)
                vm.vcpus.append(
                    Vcpu(
                        env,
                        vm,
                        j,
                        stream,
                        access_rate_per_s=cfg.access_rate_per_s,
                        batch_accesses=sc.engine.batch_accesses,
                        mem=mem,
                        host=self.host_fault,
                        costs=self.costs,
                        rng=rng_for(sc.seed, f"{name}.vcpu{j}.alias"),
                        async_pf=cfg.async_pf,
                        apf_rng=rng_for(sc.seed, f"{name}.vcpu{j}.async_pf"),
                        sink=self.latencies,
                        on_access=on_access,
                        accrual=self.accrual,
                        guest=guest,
                    )
                )
        # the fused plain major fault, where it applies (not under a guest kernel or async pf)
        fault_core = fault_core_for(self.host_fault, policy, self.costs, core)
        if fault_core is not None:
            for vm, guest, (_, cfg) in zip(self.vms, self.guests, vms, strict=True):
                if guest is None and cfg.async_pf <= 0.0:
                    for vcpu in vm.vcpus:
                        vcpu.fault_core = fault_core
        if any(g is not None and g.nr_file for g in self.guests):  # VSwapper's silent writes
            self.vmscan.on_swap_write = self._swap_written
        self.mom: Mom | None = None
        if sc.mom is not None and sc.mom.enabled:  # the host's balloon manager
            managed = [(i, b) for i, b in enumerate(self.balloons) if b is not None]
            self.mom = Mom(
                env,
                sc.mom,
                self._host_mem,
                [b.device for _, b in managed],
                held=lambda k: managed[k][1].driver.num_pages,
            )
            self.mom_vms = [i for i, _ in managed]
        self.file_readers: list[FileReader] = []
        dirty = None
        if files or images:  # the node's dirty limits: balance_dirty_pages, background write-back
            dirty = DirtyControl(
                mem,
                dirty_ratio=sc.host.dirty_ratio,
                dirty_background_ratio=sc.host.dirty_background_ratio,
            )
            self.vmscan.dirty = dirty
        for k, hf in enumerate(files):
            nr_file_pages = sc.host.pages(hf.size_mib)
            stream = AccessStream(
                hf.workload,
                vm_pages=nr_file_pages,
                working_set_pages=nr_file_pages,
                access_rate_per_s=hf.access_rate_per_s,
                write_ratio=hf.write_ratio,
                vcpu=0,
                nr_vcpus=1,
                rng=rng_for(sc.seed, "host_files.stream" if k == 0 else f"host_files{k}.stream"),
            )
            owner = None if hf.memcg is None else self.mms[names.index(hf.memcg)]
            self.file_readers.append(
                FileReader(
                    env,
                    mem,
                    self.alloc,
                    policy,  # type: ignore[arg-type]
                    swap,
                    vmstat,
                    stream,
                    access_rate_per_s=hf.access_rate_per_s,
                    batch=sc.engine.batch_accesses,
                    read_latency_ns=max(1, round(hf.read_latency_us * 1e3)),
                    vmscan=self.vmscan,
                    schedule=self._schedule,
                    write_ns=max(1, round((4 / 1024) / hf.writeback_mib_per_s * 1e9)),
                    dirty_writeback_ns=max(1, round(hf.dirty_writeback_ms * 1e6)),
                    dirty_expire_ns=round(hf.dirty_expire_ms * 1e6),
                    base=int(self.file_base[k]),
                    nr_pages=nr_file_pages,
                    memcg=self.memcg if owner is not None else None,
                    owner=owner,
                    dirty=dirty,
                )
            )
        self.disk_images: list[DiskImage] = []
        for k, (i, nr_image_pages) in enumerate(images):
            guest = self.guests[i]
            assert guest is not None
            image = DiskImage(
                env,
                mem,
                self.alloc,
                policy,  # type: ignore[arg-type]
                swap,
                vmstat,
                disk=guest.swap,
                vmscan=self.vmscan,
                schedule=self._schedule,
                dirty_writeback_ns=round(_DEFAULT_WRITEBACK_MS * 1e6),
                dirty_expire_ns=round(_DEFAULT_EXPIRE_MS * 1e6),
                base=int(self.file_base[len(files) + k]),
                nr_pages=nr_image_pages,
                owner=self.mms[i],
                copy_ns=self.costs.clear_page_ns,
                writethrough=guest.cfg.disk_cache == "writethrough",
                memcg=self.memcg if self.memcg_limits is not None else None,
                dirty=dirty,
            )
            guest.attach_image(image)
            self.disk_images.append(image)
        if dirty is not None:
            dirty.readers = [*self.file_readers, *self.disk_images]
        if any(cfg.prefault for _, cfg in vms):
            from sim.prefault import prefault

            prefault(self, [cfg for _, cfg in vms])
        self._seq = 0  # global access sequence number (for oracle policies)
        self._started = False
        self._end: simpy.Event | None = None  # every vCPU has halted (see _all_ended)
        self.ended_ns: int | None = None  # when that stopped the run

    # -- plumbing ----------------------------------------------------------------------------
    def _schedule(self, t_ns: int, fn: Callable[[], None]) -> None:
        ev = self.env.timeout(max(0, t_ns - int(self.env.now)))
        ev.callbacks.append(partial(_call, fn))

    def _schedule_each(
        self, times: list[int], fn: Callable[..., None], args: list[tuple[int, ...]]
    ) -> None:
        """``fn(*args[i])`` at ``times[i]``, each at the place in the event order a timeout of
        its own made now would have (see :class:`Timers`), with one event for them all."""
        Timers(self.env, times, fn, args)

    def _schedule_ends(self, times: list[int], pids: list[int], pfns: list[int]) -> None:
        """Each folio's ``folio_end_writeback`` at its time, as :meth:`_schedule_each` would,
        runs of plain ones drained compiled (:class:`DrainedTimers`)."""
        assert self.wb_drain is not None
        DrainedTimers(self.env, times, pids, pfns, self.wb_drain, self.vmscan.folio_end_writeback)

    def _swap_written(self, pids: np.ndarray) -> None:
        """The host submitted swap writes of these pages: tell each guest kernel of its gfns
        (those holding clean page-cache pages are silent swap writes)."""
        owners = self.mem.page_owners(pids)
        for i in np.unique(owners).tolist():
            g = self.guests[i] if i < len(self.guests) else None
            if g is not None:
                g.silent_writes(pids[owners == i] - self.vms[i].mm.pid_base)

    def _host_mem(self) -> HostMem:
        """What MOM's host collector reads: MemTotal, and MemFree + Buffers + Cached (the
        host page cache's resident pages)."""
        mem = self.mem
        cached = int(mem.nr_resident[len(self.vms) :].sum()) if self.file_pages else 0
        return HostMem(total=mem.nr_frames, free=int(mem.nr_free) + cached)

    def _on_access(self, pids: np.ndarray) -> None:
        n = len(pids)
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        self.policy.on_access(self.mem.pfn[pids].astype(np.int64), seq)

    def stall_ns(self, vm: Any, t_ns: int) -> int:
        """The VM's vCPU stall up to ``t_ns``, credited as it accrues."""
        return vm.stats.stall_ns + sum(v.accrued(t_ns)[0] for v in vm.vcpus)

    def compute_ns(self, vm: Any, t_ns: int) -> int:
        """The VM's vCPU guest time up to ``t_ns``, credited as it accrues."""
        return vm.stats.compute_ns + sum(v.accrued(t_ns)[1] for v in vm.vcpus)

    def _in_flight(self, t_ns: int) -> list[tuple[int, tuple[int, int, bool]]]:
        return [(vm.index, seg) for vm in self.vms for v in vm.vcpus for seg in v.in_flight(t_ns)]

    def tails(self, t_ns: int) -> tuple[list[np.ndarray], FaultLatencies | None]:
        """Each VM's stall fraction per window after the warm-up (windows as of ``t_ns``,
        now), and the fault latencies after it."""
        stall, compute = self.accrual.at(self._in_flight(t_ns))
        fracs = [
            self.accrual.fractions(stall, compute, i, self.warmup_ns) for i in range(len(self.vms))
        ]
        return fracs, self.latencies

    def check(self) -> None:
        """Every invariant of the mechanism, and the stall windows adding up to each VM's
        stall and compute (they are a breakdown of those, not a count of their own)."""
        super().check()
        for guest, vm in zip(self.guests, self.vms, strict=True):
            if guest is not None:
                guest.check()
                if vm.tlbs is not None:  # no cached translation outlives either level
                    gm = guest.mem
                    vm.tlbs.check_guest(
                        vm.mmu.spte, vm.tlb_rows, gm.flags, gm.pfn, guest.nr_anon, vm.mmu.k
                    )
        for vm in self.vms:  # free page reporting: reported gfns are free and not on the host
            if vm.balloon is not None and vm.balloon.hinting is not None and vm.guest is not None:
                hinted = vm.balloon.hinting.hinted_gfns()
                assert np.array_equal(np.flatnonzero(vm.guest.hinted), np.sort(hinted)), "hinted"
                assert (vm.guest.mem.frame_pid[hinted] >= vm.guest.nr_vpages).all()
            if vm.balloon is not None and vm.balloon.reporting is not None:
                vm.balloon.reporting.check()
                spte = vm.mmu.spte.reshape(vm.mm.nr_pages, -1)  # one row per gfn
                check_discarded(vm.mm, self.mem, spte, vm.balloon.reporting.reported_gfns())
        now = int(self.env.now)
        stall, compute = self.accrual.at(self._in_flight(now))
        for vm in self.vms:
            assert int(stall[vm.index].sum()) == self.stall_ns(vm, now), "stall windows"
            assert int(compute[vm.index].sum()) == self.compute_ns(vm, now), "compute windows"

    def kswapd_busy_ns(self) -> int:
        """Time kswapd spent in balance_pgdat (up to now)."""
        return self.kswapd.busy_at(int(self.env.now))

    def start(self) -> None:
        """Start every process (kswapd, vCPUs, sampler); done once, before running."""
        if self._started:
            return
        self._started = True
        self.env.process(self.kswapd.run())
        if self.ksm is not None:
            self.env.process(self.ksm.ksmd(self.env))
        if self.khugepaged is not None:
            self.env.process(self.khugepaged.run(self.env))
        for guest in self.guests:
            if guest is not None:
                guest.start()
        if self.memcg is not None and self.memcg.stats_policy is not None:
            self.memcg.flush_stats()  # the flush the world starts from
            self.env.process(self.memcg.flush_stats_dwork())
        for vm in self.vms:
            for v in vm.vcpus:
                v.proc = self.env.process(v.run())
        for reader, hf in zip(self.file_readers, self.sc.file_sections(), strict=True):
            self.env.process(reader.run())
            if hf.write_ratio > 0:
                self.env.process(reader.flusher())
        for image in self.disk_images:
            self.env.process(image.flusher())
        if self.recorder is not None and self.recorder.tl is not None:
            self.env.process(self._sampler())

    def _sampler(self) -> ProcessGen:
        step = max(1, round(self.sc.engine.sample_interval_ms * 1e6))
        while True:
            self.sample(int(self.env.now))
            yield self.env.timeout(step)

    # -- running -----------------------------------------------------------------------------
    def _all_ended(self) -> simpy.Event | None:
        """When every VM replays a trace once: an event that stops the simulation once every
        vCPU process has returned (halted at its trace's end, or its VM OOM-killed); otherwise
        None (the run goes to the horizon, as it always did)."""
        if self._end is None and all(
            isinstance(cfg.workload, TraceConfig) and not cfg.workload.repeat
            for _, cfg in self.sc.vm_list()
        ):
            procs = [v.proc for vm in self.vms for v in vm.vcpus if v.proc is not None]
            self._end = self.env.all_of(procs)
            self._end.callbacks.append(self._stop)
        return self._end

    def _stop(self, _event: simpy.Event) -> None:
        self.ended_ns = int(self.env.now)
        raise StopSimulation(None)

    def ended(self) -> bool:
        """Whether the run stopped before the horizon because every vCPU had halted."""
        return self.ended_ns is not None

    def run(self, progress: Callable[[float], None] | None = None, steps: int = 100) -> None:
        """Run to the horizon, or until every vCPU has halted (traces played once), calling
        ``progress(fraction)`` ``steps`` times along the way; with a warm-up, stop once at its
        end to take the counts the summary subtracts (at the halt if that comes first)."""
        self.start()
        self._all_ended()
        h = self.horizon_ns
        for i in range(1, steps + 1):
            until = max(1, h * i // steps)
            if self.at_warmup is None and 0 < self.warmup_ns <= until:
                if self.warmup_ns > self.env.now and not self.ended():
                    self.env.run(until=self.warmup_ns)
                self.at_warmup = self.snapshot(min(self.warmup_ns, int(self.env.now)))
            if until > self.env.now and not self.ended():
                self.env.run(until=until)
            if progress is not None:
                progress(i / steps)

    def summary(self, wall_s: float, sim_time_ns: int | None = None) -> dict[str, Any]:
        """The run's totals (``summary.json``)."""
        return super().summary(wall_s, int(self.env.now) if sim_time_ns is None else sim_time_ns)


def _call(fn: Callable[[], None], _event: simpy.Event) -> None:
    fn()


class Timers(simpy.Event):
    """Many timers set at once (a batch's write-back completions) as one event that fires at
    each of their times in turn, in the order separate timeouts made now would fire.

    SimPy fires events by (time, priority, id), ids counting up as events are scheduled. The
    timers take the ids that ``len(times)`` timeouts scheduled now would take (the counter
    moves past them), and the event is queued at one timer's (time, normal priority, id) at
    a time, the next when it fires: every other event falls before or after each timer
    exactly as it would among the separate timeouts, and ``env.peek()`` sees the earliest.
    Why: a timeout per page written was one Python event object, its scheduling and a
    callback indirection per page; this is one object per batch.
    """

    def __init__(
        self,
        env: simpy.Environment,
        times: list[int],
        fn: Callable[..., None],
        args: list[tuple[int, ...]],
    ) -> None:
        super().__init__(env)
        now = int(env.now)
        n = len(times)
        first = next(env._eid)  # type: ignore[attr-defined]
        env._eid = itertools.count(first + n)  # type: ignore[attr-defined]
        self._at = sorted((max(now, t), first + i) for i, t in enumerate(times))
        self._k = 0
        self._fn, self._args, self._first = fn, args, first
        self._ok, self._value = True, None
        self._push()

    def _push(self) -> None:
        t, eid = self._at[self._k]
        self.callbacks = [Timers._fire]
        heappush(self.env._queue, (t, NORMAL, eid, self))  # type: ignore[attr-defined]

    def _fire(self) -> None:
        eid = self._at[self._k][1]
        self._k += 1
        if self._k < len(self._at):
            self._push()
        self._fn(*self._args[eid - self._first])


class DrainedTimers(simpy.Event):
    """A batch's write-back ends as :class:`Timers` fires them, each at its place in the
    event order, but each firing drains, in one compiled call, the run of ends that would
    fire next and need no Python (sim/wbdrain.py); an end that does goes through ``end``
    (``folio_end_writeback``) when it fires, as with :class:`Timers`.

    Invariant: the event is queued at the first end not done, at that end's (time, normal
    priority, id); the ids are those ``len(times)`` timeouts scheduled now would take.
    """

    def __init__(
        self,
        env: simpy.Environment,
        times: list[int],
        pids: list[int],
        pfns: list[int],
        drain: WritebackDrain,
        end: Callable[[int, int], None],
    ) -> None:
        super().__init__(env)
        n = len(times)
        first = next(env._eid)  # type: ignore[attr-defined]
        env._eid = itertools.count(first + n)  # type: ignore[attr-defined]
        self._ends = drain.ends(times, pids, pfns, int(env.now), first)
        self._k = 0
        self._drain, self._end = drain, end
        self._ok, self._value = True, None
        self._push()

    def _push(self) -> None:
        k, ends = self._k, self._ends
        self.callbacks = [DrainedTimers._fire]
        item = (ends.item(E_T, k), NORMAL, ends.item(E_ID, k), self)
        heappush(self.env._queue, item)  # type: ignore[attr-defined]

    def _fire(self) -> None:
        k, ends = self._k, self._ends
        n = ends.shape[1]
        queue = self.env._queue  # type: ignore[attr-defined]
        j = k + 1
        if j == n or (queue and (ends.item(E_T, j), NORMAL, ends.item(E_ID, j)) > queue[0][:3]):
            done = k  # the next end is not due before the queue's head: a run of one
        else:
            done = self._drain.drain(ends, k, queue)
        if done == k:  # a run of one (it costs less than a drain), or an end that needs Python
            self._k = j
            if j < n:
                self._push()
            self._end(ends.item(E_PID, k), ends.item(E_PFN, k))
            return
        self._k = done
        if done < n:
            self._push()


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run returns: its summary, and where its files are (if written)."""

    summary: dict[str, Any]
    outdir: Path | None


def build_world(sc: Scenario, outdir: Path | None) -> World | Any:
    """The world ``sc`` asks for: watermark-driven (kswapd) or demand paging."""
    if sc.reclaim.trigger == "demand":
        from sim.demand import DemandWorld

        return DemandWorld(sc, outdir)
    return World(sc, outdir)


def default_outdir(sc: Scenario, root: Path = Path("results")) -> Path:
    """``results/<name>-<config hash>/``."""
    return root / f"{sc.name}-{sc.config_hash()}"


def _ticking(progress: Callable[[float], None] | None) -> Callable[[float], None]:
    """``progress`` with a check between steps for a signal whose interrupt got lost."""

    def tick(frac: float) -> None:
        checkpoint()
        if progress is not None:
            progress(frac)

    return tick


def run_scenario(
    sc: Scenario,
    out: Path | None,
    *,
    progress: Callable[[float], None] | None = None,
    command: list[str] | None = None,
    tidy: bool = True,
) -> RunResult:
    """Run ``sc``; with ``out``, write its result directory atomically (all or nothing).

    Everything goes to a hidden temporary sibling of ``out`` that is renamed into place at the
    end; on any error or interrupt it is removed, so ``out`` is never half-written. ``out`` may
    be new, empty, or an earlier run's directory (``sim.results`` has the rules, and ``tidy``).
    """
    tick = _ticking(progress)
    if out is None:
        world = build_world(sc, None)
        t0 = time.perf_counter()
        world.run(tick)
        return RunResult(world.summary(time.perf_counter() - t0), None)
    with staged(out, "run", tidy=tidy) as stage:
        started = time.time()
        t0 = time.perf_counter()
        world = build_world(sc, stage.tmp)
        world.run(tick)
        wall = time.perf_counter() - t0
        summary = world.summary(wall)
        assert world.recorder is not None
        rows = world.recorder.close()
        (stage.tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (stage.tmp / "config.yaml").write_text(sc.to_yaml())
        write_manifest(
            stage.tmp,
            "run",
            command=command,
            started=started,
            wall_s=wall,
            name=sc.name,
            seed=sc.seed,
            config_hash=sc.config_hash(),
            traces_sha256=sc.trace_digests(),
            rows=rows,
        )
    return RunResult(summary, stage.target)

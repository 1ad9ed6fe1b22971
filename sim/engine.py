"""Build the simulated host from a Scenario, run it, and write its results atomically.

The only module that knows every concrete class: it lays out guest pages as global page ids,
creates host memory, swap, the rmap and reclaim machinery, the policy, kswapd, the allocator,
and per VM the QEMU mm, KVM's MMU and notifier, and the vCPU processes; then runs SimPy and
collects the summary. Randomness: every component draws from its own generator, seeded from
``(seed, crc32(scope name))``, so adding a VM does not change another VM's stream.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import simpy

import sim
from sim.config import Scenario
from sim.costs import CostModel
from sim.guest.vcpu import Vcpu
from sim.guest.workloads import AccessStream
from sim.host.fault import HostFaultHandler
from sim.host.kswapd import DirectReclaim, Kswapd, ProcessGen
from sim.host.memory import PAGE_SHIFT, PG_SWAP, PTE_PRESENT, HostMemory
from sim.host.memory import setup_per_zone_wmarks as _wmarks
from sim.host.mm import Mm
from sim.host.oom import OomKiller
from sim.host.page_alloc import PageAllocator
from sim.host.rmap import Rmap
from sim.host.swap import SwapDevice
from sim.host.vmscan import Vmscan
from sim.host.vmstat import VmStat, new_vmstat
from sim.kvm.fault import FAULT_KINDS
from sim.kvm.vm import Vm
from sim.reclaim import make_policy
from sim.record import Recorder

MIB_PAGES = 1 << (20 - PAGE_SHIFT)


def rng_for(seed: int, scope: str) -> np.random.Generator:
    """The generator of one named component (``vm0.vcpu1``, ``swap``...)."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(zlib.crc32(scope.encode()),))
    )


class World:
    """The simulated host with its VMs, ready to run.

    Args:
        sc: the scenario.
        outdir: where the recorder writes event tables (None: no tables).
    """

    def __init__(self, sc: Scenario, outdir: Path | None = None) -> None:
        self.sc = sc
        self.env = env = simpy.Environment()
        vms = sc.vm_list()
        sizes = np.array([cfg.memory_mib * MIB_PAGES for _, cfg in vms], dtype=np.int64)
        self.vm_base = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        nr_pages = int(sizes.sum())
        page_owner = np.repeat(np.arange(len(vms), dtype=np.int32), sizes)
        self.nr_frames = nr_frames = sc.host.memory_mib * MIB_PAGES
        wmark = _wmarks(nr_frames, sc.host.min_free_kbytes, sc.host.watermark_scale_factor)
        self.mem = mem = HostMemory(nr_frames, nr_pages, wmark, page_owner, len(vms))
        self.swap = swap = SwapDevice(
            sc.swap, sc.swap.size_mib * MIB_PAGES, rng_for(sc.seed, "swap")
        )
        self.mms = mms = [
            Mm(i, name, int(self.vm_base[i]), int(sizes[i])) for i, (name, _) in enumerate(vms)
        ]
        self.vmstat = vmstat = new_vmstat()
        self.recorder: Recorder | None = None
        self.policy = policy = make_policy(
            sc.reclaim, nr_frames=nr_frames, vmstat=vmstat, rng=rng_for(sc.seed, "policy")
        )
        if outdir is not None:
            self.recorder = Recorder(
                outdir,
                [n for n, _ in vms],
                self.vm_base,
                policy.name,
                mem,
                sc.output.model_dump(),
                sc.output.chunk_rows,
            )
        self.rmap = Rmap(mem, mms)
        self.vmscan = Vmscan(
            mem,
            swap,
            self.rmap,
            mms,
            now=lambda: int(env.now),
            schedule=self._schedule,
            sink=self.recorder,
        )
        self.vmscan.policy = policy
        cost = CostModel(sc.costs)
        self.kswapd = Kswapd(env, mem, self.vmscan, policy, cost, vmstat)
        direct = DirectReclaim(env, mem, self.vmscan, policy, cost, vmstat)
        self.oom = OomKiller(mms, mem, swap, policy, vmstat, now=lambda: int(env.now))
        self.alloc = PageAllocator(env, mem, self.kswapd, direct, vmstat, self.oom)
        self.host_fault = HostFaultHandler(env, mem, swap, self.alloc, policy, mms, vmstat)
        k = 1 if sc.kvm.tdp_mmu else sc.kvm.shadow_sptes_per_gfn
        self.vms: list[Vm] = []
        on_access = self._on_access if getattr(policy, "observes_accesses", False) else None
        for i, (name, cfg) in enumerate(vms):
            vm = Vm(
                i,
                name,
                mms[i],
                mem,
                sptes_per_gfn=k,
                ept_ad=sc.kvm.ept_ad_bits,
                dirty_on_map=sc.kvm.dirty_on_map,
                aging_notifiers=sc.kvm.mmu_notifiers,
                flush_on_age=sc.kvm.flush_on_age,
                tlb_flush_exit_ns=sc.costs.tlb_flush_exit_ns,
            )
            ws = (cfg.working_set_mib or cfg.memory_mib) * MIB_PAGES
            for j in range(cfg.vcpus):
                stream = AccessStream(
                    cfg.workload,
                    vm_pages=int(sizes[i]),
                    working_set_pages=ws,
                    access_rate_per_s=cfg.access_rate_per_s,
                    write_ratio=cfg.write_ratio,
                    vcpu=j,
                    nr_vcpus=cfg.vcpus,
                    rng=rng_for(sc.seed, f"{name}.vcpu{j}.stream"),
                )
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
                        costs=sc.costs,
                        rng=rng_for(sc.seed, f"{name}.vcpu{j}.alias"),
                        sink=self.recorder,
                        on_access=on_access,
                    )
                )
            self.vms.append(vm)
        self.horizon_ns = round(sc.duration_s * 1e9)
        self._seq = 0  # global access sequence number (for oracle policies)
        self._started = False

    # -- plumbing ----------------------------------------------------------------------------
    def _schedule(self, t_ns: int, fn: Callable[[], None]) -> None:
        ev = self.env.timeout(max(0, t_ns - int(self.env.now)))
        ev.callbacks.append(partial(_call, fn))

    def _on_access(self, pids: np.ndarray) -> None:
        n = len(pids)
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        self.policy.on_access(self.mem.pfn[pids].astype(np.int64), seq)

    def start(self) -> None:
        """Start every process (kswapd, vCPUs, sampler); done once, before running."""
        if self._started:
            return
        self._started = True
        self.env.process(self.kswapd.run())
        for vm in self.vms:
            for v in vm.vcpus:
                self.env.process(v.run())
        if self.recorder is not None and self.recorder.tl is not None:
            self.env.process(self._sampler())

    def _sampler(self) -> ProcessGen:
        step = max(1, round(self.sc.engine.sample_interval_ms * 1e6))
        while True:
            self.sample()
            yield self.env.timeout(step)

    def sample(self) -> None:
        """Append one timeline sample (one row per VM)."""
        assert self.recorder is not None
        mem, vs, wm = self.mem, self.vmstat, self.mem.wmark
        lru = self.policy.lru_sizes()
        host = [
            mem.nr_free,
            mem.nr_writeback,
            wm.min,
            wm.low,
            wm.high,
            lru.get("inactive", 0),
            lru.get("active", 0),
            self._kswapd_busy(),
            vs[VmStat.PGSCAN_KSWAPD],
            vs[VmStat.PGSTEAL_KSWAPD],
            vs[VmStat.PGSCAN_DIRECT],
            vs[VmStat.PGSTEAL_DIRECT],
            vs[VmStat.ALLOCSTALL],
            self.swap.pswpin,
            self.swap.pswpout,
            self._notifier_calls(),
            sum(vm.mmu.remote_tlb_flush for vm in self.vms),
            self.swap.nr_slots - self.swap.nr_free_slots,
        ]
        per_vm = []
        for vm in self.vms:
            st = vm.stats
            per_vm.append(
                [
                    int(mem.nr_resident[vm.index]),
                    int(mem.nr_swapped[vm.index]),
                    st.accesses,
                    *(st.faults[k] for k in FAULT_KINDS),
                    st.refaults,
                    st.stall_ns,
                    st.tlb_flush_exits,
                ]
            )
        self.recorder.sample(int(self.env.now), per_vm, host)

    def _kswapd_busy(self) -> int:
        return self.kswapd.busy_ns

    def _notifier_calls(self) -> int:
        return sum(sum(mm.notifiers.calls.values()) for mm in self.mms)

    # -- running -----------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None, steps: int = 100) -> None:
        """Run to the horizon, calling ``progress(fraction)`` ``steps`` times along the way."""
        self.start()
        h = self.horizon_ns
        for i in range(1, steps + 1):
            self.env.run(until=max(1, h * i // steps))
            if progress is not None:
                progress(i / steps)

    def check(self) -> None:
        """Assert every cross-module invariant (tests call this; O(pages))."""
        mem = self.mem
        mem.check()
        present = (mem.flags & PTE_PRESENT) != 0
        for vm in self.vms:
            b, n = vm.mm.pid_base, vm.mm.nr_pages
            vm.mmu.check(present[b : b + n])
        # On the LRU: every mapped page (a page remapped while its write-out is in flight is
        # back on it); off it: pages being read in, and unmapped pages under write-out.
        on_lru = np.zeros(self.nr_frames, dtype=np.bool_)
        on_lru[mem.pfn[present]] = True
        self.policy.check(on_lru)
        used = self.swap.nr_slots - self.swap.nr_free_slots
        assert used == int(((mem.flags & PG_SWAP) != 0).sum()), "swap slot accounting"

    # -- results -----------------------------------------------------------------------------
    def summary(self, wall_s: float) -> dict[str, Any]:
        """The run's totals (``summary.json``)."""
        sc, mem, vs = self.sc, self.mem, self.vmstat
        dur_s = max(self.env.now, 1) / 1e9
        vms = []
        for vm in self.vms:
            st = vm.stats
            run_ns = st.compute_ns + st.stall_ns
            vms.append(
                {
                    "name": vm.name,
                    "accesses": st.accesses,
                    "faults": dict(st.faults),
                    "refaults": st.refaults,
                    "stall_ns": st.stall_ns,
                    "compute_ns": st.compute_ns,
                    "stall_fraction": st.stall_ns / run_ns if run_ns else 0.0,
                    "slowdown": run_ns / st.compute_ns if st.compute_ns else None,
                    "major_faults_per_s": st.faults["major"] / dur_s,
                    "memory_pages": vm.mm.nr_pages,
                    "resident_pages": int(mem.nr_resident[vm.index]),
                    "swapped_pages": int(mem.nr_swapped[vm.index]),
                    "vcpus": len(vm.vcpus),
                    "tlb_flush_exits": st.tlb_flush_exits,
                    "remote_tlb_flush": vm.mmu.remote_tlb_flush,
                    "pf_fast": vm.mmu.pf_fast,
                    "pf_retry": vm.mmu.pf_retry,
                    "oom_killed": vm.mm.dead,
                }
            )
        calls: dict[str, int] = {}
        for mm in self.mms:
            for op, n in mm.notifiers.calls.items():
                calls[op] = calls.get(op, 0) + n
        kvm_rmap = 0 if sc.kvm.tdp_mmu else vs[VmStat.SPTES_WALKED]
        swap = self.swap
        host = {
            "memory_pages": self.nr_frames,
            "wmark": {
                "min": mem.wmark.min,
                "low": mem.wmark.low,
                "high": mem.wmark.high,
                "min_free_kbytes": mem.wmark.min_free_kbytes,
            },
            "kswapd_scanned": vs[VmStat.PGSCAN_KSWAPD],
            "kswapd_reclaimed": vs[VmStat.PGSTEAL_KSWAPD],
            "kswapd_busy_ns": self.kswapd.busy_ns,
            "kswapd_wakeups": vs[VmStat.KSWAPD_WAKEUPS],
            "direct_reclaims": vs[VmStat.ALLOCSTALL],
            "direct_scanned": vs[VmStat.PGSCAN_DIRECT],
            "direct_reclaimed": vs[VmStat.PGSTEAL_DIRECT],
            "pswpin": swap.pswpin,
            "pswpout": swap.pswpout,
            "tlb_flushes": sum(vm.mmu.remote_tlb_flush for vm in self.vms),
            "rmap_walked": vs[VmStat.RMAP_WALKED] + kvm_rmap,
            "host_rmap_walked": vs[VmStat.RMAP_WALKED],
            "kvm_sptes_walked": vs[VmStat.SPTES_WALKED],
            "notifier": calls,
            "free_pages_end": mem.nr_free,
            "swap": {
                "slots": swap.nr_slots,
                "used_end": swap.nr_slots - swap.nr_free_slots,
                "full_failures": vs[VmStat.SWAP_FULL],
                "exhausted": vs[VmStat.SWAP_FULL] > 0,
                "device_busy_ns": swap.busy_ns,
                "queue_wait_ns": swap.wait_ns,
            },
            "oom_kills": [{"t_ns": t, "vm": n} for t, n in self.oom.kills],
            "vmstat": dict(sorted(vs.items())),
        }
        return {
            "name": sc.name,
            "seed": sc.seed,
            "config_hash": sc.config_hash(),
            "policy": self.policy.name,
            "vms": vms,
            "host": host,
            "sim_time_ns": int(self.env.now),
            "wall_s": round(wall_s, 3),
        }


def _call(fn: Callable[[], None], _event: simpy.Event) -> None:
    fn()


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run returns: its summary, and where its files are (if written)."""

    summary: dict[str, Any]
    outdir: Path | None


def default_outdir(sc: Scenario, root: Path = Path("results")) -> Path:
    """``results/<name>-<config hash>/``."""
    return root / f"{sc.name}-{sc.config_hash()}"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import pandas
    import pyarrow
    import pydantic

    return {
        "memsim": sim.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "simpy": simpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "pydantic": pydantic.__version__,
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_scenario(
    sc: Scenario,
    out: Path | None,
    *,
    progress: Callable[[float], None] | None = None,
    command: list[str] | None = None,
) -> RunResult:
    """Run ``sc``; with ``out``, write its result directory atomically (all or nothing).

    Everything goes to a hidden temporary sibling of ``out`` that is renamed into place at the
    end; on any error or interrupt it is removed, so ``out`` is never half-written.
    """
    if out is None:
        world = World(sc, None)
        t0 = time.perf_counter()
        world.run(progress)
        return RunResult(world.summary(time.perf_counter() - t0), None)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        started = time.time()
        t0 = time.perf_counter()
        world = World(sc, tmp)
        world.run(progress)
        wall = time.perf_counter() - t0
        summary = world.summary(wall)
        assert world.recorder is not None
        rows = world.recorder.close()
        _write_text(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
        _write_text(tmp / "config.yaml", sc.to_yaml())
        manifest = {
            "name": sc.name,
            "seed": sc.seed,
            "config_hash": sc.config_hash(),
            "command": command if command is not None else sys.argv,
            "versions": versions(),
            "platform": platform.platform(),
            "started_unix": round(started, 3),
            "wall_s": round(wall, 3),
            "rows": rows,
        }
        _write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RunResult(summary, out)


def publish(tmp: Path, out: Path) -> None:
    """Move a finished directory into place, replacing an older result."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)

"""A guest vCPU: a SimPy process that touches guest pages in vectorised batches.

Models
    The vCPU runs guest code at ``access_rate_per_s`` page-granular memory accesses per second.
    Hardware walks the spte of each access: a present, non-access-tracked spte is a hit and sets
    its accessed bit (and its dirty bit on a write) for free; anything else is an EPT violation
    handled by KVM (kvm/fault.py). Forced exits for remote TLB flushes and the CPU cost of faults
    are paid as lost guest time.

Batching
    The vCPU takes up to ``batch_accesses`` accesses from its stream at a time and walks them in
    one compiled loop (guest/touch.py) up to the first one that faults. The accesses before it
    are applied (bits set, last-access time stamped with the step's start), a fault that needs no
    waiting is resolved in place and the walk goes on, and the step's guest time is paid with one
    SimPy timeout; a fault that must wait ends the step and its access is retried. Unconsumed
    accesses stay buffered, so the access stream never depends on timing. There is no SimPy event
    per access, only per batch, per fault and per I/O. Batching shifts when bits become visible
    to kswapd by at most one batch of guest time; smaller batches are more exact and slower.

Simplifications
    A fault's CPU cost is paid with the vCPU's next step (its state change is visible at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import simpy

from sim.costs import CostsConfig
from sim.guest.touch import ept_touch
from sim.guest.workloads import AccessStream
from sim.host.fault import HostFaultHandler
from sim.host.kswapd import ProcessGen
from sim.host.memory import PG_EVICTED, HostMemory
from sim.kvm.fault import kvm_fault_nowait, kvm_page_fault
from sim.kvm.vm import Vm

_NOT_EVICTED = np.uint8(0xFF ^ PG_EVICTED)


class FaultSink(Protocol):
    """Where faults are logged (the recorder)."""

    def fault(
        self, t_ns: int, vm: int, vcpu: int, gfn: int, kind: str, latency_ns: int, pid: int
    ) -> None:
        """One resolved guest fault."""
        ...


class Vcpu:
    """One vCPU thread of a VM.

    Args:
        env: simulation environment.
        vm: the VM it belongs to.
        index: vCPU number within the VM.
        stream: its access stream.
        access_rate_per_s: guest accesses per second of guest time.
        batch_accesses: largest batch taken from the stream at once.
        mem: host memory (last-access stamps, refault flags).
        host: the host fault handler (GUP).
        costs: CPU costs.
        rng: generator for shadow-paging aliases.
        sink: fault log.
        on_access: exact-LRU hook (oracle policies only), called with the pids touched.
    """

    def __init__(
        self,
        env: simpy.Environment,
        vm: Vm,
        index: int,
        stream: AccessStream,
        *,
        access_rate_per_s: int,
        batch_accesses: int,
        mem: HostMemory,
        host: HostFaultHandler,
        costs: CostsConfig,
        rng: np.random.Generator,
        sink: FaultSink | None,
        on_access: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.env, self.vm, self.index, self.stream = env, vm, index, stream
        self.rate, self.batch = access_rate_per_s, batch_accesses
        self.mem, self.host, self.costs, self.rng = mem, host, costs, rng
        self.sink, self.on_access = sink, on_access
        self.in_guest = True
        self.pending_ns = 0  # lost guest time to pay with the next step (exits, fault CPU)
        self._done = 0  # accesses completed
        self._guest_ns = 0  # guest time those accesses took

    def run(self) -> ProcessGen:
        """The vCPU thread: one step per batch; waits only for faults that need I/O or reclaim."""
        env, vm, mem = self.env, self.vm, self.mem
        mm, mmu, stats = vm.mm, vm.mmu, vm.stats
        spte, k, base = mmu.spte, mmu.k, mm.pid_base
        last_access, flags, host, costs = mem.last_access_us, mem.flags, self.host, self.costs
        sink, vm_index, me = self.sink, vm.index, self.index
        faults = stats.faults
        n = pos = 0
        gfns = idx_all = np.empty(0, dtype=np.int64)
        writes = np.empty(0, dtype=np.bool_)
        while not mm.dead:
            if pos >= n:
                gfns, writes = self.stream.next(self.batch)
                n, pos = len(gfns), 0
                if k == 1:
                    idx_all = gfns
                else:
                    idx_all = gfns * k + self.rng.integers(0, k, n, dtype=np.int64)
            start = last = pos
            t = 0  # time this step takes so far
            slow = -1
            stamp = env.now // 1000
            p = ept_touch(spte, idx_all, gfns, writes, last_access, base, stamp, start, n)
            while p < n:  # an EPT violation at p
                t += self._guest_time(p - last)
                last = p
                gfn = gfns.item(p)
                pid = base + gfn
                evicted = flags.item(pid) & PG_EVICTED
                r = kvm_fault_nowait(
                    mmu,
                    host,
                    costs,
                    pid=pid,
                    gfn=gfn,
                    alias=idx_all.item(p) - gfn * k,
                    write=writes.item(p),
                )
                if r is None:
                    slow = p
                    break
                kind, cpu_ns = r
                faults[kind] += 1
                if evicted:
                    flags[pid] = flags.item(pid) & ~PG_EVICTED
                    stats.refaults += 1
                stats.fault_ns += cpu_ns
                stats.stall_ns += cpu_ns
                if sink is not None:
                    sink.fault(env.now + t, vm_index, me, gfn, kind, cpu_ns, pid)
                t += cpu_ns
                p = ept_touch(spte, idx_all, gfns, writes, last_access, base, stamp, p, n)
            end = slow if slow >= 0 else n
            t += self._guest_time(end - last)
            if end > start:
                if self.on_access is not None:
                    self.on_access(gfns[start:end] + base)
                stats.accesses += end - start
            t += self.pending_ns
            stats.stall_ns += self.pending_ns
            self.pending_ns = 0
            pos = end
            yield env.timeout(t)
            if slow >= 0 and not mm.dead:
                yield from self._fault(
                    int(gfns[slow]),
                    int(idx_all[slow]) - int(gfns[slow]) * k,
                    bool(writes[slow]),
                    base,
                    flags,
                )

    def _guest_time(self, n: int) -> int:
        """Guest time of the next ``n`` accesses (exact integer arithmetic, no drift)."""
        self._done += n
        t = self._done * 1_000_000_000 // self.rate
        dt = t - self._guest_ns
        self._guest_ns = t
        self.vm.stats.compute_ns += dt
        return dt

    def _fault(self, gfn: int, alias: int, write: bool, base: int, flags: np.ndarray) -> ProcessGen:
        """Handle an EPT violation that must wait (I/O, reclaim); the access is then retried."""
        env, vm = self.env, self.vm
        pid = base + gfn
        refault = bool(flags[pid] & PG_EVICTED)
        if refault:
            flags[pid] &= _NOT_EVICTED
        t0 = env.now
        self.in_guest = False
        kind, cpu_ns, _ = yield from kvm_page_fault(
            vm.mmu, vm.mm, self.host, self.costs, pid=pid, gfn=gfn, alias=alias, write=write
        )
        self.in_guest = True
        waited = env.now - t0
        latency = waited + cpu_ns
        self.pending_ns += cpu_ns
        st = vm.stats
        st.faults[kind] += 1
        st.refaults += refault
        st.fault_ns += latency
        st.stall_ns += waited  # cpu_ns is counted when paid (pending_ns)
        if self.sink is not None:
            self.sink.fault(t0, vm.index, self.index, gfn, kind, latency, pid)

"""A guest vCPU: a SimPy process that touches guest pages in vectorised batches.

Models
    The vCPU runs guest code at ``access_rate_per_s`` page-granular memory accesses per second.
    Hardware walks the spte of each access: a present, non-access-tracked spte is a hit and sets
    its accessed bit (and its dirty bit on a write) for free; anything else is an EPT violation
    handled by KVM (kvm/fault.py). Forced exits for remote TLB flushes and the CPU cost of faults
    are paid as lost guest time. With ``vms[].guest_tlb`` the walk goes through the vCPU's TLB
    (guest/tlb.py): a cached translation sets no accessed bit (with a guest kernel it caches
    the process page's translation to the host frame: neither level's bit).

Async page faults
    With ``vms[].async_pf`` that share of the faults that must wait is made asynchronous, as
    KVM does for a guest user-mode fault when the guest can run another task: an exit injects
    "page not present", the guest schedules something else (the vCPU issues the access and
    runs on with its stream) while KVM's worker faults the page in; "page ready" (another
    exit) completes the access with the spte mapped. Only the exits are stall. A fault on a
    page whose async fault is outstanding blocks (``KVM_REQ_APF_HALT``), and at most
    ``ASYNC_PF_PER_VCPU`` are outstanding per vCPU. Simplified: the access is counted (and its
    guest time spent) when issued; the eligible share is a parameter, not derived from guest
    tasks.

Batching
    The vCPU takes up to ``batch_accesses`` accesses from its stream at a time and finds, with one
    compiled walk (guest/touch.py), the first one that faults; the run of hits before it is
    applied at once (bits set, last access stamped with the run's start). The fault happens at
    the time the run ends. If nothing else is due before that time (``env.peek()``; never in
    the step right after a fault that waited, as other tasks the same event woke are due then
    but not in the queue), free memory is above the low watermark (a first touch at or below
    it wakes kswapd, which must happen at the fault's time) and KVM or the host can resolve it
    without waiting (fast page fault, first touch, swap-cache hit), it is resolved on the spot
    and the walk goes on: no other process could have observed the difference (a fast path,
    ``vcpu_inline_faults`` in sim/fast.py: off, the step ends at every fault and the fault is
    the vCPU's next step). Otherwise the step's time is paid with one SimPy timeout and the
    fault is handled when it happens, at once or as a process waiting for I/O or reclaim.
    If KVM zaps or access-tracks an spte while the last run of a step is in flight and a later
    access of that run uses it, the run is cut there (``revoked``): a batch never turns a
    fault into a hit. Unconsumed accesses stay buffered, so the access stream never depends on
    timing. What batching still shifts: a run's accessed bits become visible to aging up to one
    run early. Batch size 1 is one event per access; tests/test_batch_fidelity.py holds fault
    counts at batch 1024 to 2% of it.

Halting
    A stream that returns no accesses has ended (a trace played once): the vCPU pays the time
    it still owes, records when it halted (``halted_ns``), succeeds ``halted`` and its process
    returns. Whoever drives the world may give the stream more accesses and start ``run`` again
    as a new process: every count it keeps (accesses done, their guest time) carries over.

Simplifications
    A fault's CPU cost is paid with the vCPU's next step (its state change is visible at once).
    An exact-LRU oracle hook sees a cut step's later accesses twice (harmless: LRU order is set
    by the last touch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import simpy
from simpy.events import URGENT

from sim import fast
from sim.costs import CostsConfig
from sim.guest.tlb import (
    NO_ROWS,
    tlb_first_fault,
    tlb_guest_first_fault,
    tlb_guest_touch,
    tlb_touch,
)
from sim.guest.touch import (
    ept_touch,
    first_fault,
    guest_first_unmapped,
    guest_mark,
    guest_present,
    guest_translate,
)
from sim.guest.workloads import AccessStream
from sim.host.fault import HostFault, HostFaultHandler
from sim.host.kswapd import ProcessGen
from sim.host.memory import HostMemory
from sim.kvm.fault import FaultSink, fault_done, kvm_fault_nowait, kvm_page_fault
from sim.kvm.spte import needs_write_fault
from sim.kvm.vm import Vm

if TYPE_CHECKING:
    from sim.faultcore import FaultCore
    from sim.guest.kernel import GuestKernel
    from sim.tails import Segment, VcpuTime


ASYNC_PF_PER_VCPU = 64  # arch/x86/include/asm/kvm_host.h: async faults one vCPU may have queued


class Vcpu:
    """One vCPU thread of a VM.

    Args:
        env: simulation environment.
        vm: the VM it belongs to.
        index: vCPU number within the VM.
        stream: its access stream.
        access_rate_per_s: guest accesses per second of guest time.
        batch_accesses: largest batch taken from the stream at once.
        mem: host memory (last-access stamps).
        host: the host fault handler (GUP).
        costs: CPU costs.
        rng: generator for shadow-paging aliases.
        sink: fault log.
        on_access: exact-LRU hook (oracle policies only), called with the pids touched.
        accrual: where each finished stretch of stall and compute is split across windows.
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
        accrual: VcpuTime | None = None,
        async_pf: float = 0.0,
        apf_rng: np.random.Generator | None = None,
        guest: GuestKernel | None = None,
    ) -> None:
        self.env, self.vm, self.index, self.stream = env, vm, index, stream
        self.rate, self.batch = access_rate_per_s, batch_accesses
        self.mem, self.host, self.costs, self.rng = mem, host, costs, rng
        self.sink, self.on_access, self.accrual = sink, on_access, accrual
        # async page faults: the share of waiting faults made async, drawn from apf_rng; the
        # pages with one outstanding (kvm_find_async_pf_gfn: a repeat fault halts the vCPU)
        self.async_pf, self.apf_rng = async_pf, apf_rng
        self._apf_gfns: set[int] = set()
        self.in_guest = True
        self.pending_ns = 0  # lost guest time to pay with the next step (exits, fault CPU)
        self._done = 0  # accesses completed
        self._guest_ns = 0  # guest time those accesses took
        self.proc: simpy.Process | None = None  # set by the world that starts run()
        # the step in flight (while its timeout runs): accesses [_lo, _hi) of idx_all after
        # _pending ns of owed time, begun at _t0; _cut is where a revoked spte cuts it
        self._idx: np.ndarray | None = None
        self._lo = self._hi = 0
        self._t0 = self._pending = 0
        self._cut = -1
        # accrual: the step in flight as (start, segment ends, segment is stall), and the start
        # of a fault the vCPU is blocked in; the step's stall and compute are counted in the
        # VM's stats when it begins, so a sample in the middle takes back what lies ahead
        self._step: tuple[int, list[int], list[bool]] | None = None
        self._wait_since = -1
        self.halted = env.event()  # succeeded when the stream ends and the vCPU halts
        # this vCPU's TLB (guest/tlb.py), when its VM models one: its row there
        self.tlbs, self.tlb_row = vm.tlbs, -1
        if vm.tlbs is not None:
            self.tlb_row = vm.tlb_rows.start + index
        self.halted_ns: int | None = None
        # a guest kernel: the stream names its process's virtual pages, which the guest maps
        # to gfns (guest_translate); the guest's own fault CPU is owed as guest time
        self.guest = guest
        self.guest_owed_ns = 0
        self._vidx: np.ndarray | None = None  # the step in flight's virtual pages
        # the fused plain major fault (sim/faultcore.py), set by the world where it applies
        self.fault_core: FaultCore | None = None

    def run(self) -> ProcessGen:
        """The vCPU thread, to start as a process (again after a halt: ``halted`` is then a
        new event at once, for the caller to wait on)."""
        if self.halted.triggered:
            self.halted, self.halted_ns = self.env.event(), None
        return self._run()

    def _run(self) -> ProcessGen:
        """Steps of hits and quick faults; a fault that must wait is its own process step, at
        the time it happens."""
        env, vm, mem = self.env, self.vm, self.mem
        mm, mmu, stats = vm.mm, vm.mmu, vm.stats
        spte, k, base = mmu.spte, mmu.k, mm.pid_base
        last_access = mem.last_access_us
        written = mem.written  # KSM's write marks (empty without KSM)
        tlbs = self.tlbs
        inline = fast.enabled("vcpu_inline_faults")  # else each fault ends the step (see Batching)
        self.proc = env.active_process  # what revocations interrupt (a restart is a new one)
        self.in_guest = True
        n = pos = 0
        # back from a fault that waited: whoever the same event woke is due now too, unseen by
        # env.peek() (SimPy calls an event's callbacks one after the other)
        woken = False
        skip = -1  # an access whose fault went async: done when the step reaches it
        gfns = idx_all = vpages = aliases = np.empty(0, dtype=np.int64)
        writes = np.empty(0, dtype=np.bool_)
        guest = self.guest
        gflags = gpfn = None
        fbase = 0  # the guest's first page-cache page (the file the process reads)
        if guest is not None:
            gflags, gpfn, fbase = guest.mem.flags, guest.mem.pfn, guest.nr_anon
        while not mm.dead and not (guest is not None and guest.dead):
            if guest is not None and guest.idle_until > env.now:  # between two jobs: halted
                self.in_guest = False
                yield env.timeout(guest.idle_until - env.now)
                self.in_guest, woken = True, False
                continue
            if pos >= n:
                got, writes = self.stream.next(self.batch)
                n, pos = len(got), 0
                if n == 0:
                    yield from self._halt()
                    return
                if guest is not None:  # gfns come from the guest's page walk, step by step
                    vpages, writes = got, writes.copy()  # a guest's clear_page writes
                    if guest.nr_file:  # read() copies from the page cache: gfns only read
                        writes[vpages >= fbase] = False
                    gfns = np.empty(n, dtype=np.int64)
                    if k == 1:
                        idx_all = gfns
                    else:
                        aliases = self.rng.integers(0, k, n, dtype=np.int64)
                        idx_all = np.empty(n, dtype=np.int64)
                elif k == 1:
                    gfns = idx_all = got
                else:
                    gfns = got
                    idx_all = gfns * k + self.rng.integers(0, k, n, dtype=np.int64)
            # One step: runs of hits and the faults that end them, resolved on the spot while
            # they need no waiting and nothing else is due before them (so no other process can
            # observe the difference); then one timeout for the step's time.
            horizon = 0 if woken else env.peek() - env.now
            t = 0  # time this step takes so far
            ends: list[int] = []  # its segments: where each ends, and whether it is stall
            stalls: list[bool] = []
            while True:
                pending = self.pending_ns  # exits and fault CPU owed, paid before the accesses
                self.pending_ns = 0
                if pending:
                    stats.stall_ns += pending
                    t += pending
                    ends.append(t)
                    stalls.append(True)
                if self.guest_owed_ns:  # the guest kernel's fault handling: guest time
                    owed, self.guest_owed_ns = self.guest_owed_ns, 0
                    stats.compute_ns += owed
                    t += owed
                    ends.append(t)
                    stalls.append(False)
                if pos == skip:  # the guest runs on: the access is issued now, its page
                    skip = -1  # arrives later (_fault, not blocking)
                    if self.on_access is not None:
                        self.on_access(gfns[pos : pos + 1] + base)
                    stats.accesses += 1
                    t += self._guest_time(1)
                    ends.append(t)
                    stalls.append(False)
                    pos += 1
                    if pos >= n:
                        break
                lo, t_lo = pos, t
                end = n
                if guest is not None and tlbs is not None:  # combined translations
                    pos = tlb_guest_touch(
                        gflags,
                        gpfn,
                        vpages,
                        aliases,
                        k,
                        fbase,
                        spte,
                        idx_all,
                        gfns,
                        writes,
                        last_access,
                        base,
                        (env.now + t) // 1000,
                        lo,
                        n,
                        self.tlb_row,
                        tlbs.tags,
                        tlbs.sidx,
                        tlbs.used,
                        tlbs.dirty,
                        tlbs.st,
                    )
                    if pos < n and not guest_present(gflags[vpages[pos]], vpages[pos], fbase):
                        end = pos  # the guest's own page fault
                elif tlbs is None:
                    if guest is not None:  # the guest's walk first: up to its first page fault
                        end = guest_translate(gflags, gpfn, vpages, gfns, lo, n, fbase)
                        if k != 1:
                            idx_all[lo:end] = gfns[lo:end] * k + aliases[lo:end]
                    pos = ept_touch(
                        spte,
                        idx_all,
                        gfns,
                        writes,
                        last_access,
                        base,
                        (env.now + t) // 1000,
                        lo,
                        end,
                        written,
                    )
                else:
                    pos = tlb_touch(
                        spte,
                        idx_all,
                        gfns,
                        writes,
                        last_access,
                        base,
                        (env.now + t) // 1000,
                        lo,
                        n,
                        NO_ROWS,
                        self.tlb_row,
                        tlbs.tags,
                        tlbs.used,
                        tlbs.dirty,
                        tlbs.st,
                        written,
                    )
                if pos > lo:
                    if guest is not None:
                        if tlbs is None:  # (the combined walk set the guest bits it walked)
                            guest_mark(gflags, vpages, writes, lo, pos, fbase)
                        if guest.nr_file:
                            run = vpages[lo:pos]
                            guest.file_accessed(run[run >= fbase])
                    if self.on_access is not None:
                        self.on_access(gfns[lo:pos] + base)
                    stats.accesses += pos - lo
                    t += self._guest_time(pos - lo)
                    ends.append(t)
                    stalls.append(False)
                if pos >= n or t >= horizon or not inline:
                    break
                if guest is not None and pos == end:  # a guest page fault, if quick
                    if not self._guest_resolve(pos, t, vpages, writes):
                        break
                    continue
                if mem.nr_free <= mem.wmark.low:  # a first touch would wake kswapd: at its
                    break  # own time, not the step's start (then nothing else is due before)
                fc = self.fault_core
                if fc is not None and fc.swap_only(
                    base + gfns.item(pos), spte.item(idx_all.item(pos))
                ):
                    break  # a major fault: _resolve would find nothing to do
                if not self._resolve(pos, t, gfns, idx_all, writes):
                    break
                fast.took("vcpu_inline_faults")
            if t:
                self._step = (int(env.now), ends, stalls)
            if pos > lo:  # the last run of hits may outlast the horizon: it can be revoked
                self._idx, self._lo, self._hi = idx_all, lo, pos
                self._vidx = vpages if guest is not None else None
                self._t0, self._pending, self._cut = env.now, t_lo, -1
                end = pos
                g0, skew = self._guest_ns - (t - t_lo), 0  # guest time before the run
                while True:
                    try:
                        yield env.timeout(max(0, t - (env.now - self._t0)))
                        break
                    except simpy.Interrupt:  # a later access of the run lost its spte
                        q, self._cut = self._cut, -1
                        self._undo(q, end)
                        pos = end = self._hi = q
                        t = ends[-1] = self._offset(q)
                        if self.accrual is not None:  # the run's guest time as counted, which
                            d = self._guest_ns - g0 - (t - t_lo)  # rounds apart from its span
                            if d != skew:
                                self.accrual.credit(vm.index, int(self._t0) + t, d - skew)
                                skew = d
                        lost = int(env.now - self._t0) - t
                        if lost > 0:  # access q had begun: the time it ran is lost to its fault
                            stats.stall_ns += lost
                            t += lost
                            ends.append(t)
                            stalls.append(True)
                self._idx = self._vidx = None
                woken = False  # the others the event woke have run (this step yielded)
            elif t:
                yield env.timeout(t)
                woken = False
            if self._step is not None and self.accrual is not None:
                self.accrual.add_step(vm.index, *self._step)  # its segments are final now
            self._step = None
            if pos >= n or mm.dead:
                continue
            if guest is not None:
                if guest.dead or guest.idle_until > env.now:  # killed, or its job exited
                    continue
                vp = vpages.item(pos)
                if not guest_present(gflags[vp], vp, fbase):  # the guest's own page fault
                    if not self._guest_resolve(pos, 0, vpages, writes):
                        yield from self._guest_fault(pos, vpages, writes)
                        woken = True
                    continue
                g = gpfn.item(vp)
                gfns[pos] = g
                if k != 1:
                    idx_all[pos] = g * k + aliases.item(pos)
            if not needs_write_fault(spte.item(idx_all.item(pos)), writes.item(pos)):
                continue  # another vCPU mapped it meanwhile: the next step hits
            fc = self.fault_core
            if (
                fc is not None and fc.swap_only(base + gfns.item(pos), spte.item(idx_all.item(pos)))
            ) or not self._resolve(pos, 0, gfns, idx_all, writes):
                gfn = gfns.item(pos)
                alias, write = idx_all.item(pos) - gfn * k, writes.item(pos)
                if self._goes_async(gfn):
                    env.process(self._fault(gfn, alias, write, base, blocking=False))
                    skip = pos
                    continue
                yield from self._fault(gfn, alias, write, base)
                woken = True

    def _halt(self) -> ProcessGen:
        """The stream has ended: pay the time still owed (fault CPU, and exits, including those
        taken meanwhile), then halt out of guest mode (a halted vCPU takes no forced exits)."""
        while self.pending_ns and not self.vm.mm.dead:
            pending, self.pending_ns = self.pending_ns, 0
            self.vm.stats.stall_ns += pending
            self._step = (int(self.env.now), [pending], [True])
            yield self.env.timeout(pending)
            if self.accrual is not None:
                self.accrual.add_step(self.vm.index, *self._step)
            self._step = None
        self.in_guest = False
        if self.vm.mm.dead:  # killed first: it never halted
            return
        self.halted_ns = int(self.env.now)
        # triggered ahead of whatever else is due now (as simpy's own Initialize is), so a
        # driver that stops on it sees the world as the vCPU left it, and a vCPU it starts
        # again at once takes its next step before anything else happens, as it would have
        ev = self.halted
        ev._ok, ev._value = True, self.halted_ns
        self.env.schedule(ev, URGENT)

    def _resolve(
        self,
        pos: int,
        t: int,
        gfns: np.ndarray,
        idx_all: np.ndarray,
        writes: np.ndarray,
    ) -> bool:
        """The EPT violation of access ``pos``, ``t`` ns from now, if KVM or the host resolve it
        without waiting (fast page fault, first touch, swap-cache hit); its CPU cost is owed."""
        vm, k, base = self.vm, self.vm.mmu.k, self.vm.mm.pid_base
        gfn = gfns.item(pos)
        pid = base + gfn
        evicted = self.host.is_refault(pid)
        r = kvm_fault_nowait(
            vm.mmu,
            self.host,
            self.costs,
            pid=pid,
            gfn=gfn,
            alias=idx_all.item(pos) - gfn * k,
            write=writes.item(pos),
        )
        if r is None:
            return False
        kind, cpu_ns = r
        self.pending_ns += cpu_ns  # stall, counted when paid
        fault_done(
            vm,
            self.sink,
            t_ns=self.env.now + t,
            vcpu=self.index,
            gfn=gfn,
            pid=pid,
            kind=kind,
            refault=evicted,
            latency_ns=cpu_ns,
        )
        return True

    def _guest_resolve(self, pos: int, t: int, vpages: np.ndarray, writes: np.ndarray) -> bool:
        """The guest page fault of access ``pos``, ``t`` ns from now, if the guest kernel
        resolves it without waiting and without waking its kswapd (a first touch above its
        low watermark, a guest swap-cache hit); its CPU is owed as guest time."""
        g = self.guest
        assert g is not None
        if g.mem.nr_free <= g.mem.wmark.low:  # would wake the guest's kswapd: at its own time
            return False
        vp = vpages.item(pos)
        if vp >= g.nr_anon:  # a page-cache miss reads the disk
            return False
        refault = g.fault.is_refault(vp)
        hf = g.fault.fault_nowait(vp, bool(writes.item(pos)))
        if hf is None:
            return False
        self._guest_done(hf, pos, vp, writes, t, 0, refault)
        return True

    def _guest_fault(self, pos: int, vpages: np.ndarray, writes: np.ndarray) -> ProcessGen:
        """A guest page fault that waits (guest direct reclaim, a read from the guest's swap
        disk, and below it QEMU's host faults): the vCPU's task is blocked in the guest."""
        g = self.guest
        assert g is not None
        vp = vpages.item(pos)
        refault = vp < g.nr_anon and g.fault.is_refault(vp)
        t0 = int(self.env.now)
        self.in_guest = True  # the vCPU runs the guest kernel, which waits (no host stall)
        if vp >= g.nr_anon:
            hf = yield from g.file_fault(vp)
        else:
            hf = yield from g.fault.handle_mm_fault(vp, bool(writes.item(pos)))
        waited = int(self.env.now) - t0
        self.vm.stats.guest_wait_ns += waited
        if g.dead or self.vm.mm.dead:
            return
        self._guest_done(hf, pos, vp, writes, 0, waited, refault)

    def _guest_done(
        self,
        hf: HostFault,
        pos: int,
        vp: int,
        writes: np.ndarray,
        t: int,
        waited: int,
        refault: bool,
    ) -> None:
        """A guest page fault was resolved: a new anon page is zeroed by the guest (a write to
        its gfn, which the retried access makes), its CPU is owed, and it is logged at the
        guest's level (the counts are the guest's vmstat's)."""
        g = self.guest
        assert g is not None
        c = self.costs
        gfn = g.mem.pfn.item(vp)
        if vp >= g.nr_anon:  # a read() that missed the page cache (or met its read)
            cpu, kind = c.swapin_kernel_ns, "guest_cache_miss"
        elif hf == HostFault.FIRST_TOUCH:
            g.zeroed(gfn)
            writes[pos] = True  # clear_page
            cpu, kind = c.first_touch_ns, "guest_first_touch"
        elif hf == HostFault.MAJOR:
            cpu, kind = c.swapin_kernel_ns, "guest_major"
        else:
            cpu, kind = c.swapcache_fault_ns, "guest_minor"
        self.guest_owed_ns += cpu
        if self.sink is not None:
            self.sink.fault(
                int(self.env.now) + t, self.vm.index, self.index, gfn, kind, waited + cpu, -1
            )

    def accrued(self, now: int) -> tuple[int, int]:
        """(stall, compute) to add to the VM's counted stall and compute to have them as they
        stand at ``now``: a fault in progress has stalled since it began; a step in flight has
        counted all its stall and compute at its start, of which what lies after ``now`` is
        taken back."""
        stall = now - self._wait_since if self._wait_since >= 0 else 0
        compute = 0
        if self._step is not None:
            t0, ends, stalls = self._step
            x = now - t0
            start = 0
            for end, is_stall in zip(ends, stalls, strict=True):
                ahead = end - max(start, x)
                if ahead > 0:
                    if is_stall:
                        stall -= ahead
                    else:
                        compute -= ahead
                start = end
        return stall, compute

    def in_flight(self, now: int) -> list[Segment]:
        """The stretches not yet credited to the windows, up to ``now`` (what ``accrued``
        counts of them): the fault being waited for and the step in flight."""
        out: list[Segment] = []
        if self._wait_since >= 0:
            out.append((self._wait_since, now, True))
        if self._step is not None:
            t0, ends, stalls = self._step
            start = 0
            for end, is_stall in zip(ends, stalls, strict=True):
                out.append((t0 + start, min(t0 + end, now), is_stall))
                start = end
        return out

    def revoked(self) -> None:
        """KVM zapped or access-tracked sptes while this vCPU's step is in flight.

        A step's accesses are checked against the sptes when it begins but happen over its
        guest time: one that comes after this instant and uses a revoked spte would have taken
        an EPT violation. If there is one, the step is cut there (the remote TLB flush that
        comes with a zap is such an exit), so batching never turns a fault into a hit.
        """
        if self._idx is None or self._cut >= 0 or self.proc is None or not self.proc.is_alive:
            return  # no run in flight (a halted vCPU's process has ended: not interruptible)
        now = self._position(self.env.now - self._t0)
        if now >= self._hi:
            return
        if self.tlbs is not None and self._vidx is not None:  # combined translations
            g, t = self.guest, self.tlbs
            assert g is not None
            cut = tlb_guest_first_fault(
                g.mem.flags,
                self._vidx,
                g.nr_anon,
                self.vm.mmu.spte,
                self._idx,
                now,
                self._hi,
                self.tlb_row,
                t.tags,
                t.sidx,
                t.st,
            )
        elif self.tlbs is None:
            cut = first_fault(self.vm.mmu.spte, self._idx, now, self._hi)
            if self._vidx is not None:  # the guest unmapped a page the run goes on to use
                assert self.guest is not None
                g = self.guest
                cut = min(cut, guest_first_unmapped(g.mem.flags, self._vidx, now, cut, g.nr_anon))
        else:  # a cached translation over a present spte hides aging's access tracking
            t = self.tlbs
            cut = tlb_first_fault(
                self.vm.mmu.spte, self._idx, now, self._hi, self.tlb_row, t.tags, t.st
            )
        if cut < self._hi:
            self._cut = cut
            self.proc.interrupt()

    def _position(self, x: int) -> int:
        """First access of the step in flight not yet done ``x`` ns after it began."""
        done = max(0, x - self._pending) * self.rate // 1_000_000_000
        return min(self._lo + done, self._hi)

    def _offset(self, q: int) -> int:
        """Time offset in the step in flight at which access ``q`` starts."""
        return self._pending + -(-(q - self._lo) * 1_000_000_000 // self.rate)

    def _undo(self, q: int, end: int) -> None:
        """Take accesses ``[q, end)`` back out of the step (they run again in the next one)."""
        self.vm.stats.accesses -= end - q
        self._guest_time(q - end)  # hands their guest time back

    def _guest_time(self, n: int) -> int:
        """Guest time of the next ``n`` accesses (exact integer arithmetic, no drift); a negative
        ``n`` takes accesses back."""
        self._done += n
        t = self._done * 1_000_000_000 // self.rate
        dt = t - self._guest_ns
        self._guest_ns = t
        self.vm.stats.compute_ns += dt
        return dt

    def _goes_async(self, gfn: int) -> bool:
        """Whether KVM makes this waiting fault asynchronous (``kvm_arch_setup_async_pf``): a
        draw against ``async_pf`` (the share of faults taken in guest user mode with another
        task runnable), never for a page whose async fault is still outstanding (a repeat
        fault halts the vCPU until it is ready: ``KVM_REQ_APF_HALT``) nor beyond
        ``ASYNC_PF_PER_VCPU`` outstanding. Sources: arch/x86/kvm/mmu/mmu.c
        ``kvm_faultin_pfn`` -> ``kvm_arch_setup_async_pf``, virt/kvm/async_pf.c
        ``kvm_setup_async_pf``, arch/x86/kvm/x86.c ``kvm_can_do_async_pf``."""
        if self.async_pf <= 0.0 or self.apf_rng is None or gfn in self._apf_gfns:
            return False
        if len(self._apf_gfns) >= ASYNC_PF_PER_VCPU:  # kvm_setup_async_pf: the queue is full
            return False
        return bool(self.apf_rng.random() < self.async_pf)

    def _fault(
        self, gfn: int, alias: int, write: bool, base: int, blocking: bool = True
    ) -> ProcessGen:
        """Handle an EPT violation that must wait (I/O, reclaim); the access is then retried.
        The caller's :meth:`_resolve` has just found that it must.

        ``blocking`` False: an async page fault, in a process of its own. The vCPU took an
        exit to inject "page not present" and runs on (its step issues the access without
        waiting); KVM's worker faults the page in, then "page ready" is injected (another
        exit) and the access completes with the spte mapped. Its latency is logged; no vCPU
        time is stall but the two exits.

        A blocking plain major fault on a world built for it (``fault_core``) runs fused:
        ``swapin_begin``, the read's wait, then one compiled pass (sim/faultcore.py), the
        general ``kvm_page_fault`` taking over from the read wherever the pass declines."""
        env, vm, host = self.env, self.vm, self.host
        pid = base + gfn
        refault = host.is_refault(pid)
        t0 = env.now
        if blocking:
            self.in_guest = False
            self._wait_since = int(t0)
        else:
            self._apf_gfns.add(gfn)
            self.pending_ns += self.costs.ept_fault_ns
        r = None
        begun: tuple[int, int, int] | None = None
        fc = self.fault_core
        if fc is not None and blocking:  # a plain major fault fused (sim/faultcore.py)
            mmu_seq = vm.mmu.mmu_invalidate_seq
            plain = host.swapin_begin(pid)
            if plain is not None:
                yield plain[0]
                pfn, shadow = plain[1], plain[2]
                r = fc.swapin_done(
                    vm.mmu,
                    vm.mm,
                    pid=pid,
                    gfn=gfn,
                    alias=alias,
                    write=write,
                    pfn=pfn,
                    shadow=shadow,
                    mmu_seq=mmu_seq,
                )
                begun = (mmu_seq, pfn, shadow)  # if the pass hands it back: KVM goes on
        if r is None:
            r = yield from kvm_page_fault(
                vm.mmu,
                vm.mm,
                host,
                self.costs,
                pid=pid,
                gfn=gfn,
                alias=alias,
                write=write,
                tried=begun is None and host.retry_is_idle(pid),
                begun=begun,
            )
        kind, cpu_ns, _ = r
        waited = env.now - t0
        if blocking:
            self._wait_since = -1
            self.in_guest = True
            self.pending_ns += cpu_ns
            vm.stats.stall_ns += waited  # cpu_ns is counted when paid (pending_ns)
            if self.accrual is not None:
                self.accrual.add(vm.index, int(t0), int(env.now), True)
        else:
            self._apf_gfns.discard(gfn)
            vm.stats.async_pf += 1
            self.pending_ns += self.costs.vmexit_ns
            if self.mem.stamps and not vm.mm.dead:
                self.mem.last_access_us[pid] = env.now // 1000
        fault_done(
            vm,
            self.sink,
            t_ns=t0,
            vcpu=self.index,
            gfn=gfn,
            pid=pid,
            kind=kind,
            refault=refault,
            latency_ns=waited + cpu_ns,
            stalled=blocking,
        )

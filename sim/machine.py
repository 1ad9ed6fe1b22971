"""The host's mechanism, assembled: memory, swap, rmap, reclaim, the policy and every VM's KVM.

``Machine`` builds every data structure and synchronous mechanism of a scenario with no
process attached: guest pages laid out as global page ids, host memory, the swap device, one
QEMU mm per VM with KVM's MMU and notifier registered on it, the rmap, ``Vmscan`` and the
eviction policy. The watermark world (engine.py) puts kswapd, the page allocator and vCPU
processes on top; the demand world (demand.py) drives the same objects straight from a
reference string. Both share the invariant checks, the timeline sample and the summary.

Page size: a "page" is 4 KiB everywhere: frames, gfns, sptes, swap slots and every count in
the summary (THP-backed guest RAM is 512 of them per 2 MiB folio: host/huge_memory.py). MiB
sizes become pages through ``sc.host.pages``.

Randomness: every component draws from its own generator seeded from
``(seed, crc32(component name))``, so adding a VM does not change another VM's stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim import fast
from sim.config import Scenario, VmConfig
from sim.guest.tlb import GuestTlbs, TlbGeometry
from sim.guest.workloads import AccessStream
from sim.host.deferred_split import DEFERRED_SPLIT_EVENTS, DeferredSplit
from sim.host.huge_memory import (
    HPAGE_PMD_NR,
    THP_EVENTS,
    THP_MEMCG_EVENTS,
    THP_PMD,
    HugeMemory,
)
from sim.host.hugetlb import prealloc
from sim.host.khugepaged import KHUGEPAGED_EVENTS
from sim.host.ksm import UNIQUE, Ksm, draw_content
from sim.host.madvise import check_zapped, madvise_dontneed
from sim.host.memcontrol import (
    MEMCG_EVENTS,
    MEMCG_HIGH,
    MEMCG_LOW,
    MEMCG_MAX,
    MEMCG_OOM,
    MEMCG_SWAP_MAX,
    MemcgLimits,
    MemCgroups,
)
from sim.host.memory import (
    HAS_FRAME,
    PG_DIRTY,
    PG_LOCKED,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    HostMemory,
    Watermarks,
)
from sim.host.mm import Mm
from sim.host.rmap import Rmap
from sim.host.swap import SwapDevice
from sim.host.vmscan import Schedule, Vmscan
from sim.host.vmstat import RMAP_OFF_EVENTS, VmStat, new_vmstat
from sim.host.zpool import Zpool, compressed_sizes
from sim.host.zswap import ZSWAP_REJECT_COMPRESS_FAIL, Zswap
from sim.kvm import spte as sp
from sim.kvm.fault import FAULT_KINDS, GUEST_FAULT_KINDS
from sim.kvm.shortcut import TdpShortcut
from sim.kvm.vm import Vm
from sim.reclaim import make_policy
from sim.reclaim.two_list import FILE_EVENTS
from sim.record import Recorder
from sim.tails import FaultLatencies, tail


def rng_for(seed: int, scope: str) -> np.random.Generator:
    """The generator of one named component (``vm0.vcpu1``, ``swap``...)."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(zlib.crc32(scope.encode()),))
    )


def _guest_tlbs(vms: Sequence[Vm], cfgs: Sequence[VmConfig]) -> GuestTlbs | None:
    """Every vCPU's TLB (rows by VM, then vCPU), or None when no VM models one; each VM learns
    its rows (its remote TLB flushes empty them)."""
    if all(cfg.guest_tlb is None for cfg in cfgs):
        return None
    rows: list[TlbGeometry] = []
    for vm, cfg in zip(vms, cfgs, strict=True):
        g = cfg.guest_tlb
        if g is None:
            geo = TlbGeometry(0, 1, 0)
        else:  # a context switch every context_switch_us of guest time, in accesses
            every = round(g.context_switch_us * 1e-6 * cfg.access_rate_per_s)
            geo = TlbGeometry(g.entries, g.ways, max(every, 1) if g.context_switch_us else 0)
        vm.tlb_rows = range(len(rows), len(rows) + cfg.vcpus)
        rows += [geo] * cfg.vcpus
    tlbs = GuestTlbs(rows)
    for vm, cfg in zip(vms, cfgs, strict=True):
        if cfg.guest_tlb is not None:
            vm.tlbs = tlbs
    return tlbs


def vcpu_stream(sc: Scenario, name: str, cfg: VmConfig, vm_pages: int, vcpu: int) -> AccessStream:
    """The access stream of vCPU ``vcpu`` of VM ``name`` (seeded by the VM's name)."""
    return AccessStream(
        cfg.workload,
        vm_pages=vm_pages,
        working_set_pages=sc.host.pages(cfg.working_set_mib or cfg.workload_mib),
        access_rate_per_s=cfg.access_rate_per_s,
        write_ratio=cfg.write_ratio,
        vcpu=vcpu,
        nr_vcpus=cfg.vcpus,
        rng=rng_for(sc.seed, f"{name}.vcpu{vcpu}.stream"),
    )


class Machine:
    """Every mechanism object of a scenario, without processes.

    Args:
        sc: the scenario (policy, KVM switches, costs, swap, output).
        nr_frames: host frames.
        wmark: zone watermarks.
        vm_pages: (name, guest pages) per VM, in order.
        swap_slots: swap capacity in pages.
        now: current simulated time (ns), for the logs.
        schedule: ``schedule(t_ns, fn)``: run ``fn`` at ``t_ns`` (write-back completions).
        outdir: where event tables go (None: no tables).
    """

    def __init__(
        self,
        sc: Scenario,
        *,
        nr_frames: int,
        wmark: Watermarks,
        vm_pages: Sequence[tuple[str, int]],
        swap_slots: int,
        now: Callable[[], int],
        schedule: Schedule,
        outdir: Path | None,
    ) -> None:
        self.sc, self.nr_frames = sc, nr_frames
        self.costs = sc.costs
        sizes = np.array([n for _, n in vm_pages], dtype=np.int64)
        self.vm_base = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        nr_vm_pages = int(sizes.sum())
        # the host page cache: each file a pseudo-mm, pids after every VM's (sim/host/filemap.py)
        # then the guests' disk images opened with cache=writeback (sim/guest/vdisk.py)
        images = sc.disk_images()
        files = [sc.host.pages(hf.size_mib) for hf in sc.file_sections()]
        files += [n for _, n in images]
        self.file_pages = sum(files)
        self.file_base = (nr_vm_pages + np.concatenate(([0], np.cumsum(files)[:-1]))).astype(
            np.int64
        )[: len(files)]
        cfgs = [cfg for _, cfg in sc.vm_list()]
        # KSM's stable nodes: a pseudo-mm of pids after every VM's (sim/host/ksm.py); with
        # memcgs one per mergeable VM, whose nodes are made of that VM's pages (its charge)
        memcgs = any(cfg.memcg is not None for cfg in cfgs)
        key, pools = self._content(sc, vm_pages, cfgs, memcgs)
        nr_nodes = sum(n for _, n in pools)
        self.file_base += nr_nodes  # the page cache's pids come after the nodes'
        pool_base = (nr_vm_pages + np.concatenate(([0], np.cumsum([n for _, n in pools])))).astype(
            np.int64
        )[: len(pools)]
        self.mem = mem = HostMemory(
            nr_frames,
            nr_vm_pages + nr_nodes + self.file_pages,
            wmark,
            self.vm_base.tolist() + pool_base.tolist() + self.file_base.tolist(),
            stamps=outdir is not None and sc.output.evictions,  # the eviction log reads them
            readahead=sc.swap.page_cluster > 0,
            file_base=nr_vm_pages + nr_nodes,
            ksm=nr_nodes > 0,
        )
        self.memcg_limits: MemcgLimits | None = None  # per-memcg lruvecs only when set
        nr_memcgs = len(vm_pages)  # vmstat's breakdowns: the VMs', and the root memcg's
        if memcgs:
            names = [name for name, _ in vm_pages]
            self.memcg_limits = MemcgLimits.from_configs(
                [cfg.memcg for cfg in cfgs],
                sc.host.pages(1024) / 1024,
                [vm for vm, _ in pools]
                + [None if hf.memcg is None else names.index(hf.memcg) for hf in sc.file_sections()]
                + [None if cfgs[i].memcg is None else i for i, _ in images],
            )
            nr_memcgs = self.memcg_limits.nr_memcgs
        self.memcg: MemCgroups | None = None  # the process side, made by the watermark world
        extra = MEMCG_EVENTS if self.memcg_limits is not None else ()
        if sc.host.rmap != "anon_vma" or not sc.kvm.shadow_rmap:
            extra += RMAP_OFF_EVENTS
        thp_on = sc.host.thp is not None and sc.host.thp.on
        # partial unmaps of THPs come only from a balloon's discards (host/deferred_split.py)
        split_queue = thp_on and any(c.balloon is not None and c.balloon.enabled for c in cfgs)
        if thp_on:
            extra += THP_EVENTS
            if split_queue:
                extra += DEFERRED_SPLIT_EVENTS
            if self.memcg_limits is not None:
                extra += THP_MEMCG_EVENTS
            assert sc.host.thp is not None
            if sc.host.thp.khugepaged.enabled:
                extra += KHUGEPAGED_EVENTS
        no_writeback = None if self.memcg_limits is None else self.memcg_limits.no_writeback()
        if no_writeback is not None and sc.swap.zswap.enabled:
            extra += (ZSWAP_REJECT_COMPRESS_FAIL,)
        self.vmstat = vmstat = new_vmstat(
            nr_memcgs, extra + (FILE_EVENTS if self.file_pages else ())
        )
        self.swap = SwapDevice(
            sc.swap,
            swap_slots,
            rng_for(sc.seed, "swap"),
            vmstat=vmstat,
            synchronous=sc.reclaim.trigger == "demand",
        )
        if sc.swap.rotational or thp_on:  # cluster readahead reads by slot, THPs by cluster
            self.swap.track_slots(nr_vm_pages + nr_nodes)  # a KSM folio holds a slot too
        if sc.swap.device == "zram":
            self.swap.zpool = self._zpool(sc, vm_pages, nr_nodes=nr_nodes)
        elif sc.swap.zswap.enabled:
            pool = self.swap.zpool = self._zpool(sc, vm_pages, track_lru=True, nr_nodes=nr_nodes)
            self.swap.zswap = Zswap(sc.swap.zswap, pool, nr_frames, vmstat)
            self.swap.zswap.no_writeback = no_writeback
        self.mms = mms = [
            Mm(i, name, int(self.vm_base[i]), int(sizes[i])) for i, (name, _) in enumerate(vm_pages)
        ]
        for mm in mms:
            mm.notifiers.vmstat, mm.notifiers.mm = vmstat, mm.index
        self.policy = policy = make_policy(
            sc.reclaim,
            nr_frames=nr_frames,
            vmstat=self.vmstat,
            rng=rng_for(sc.seed, "policy"),
            memcg=(mem, self.memcg_limits, self._swap_usage) if self.memcg_limits else None,
            file=self.file_pages > 0,
        )
        self.recorder: Recorder | None = None
        # the faults log's kinds: KVM's, and the guest kernel's own when a VM models one
        guests = any(cfg.guest is not None for cfg in cfgs)
        self.fault_kinds = FAULT_KINDS + (GUEST_FAULT_KINDS if guests else ())
        if outdir is not None:
            self.recorder = Recorder(
                outdir,
                [n for n, _ in vm_pages],
                self.vm_base,
                policy.name,
                mem,
                sc.output.model_dump(),
                sc.output.chunk_rows,
                rng_seed=int(rng_for(sc.seed, "recorder").integers(2**63)),
                memcg=self.memcg_limits is not None,
                files=self.file_pages > 0,
                kinds=self.fault_kinds,
                guests=guests,
            )
        self.ksm: Ksm | None = None
        if sc.host.ksm is not None:
            mergeable = [
                mm
                for mm, cfg in zip(mms, cfgs, strict=True)
                if cfg.content and cfg.content.mergeable
            ]
            self.ksm = Ksm(
                sc.host.ksm,
                mem,
                mms,
                key,
                mergeable,
                nr_vm_pages,
                nr_nodes,
                tlb_flush_ns=sc.costs.tlb_flush_exit_ns,
                pool_mm=[vm for vm, _ in pools] if memcgs else (),
                memcg_of=self.memcg_limits.owner_memcg if self.memcg_limits else (),
            )
            self.ksm.policy, self.ksm.swap = policy, self.swap
        self.rmap = Rmap(mem, mms, vmstat, anon_vma=sc.host.rmap == "anon_vma")
        self.rmap.ksm = self.ksm
        self.vmscan = Vmscan(mem, self.swap, self.rmap, mms, now, schedule, vmstat, self.recorder)
        self.vmscan.policy = policy
        self.vmscan.ksm = self.ksm
        # THP-backed guest RAM at 4 KiB granularity (host.thp; host/huge_memory.py)
        self.thp: HugeMemory | None = None
        if thp_on:
            assert sc.host.thp is not None
            self.thp = HugeMemory(sc.host.thp, mem, nr_vm_pages, vmstat)
            self.rmap.thp = self.vmscan.thp = self.thp
            policy.folios = self.thp  # type: ignore[attr-defined]
        self.deferred: DeferredSplit | None = None  # the deferred split queues, when needed
        if self.thp is not None and split_queue:
            lim = self.memcg_limits
            self.deferred = DeferredSplit(
                self.thp,
                mem,
                policy,
                self.swap,
                self.rmap,
                vmstat,
                lim.owner_memcg if lim is not None else [0] * len(mms),
                lim.nr_memcgs if lim is not None else 1,
                None,
            )
            self.vmscan.deferred = self.deferred
        if self.ksm is not None and self.thp is not None:
            # ksmd splits a THP whose subpage it merges (host/ksm.py) with the split of
            # deferred_split.py, whose queues stay empty (KSM runs with no balloon)
            self.ksm.thp, self.ksm.rmap = self.thp, self.rmap
            self.ksm.deferred = DeferredSplit(
                self.thp, mem, policy, self.swap, self.rmap, vmstat, [0] * len(mms), 1, None
            )
        self.k = k = sc.kvm.shadow_sptes_per_gfn if sc.kvm.mmu == "shadow" else 1
        self.spte = np.zeros(int(sizes.sum()) * k, dtype=np.uint8)  # every VM's sptes
        self.vms: list[Vm] = []
        for i, (name, _) in enumerate(vm_pages):
            b, n = int(self.vm_base[i]), int(sizes[i])
            self.vms.append(
                Vm(
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
                    spte=self.spte[b * k : (b + n) * k],
                    vmstat=vmstat,
                    shadow_rmap=sc.kvm.mmu != "shadow" or sc.kvm.shadow_rmap,
                )
            )
        self.tlbs = _guest_tlbs(self.vms, cfgs)
        # the notifier chain fused for TDP MMUs (same effects; the chain stays the general path)
        tdp = (
            k == 1
            and fast.enabled("tdp_shortcut")
            and self.ksm is None  # one mapping a frame
            and sc.host.rmap == "anon_vma"  # without an rmap each walk scans: the chain counts it
            and not (sc.kvm.mmu == "shadow" and not sc.kvm.shadow_rmap)
        )
        self.rmap.shortcut = TdpShortcut(mem, self.vms, self.spte) if tdp else None
        # hugetlbfs-backed VMs: their frames leave the buddy allocator now (host/hugetlb.py)
        self.hugetlb = prealloc(mem, mms, cfgs)
        if self.hugetlb is not None:
            for i in self.hugetlb.vms:  # KVM maps it all at the huge level (host_pfn_mapping_level)
                self.vms[i].mmu.map_sptes(np.arange(mms[i].nr_pages, dtype=np.int64))
            self.vmscan.skip_vma = self.hugetlb.mask
            if self.recorder is not None:
                self.recorder.unevictable = self.hugetlb.mask
            if self.memcg_limits is not None:
                self.memcg_limits.set_hugetlb(self.hugetlb.per_vm(len(self.vms)))
        self.oom_kills: list[tuple[int, str]] = []
        self.warmup_ns = round(sc.warmup_s * 1e9)
        self.at_warmup: dict[str, Any] | None = None  # the counts at the warm-up's end

    @staticmethod
    def _content(
        sc: Scenario,
        vm_pages: Sequence[tuple[str, int]],
        cfgs: Sequence[VmConfig],
        memcgs: bool = False,
    ) -> tuple[NDArray[np.int64], list[tuple[int, int]]]:
        """With KSM on, every guest page's content key (host/ksm.py ``draw_content``; UNIQUE
        for VMs without content) and the stable nodes to provide for, as pools of (VM, nodes):
        a live node has a sharer (or I/O in flight after its last one left), and a page shares
        one node at a time, so as many nodes as mergeable pages (not unique) are enough for
        any run, in one pool (VM 0's, charged to nobody). With ``memcgs`` a pool per mergeable
        VM: its nodes are made of its own pages, so it needs at most its pages not unique.
        (Half would do if a page never merged again after leaving a node, but a page read back
        from swap, or whose node's write-out outlived its sharers, can.) Without KSM:
        nothing."""
        if sc.host.ksm is None:
            return np.zeros(0, dtype=np.int64), []
        images: dict[str, int] = {}  # image -> its first key's offset
        offset = 0
        keys = []
        mergeable = [0] * len(vm_pages)
        for i, ((name, n), cfg) in enumerate(zip(vm_pages, cfgs, strict=True)):
            c = cfg.content
            if c is None:
                keys.append(np.full(n, UNIQUE, dtype=np.int64))
                continue
            blocks = sc.host.pages(c.image_mib)
            if c.image not in images:
                images[c.image] = offset
                offset += blocks
            key = draw_content(c, n, images[c.image], blocks, rng_for(sc.seed, f"{name}.content"))
            keys.append(key)
            if c.mergeable:
                mergeable[i] = int(np.count_nonzero(key != UNIQUE))
        pools = [(i, m) for i, m in enumerate(mergeable) if m] if memcgs else []
        return np.concatenate(keys), pools or [(0, max(1, sum(mergeable)))]

    def _zpool(
        self,
        sc: Scenario,
        vm_pages: Sequence[tuple[str, int]],
        *,
        track_lru: bool = False,
        nr_nodes: int = 0,
    ) -> Zpool:
        """The compressed pool, with every page's compressed size drawn from its VM's ratio;
        KSM's ``nr_nodes`` stable nodes take the size of the page each is made of (host/ksm.py)."""
        cfgs = dict(sc.vm_list())
        sizes = [
            compressed_sizes(
                n,
                cfgs[name].compress_ratio,
                cfgs[name].compress_ratio_cv,
                rng_for(sc.seed, f"{name}.compress"),
            )
            for name, n in vm_pages
        ]
        if nr_nodes:
            sizes.append(np.zeros(nr_nodes, dtype=sizes[0].dtype))
        return Zpool(self.mem, np.concatenate(sizes), track_lru=track_lru)

    # -- observation -------------------------------------------------------------------------
    def check(self) -> None:
        """Assert every cross-module invariant (tests call this; O(pages))."""
        mem = self.mem
        mem.check()
        self.rmap.check()
        if self.ksm is not None:
            self.ksm.check()
        check_zapped(self.mms, mem)
        present = (mem.flags & PTE_PRESENT) != 0
        for vm in self.vms:
            b, n = vm.mm.pid_base, vm.mm.nr_pages
            vm.mmu.check(present[b : b + n])
        # On the LRU: every page with a frame (mapped, or unmapped in the swap cache with its
        # write-out in flight or done) except one being read in.
        f = mem.flags
        resident = ((f & HAS_FRAME) != 0) & ((f & PG_LOCKED) == 0)
        if self.thp is not None:  # a THP's tail pages are on no list: its head stands for it
            n = self.thp.nr_vm_pages
            spte = self.spte[:n] if self.k == 1 else np.zeros(n, dtype=np.bool_)
            tails = self.thp.check(sp.is_present(spte))
            if self.deferred is not None:
                self.deferred.check()
            resident[:n] &= ~tails
        if self.hugetlb is not None:  # a hugetlb folio is on no list
            self.hugetlb.check(mem, sp.is_present(self.spte[: len(self.hugetlb.mask)]))
            resident[: len(self.hugetlb.mask)] &= ~self.hugetlb.mask
        on_lru = np.zeros(self.nr_frames, dtype=np.bool_)
        on_lru[mem.pfn[resident]] = True
        self.policy.check(on_lru)
        used = self.swap.nr_slots - self.swap.nr_free_slots
        assert 0 <= used <= self.swap.nr_slots, "swap slots over- or under-used"
        assert used == int(((mem.flags & PG_SWAP) != 0).sum()), "swap slot accounting"
        self.swap.check_slots(np.flatnonzero((mem.flags[: mem.file_base] & PG_SWAP) != 0))
        zpool = self.swap.zpool
        if zpool is not None:
            zpool.check()
            stored = mem.flags[: mem.file_base][zpool.stored]  # guest pages only
            assert (stored & PG_SWAP).all(), "a compressed page without a slot"
        else:
            assert mem.nr_pool == 0, "pool frames without a pool"
        if self.memcg is not None:
            self.memcg.check()
        self.vmstat.check()  # with pgscan/pgsteal by type against the reclaimers' counts

    # -- the world's requests ----------------------------------------------------------------
    def discard(self, vm: int, gfns: NDArray[np.integer]) -> int:
        """VM ``vm`` gave guest pages ``gfns`` back (virtio-balloon inflation, free page
        reporting): QEMU's ``madvise(MADV_DONTNEED)`` on them (sim/host/madvise.py), counted
        in the VM's ``pages_discarded``. Returns the frames freed now; those of folios with
        I/O in flight are freed when it ends."""
        host = getattr(self, "host_fault", None)  # the worlds' fault handler
        work = madvise_dontneed(
            self.mms[vm],
            gfns,
            self.mem,
            self.swap,
            self.policy,
            sink=self.recorder,
            faulting=None if host is None else host.fault_in_progress,
            thp=self.deferred,
        )
        self.vms[vm].stats.pages_discarded += work.nr_discarded
        return work.nr_freed

    def _swap_usage(self, memcg: int) -> int:
        """``memory.swap.current`` of a memcg, in pages."""
        return 0 if self.memcg is None else int(self.memcg.swap_usage[memcg])

    def kswapd_busy_ns(self) -> int:
        """Time kswapd spent reclaiming (none without kswapd)."""
        return 0

    def notifier_calls(self) -> int:
        """Notifier callbacks made so far, all ops (from vmstat)."""
        return sum(self.vmstat.notifier_calls().values())

    def sample(self, t_ns: int) -> None:
        """Append one timeline sample (one row per VM); counters are read from vmstat."""
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
            self.kswapd_busy_ns(),
            vs[VmStat.PGSCAN_KSWAPD],
            vs[VmStat.PGSTEAL_KSWAPD],
            vs[VmStat.PGSCAN_DIRECT],
            vs[VmStat.PGSTEAL_DIRECT],
            vs[VmStat.ALLOCSTALL],
            vs[VmStat.PSWPIN],
            vs[VmStat.PSWPOUT],
            self.notifier_calls(),
            vs[VmStat.TLB_FLUSHES],
            self.swap.nr_slots - self.swap.nr_free_slots,
        ]
        if self.file_pages:
            host += [lru.get("inactive_file", 0), lru.get("active_file", 0), *self._file_dirty()]
        per_vm: list[list[int | None]] = []
        for vm in self.vms:
            st = vm.stats
            per_vm.append(
                [
                    int(mem.nr_resident[vm.index]),
                    int(mem.nr_swapped[vm.index]),
                    st.accesses,
                    *(st.faults[k] for k in FAULT_KINDS),
                    st.refaults,
                    self.stall_ns(vm, t_ns),
                    st.tlb_flush_exits,
                ]
            )
            if self.memcg_limits is not None:
                per_vm[-1] += self._memcg_sample(vm.index)
        self.recorder.sample(t_ns, per_vm, host)

    def _memcg_sample(self, i: int) -> list[int | None]:
        """Memcg ``i``'s timeline columns (``TIMELINE_MEMCG_COLUMNS``): ``memory.current`` and
        ``memory.swap.current`` as ``MemCgroups`` reads them, its vmstat breakdown under
        memory.stat's and memory.events' names, and its own lruvec's anon lists (with a page
        cache also the file pages charged to it and its lruvec's file lists). A counter
        the host counts without a per-VM breakdown is null (unknown share), not 0."""
        vs = self.vmstat
        pm = vs.per_mm[i]
        lv = self.policy.lruvecs[i].lru_sizes()  # type: ignore[attr-defined]
        refault = VmStat.WORKINGSET_REFAULT
        unknown = refault not in vs.broken_down and vs[refault] > 0
        assert self.memcg_limits is not None
        current = self.memcg_limits.usage(self.mem.nr_resident, i)  # frames and VMM overhead
        files = (
            (
                current - int(self.mem.nr_resident[i]) - self.memcg_limits.overhead[i],
                lv.get("inactive_file", 0),
                lv.get("active_file", 0),
            )
            if self.file_pages
            else ()
        )
        return [
            current,
            self._swap_usage(i),
            pm[VmStat.PGSCAN_KSWAPD] + pm[VmStat.PGSCAN_DIRECT],
            pm[VmStat.PGSTEAL_KSWAPD] + pm[VmStat.PGSTEAL_DIRECT],
            None if unknown else pm[refault],
            pm[MEMCG_LOW],
            pm[MEMCG_HIGH],
            pm[MEMCG_MAX],
            pm[MEMCG_OOM],
            pm[VmStat.OOM_KILL],
            pm[MEMCG_SWAP_MAX],
            lv.get("inactive", 0),
            lv.get("active", 0),
            *files,
        ]

    def _file_dirty(self) -> tuple[int, int]:
        """Page-cache folios dirty and under write-back (``nr_dirty``, the file part of
        ``nr_writeback``), read off their page flags."""
        f = self.mem.flags[self.mem.file_base :]
        return int(np.count_nonzero(f & PG_DIRTY)), int(np.count_nonzero(f & PG_WRITEBACK))

    def stall_ns(self, vm: Vm, t_ns: int) -> int:
        """The VM's vCPU stall up to ``t_ns`` (time-less worlds: what was counted)."""
        return vm.stats.stall_ns

    def compute_ns(self, vm: Vm, t_ns: int) -> int:
        """The VM's vCPU time running guest code up to ``t_ns``."""
        return vm.stats.compute_ns

    def snapshot(self, t_ns: int) -> dict[str, Any]:
        """The counts as they stand at ``t_ns`` (now): what the summary subtracts to leave the
        warm-up out."""
        vs = self.vmstat
        return {
            "vms": [
                {
                    "accesses": vm.stats.accesses,
                    "faults": dict(vm.stats.faults),
                    "refaults": vm.stats.refaults,
                    "stall_ns": self.stall_ns(vm, t_ns),
                    "compute_ns": self.compute_ns(vm, t_ns),
                    "tlb_flush_exits": vm.stats.tlb_flush_exits,
                    "pf_fast": vm.mmu.pf_fast,
                    "pf_retry": vm.mmu.pf_retry,
                    **_guest_counts(vm),
                }
                for vm in self.vms
            ],
            "vmstat": dict(vs),
            "per_mm": [dict(c) for c in vs.per_mm],
        }

    def tails(self, t_ns: int) -> tuple[list[np.ndarray], FaultLatencies | None]:
        """Each VM's stall fraction per window after the warm-up, and the fault latencies
        (time-less worlds: none)."""
        return [np.empty(0) for _ in self.vms], None

    def summary(self, wall_s: float, sim_time_ns: int) -> dict[str, Any]:
        """The run's totals (``summary.json``): every count is read from vmstat, whose per-VM
        breakdowns must add up (checked here); the rest are per-VM guest-side figures.

        Guest-side figures (faults, refaults, stall, accesses, KVM's fault stats) and the tails
        count from the warm-up's end; ``host`` keeps vmstat whole-run beside
        ``vmstat_after_warmup``."""
        sc, mem, vs = self.sc, self.mem, self.vmstat
        vs.check()
        warm = self.warmup_ns
        if warm:
            assert self.at_warmup is not None, "the run did not reach the end of its warm-up"
            base = self.at_warmup
        else:
            base = {"vms": [None] * len(self.vms), "vmstat": {}, "per_mm": [{}] * len(self.vms)}
        dur_s = max(sim_time_ns - warm, 1) / 1e9
        fracs, lat = self.tails(sim_time_ns)
        vms = []
        cfgs = [cfg for _, cfg in sc.vm_list()]
        for vm, b in zip(self.vms, base["vms"], strict=True):
            st = vm.stats
            stall, compute = self.stall_ns(vm, sim_time_ns), self.compute_ns(vm, sim_time_ns)
            row = {
                "accesses": st.accesses,
                "faults": dict(st.faults),
                "refaults": st.refaults,
                "stall_ns": stall,
                "compute_ns": compute,
                "tlb_flush_exits": st.tlb_flush_exits,
                "pf_fast": vm.mmu.pf_fast,
                "pf_retry": vm.mmu.pf_retry,
                **_guest_counts(vm),
            }
            if b is not None:
                row = {k: _minus(v, b[k]) for k, v in row.items()}
            stall, compute = row["stall_ns"], row["compute_ns"]
            run_ns = compute + stall
            vms.append(
                {
                    "name": vm.name,
                    "accesses": row["accesses"],
                    "faults": row["faults"],
                    "refaults": row["refaults"],
                    "stall_ns": stall,
                    "compute_ns": compute,
                    "stall_fraction": stall / run_ns if run_ns else 0.0,
                    "slowdown": run_ns / compute if compute else None,
                    "major_faults_per_s": row["faults"]["major"] / dur_s,
                    "stall_window": {**tail(fracs[vm.index]), "windows": len(fracs[vm.index])},
                    "fault_latency_ns": _latencies(lat, [vm.index]),
                    "memory_pages": vm.mm.nr_pages,
                    "resident_pages": int(mem.nr_resident[vm.index]),
                    "swapped_pages": int(mem.nr_swapped[vm.index]),
                    "vcpus": vm.nr_vcpus,
                    "tlb_flush_exits": row["tlb_flush_exits"],
                    "pf_fast": row["pf_fast"],
                    "pf_retry": row["pf_retry"],
                    "oom_killed": vm.mm.dead,
                    "finished_s": _finished_s(vm),
                    "vmstat": vs.mm_stat(vm.index),
                }
            )
            cfg = cfgs[vm.index]
            if cfg.memory_backing != "anonymous":
                vms[-1]["memory_backing"] = cfg.memory_backing
                vms[-1]["hugepage_size_kib"] = cfg.hugepage_size_kib
            for key in ("guest_tlb", "async_pf", "guest", "balloon"):
                if key in row:
                    vms[-1][key] = row[key]
            if vm.guest is not None:  # levels at the end, not counts since the warm-up
                vms[-1]["guest_memory"] = vm.guest.memory()
            if self.memcg is not None and self.sc.vm_list()[vm.index][1].memcg is not None:
                mm_then = base["per_mm"][vm.index]
                vms[-1]["memcg"] = {
                    **self.memcg.stat(vm.index),
                    # its breakdown of vmstat from the warm-up's end (the flat rows read it)
                    "vmstat_after_warmup": {
                        k: v - mm_then.get(k, 0) for k, v in vs.mm_stat(vm.index).items()
                    },
                }
        kvm_rmap = vs[VmStat.SPTES_WALKED] if sc.kvm.mmu != "tdp" else 0
        swap = self.swap
        host = {
            "page_size_kib": sc.host.page_size_kib,  # pages in this summary are this size
            "memory_pages": self.nr_frames,
            "trigger": sc.reclaim.trigger,
            "wmark": {
                "min": mem.wmark.min,
                "low": mem.wmark.low,
                "high": mem.wmark.high,
                "min_free_kbytes": mem.wmark.min_free_kbytes,
            },
            # every reclaim (kswapd, direct, memcg limit reclaim) by type, as /proc/vmstat;
            # the kswapd_/direct_ figures are global reclaim only, as pgscan_kswapd/_direct
            "scanned": vs[VmStat.PGSCAN_ANON] + vs[VmStat.PGSCAN_FILE],
            "reclaimed": vs[VmStat.PGSTEAL_ANON] + vs[VmStat.PGSTEAL_FILE],
            "kswapd_scanned": vs[VmStat.PGSCAN_KSWAPD],
            "kswapd_reclaimed": vs[VmStat.PGSTEAL_KSWAPD],
            "kswapd_busy_ns": self.kswapd_busy_ns(),
            "kswapd_wakeups": vs[VmStat.KSWAPD_WAKEUPS],
            "direct_reclaims": vs[VmStat.ALLOCSTALL],
            "direct_scanned": vs[VmStat.PGSCAN_DIRECT],
            "direct_reclaimed": vs[VmStat.PGSTEAL_DIRECT],
            "pswpin": vs[VmStat.PSWPIN],
            "pswpout": vs[VmStat.PSWPOUT],
            "tlb_flushes": vs[VmStat.TLB_FLUSHES],
            "rmap_walked": vs[VmStat.RMAP_WALKED] + kvm_rmap,
            "host_rmap_walked": vs[VmStat.RMAP_WALKED],
            "kvm_sptes_walked": vs[VmStat.SPTES_WALKED],
            "notifier": vs.notifier_calls(),
            "free_pages_end": mem.nr_free,
            "writeback_pages_end": mem.nr_writeback,
            "swap": {
                "slots": swap.nr_slots,
                "used_end": swap.nr_slots - swap.nr_free_slots,
                "full_failures": vs[VmStat.SWAP_FULL],
                "exhausted": vs[VmStat.SWAP_FULL] > 0,
                "device_busy_ns": swap.busy_ns,
                "queue_wait_ns": swap.wait_ns,
                "device": sc.swap.device,
                "zswap": sc.swap.zswap.enabled,
                "pool_frames_end": mem.nr_pool,
                "pool_pages_end": swap.zpool.nr_stored if swap.zpool is not None else 0,
                "pool_incompressible_end": (
                    swap.zpool.nr_incompressible() if swap.zpool is not None else 0
                ),
            },
            "oom_kills": [{"t_ns": t, "vm": n} for t, n in self.oom_kills],
            "vmstat": dict(sorted(vs.items())),
            "vmstat_after_warmup": {k: v - base["vmstat"].get(k, 0) for k, v in sorted(vs.items())},
            "fault_latency_ns": _latencies(lat, [vm.index for vm in self.vms]),
            "window_ms": sc.metrics.window_ms,
        }
        lim = self.memcg_limits
        if self.memcg is not None and lim is not None and lim.nr_memcgs > lim.root:
            # page cache charged to no VM: the root memcg's memory.stat and file sizes
            host["root_memcg"] = {
                "current_pages": self.memcg.usage(lim.root),
                **self.memcg.file_stat(lim.root),
                "vmstat": vs.mm_stat(lim.root),
            }
        mom = getattr(self, "mom", None)
        if mom is not None:  # the balloon manager's evaluations: what it set, for which VM
            names = [self.vms[i].name for i in self.mom_vms]
            host["mom"] = {
                "evaluations": mom.evaluations,
                "targets_set": mom.targets_set,
                "records": [
                    {
                        "t_ns": t,
                        "vm": names[k],
                        "balloon_cur": cur,
                        "target": tgt,
                        "num_pages": num,
                        "held": held,
                    }
                    for t, k, cur, tgt, num, held in mom.records
                ],
            }
        if self.hugetlb is not None:  # /proc/meminfo's HugePages_Total and _Free
            host["hugetlb"] = self.hugetlb.summary()
        if self.deferred is not None:  # split_queue_len of every deferred split queue
            host["thp_deferred_split_queue"] = self.deferred.queue_len()
        if self.ksm is not None:  # /sys/kernel/mm/ksm and cow_ksm (counted in host/ksm.py)
            host["ksm"] = self.ksm.stats.summary(
                self.ksm.frames(), self.memcg is not None, self.thp is not None
            )
            if self.thp is not None:  # what KSM left of huge backing: PMDs and 2 MiB sptes
                pmd = (self.thp.block & THP_PMD) != 0
                n = self.thp.nr_vm_pages
                sptes = sp.is_present(self.spte[:n]).reshape(-1, HPAGE_PMD_NR).all(axis=1)
                host["ksm"]["thp_pmd_mapped_end"] = int(np.count_nonzero(pmd))
                host["ksm"]["huge_sptes_end"] = int(np.count_nonzero(pmd & sptes))
        if any(hf.write_ratio > 0 for hf in sc.file_sections()):
            # each writer's balance_dirty_pages sleeps: its own time, no vmstat counter
            host["dirty_throttle"] = [
                {"pause_ns": r.dirty_pause_at(int(sim_time_ns)), "pauses": r.dirty_pauses}
                for r in getattr(self, "file_readers", [])
            ]
        return {
            "name": sc.name,
            "seed": sc.seed,
            "config_hash": sc.config_hash(),
            "policy": self.policy.name,
            "vms": vms,
            "host": host,
            "sim_time_ns": int(sim_time_ns),
            "warmup_ns": warm,  # guest-side figures and tails count from here
            "wall_s": round(wall_s, 3),
        }


def _finished_s(vm: Vm) -> float | None:
    """When the VM's last vCPU halted at the end of its trace (s), or None if one never did."""
    ends = [v.halted_ns for v in vm.vcpus]
    if not ends or None in ends:
        return None
    return max(e for e in ends if e is not None) / 1e9


def _guest_counts(vm: Vm) -> dict[str, Any]:
    """The VM's TLB hits, fills and flushes (guest/tlb.py), if it models its vCPUs' TLBs, and
    its async page faults, if it may take any."""
    out: dict[str, Any] = {}
    if vm.tlbs is not None:
        out["guest_tlb"] = vm.tlbs.totals(vm.tlb_rows, guest=vm.guest is not None)
    if any(v.async_pf > 0 for v in vm.vcpus):
        out["async_pf"] = vm.stats.async_pf
    if vm.guest is not None:
        out["guest"] = {**vm.guest.counts(), "wait_ns": vm.stats.guest_wait_ns}
    if vm.balloon is not None:  # its counts (the pages it holds are guest_memory's balloon)
        out["balloon"] = {k: v for k, v in vm.balloon.counters().items() if k != "balloon_pages"}
    return out


def _minus(now: Any, then: Any) -> Any:
    """``now - then`` for a count or a dict of counts."""
    if isinstance(now, dict):
        return {k: v - then.get(k, 0) for k, v in now.items()}
    return now - then


def _latencies(lat: FaultLatencies | None, vms: list[int]) -> dict[str, Any]:
    """The fault-latency tails (ns) of ``vms`` by kind; None where the world keeps none."""
    if lat is None:
        return {k: tail([]) for k in FAULT_KINDS}
    return lat.summary(vms)

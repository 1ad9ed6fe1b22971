"""Steady-state starts (``vms[].prefault``): guest memory placed as a long run leaves it.

Why
    A cold start spends its first seconds faulting every guest page in (a first-touch storm),
    then overcommitted hosts swap the cold part out: the measured run mixes that transient with
    the steady state one wants to measure. With ``prefault`` the world starts where such a run
    settles, without simulating it event by event.

Fill
    1. Which pages, and how hot: each prefaulted VM's workload is sampled on streams of its
       own (``<vm>.vcpu<j>.prefault``: the run's streams are untouched), ``PASSES`` accesses
       per working-set page over the VM (at most ``MAX_SAMPLE``), split over its vCPUs: a
       long run's worth, whatever the measured run's length; pages the sample never touches
       stay untouched (a long run's rarest pages, and pages outside the workload). A page's
       heat is its sampled accesses per second of guest time (ties: touched last is hotter),
       comparable across VMs with different rates.
    2. What fits: pages in order of heat get frames while free memory stays above the high
       watermark (``pgdat_balanced``: kswapd has nothing to do at time 0). The rest, coldest
       last, take swap slots while there are free ones, holding the shadow entries the policy's
       ``workingset_eviction`` gives (taken on frames that are still free: the folios were
       evicted before time 0 and have no state to carry); without a slot they stay untouched.
    3. How: in one batch, the state the first-touch path leaves (``do_anonymous_page``: a
       dirty, young anon page; KVM maps a present, accessed spte, ``map_sptes``), then, coldest
       first so the hottest are the most recently used, the policy hooks that path calls
       (``folio_add_lru``, ``folio_mark_accessed`` for GUP's FOLL_TOUCH and for
       ``kvm_release_faultin_page``). With the classic two-list policy every page therefore
       starts active, as after a first touch, and kswapd's first pass deactivates the cold
       end; MGLRU starts them in its youngest generation.

Counting
    Nothing of the fill is counted: not in vmstat (``pgfault``, ``pswpout``, ``pgsteal``),
    nor as guest faults, nor in KVM's ``pf_fixed``: it did not happen in the measured run.

Simplifications
    With shadow paging only alias 0 of each page is mapped (the others fault minor on first
    use). The last-access stamps of the eviction log start at 0 for every placed page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from sim.config import VmConfig
from sim.guest.workloads import AccessStream
from sim.host.memory import PG_DIRTY, PG_RESIDENT, PG_SWAP, PTE_PRESENT, PTE_YOUNG
from sim.machine import rng_for

if TYPE_CHECKING:
    from sim.engine import World

PASSES = 16  # sampled accesses per working-set page
MAX_SAMPLE = 1 << 24  # sampled accesses per VM, at most (bounds the fill's time and memory)
_NEW_ANON = np.uint8(PTE_PRESENT | PTE_YOUNG | PG_DIRTY | PG_RESIDENT)


def heat(w: World, index: int, cfg: VmConfig) -> NDArray[np.float64]:
    """Sampled accesses per second of guest time of each page of VM ``index`` (0: untouched in
    the sample), plus a fraction under one for recency (pages touched later rank higher)."""
    sc, vm = w.sc, w.vms[index]
    n = vm.mm.nr_pages
    ws = sc.host.pages(cfg.working_set_mib or cfg.memory_mib)
    per_vcpu = max(1, min(PASSES * ws, MAX_SAMPLE) // cfg.vcpus)
    counts = np.zeros(n, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    for j in range(cfg.vcpus):
        stream = AccessStream(
            cfg.workload,
            vm_pages=n,
            working_set_pages=ws,
            access_rate_per_s=cfg.access_rate_per_s,
            write_ratio=cfg.write_ratio,
            vcpu=j,
            nr_vcpus=cfg.vcpus,
            rng=rng_for(sc.seed, f"{vm.name}.vcpu{j}.prefault"),
            page_shift=sc.host.page_shift,
        )
        gfns, _ = stream.next(per_vcpu)
        counts += np.bincount(gfns, minlength=n)
        np.maximum.at(last, gfns, np.arange(len(gfns), dtype=np.int64))
    seconds = per_vcpu / cfg.access_rate_per_s
    recency = (last + 1) / (per_vcpu + 1)  # in [0, 1): breaks ties between equal counts
    return np.where(counts > 0, counts / seconds + recency / seconds, 0.0)


def prefault(w: World, cfgs: Sequence[VmConfig]) -> None:
    """Place the pages of every VM with ``prefault`` as the module docstring says."""
    mem, policy, swap = w.mem, w.policy, w.swap
    pids, hot = [], []
    for i, cfg in enumerate(cfgs):
        if not cfg.prefault:
            continue
        h = heat(w, i, cfg)
        touched = np.flatnonzero(h > 0)
        pids.append(touched + w.vms[i].mm.pid_base)
        hot.append(h[touched])
    pid = np.concatenate(pids)
    order = np.lexsort((-pid, np.concatenate(hot)))[::-1]  # hottest first; ties: lower pid
    pid = pid[order]
    room = max(0, mem.nr_free - mem.wmark.high - 1)  # stay above high: nr_free > high
    resident, rest = pid[:room], pid[room:]
    swapped = rest[: swap.alloc_slots(len(rest))]
    if len(swapped):  # evicted before time 0, coldest longest ago
        cold_first = swapped[::-1]
        scratch = mem.free_list()[: len(cold_first)]
        shadows = np.concatenate(
            [
                policy.workingset_eviction(scratch[: len(part)])
                for part in np.array_split(cold_first, -(-len(cold_first) // max(1, len(scratch))))
            ]
        )
        mem.flags[cold_first] = np.uint8(PG_SWAP)
        mem.pfn[cold_first] = shadows
        mem.nr_swapped += np.bincount(mem.page_owners(cold_first), minlength=len(mem.nr_swapped))
    if len(resident) == 0:
        return
    cold_first = resident[::-1]
    pfns = mem.alloc_frames(cold_first)
    mem.flags[cold_first] = _NEW_ANON
    owners = mem.page_owners(cold_first)
    for vm in w.vms:
        mine = owners == vm.index
        if mine.any():
            vm.mmu.map_sptes(cold_first[mine] - vm.mm.pid_base)
    for pfn in pfns.tolist():  # the first-touch path's hooks, in LRU order
        policy.folio_add_lru(pfn, None)
        policy.folio_mark_accessed(pfn)  # GUP's FOLL_TOUCH
        policy.folio_mark_accessed(pfn)  # kvm_release_faultin_page

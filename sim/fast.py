"""The simulator's fast paths: one registry, and a switch to run the general path instead.

Contract
    A fast path is an optimisation with a general path beside it that stays in the code: the
    reference it is held to. With the fast path on or off, the same config and seed give
    bit-identical state (page flags, pfns, frames, sptes, swap slots, policy lists) and
    counters (every vmstat counter, global and per VM, KVM's and the notifiers' counts, the
    summary but for wall time). tests/test_fastpaths.py runs the random scenarios of the
    invariant tests world against world, once with each registered fast path off, and
    compares all of it; a fast path whose general path could not run is not registered.

Adding one
    Add a :class:`FastPath` to ``FAST_PATHS`` below (its name, one line on what it replaces,
    where it is consulted), consult ``enabled(name)`` where the fast path is chosen (at world
    build time or at the call), and call ``took(name)`` each time it does the work, so tests
    can check that random scenarios really take it. Every registration lives here, so the
    names can be checked without importing the modules that consult them.

Switching them off
    ``MEMSIM_FAST=0`` turns every fast path off, ``MEMSIM_FAST_DISABLE=name,name`` the ones
    named, for the whole process (read once, at import); ``memsim`` refuses an unknown name.
    In code, ``with disabled("tdp_shortcut"):`` or ``with disabled_all():`` runs a block on
    the general paths: a world must be built and run inside it (some paths are chosen at
    build time). Worker processes of a sweep inherit the environment, not the context.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sim.errors import UserError, clip


@dataclass
class FastPath:
    """One fast path: ``replaces`` says what general path it stands in for, ``consulted``
    where it is chosen; ``taken`` counts the times it did the work (in this process)."""

    name: str
    replaces: str
    consulted: str
    taken: int = 0


FAST_PATHS: dict[str, FastPath] = {
    p.name: p
    for p in (
        FastPath(
            "tdp_shortcut",
            "the notifier chain (host rmap -> mmu_notifier -> KVM notifier -> KVM rmap walk) "
            "by one compiled pass over a batch where each gfn has its one TDP spte "
            "(sim/kvm/shortcut.py)",
            "sim/machine.py, at world build (a world built with it off never takes it)",
        ),
        FastPath(
            "host_core",
            "a reclaim batch through vmscan.py, rmap.py and the TDP walk (shrink_folio_list of "
            "any policy's victims; two-list's whole shrink_inactive_list and shrink_active_list) "
            "by one compiled pass over the arrays (sim/core.py)",
            "sim/engine.py, at world build (core_for)",
        ),
        FastPath(
            "mglru_compiled",
            "MGLRU's numpy steps (scan_folios with sort_folio and isolation, the reference "
            "check, the putback and the lru_add drain into generations, folio_update_gen, "
            "folio_rotate_reclaimable, workingset_eviction) by compiled passes over the same "
            "arrays (sim/reclaim/mglru.py)",
            "sim/reclaim/mglru.py, at each call (the scan only with the host's Vmscan)",
        ),
        FastPath(
            "vcpu_inline_faults",
            "ending a vCPU's step at a fault that needs no waiting and resolving it as the "
            "vCPU's next process step, by resolving it inside the step while nothing else is due",
            "sim/guest/vcpu.py Vcpu._run, at each such fault",
        ),
        FastPath(
            "writeback_drain",
            "a write-back end's timer firing and Vmscan.folio_end_writeback with two-list's "
            "folio_rotate_reclaimable, per page written, by one compiled call for the run of "
            "plain ends due next in the event order (sim/wbdrain.py)",
            "sim/engine.py, at world build (writeback_drain_for)",
        ),
        FastPath(
            "plain_swapin",
            "handle_mm_fault -> _fault_in's generators for a plain major fault (page only in "
            "swap, no memcg, readahead, zswap or zram, a frame free above min) by one call "
            "before the read's wait and one after it (HostFaultHandler.swapin_begin/_end)",
            "sim/host/fault.py, at world build; sim/kvm/fault.py kvm_page_fault at each fault",
        ),
        FastPath(
            "compiled_fault",
            "a plain major fault from the vCPU through kvm_page_fault, swapin_end, the spte "
            "install and two-list's folio_add_lru and folio_mark_accessed (generators and some "
            "25 calls) by swapin_begin before the read's wait and one compiled pass after it "
            "(sim/faultcore.py)",
            "sim/engine.py, at world build (fault_core_for); sim/guest/vcpu.py at each fault",
        ),
        FastPath(
            "prefault_batch",
            "the first-touch hooks folio by folio (folio_add_lru, folio_mark_accessed twice) "
            "in the prefault fill, by the policy's batched folio_add_lru_touched",
            "sim/prefault.py _place_resident, once per fill",
        ),
        FastPath(
            "zipf_compiled",
            "ZipfSampler.sample_numpy's rejection-inversion rounds by compiled rounds behind a "
            "table of rank buckets (sim/guest/workloads.py)",
            "ZipfSampler.sample_scattered, at each call",
        ),
        FastPath(
            "replay_compiled",
            "the demand world (policy, rmap, notifiers, sptes) of memsim replay/mrc by the "
            "compiled textbook kernels of sim/fastpath.py for lru, opt, fifo and clock",
            "sim/replay.py replay and memsim replay's memory estimate, with --engine auto",
        ),
        FastPath(
            "lackey_numpy_parse",
            "the line-by-line lackey trace parser by a numpy parse of each block of canonical "
            "lines (sim/guest/traces.py; a block with any other line takes the line parser)",
            "sim/guest/traces.py _read_lackey, at each block",
        ),
    )
}

_ALL = "all"


def _from_env() -> set[str]:
    """The names the environment turns off (unknown names are kept: ``check_env`` names them)."""
    off: set[str] = set()
    if os.environ.get("MEMSIM_FAST", "1").strip() == "0":
        off.add(_ALL)
    off.update(n.strip() for n in os.environ.get("MEMSIM_FAST_DISABLE", "").split(",") if n.strip())
    return off


_off: set[str] = _from_env()


def check_env() -> None:
    """Refuse a ``MEMSIM_FAST`` other than 0 or 1, or an unknown name in ``MEMSIM_FAST_DISABLE``."""
    value = os.environ.get("MEMSIM_FAST", "1").strip()
    if value not in ("0", "1"):
        raise UserError(
            f"MEMSIM_FAST={clip(value)}: expected 0 (every fast path off) or 1 (the default)"
        )
    for name in os.environ.get("MEMSIM_FAST_DISABLE", "").split(","):
        if name.strip() and name.strip() not in FAST_PATHS:
            raise UserError(
                f"MEMSIM_FAST_DISABLE: unknown fast path {clip(name.strip())!r}; "
                f"expected names among {', '.join(FAST_PATHS)}"
            )


def registered() -> dict[str, FastPath]:
    """Every fast path, by name."""
    return dict(FAST_PATHS)


def enabled(name: str) -> bool:
    """Whether fast path ``name`` may be taken now (KeyError for a name not registered)."""
    if name not in FAST_PATHS:
        raise KeyError(f"no fast path {name!r} is registered in sim/fast.py")
    return not _off or (name not in _off and _ALL not in _off)


def took(name: str, n: int = 1) -> None:
    """Fast path ``name`` did the work ``n`` times (what tests read to see it was taken)."""
    FAST_PATHS[name].taken += n


@contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Run the block with the fast paths ``names`` off (the general paths instead)."""
    for name in names:
        if name not in FAST_PATHS:
            raise KeyError(f"no fast path {name!r} is registered in sim/fast.py")
    added = [n for n in names if n not in _off]
    _off.update(added)
    try:
        yield
    finally:
        _off.difference_update(added)


@contextmanager
def disabled_all() -> Iterator[None]:
    """Run the block with every fast path off."""
    with disabled(*FAST_PATHS):
        yield

"""Every fast path (sim/fast.py) against its general path, world against world.

Each registered fast path is checked over random scenarios: the worlds of the invariant
tests (tests/test_invariants.py's ``scenarios``), built and run
once as they are and once with the fast path off, must end with the same state and counters:
page flags, pfns, frame owners, last-access stamps, sptes, swap slots and the compressed
pool, every vmstat counter (global and per VM, the notifier call counts with them), KVM's
counters per VM (zapped, mmu_invalidate_seq, faults fixed, retried), the VM stats, the
policy's lists and the summary but for wall time. Each test also counts the examples that
really took the fast path and requires a good share of them (and, where that can be told,
every example the fast path applies to), so a scenario space drifting away from a fast path
is caught rather than passing on the general path alone. The default suite runs a fixed draw
of EXAMPLES worlds per fast path; the slow variants draw SLOW_EXAMPLES new ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import fast
from sim.cli import main
from sim.config import parse_scenario
from sim.engine import World
from sim.guest.traces import read_trace
from sim.guest.workloads import AccessStream
from sim.machine import rng_for
from sim.reclaim import mglru
from sim.reclaim.base import PageQueue
from sim.replay import FAST, replay
from tests.test_invariants import POLICIES, scenarios, thp_scenarios
from tests.test_memcg import limits

Raw = dict[str, Any]
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,  # no replay of stored examples skews the share
    "derandomize": True,  # the default suite runs the same worlds every time (no flaky share)
}
EXAMPLES = 8  # per fast path and page size in the default suite
SLOW_EXAMPLES = 150  # the same, marked slow


# -- the state two worlds must agree on ------------------------------------------------------
# storage allocated with np.empty beyond what is in use: only its live part is state
_LIVE: dict[tuple[str, str], Callable[[Any], np.ndarray]] = {
    ("HostMemory", "_free"): lambda m: m.free_list(),
    ("Zpool", "_lru_pid"): lambda z: z._lru_pid[z._head : z._tail],
    ("Zpool", "_lru_seq"): lambda z: z._lru_seq[z._head : z._tail],
    ("ResidentSet", "items"): lambda r: r.items[: r.n],
}


def _array(obj: Any, name: str, v: np.ndarray) -> np.ndarray:
    live = _LIVE.get((type(obj).__name__, name))
    return np.array(live(obj) if live is not None else v, copy=True)


def _numbers(obj: Any) -> dict[str, Any]:
    """An object's own arrays and numbers (not its references to other objects)."""
    if obj is None:
        return {}
    out: dict[str, Any] = {}
    for name, v in sorted(vars(obj).items()):
        if isinstance(v, np.ndarray):
            out[name] = _array(obj, name, v)
        elif isinstance(v, bool | int | float | str | np.integer | np.floating):
            out[name] = v
        elif isinstance(v, list | tuple) and all(isinstance(x, int | float) for x in v):
            out[name] = list(v)
    return out


def _drain(obj: Any, seen: set[int] | None = None) -> None:
    """Link every PageQueue's buffered single adds in (a buffer of the list, not state: the
    order after draining is what both paths must agree on). All of them before any is read:
    a policy's lists share their link arrays."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not type(obj).__module__.startswith("sim.reclaim"):
        return
    seen.add(id(obj))
    if isinstance(obj, PageQueue):
        obj.drain()
        return
    for v in getattr(obj, "__dict__", {}).values():
        for x in v if isinstance(v, list | tuple) else [v]:
            _drain(x, seen)


def _policy(obj: Any, seen: set[int] | None = None, depth: int = 0) -> Any:
    """Everything a policy holds, down through its own objects (lruvecs, lists, generations),
    as plain values (its PageQueues drained first)."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, int | float | str | bool | type(None) | np.integer | np.floating):
        return obj
    if isinstance(obj, list | tuple):
        return [_policy(x, seen, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {k: _policy(v, seen, depth + 1) for k, v in obj.items()}
    if id(obj) in seen or depth > 6 or not type(obj).__module__.startswith("sim.reclaim"):
        return type(obj).__name__
    seen.add(id(obj))
    names = list(getattr(obj, "__dict__", {})) + list(getattr(type(obj), "__slots__", ()))
    return {
        n: _array(obj, n, v) if isinstance(v, np.ndarray) else _policy(v, seen, depth + 1)
        for n in names
        if hasattr(obj, n) and n != "core"  # the compiled stand-in itself (host_core)
        for v in [getattr(obj, n)]
    }


def world_state(w: World) -> dict[str, Any]:
    """All the state and counters a fast path must leave as its general path does."""
    s = w.summary(0.0)
    s.pop("wall_s", None)
    swap = w.swap
    return {
        "summary": s,
        "mem": _numbers(w.mem),
        "spte": w.spte.copy(),
        "swap": _numbers(swap),
        "zpool": _numbers(swap.zpool),
        "zswap": _numbers(swap.zswap),
        "vmstat": dict(w.vmstat),
        "vmstat_per_vm": [dict(c) for c in w.vmstat.per_mm],
        "kvm": [_numbers(vm.mmu) for vm in w.vms],
        "vm_stats": [dataclasses.asdict(vm.stats) for vm in w.vms],
        "policy": (_drain(w.policy), _policy(w.policy))[1],
    }


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ (empty: equal, arrays bit for bit)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True):
            return []
        if a.shape != b.shape:
            return [f"{where}: shape {a.shape} != {b.shape}"]
        idx = np.flatnonzero(a.ravel() != b.ravel())[:5]
        pairs = [(int(i), a.ravel()[i].item(), b.ravel()[i].item()) for i in idx]
        return [f"{where}: differs at (index, fast, general) {pairs}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())} on one side only"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{where}[{i}]")
        ]
    if a != b and not (a != a and b != b):  # NaN equals NaN here
        return [f"{where}: {a!r} (fast) != {b!r} (general)"]
    return []


def run_world(raw: Raw) -> tuple[dict[str, Any], dict[str, int]]:
    """Build and run the world of ``raw``; its state and how often each fast path was taken."""
    before = {n: p.taken for n, p in fast.registered().items()}
    w = World(parse_scenario(copy.deepcopy(raw)))
    w.run()
    taken = {n: p.taken - before[n] for n, p in fast.registered().items()}
    return world_state(w), taken


def check_world(raw: Raw, names: tuple[str, ...]) -> tuple[dict[str, int], dict[str, Any]]:
    """The world of ``raw`` with the fast paths ``names`` off equals it with them on; returns
    how often each fast path was taken with them on, and the general world's state."""
    on, taken = run_world(raw)
    with fast.disabled(*names):
        off, off_taken = run_world(raw)
    for name in names:
        assert off_taken[name] == 0, f"{name} taken while switched off"
    diff = differences(on, off)
    assert not diff, f"fast paths {names} change the result:\n" + "\n".join(diff[:20])
    return taken, off


# -- the scenarios ---------------------------------------------------------------------------
@st.composite
def tdp(draw: st.DrawFn) -> Raw:
    """A random scenario with one spte per gfn (the TDP MMU, or the legacy MMU over EPT),
    mostly with EPT A/D bits: the shortcut's case (without them each VM takes the chain; with
    notifiers off the shortcut clears host pte young bits only), and often a host at its
    smallest, so that reclaim walks the rmap from the first steps."""
    raw = copy.deepcopy(draw(scenarios()))
    raw["kvm"]["mmu"] = draw(st.sampled_from(["tdp", "tdp", "legacy_tdp"]))
    raw["kvm"]["ept_ad_bits"] = draw(st.integers(0, 3)) > 0
    if draw(st.booleans()):
        raw["host"]["memory_mib"] = 2
    return raw


@st.composite
def prefaulted(draw: st.DrawFn) -> Raw:
    """A random scenario with some of its VMs starting prefaulted, mostly under the policies
    that have the batched first-touch hooks."""
    raw = copy.deepcopy(draw(scenarios()))
    if draw(st.integers(0, 3)):
        raw["reclaim"]["policy"] = draw(st.sampled_from(["two_list", "mglru"]))
    on = draw(st.lists(st.booleans(), min_size=len(raw["vms"]), max_size=len(raw["vms"])))
    on[draw(st.integers(0, len(on) - 1))] = True
    for vm, p in zip(raw["vms"], on, strict=True):
        vm["prefault"] = p
    return raw


@st.composite
def cored(draw: st.DrawFn) -> Raw:
    """A random scenario the compiled host core takes: any policy (two-list, whose whole batch
    the core runs, most often), one spte per gfn with EPT A/D bits, zram or a disk with zswap
    (its pool limit drawn) or without, no page cache; sometimes a rotational disk (slot
    identities), often a host at its smallest, and in some two-list and MGLRU worlds a memcg
    per VM."""
    raw = copy.deepcopy(draw(scenarios()))
    raw["reclaim"] = {"policy": draw(st.sampled_from(["two_list", *POLICIES]))}
    raw.pop("host_files", None)
    raw["kvm"] |= {"mmu": draw(st.sampled_from(["tdp", "legacy_tdp"])), "ept_ad_bits": True}
    if raw["swap"]["device"] == "disk" and draw(st.integers(0, 3)) == 0:  # slot identities
        raw["swap"]["rotational"] = True
    if draw(st.integers(0, 3)):  # mostly a host at its smallest: reclaim from the first steps
        raw["host"] = {"memory_mib": 2}
    if raw["reclaim"]["policy"] in ("two_list", "mglru") and draw(st.booleans()):
        # a memcg per VM (as libvirt makes)
        for vm in raw["vms"]:
            vm["memcg"] = draw(
                st.sampled_from(
                    [
                        {},
                        {"swap_max_mib": 1},
                        {"max_mib": 3, "swap_max_mib": 2},
                        {"max_mib": 2},
                    ]
                )
            )
    return raw


@st.composite
def mglrued(draw: st.DrawFn) -> Raw:
    """A random MGLRU scenario (its page cache and swappiness as drawn, else swappiness mostly
    60; both promotion rules, the walk with and without notifiers, sometimes min_ttl), in half
    of them with VMs in memcgs (an lruvec each, some limited, some with zswap write-back
    off), often on a host at its smallest."""
    raw = copy.deepcopy(draw(scenarios()))
    if raw["reclaim"]["policy"] != "mglru":
        raw["reclaim"] = {"policy": "mglru", "swappiness": draw(st.sampled_from([0, 60, 60, 200]))}
    raw["reclaim"] |= {
        "promotion": draw(st.sampled_from(["two_step", "one_step"])),
        "notifier_walk": draw(st.integers(0, 3)) > 0,
        "min_ttl_ms": draw(st.sampled_from([0, 0, 1])),
    }
    if draw(st.booleans()):
        for vm in raw["vms"]:
            cg = draw(st.one_of(st.none(), limits))
            if cg is not None:
                vm["memcg"] = _writeback(draw, cg)
    if draw(st.booleans()):
        raw["host"]["memory_mib"] = 2
    return raw


def _writeback(draw: st.DrawFn, cg: dict[str, Any]) -> dict[str, Any]:
    """A memcg section, in a quarter of the draws with memory.zswap.writeback 0."""
    if draw(st.integers(0, 3)) == 0:
        return cg | {"zswap_writeback": False}
    return cg


@st.composite
def plain_swapins(draw: st.DrawFn) -> Raw:
    """A random scenario whose major faults can be plain: a disk without zswap or readahead;
    often a host at its smallest, so that pages are swapped out and read back."""
    raw = copy.deepcopy(draw(scenarios()))
    room = draw(st.sampled_from([4, 64]))
    raw["swap"] |= {
        "device": "disk",
        "zswap": {"enabled": False},
        "page_cluster": 0,
        "size_mib": room,
    }
    if draw(st.booleans()):
        raw["host"]["memory_mib"] = 2
    return raw


@st.composite
def fused_faults(draw: st.DrawFn) -> Raw:
    """A random scenario whose plain major faults take the fused path: two-list on the node's
    lruvec, one spte per gfn with EPT A/D bits (the host core's world), a disk without zswap
    or readahead, no page cache; mostly a host at its smallest, so that pages are swapped out
    and read back while reclaim zaps sptes (stale faults) and, with little swap, OOM kills.
    Not every world with major faults must take it: a fault at the min watermark reclaims."""
    raw = copy.deepcopy(draw(plain_swapins()))
    raw["reclaim"] = {"policy": "two_list"}
    raw.pop("host_files", None)
    raw["kvm"] |= {"mmu": draw(st.sampled_from(["tdp", "legacy_tdp"])), "ept_ad_bits": True}
    if draw(st.integers(0, 3)):
        raw["host"] = {"memory_mib": 2}
    return raw


@st.composite
def drained(draw: st.DrawFn) -> Raw:
    """A random scenario whose write-back ends the compiled drain takes: two-list (on the
    node's lruvec or, in half of them, with a memcg per VM), swap on a disk with room, zswap in
    front of it or not, page cache as drawn (its own writes end in Python), memcgs as drawn
    (some with zswap write-back off); mostly a host at its smallest, so that reclaim writes
    from the first steps."""
    raw = copy.deepcopy(draw(scenarios()))
    if raw["reclaim"]["policy"] != "two_list":
        raw["reclaim"] = {"policy": "two_list"}
    raw["swap"] |= {"device": "disk", "size_mib": draw(st.sampled_from([1, 4, 64]))}
    raw["swap"]["zswap"]["enabled"] = draw(st.integers(0, 3)) == 0
    raw["swap"]["zswap"]["store_incompressible"] = draw(st.booleans())
    if draw(st.integers(0, 3)):
        raw["host"]["memory_mib"] = 2
    if draw(st.booleans()):
        for vm in raw["vms"]:
            cg = draw(st.one_of(st.none(), limits))
            if cg is not None:
                vm["memcg"] = _writeback(draw, cg)
    return raw


def _reclaimed(raw: Raw, general: dict[str, Any]) -> bool:
    """The general world scanned a two-list LRU list, or (any other policy) freed or wrote a
    folio in ``shrink_folio_list``: the core must have taken those batches."""
    v = general["vmstat"]
    if raw["reclaim"]["policy"] == "two_list":
        keys = ("pgscan_kswapd", "pgscan_direct", "pgrefill")
    else:
        keys = ("pgsteal_kswapd", "pgsteal_direct", "nr_vmscan_write")
    return any(v.get(k, 0) for k in keys)


def _zipf(raw: Raw) -> Raw:
    """The scenario with its first VM on a Zipf workload (other VMs keep theirs)."""
    raw = copy.deepcopy(raw)
    raw["vms"][0]["workload"] = {"type": "zipf", "alpha": 0.6 + 0.1 * (raw["seed"] % 12)}
    return raw


def _rmap_walked(raw: Raw, general: dict[str, Any]) -> bool:
    """The TDP MMU with EPT A/D bits (the shortcut's case) and a general world whose reclaim
    walked the rmap into the notifier chain: the shortcut must have been taken."""
    v = general["vmstat"]
    calls = ("invalidate_range_start", "clear_flush_young", "clear_young")
    return raw["kvm"]["ept_ad_bits"] and any(v.get(f"mmu_notifier_{c}", 0) for c in calls)


@dataclasses.dataclass(frozen=True)
class WorldPath:
    """How a fast path a watermark world takes is checked: its scenarios, the share of them
    that must take it, and (if it can be told from the scenario and the general world) when it
    must be taken."""

    worlds: st.SearchStrategy[Raw]
    share: float
    must_take: Callable[[Raw, dict[str, Any]], bool] | None = None


WORLD_PATHS: dict[str, WorldPath] = {
    "tdp_shortcut": WorldPath(tdp(), 0.25, _rmap_walked),
    "host_core": WorldPath(cored(), 0.5, _reclaimed),
    "mglru_compiled": WorldPath(mglrued(), 0.5, _reclaimed),
    "vcpu_inline_faults": WorldPath(scenarios(), 0.5),
    "plain_swapin": WorldPath(plain_swapins(), 0.25),
    "compiled_fault": WorldPath(fused_faults(), 0.25),
    "prefault_batch": WorldPath(prefaulted(), 0.4),
    "zipf_compiled": WorldPath(scenarios().map(_zipf), 1.0, lambda raw, general: True),
    "writeback_drain": WorldPath(drained(), 0.4),
}


def _hold(name: str, examples: int, derandomize: bool) -> None:
    """``examples`` random worlds with fast path ``name`` on and off, equal; it was taken in
    a good share of them, and in each that must take it."""
    path = WORLD_PATHS[name]
    took: list[bool] = []

    @settings(max_examples=examples, **(_SETTINGS | {"derandomize": derandomize}))
    @given(path.worlds)
    def check(raw: Raw) -> None:
        taken, general = check_world(raw, (name,))
        took.append(taken[name] > 0)
        if path.must_take is not None and path.must_take(raw, general):
            assert took[-1], f"{name} not taken where it applies"

    check()
    assert sum(took) >= path.share * len(took), f"{name} taken in {sum(took)} of {len(took)}"


@pytest.mark.parametrize("name", sorted(WORLD_PATHS))
def test_fast_path_equals_general_path(name: str) -> None:
    """The same worlds every run; the slow variant draws new ones each time."""
    _hold(name, EXAMPLES, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WORLD_PATHS))
def test_fast_path_equals_general_path_many(name: str) -> None:
    _hold(name, SLOW_EXAMPLES, derandomize=False)


@st.composite
def thp_worlds(draw: st.DrawFn, fused: bool = False, disk: bool = False) -> Raw:
    """A random THP world (tests/test_invariants.py's ``thp_scenarios``: both THP_SWAP
    settings, too little swap for a cluster, memcgs, khugepaged) with EPT A/D bits: the fused
    walk and the compiled core take its batches that hold no large folio, the general path
    the others. Swap has room (1 MiB: no free cluster, so THPs are split), so reclaim
    walks the rmap. ``fused``: the fused fault path's world (a disk without readahead or
    zswap, no memcgs); ``disk``: swap on a disk (its writes end later, through the write-back
    timers)."""
    raw = copy.deepcopy(draw(thp_scenarios()))
    raw["kvm"]["ept_ad_bits"] = True
    raw["swap"]["size_mib"] = max(raw["swap"]["size_mib"], 1)
    if disk:
        raw["swap"]["device"] = "disk"
    if fused:
        raw["swap"] |= {"device": "disk", "page_cluster": 0, "zswap": {"enabled": False}}
        raw["swap"]["size_mib"] = max(raw["swap"]["size_mib"], 3)
        for vm in raw["vms"]:
            vm.pop("memcg", None)
        raw["host"].pop("memcg_stats", None)
    return raw


@pytest.mark.parametrize(
    ("name", "share"),
    [
        ("tdp_shortcut", 0.25),
        ("host_core", 0.25),
        ("compiled_fault", 0.1),
        ("writeback_drain", 0.1),
    ],
)
def test_fast_path_equals_general_path_with_thp(name: str, share: float) -> None:
    """With host.thp the fused walk and the host core take the reclaim batches of 4 KiB
    folios only, the fused fault path the plain major faults (a page only in swap is in no
    large folio): worlds equal with them on and off, and they are taken in a share of them."""
    took: list[bool] = []

    @settings(max_examples=EXAMPLES, **_SETTINGS)
    @given(thp_worlds(fused=name == "compiled_fault", disk=name == "writeback_drain"))
    def check(raw: Raw) -> None:
        taken, _ = check_world(raw, (name,))
        took.append(taken[name] > 0)

    check()
    assert sum(took) >= share * len(took), f"{name} taken in {sum(took)} of {len(took)}"


@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(st.one_of(scenarios(), prefaulted()))
def test_every_fast_path_off_equals_all_on(raw: Raw) -> None:
    """What ``MEMSIM_FAST=0`` runs: the general paths together."""
    check_world(raw, tuple(fast.registered()))


def test_inline_fault_below_low_waits_for_its_time() -> None:
    """Found by the test above: a first touch resolved inside a vCPU's step while free memory
    was at the low watermark woke kswapd at the step's start, up to a step before the fault,
    and kswapd reclaimed earlier than with each fault its own step. Such a fault now ends
    the step."""
    raw: Raw = {
        "name": "kswapd_wake",
        "seed": 1,
        "duration_s": 0.005,
        "host": {"memory_mib": 2},
        "reclaim": {"policy": "fifo"},
        "swap": {"size_mib": 64},
        "vms": [{"name": "p0", "memory_mib": 8, "access_rate_per_s": 1_000_000}],
        "engine": {"batch_accesses": 64},
    }
    raw["vms"][0] |= {"vcpus": 1, "workload": {"type": "uniform"}}
    taken, _ = check_world(raw, ("vcpu_inline_faults",))
    assert taken["vcpu_inline_faults"] > 100
    assert run_world(raw)[0]["vmstat"]["kswapd_wakeups"] > 0


def test_inline_faults_wait_for_the_others_the_same_event_woke() -> None:
    """Found by the all-off test: two vCPUs of one VM waited for the same page read; the
    event's first callback resumed one, whose next step resolved faults inline (pages the
    read brought ahead) while the other, woken by the same event, was due at that instant but
    invisible to ``env.peek()``. With each fault its own step the other vCPU ran first and took
    those pages' faults. The step after a waited fault now resolves nothing inline."""
    raw: Raw = {
        "name": "prop",
        "seed": 0,
        "duration_s": 0.03,
        "host": {"memory_mib": 12},
        "reclaim": {"policy": "clock"},
        "swap": {
            "size_mib": 4,
            "queue_depth": 1,
            "latency_cv": 0.0,
            "page_cluster": 3,
            "device": "disk",
            "zswap": {"enabled": False, "max_pool_percent": 1},
        },
        "kvm": {
            "mmu_notifiers": False,
            "ept_ad_bits": False,
            "mmu": "tdp",
            "shadow_sptes_per_gfn": 1,
            "flush_on_age": False,
        },
        "vms": [
            {
                "name": "p0",
                "count": 2,
                "memory_mib": 2,
                "vcpus": 1,
                "access_rate_per_s": 100000,
                "write_ratio": 0.0,
                "workload": {"type": "uniform"},
            },
            {
                "name": "p1",
                "count": 2,
                "memory_mib": 5,
                "vcpus": 2,
                "access_rate_per_s": 2070114,
                "write_ratio": 0.0,
                "workload": {
                    "type": "phases",
                    "phases": [
                        {"duration_s": 0.005, "workload": {"type": "scan"}},
                        {
                            "duration_s": 0.01,
                            "workload": {"type": "zipf", "alpha": 1.2},
                            "offset_mib": 1,
                            "working_set_mib": 1,
                        },
                    ],
                },
            },
        ],
        "engine": {"batch_accesses": 64},
    }
    taken, _ = check_world(raw, ("vcpu_inline_faults",))
    assert taken["vcpu_inline_faults"] > 0


@pytest.mark.parametrize("memcg", [False, True], ids=["root", "memcg"])
def test_mglru_worlds_scan_compiled(memcg: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other compiled step is taken in any MGLRU world that faults, so the share above
    cannot tell whether the scan is: an MGLRU world under pressure, on the node's lruvec or
    on memcgs' (the host's Vmscan behind a memcg's view), scans through the compiled pass,
    and with the fast path off never."""
    calls: list[int] = []
    kernel = mglru._scan_kernel

    def counted(*args: Any) -> Any:
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(mglru, "_scan_kernel", counted)
    vm = {"name": "v", "count": 2, "memory_mib": 8, "access_rate_per_s": 1_000_000}
    if memcg:
        vm["memcg"] = {"max_mib": 4}
    raw: Raw = {
        "name": "scan",
        "seed": 3,
        "duration_s": 0.02,
        "host": {"memory_mib": 12},
        "reclaim": {"policy": "mglru"},
        "swap": {"size_mib": 64},
        "vms": [vm],
    }
    _, general = check_world(raw, ("mglru_compiled",))
    assert general["vmstat"]["pgscan_anon"] > 0
    n = len(calls)
    assert n > 0
    with fast.disabled("mglru_compiled"):
        run_world(raw)
    assert len(calls) == n


# -- fast paths outside the watermark world ------------------------------------------------
@st.composite
def replays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, str]:
    """A page trace from a random scenario's first VM (its workload, its stream), a memory
    size and a policy (mostly one with a compiled replay)."""
    sc = parse_scenario(draw(scenarios()))
    name, cfg = sc.vm_list()[0]
    n = sc.host.pages(cfg.memory_mib)
    stream = AccessStream(
        cfg.workload,
        vm_pages=n,
        working_set_pages=sc.host.pages(cfg.working_set_mib or cfg.memory_mib),
        access_rate_per_s=cfg.access_rate_per_s,
        write_ratio=cfg.write_ratio,
        vcpu=0,
        nr_vcpus=1,
        rng=rng_for(sc.seed, f"{name}.replay"),
    )
    pages, writes = stream.next(draw(st.integers(1, 3000)))
    frames = draw(st.integers(1, max(1, len(np.unique(pages)) + 2)))
    policy = draw(st.sampled_from([*sorted(FAST)] * 3 + ["two_list", "mglru"]))
    return pages, writes, frames, policy


def test_compiled_replay_equals_the_demand_world() -> None:
    took: list[bool] = []

    @settings(max_examples=2 * EXAMPLES, **_SETTINGS)
    @given(replays())
    def check(case: tuple[np.ndarray, np.ndarray, int, str]) -> None:
        pages, writes, frames, policy = case
        before = fast.FAST_PATHS["replay_compiled"].taken
        on = replay(pages, writes, frames=frames, policy=policy)
        took.append(fast.FAST_PATHS["replay_compiled"].taken > before)
        with fast.disabled("replay_compiled"):
            off = replay(pages, writes, frames=frames, policy=policy)
        assert off["engine"] == "general"
        for r in (on, off):
            del r["replay_s"], r["engine"]
        assert on == off

    check()
    assert sum(took) >= 0.5 * len(took)


def _lackey_line(draw: st.DrawFn, lenient: bool) -> str:
    op = draw(st.sampled_from(["I ", " L", " S", " M"]))
    addr = draw(st.integers(0, 2**64 - 1))
    digits = draw(st.sampled_from(["x", "08x", "016x"]))
    size = draw(st.integers(1, 512))
    line = f"{op} {addr:{digits}},{size}"
    if (
        lenient and draw(st.integers(0, 9)) == 0
    ):  # lenient spacing: the whole block takes the line parser
        line = line.replace(" ", "\t", 1) + draw(st.sampled_from(["\r", " "]))
    return line


@st.composite
def lackey_texts(draw: st.DrawFn) -> str:
    """Valgrind lackey output: canonical lines, banner and empty lines; in one text of four,
    some lines with tabs or CRLF."""
    lenient = draw(st.integers(0, 3)) == 0
    lines = [f" L {draw(st.integers(0, 2**64 - 1)):x},{draw(st.integers(1, 512))}"]  # an access
    for _ in range(draw(st.integers(0, 400))):
        kind = draw(st.integers(0, 30))
        if kind == 0:
            lines.append("==123== lackey banner")
        elif kind == 1:
            lines.append("")
        else:
            lines.append(_lackey_line(draw, lenient))
    return "\n".join(lines) + ("\n" if draw(st.booleans()) else "")


def test_numpy_lackey_parse_equals_the_line_parser(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    took: list[bool] = []
    root = tmp_path_factory.mktemp("lackey")

    @settings(max_examples=5 * EXAMPLES, **_SETTINGS)
    @given(lackey_texts(), st.sampled_from([4096, 2 << 20]), st.booleans())
    def check(text: str, page_size: int, instructions: bool) -> None:
        path = root / "t.lackey"
        path.write_text(text)
        before = fast.FAST_PATHS["lackey_numpy_parse"].taken
        on = read_trace(path, fmt="lackey", page_size=page_size, instructions=instructions)
        took.append(fast.FAST_PATHS["lackey_numpy_parse"].taken > before)
        with fast.disabled("lackey_numpy_parse"):
            off = read_trace(path, fmt="lackey", page_size=page_size, instructions=instructions)
        assert np.array_equal(on.pages, off.pages)
        assert on.pages.dtype == off.pages.dtype
        assert np.array_equal(on.writes, off.writes)

    check()
    assert sum(took) >= 0.5 * len(took)


# -- every fast path is held to its general path ---------------------------------------------
OTHER_PATHS: dict[str, Callable[..., None]] = {
    "replay_compiled": test_compiled_replay_equals_the_demand_world,
    "lackey_numpy_parse": test_numpy_lackey_parse_equals_the_line_parser,
}


def test_every_registered_fast_path_has_a_test() -> None:
    """A fast path added to sim/fast.py needs its comparison here (WORLD_PATHS for one a
    watermark world takes)."""
    assert set(fast.registered()) == set(WORLD_PATHS) | set(OTHER_PATHS)


def test_disabled_switches_off_and_restores() -> None:
    assert fast.enabled("tdp_shortcut")
    with fast.disabled("tdp_shortcut"):
        assert not fast.enabled("tdp_shortcut")
        assert fast.enabled("zipf_compiled")
        with fast.disabled_all():
            assert not any(fast.enabled(n) for n in fast.registered())
        assert fast.enabled("zipf_compiled")
        assert not fast.enabled("tdp_shortcut")
    assert all(fast.enabled(n) for n in fast.registered())
    with pytest.raises(KeyError):
        fast.enabled("no_such_path")


# -- the switch users have -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MEMSIM_FAST_DISABLE": "tdp_shortcut,no_such_path"}, "'no_such_path'"),
        ({"MEMSIM_FAST": "off"}, "MEMSIM_FAST=off"),
    ],
)
def test_a_bad_switch_is_a_one_line_error(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    np.save(tmp_path / "t.npy", np.arange(10, dtype=np.int64))
    r = CliRunner().invoke(
        main, ["replay", str(tmp_path / "t.npy"), "--frames", "4", "--policy", "lru"], env=env
    )
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0]


def test_memsim_fast_0_runs_the_general_paths(tmp_path: Path) -> None:
    """The environment switch, in a process of its own (it is read at import)."""
    pages = (np.random.default_rng(5).zipf(1.3, 3000) % 200).astype(np.int64)
    np.save(tmp_path / "t.npy", pages)
    args = ["replay", str(tmp_path / "t.npy"), "--frames", "40", "--policy", "clock", "--json"]
    env = os.environ | {"MEMSIM_FAST": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "sim", *args], env=env, capture_output=True, text=True, check=True
    )
    general = json.loads(out.stdout)
    compiled = replay(pages, np.zeros(len(pages), dtype=np.bool_), frames=40, policy="clock")
    assert (general["engine"], compiled["engine"]) == ("general", "fast")
    assert general["faults"] == compiled["faults"]
    fast_only = subprocess.run(
        [sys.executable, "-m", "sim", *args, "--engine", "fast"], env=env, capture_output=True
    )
    assert fast_only.returncode == 2
    assert b"compiled replay is switched off" in fast_only.stderr

"""Trace replay in demand mode, and miss-ratio curves: ``memsim replay`` and ``memsim mrc``.

Models
    One VM whose single vCPU replays a page trace; memory holds exactly ``frames`` pages and a
    miss with memory full evicts one page (demand mode, demand.py). Faults are misses, cold
    ones included; evictions are the misses that found memory full.

Engines
    ``fast``: compiled textbook kernels (fastpath.py) for ``lru``, ``opt``, ``fifo``, ``clock``.
    ``general``: the simulator itself (policy protocol, host rmap, notifiers, KVM sptes), for
    every policy; tests hold the two to identical counts. ``auto`` takes the fast one when there
    is one (a fast path, ``replay_compiled`` in sim/fast.py: off, ``auto`` is ``general``).
    ``replay_s`` times the replay only (trace loading and JIT compilation excluded).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sim import fast, fastpath
from sim.config import apply_overrides, parse_scenario
from sim.demand import WINDOW, WINDOW_ACCESS_TRACKING, DemandWorld, trace_source
from sim.errors import UserError, clip
from sim.mrc import lru_mrc
from sim.reclaim import policy_names

FAST = {"lru": fastpath.lru, "opt": fastpath.opt, "fifo": fastpath.fifo, "clock": fastpath.clock}
ENGINES = ("auto", "fast", "general")


REPLAY_KEYS = ("kvm", "reclaim", "seed")  # what --set can change in a replay


def _scenario(policy: str, overrides: list[str], seed: int) -> Any:
    """The scenario a general replay runs: only ``kvm.*``, ``reclaim.*`` (not the trigger,
    and the policy only as ``--policy`` says) and ``seed`` mean anything to it, so any other
    ``--set`` is refused rather than silently ignored."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.split(".")[0] not in REPLAY_KEYS:
            raise UserError(
                f"--set {clip(key)}: replay does not use it (one VM of the trace's pages, "
                f"--frames frames, demand mode); only {', '.join(REPLAY_KEYS)} settings apply"
            )
    raw: dict[str, Any] = {
        "name": "replay",
        "seed": seed,
        "duration_s": 1.0,
        "host": {"memory_mib": 1},
        "reclaim": {"policy": policy, "trigger": "demand"},
        "vms": [{"name": "trace", "memory_mib": 1}],
    }
    raw = apply_overrides(raw, overrides)
    sc = parse_scenario(raw, "replay")
    if sc.reclaim.policy != policy:
        raise UserError(
            f"--set reclaim.policy={sc.reclaim.policy} conflicts with --policy {policy}; "
            "give the policy with --policy only"
        )
    if sc.reclaim.trigger != "demand":
        raise UserError(
            f"--set reclaim.trigger={sc.reclaim.trigger}: replay always runs in demand mode"
        )
    return sc


def use_compiled(engine: str) -> bool:
    """Whether ``engine`` takes the compiled kernels (for a policy that has one, without
    ``--set``): ``fast`` does, ``auto`` unless the ``replay_compiled`` fast path is off."""
    return engine == "fast" or (engine == "auto" and fast.enabled("replay_compiled"))


def replay(
    pages: NDArray[np.int64],
    writes: NDArray[np.bool_],
    *,
    frames: int,
    policy: str,
    engine: str = "auto",
    overrides: list[str] | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """Replay ``pages`` with ``frames`` frames under ``policy``; the counts as a dict."""
    if frames < 1:
        raise UserError(f"--frames must be at least 1 (got {frames})")
    if policy not in policy_names():
        raise UserError(f"--policy {policy!r}: expected one of {', '.join(policy_names())}")
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "fast" and policy not in FAST:
        raise UserError(
            f"--engine fast: no compiled replay for {policy!r} "
            f"(there is one for {', '.join(sorted(FAST))}); use --engine general"
        )
    if overrides and engine == "fast":
        raise UserError("--set changes the simulated mechanism; it needs --engine general")
    if engine == "fast" and not fast.enabled("replay_compiled"):
        raise UserError(
            "--engine fast: the compiled replay is switched off (MEMSIM_FAST=0 or "
            "MEMSIM_FAST_DISABLE names replay_compiled); use --engine auto or general"
        )
    use_fast = policy in FAST and not overrides and use_compiled(engine)
    if use_fast:
        fast.took("replay_compiled")
        fastpath.warm_up()
        t0 = time.perf_counter()
        r = FAST[policy](pages, frames)
        elapsed = time.perf_counter() - t0
        faults, evictions, distinct = r.faults, r.evictions, r.distinct_pages
    else:
        sc = _scenario(policy, overrides or [], seed)
        ids, distinct = fastpath.dense_ids(pages)
        world = DemandWorld(
            sc,
            None,
            nr_frames=min(frames, distinct),  # more frames than pages: never full either way
            vm_pages=[("trace", distinct)],
            source=trace_source(
                ids, writes, WINDOW if sc.kvm.ept_ad_bits else WINDOW_ACCESS_TRACKING
            ),
        )
        t0 = time.perf_counter()
        world.run()
        elapsed = time.perf_counter() - t0
        f = world.vms[0].stats.faults
        faults, evictions = f["first_touch"] + f["major"], world.alloc.evictions
    return {
        "policy": policy if use_fast else sc.reclaim.policy,
        "frames": int(frames),
        "accesses": int(len(pages)),
        "distinct_pages": int(distinct),
        "faults": int(faults),
        "evictions": int(evictions),
        "replay_s": round(elapsed, 6),
        "engine": "fast" if use_fast else "general",
    }


def default_sizes(distinct: int, points: int = 12) -> list[int]:
    """Memory sizes spread geometrically from 1% of the distinct pages to all of them."""
    lo = max(1, distinct // 100)
    sizes = np.unique(np.geomspace(lo, max(lo, distinct), points).round().astype(np.int64))
    return [int(s) for s in sizes]


def mrc(
    pages: NDArray[np.int64],
    writes: NDArray[np.bool_],
    *,
    policies: list[str],
    sizes: list[int] | None = None,
    engine: str = "auto",
) -> pd.DataFrame:
    """Miss-ratio curves: exact LRU at every size (one Mattson pass), others at ``sizes``.

    Columns: ``policy``, ``frames``, ``faults``, ``miss_ratio``.
    """
    n = len(pages)
    curve = lru_mrc(pages)
    distinct = len(curve)
    sizes = sizes or default_sizes(distinct)
    frames_all = curve.assign(policy="lru")
    parts = [frames_all[["policy", "frames", "faults", "miss_ratio"]]]
    for policy in policies:
        if policy == "lru":
            continue
        rows = [replay(pages, writes, frames=f, policy=policy, engine=engine) for f in sizes]
        parts.append(
            pd.DataFrame(
                {
                    "policy": policy,
                    "frames": [r["frames"] for r in rows],
                    "faults": [r["faults"] for r in rows],
                    "miss_ratio": [r["faults"] / n for r in rows],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)

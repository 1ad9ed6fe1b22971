"""The prefault fill's batched first-touch placement (``folio_add_lru_touched``) leaves every
policy exactly as the per-folio first-touch calls do: ``folio_add_lru`` then
``folio_mark_accessed`` twice, folio by folio."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.engine import World
from sim.host.vmstat import VmEvents
from sim.reclaim.base import PageQueue


def _state(obj: Any, seen: set[int] | None = None, depth: int = 0) -> Any:
    """Everything a policy holds, as plain comparable values (numpy arrays as lists), down
    through its own objects (lruvecs, lists, generations); shared host objects by identity
    of their counts only."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (int, float, str, bool, type(None), np.integer, np.floating)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_state(x, seen, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {k: _state(v, seen, depth + 1) for k, v in obj.items()}
    if isinstance(obj, VmEvents):
        return [dict(obj), [dict(c) for c in obj.per_mm]]
    mod = type(obj).__module__
    if id(obj) in seen or depth > 6 or not mod.startswith("sim.reclaim"):
        return type(obj).__name__
    seen.add(id(obj))
    names = list(getattr(obj, "__dict__", {})) + list(getattr(type(obj), "__slots__", ()))
    return {n: _state(getattr(obj, n), seen, depth + 1) for n in names if hasattr(obj, n)}


def _drain(obj: Any, seen: set[int] | None = None) -> None:
    """Link every PageQueue's buffered single adds in (a buffer of the list, not state: the
    order after draining is what both paths must agree on)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not type(obj).__module__.startswith("sim.reclaim"):
        return
    seen.add(id(obj))
    if isinstance(obj, PageQueue):
        obj.drain()
        return
    for v in getattr(obj, "__dict__", {}).values():
        for x in v if isinstance(v, (list, tuple)) else [v]:
            _drain(x, seen)


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
@pytest.mark.parametrize("memcg", [False, True])
def test_batched_first_touch_equals_the_per_folio_path(policy: str, memcg: bool) -> None:
    vm: dict[str, Any] = {"memory_mib": 8, "count": 3}
    if memcg:
        vm["memcg"] = {}
    raw = {
        "name": "b",
        "duration_s": 0.01,
        "host": {"memory_mib": 32},
        "swap": {"size_mib": 32},
        "reclaim": {"policy": policy},
        "vms": [{"name": "vm", **vm}],
    }
    sc = parse_scenario(raw)
    loop, batch = World(sc), World(sc)
    rng = np.random.default_rng(3)
    pids = rng.permutation(3 * 2048)[:5000].astype(np.int64)  # across the three VMs
    pfns = loop.mem.alloc_frames(pids)
    assert (batch.mem.alloc_frames(pids) == pfns).all()
    for pfn in pfns.tolist():
        loop.policy.folio_add_lru(pfn, None)
        loop.policy.folio_mark_accessed(pfn)
        loop.policy.folio_mark_accessed(pfn)
    batch.policy.folio_add_lru_touched(pfns)
    _drain(loop.policy)
    _drain(batch.policy)
    assert _state(batch.policy) == _state(loop.policy)
    assert batch.policy.lru_sizes() == loop.policy.lru_sizes()
    assert _state(batch.vmstat) == _state(loop.vmstat)

"""Eviction policies behind one protocol (``base.EvictionPolicy``), one file each.

Adding a policy: write ``sim/reclaim/<name>.py`` with a ``<Name>Config`` (a ``policy`` literal
plus its knobs) and the class, then add one line to ``_REGISTRY`` below; the config union, the
CLI and the contract tests pick it up from there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sim.reclaim import two_list
from sim.reclaim.base import EvictionPolicy, PageQueue, Reclaimer

# policy name -> (config model, policy class)
_REGISTRY: dict[str, tuple[type[Any], type[Any]]] = {
    "two_list": (two_list.TwoListConfig, two_list.TwoList),
}

ReclaimConfig = two_list.TwoListConfig
"""The ``reclaim:`` section: one of the registered policies' configs (by ``policy``)."""


def policy_names() -> list[str]:
    """Registered policy names."""
    return sorted(_REGISTRY)


def make_policy(cfg: Any, *, nr_frames: int, vmstat: Counter[str]) -> EvictionPolicy:
    """Build the policy a ``reclaim:`` config names."""
    _, cls = _REGISTRY[cfg.policy]
    policy: EvictionPolicy = cls(cfg, nr_frames, vmstat)
    return policy


__all__ = [
    "EvictionPolicy",
    "PageQueue",
    "ReclaimConfig",
    "Reclaimer",
    "make_policy",
    "policy_names",
]

"""Eviction policies behind one protocol (``base.EvictionPolicy``), one file each.

Adding a policy: write ``sim/reclaim/<name>.py`` with a ``<Name>Config`` (subclass of
``ReclaimBase`` with a ``policy`` literal plus its knobs) and the class, then add it to
``_REGISTRY`` below; the config union, the CLI and the contract tests pick it up from there.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Union

import numpy as np
from pydantic import Field

from sim.reclaim import clock, fifo, lru, mglru, opt, two_list
from sim.reclaim import random as random_policy
from sim.reclaim.base import EvictionPolicy, PageQueue, ReclaimBase, Reclaimer
from sim.reclaim.memcg import MemcgMglru, MemcgTwoList

# policy name -> (config model, policy class)
_REGISTRY: dict[str, tuple[type[ReclaimBase], type[Any]]] = {
    "two_list": (two_list.TwoListConfig, two_list.TwoList),
    "clock": (clock.ClockConfig, clock.Clock),
    "fifo": (fifo.FifoConfig, fifo.Fifo),
    "random": (random_policy.RandomConfig, random_policy.Random),
    "lru": (lru.LruConfig, lru.Lru),
    "opt": (opt.OptConfig, opt.Opt),
    "mglru": (mglru.MglruConfig, mglru.Mglru),
}

_CONFIGS = tuple(cfg for cfg, _ in _REGISTRY.values())
ReclaimConfig = (
    _CONFIGS[0] if len(_CONFIGS) == 1 else Annotated[Union[_CONFIGS], Field(discriminator="policy")]  # noqa: UP007
)
"""The ``reclaim:`` section: one of the registered policies' configs (by ``policy``)."""

DEFAULT_RECLAIM = two_list.TwoListConfig


def policy_names() -> list[str]:
    """Registered policy names."""
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Any]:
    """The class registered under ``name``."""
    return _REGISTRY[name][1]


def config_class(name: str) -> type[ReclaimBase]:
    """The config model registered under ``name``."""
    return _REGISTRY[name][0]


def make_policy(
    cfg: Any,
    *,
    nr_frames: int,
    vmstat: Counter[str],
    rng: np.random.Generator,
    memcg: tuple[Any, Any, Any] | None = None,
    file: bool = False,
) -> EvictionPolicy:
    """Build the policy a ``reclaim:`` config names. With ``memcg`` (host memory, the memcgs'
    limits, their swap usage) two_list and mglru keep one lruvec per memcg
    (sim/reclaim/memcg.py). ``file``: two_list keeps the page cache's lists too, mglru its file
    type, on every lruvec (a host file workload is configured)."""
    if memcg is not None:
        mem, limits, swap_usage = memcg
        if cfg.policy == "mglru":
            return MemcgMglru(
                cfg,
                nr_frames,
                vmstat,
                rng,
                mem=mem,
                limits=limits,
                swap_usage=swap_usage,
                file=file,
            )
        return MemcgTwoList(
            cfg, nr_frames, vmstat, rng, mem=mem, limits=limits, swap_usage=swap_usage, file=file
        )
    if file:
        return policy_class(cfg.policy)(cfg, nr_frames, vmstat, rng, file=True)
    return policy_class(cfg.policy)(cfg, nr_frames, vmstat, rng)


__all__ = [
    "DEFAULT_RECLAIM",
    "EvictionPolicy",
    "PageQueue",
    "ReclaimBase",
    "ReclaimConfig",
    "Reclaimer",
    "config_class",
    "make_policy",
    "policy_class",
    "policy_names",
]

"""A MOM-like balloon manager on the host: oVirt MOM's default ``balloon.rules``.

Models
    MOM (Memory Overcommitment Manager) samples the host and each guest every monitor interval
    (``host-monitor-interval``, ``guest-monitor-interval``: 5 s), keeps the last
    ``sample-history-length`` (10) samples of each, and every ``policy-engine-interval`` (10 s)
    evaluates its rules and hands each guest's ``balloon_target`` to the Balloon controller,
    which sets it through libvirt (``setMemory``: the guest's memory, from which QEMU derives
    the balloon size). The rules, as doc/balloon.rules writes them:

    - ``host_free_percent = Host.StatAvg("mem_free") / Host.mem_available``, where the host's
      ``mem_free`` is MemFree + Buffers + Cached and ``mem_available`` is MemTotal (the
      HostMemory collector), averaged over the history / the latest sample;
    - below ``pressure_threshold`` every guest shrinks (``shrink_guest``), otherwise every guest
      grows (``grow_guest``);
    - a guest's ``balloon_cur`` is its memory now (libvirt's current memory: RAM less the
      balloon QEMU reports), ``balloon_max`` its RAM (libvirt's maximum memory) and
      ``balloon_min`` its guaranteed memory (``<memtune><min_guarantee>``, 0 when unset);
      ``guest_used_mem = StatAvg("balloon_cur") - StatAvg("mem_unused")``, ``mem_unused`` being
      the guest's MemFree from the balloon's stats queue (libvirt's ``unused``);
    - shrink: the free share the guest keeps is ``min_guest_free_percent`` scaled by
      ``host_free_percent / pressure_threshold``, or ``host_free_percent - 0.05`` (negative:
      force the guest to swap) at or below ``pressure_critical``; the new size is
      ``balloon_cur * (1 - max_balloon_change_percent)``, raised to
      ``max(balloon_min, guest_used_mem + free share * balloon_cur)``, applied only if it does
      not exceed ``balloon_cur``;
    - grow (only if ``balloon_cur < balloon_max``): ``balloon_cur * (1 +
      max_balloon_change_percent)``, raised to ``max(balloon_min, guest_used_mem +
      min_guest_free_percent * balloon_cur)``, capped at ``balloon_max``;
    - a target is set only when it moves more than ``min_balloon_change_percent * balloon_cur``
      (``change_big_enough``); the controller truncates it to an integer (``int(target)``).

    A guest whose monitor has no complete sample (no stats yet) is left out, as MOM leaves out
    a guest that is not ready.

Simplifications
    MOM works in KiB; memsim in pages (same ratios; the truncation is to a page). MOM's
    threads run at their intervals from time 0; at a time both are due, sampling comes first.
    The "percent" parameters are fractions, as in the rules file.

Sources
    oVirt MOM: doc/balloon.rules, doc/mom-balloon.conf and mom/__init__.py (defaults),
    mom/Entity.py (``Stat``, ``StatAvg``), mom/Monitor.py (the history), mom/PolicyEngine.py,
    mom/Controllers/Balloon.py, mom/Collectors/HostMemory.py, GuestMemory.py, GuestBalloon.py,
    mom/HypervisorInterfaces/libvirtInterface.py (``getVmBalloonInfo``,
    ``getVmMemoryStats``, ``setVmBalloonTarget``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import simpy
from numpy.typing import NDArray
from pydantic import Field, model_validator

from sim.schema import Strict

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class HostMem:
    """The host figures MOM's HostMemory collector reads, in pages."""

    total: int  # MemTotal (MOM's Host.mem_available)
    free: int  # MemFree + Buffers + Cached (MOM's Host mem_free)


class MomBalloon(Protocol):
    """What MOM sees and sets of one VM through libvirt: QEMU's balloon device."""

    ram_pages: int  # the VM's RAM (balloon_max)
    num_pages: int  # the balloon size QEMU asks for
    actual: int  # the balloon size the driver last reported

    def balloon_cur(self) -> int:
        """Guest memory now: RAM less the balloon QEMU reports."""
        ...

    def stat_free_memory(self) -> int | None:
        """The guest's MemFree from the last stats; None before any."""
        ...

    def to_target(self, target_pages: int) -> None:
        """Set the guest's memory (QEMU's balloon command)."""
        ...


class MomConfig(Strict):
    """MOM's intervals and the constants of its default balloon.rules."""

    enabled: bool = Field(False, description="Run the balloon manager on the host.")
    interval_s: int = Field(
        10, ge=1, le=86_400, description="policy-engine-interval: seconds between evaluations."
    )
    monitor_interval_s: int = Field(
        5,
        ge=1,
        le=86_400,
        description="host-monitor-interval and guest-monitor-interval: seconds between samples.",
    )
    sample_history_length: int = Field(
        10, ge=1, le=10_000, description="Samples kept for StatAvg's moving averages."
    )
    pressure_threshold: float = Field(
        0.20,
        gt=0.0,
        le=1.0,
        description="Host free share below which guests shrink; at or above, they grow.",
    )
    pressure_critical: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Host free share at or below which guests are pushed to swap "
        "(their free share becomes host free share - 0.05).",
    )
    min_guest_free_percent: float = Field(
        0.20,
        ge=0.0,
        le=1.0,
        description="Free share of its memory an unconstrained guest keeps.",
    )
    max_balloon_change_percent: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Largest change of a guest's memory per evaluation, as a share of it.",
    )
    min_balloon_change_percent: float = Field(
        0.0025,
        ge=0.0,
        le=1.0,
        description="Smallest change worth a balloon operation, as a share of the guest's memory.",
    )

    @model_validator(mode="after")
    def _critical_below_threshold(self) -> MomConfig:
        if self.pressure_critical > self.pressure_threshold:
            raise ValueError("pressure_critical must not exceed pressure_threshold")
        return self


@dataclass(frozen=True)
class GuestEntity:
    """One guest as the rules see it (MOM's Entity): latest values and averages."""

    balloon_cur: int  # guest.balloon_cur (latest sample)
    balloon_max: int  # guest.balloon_max
    balloon_min: int  # guest.balloon_min
    avg_balloon_cur: float  # guest.StatAvg("balloon_cur")
    avg_mem_unused: float  # guest.StatAvg("mem_unused")


def change_big_enough(g: GuestEntity, new_val: float, cfg: MomConfig) -> bool:
    """``change_big_enough``: the move exceeds ``min_balloon_change_percent`` of balloon_cur."""
    return abs(new_val - g.balloon_cur) > cfg.min_balloon_change_percent * g.balloon_cur


def shrink_guest(host_free_percent: float, g: GuestEntity, cfg: MomConfig) -> int | None:
    """``shrink_guest``: the new target (pages), or None to leave the guest alone."""
    if host_free_percent <= cfg.pressure_critical:
        guest_free_percent = -0.05 + host_free_percent
    else:
        guest_free_percent = cfg.min_guest_free_percent * (
            host_free_percent / cfg.pressure_threshold
        )
    guest_used_mem = g.avg_balloon_cur - g.avg_mem_unused
    balloon_min = max(g.balloon_min, guest_used_mem + guest_free_percent * g.balloon_cur)
    balloon_size = g.balloon_cur * (1 - cfg.max_balloon_change_percent)
    if balloon_size < balloon_min:
        balloon_size = balloon_min
    if balloon_size <= g.balloon_cur and change_big_enough(g, balloon_size, cfg):
        return int(balloon_size)
    return None


def grow_guest(g: GuestEntity, cfg: MomConfig) -> int | None:
    """``grow_guest``: the new target (pages), or None to leave the guest alone."""
    if not g.balloon_cur < g.balloon_max:
        return None
    guest_used_mem = g.avg_balloon_cur - g.avg_mem_unused
    balloon_min = max(g.balloon_min, guest_used_mem + cfg.min_guest_free_percent * g.balloon_cur)
    balloon_size = g.balloon_cur * (1 + cfg.max_balloon_change_percent)
    if balloon_size < balloon_min:
        balloon_size = balloon_min
    if balloon_size > g.balloon_max:
        balloon_size = g.balloon_max
    if change_big_enough(g, balloon_size, cfg):
        return int(balloon_size)
    return None


def evaluate(
    host_free_percent: float, guests: Sequence[GuestEntity], cfg: MomConfig
) -> list[int | None]:
    """The main script: shrink every guest under pressure, grow every guest otherwise."""
    if host_free_percent < cfg.pressure_threshold:
        return [shrink_guest(host_free_percent, g, cfg) for g in guests]
    return [grow_guest(g, cfg) for g in guests]


class Mom:
    """MOM's monitors, policy engine and Balloon controller as one SimPy process."""

    def __init__(
        self,
        env: simpy.Environment,
        cfg: MomConfig,
        host_mem: Callable[[], HostMem],
        balloons: Sequence[MomBalloon],
        balloon_min_pages: Sequence[int] | None = None,
        held: Callable[[int], int] | None = None,
    ) -> None:
        """``balloon_min_pages``: each guest's guaranteed memory (0 each if None); ``held``:
        the pages VM ``i``'s driver holds, for the record (QEMU's ``actual`` if None)."""
        self.env = env
        self.cfg = cfg
        self.host_mem = host_mem
        self.balloons = list(balloons)
        self.balloon_min = list(balloon_min_pages or [0] * len(self.balloons))
        if len(self.balloon_min) != len(self.balloons):
            raise ValueError("one balloon_min per balloon")
        self.held = held if held is not None else (lambda i: self.balloons[i].actual)
        n = cfg.sample_history_length
        self._host: deque[int] = deque(maxlen=n)  # mem_free samples
        self._host_total = 0  # the latest mem_available
        self._cur: list[deque[int]] = [deque(maxlen=n) for _ in self.balloons]
        self._unused: list[deque[int]] = [deque(maxlen=n) for _ in self.balloons]
        self._ready = [False] * len(self.balloons)
        self.evaluations = 0
        self.targets_set = 0
        # one row per VM per evaluation: time, vm, balloon_cur, target set (-1: none),
        # QEMU's num_pages after it, pages held
        self.records: list[tuple[int, int, int, int, int, int]] = []
        env.process(self._run())

    def collect(self) -> None:
        """One round of the host and guest monitors (``Monitor.collect``): a guest without
        stats is not ready and adds no sample."""
        hm = self.host_mem()
        self._host.append(hm.free)
        self._host_total = hm.total
        for i, b in enumerate(self.balloons):
            unused = b.stat_free_memory()
            if unused is None:
                self._ready[i] = False
                continue
            self._cur[i].append(b.balloon_cur())
            self._unused[i].append(unused)
            self._ready[i] = True

    def host_free_percent(self) -> float:
        """``Host.StatAvg("mem_free") / Host.mem_available``."""
        return float(sum(self._host) / len(self._host)) / self._host_total

    def entity(self, i: int) -> GuestEntity:
        """Guest ``i`` as the rules see it (``Monitor.interrogate``)."""
        cur, unused = self._cur[i], self._unused[i]
        return GuestEntity(
            balloon_cur=cur[-1],
            balloon_max=self.balloons[i].ram_pages,
            balloon_min=self.balloon_min[i],
            avg_balloon_cur=float(sum(cur) / len(cur)),
            avg_mem_unused=float(sum(unused) / len(unused)),
        )

    def do_controls(self) -> None:
        """``PolicyEngine.do_controls``: evaluate the rules and set the targets."""
        if not self._host or self._host_total <= 0:
            return
        ready = [i for i in range(len(self.balloons)) if self._ready[i]]
        targets = evaluate(self.host_free_percent(), [self.entity(i) for i in ready], self.cfg)
        self.evaluations += 1
        now = int(self.env.now)
        for i, target in zip(ready, targets, strict=True):
            b = self.balloons[i]
            cur = b.balloon_cur()
            if target is not None:
                b.to_target(target)
                self.targets_set += 1
            t = -1 if target is None else target
            self.records.append((now, i, cur, t, b.num_pages, self.held(i)))

    def series(self) -> dict[str, NDArray[np.int64]]:
        """The records as columns: t_ns, vm, balloon_cur, target (-1: none), num_pages,
        held."""
        names = ("t_ns", "vm", "balloon_cur", "target", "num_pages", "held")
        rows = np.array(self.records, dtype=np.int64).reshape(-1, len(names))
        return {name: rows[:, k].copy() for k, name in enumerate(names)}

    def _run(self) -> Generator[simpy.Event, Any, None]:
        mon = self.cfg.monitor_interval_s * NS_PER_S
        pol = self.cfg.interval_s * NS_PER_S
        next_mon, next_pol = 0, pol
        while True:
            now = int(self.env.now)
            if now >= next_mon:
                self.collect()
                next_mon += mon
            if now >= next_pol:
                self.do_controls()
                next_pol += pol
            yield self.env.timeout(min(next_mon, next_pol) - now)

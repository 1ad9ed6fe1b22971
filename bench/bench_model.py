"""Hit path and full model: guest accesses per second through the real engine, vs the naive model.

Scenarios are built in code (``parse_scenario`` on a dict, like configs/quickstart.yaml) and run
with ``sim.engine.build_world(sc, None)`` and ``env.run`` in slices of simulated time: the real
engine (vCPU batches, kswapd, allocator, two-list policy, rmap, notifiers, KVM sptes, swap
device), without the recorder, so parquet writing is not timed (``memsim run`` adds that).

Each run warms up first (untimed), then a measurement window runs until a wall-clock budget or
the simulated horizon is reached; the figure is accesses (or faults) in the window / wall time.
The naive model (``bench/naive.py``) reads the same access streams with the same frames and
watermarks, warms up by the same rule and is timed the same way.

- hit path: two 64 MiB VMs x 2 vCPUs, Zipf(0.99) over 32 MiB each, on a host that holds them;
  warm-up is a fixed stretch of simulated time in which the working set faults in.
- full model: the same VMs on a host sized so the steady-state fault rate is about 1% or 5%
  (sized from the streams' exact-LRU miss ratio, computed with ``sim.mrc`` before the runs, at
  the frames the watermarks leave usable; the measured rate is reported). Warm-up lasts until
  free memory first reaches the low watermark, plus ``SETTLE_S`` of simulated time.
- compiled fault: the ~1% and ~5% worlds with the fused plain major fault
  (sim/faultcore.py) and without it, the host core on in both.
- memcg two-list: the ~1% world with a memcg per VM (one two-list lruvec each), with the
  compiled host core and without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import Target, row
from bench.naive import NaiveHost
from sim import fast
from sim.config import Scenario, parse_scenario
from sim.engine import build_world
from sim.host.memory import setup_per_zone_wmarks
from sim.machine import vcpu_stream
from sim.mrc import COLD, stack_distances

PIN_ONE_CORE = True
SLICE_NS = 2_000_000  # simulated time per env.run step (2 ms)
SETTLE_S = 0.05  # simulated time run after memory first fills, before measuring
NAIVE = "naive SimPy (1 event/access)"
GENERAL = "the same world without the compiled host core"
NO_FAULT_CORE = "the same world without the compiled fault (compiled_fault off)"


def scenario(
    host_mib: int,
    *,
    quick: bool,
    duration_s: float = 60.0,
    policy: str = "two_list",
    memcg: bool = False,
    guest: bool = False,
) -> Scenario:
    """Two VMs x 2 vCPUs, Zipf(0.99) over 32 MiB (16 MiB in quick mode) of 64 MiB each;
    ``memcg``: each VM in its own memcg, unlimited (as libvirt makes them); ``guest``: each
    VM with its guest kernel modelled, its process as large as its RAM (the working set fits:
    the guest never reclaims, so what changes is the guest's page walk and faults)."""
    ws = 16 if quick else 32
    vm: dict[str, Any] = {
        "name": "vm",
        "count": 2,
        "memory_mib": 64,
        "working_set_mib": ws,
        "vcpus": 2,
        "access_rate_per_s": 1_000_000,
        "write_ratio": 0.3,
        "workload": {"type": "zipf", "alpha": 0.99},
    }
    if memcg:
        vm["memcg"] = {}
    if guest:
        vm["guest"] = {}
    return parse_scenario(
        {
            "name": "bench-model",
            "seed": 1,
            "duration_s": duration_s,
            "host": {"memory_mib": host_mib},
            "reclaim": {"policy": policy},
            "swap": {"size_mib": 1024},
            "vms": [vm],
        },
        "bench-model",
    )


def merged_pages(sc: Scenario, per_vcpu: int) -> np.ndarray:
    """The scenario's vCPU streams, interleaved batch by batch, as global page ids."""
    streams, bases, base = [], [], 0
    for name, cfg in sc.vm_list():
        pages = sc.host.pages(cfg.memory_mib)
        for j in range(cfg.vcpus):
            streams.append(vcpu_stream(sc, name, cfg, pages, j))
            bases.append(base)
        base += pages
    b = sc.engine.batch_accesses
    parts = []
    for _ in range(per_vcpu // b):
        for s, off in zip(streams, bases, strict=True):
            parts.append(s.next(b)[0] + off)
    return np.concatenate(parts)


def size_host(target_rate: float, *, quick: bool) -> tuple[int, float]:
    """Host MiB whose usable frames give the streams about ``target_rate`` exact-LRU misses.

    Usable frames are the frames less the midpoint of the low and high watermarks (kswapd keeps
    free memory between them); misses are counted over the second half of the sample, so cold
    misses of the start do not count. Returns the size and its LRU miss ratio.
    """
    sc = scenario(64, quick=quick)
    pages = merged_pages(sc, 200_000 if quick else 500_000)
    dist = stack_distances(pages)[pages.size // 2 :]
    total_mib = sum(cfg.memory_mib for _, cfg in sc.vm_list())
    best = (total_mib, 1.0)
    for mib in range(8, total_mib + 1):
        frames = sc.host.pages(mib)
        wm = setup_per_zone_wmarks(frames)
        usable = frames - (wm.low + wm.high) // 2
        rate = float(np.count_nonzero((dist > usable) | (dist == COLD))) / dist.size
        if abs(rate - target_rate) < abs(best[1] - target_rate):
            best = (mib, rate)
    return best


@dataclass(frozen=True, slots=True)
class Window:
    """One timed stretch of a run."""

    accesses: int
    faults: int
    wall_s: float
    cpu_s: float
    sim_s: float
    warm_wall_s: float

    @property
    def rate(self) -> float:
        """Accesses per wall second."""
        return self.accesses / self.wall_s

    @property
    def cpu_rate(self) -> float:
        """Accesses per second of process CPU time."""
        return self.accesses / self.cpu_s if self.cpu_s else 0.0

    @property
    def fault_rate(self) -> float:
        """Faults per access."""
        return self.faults / max(1, self.accesses)


def drive(
    run_until: Callable[[int], None],
    now: Callable[[], int],
    counts: Callable[[], tuple[int, int]],
    warm: Callable[[], bool],
    *,
    budget_s: float,
    horizon_ns: int,
) -> Window:
    """Warm up (untimed) until ``warm()``, then time slices until ``budget_s`` or the horizon."""
    w0 = time.perf_counter()
    while not warm() and now() < horizon_ns:
        run_until(now() + SLICE_NS)
    warm_wall = time.perf_counter() - w0
    a0, f0 = counts()
    t_sim0 = now()
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < budget_s and now() < horizon_ns:
        run_until(now() + SLICE_NS)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    a1, f1 = counts()
    return Window(a1 - a0, f1 - f0, wall, cpu, (now() - t_sim0) / 1e9, warm_wall)


def settle(memory_full: Callable[[], bool], now: Callable[[], int]) -> Callable[[], bool]:
    """Warm once memory has filled and ``SETTLE_S`` of simulated time has passed since."""
    full_at: list[int] = []

    def warm() -> bool:
        if not full_at and memory_full():
            full_at.append(now())
        return bool(full_at) and now() - full_at[0] >= SETTLE_S * 1e9

    return warm


def after(warm_ns: int, now: Callable[[], int]) -> Callable[[], bool]:
    """Warm after a fixed stretch of simulated time."""
    return lambda: now() >= warm_ns


def run_memsim(
    sc: Scenario,
    budget_s: float,
    warm_ns: int | None,
    *,
    general: bool = False,
    off: tuple[str, ...] = (),
) -> Window:
    """The real engine; ``warm_ns`` None means warm-up until memory is full (plus settling).
    ``general``: without the compiled host core (sim/core.py), as a configuration it does not
    take runs (the fused fault, built on it, goes with it); ``off``: without those fast
    paths."""
    if general or off:
        with fast.disabled(*off, *(("host_core",) if general else ())):
            return run_memsim(sc, budget_s, warm_ns)
    w = build_world(sc, None)
    w.start()
    env, mem = w.env, w.mem

    def now() -> int:
        return int(env.now)

    def counts() -> tuple[int, int]:
        return (
            sum(vm.stats.accesses for vm in w.vms),
            sum(sum(vm.stats.faults.values()) for vm in w.vms),
        )

    warm = (
        after(warm_ns, now)
        if warm_ns is not None
        else settle(lambda: mem.nr_free <= mem.wmark.low, now)
    )
    return drive(
        lambda t: env.run(until=t), now, counts, warm, budget_s=budget_s, horizon_ns=w.horizon_ns
    )


def run_naive(sc: Scenario, budget_s: float, warm_ns: int | None) -> Window:
    """The naive model, warmed and timed like ``run_memsim``."""
    h = NaiveHost(sc)
    env = h.env

    def now() -> int:
        return int(env.now)

    warm = after(warm_ns, now) if warm_ns is not None else settle(lambda: h.memory_full, now)
    return drive(
        lambda t: env.run(until=t),
        now,
        h.counts,
        warm,
        budget_s=budget_s,
        horizon_ns=round(sc.duration_s * 1e9),
    )


def median_window(fn: Callable[[], Window], repeat: int) -> tuple[Window, list[Window]]:
    """Run ``fn`` ``repeat`` times; the window with the median rate, and all of them."""
    wins = [fn() for _ in range(repeat)]
    ranked = sorted(wins, key=lambda w: w.rate)
    return ranked[len(ranked) // 2], wins


def window_details(prefix: str, w: Window, all_w: list[Window]) -> dict[str, Any]:
    """A window's figures for a row's details."""
    return {
        f"{prefix}_accesses": w.accesses,
        f"{prefix}_faults": w.faults,
        f"{prefix}_fault_rate": round(w.fault_rate, 6),
        f"{prefix}_wall_s": round(w.wall_s, 3),
        f"{prefix}_cpu_s": round(w.cpu_s, 3),
        f"{prefix}_sim_s": round(w.sim_s, 4),
        f"{prefix}_warmup_wall_s": round(w.warm_wall_s, 2),
        f"{prefix}_rates": [round(x.rate) for x in all_w],
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Hit-path and full-model rows (median of 3 repeats; 1 in quick mode)."""
    repeat = 1 if quick else 3
    budget = 0.5 if quick else 4.0
    naive_budget = 0.5 if quick else 3.0
    rows: list[dict[str, Any]] = []

    # hit path: everything resident after warm-up
    sc = scenario(512, quick=quick)
    warm_ns = round((0.1 if quick else 0.5) * 1e9)
    ours, ours_all = median_window(lambda: run_memsim(sc, budget, warm_ns), repeat)
    base, base_all = median_window(lambda: run_naive(sc, naive_budget, warm_ns), repeat)
    rows.append(
        _accesses_row(
            "hit path",
            "guest accesses/s, all resident",
            ours,
            base,
            target=Target(min_value=20e6, min_ratio=30),
            note=f"hit share {1 - ours.fault_rate:.4%} (naive {1 - base.fault_rate:.4%})",
            host_mib=512,
            **window_details("memsim", ours, ours_all),
            **window_details("naive", base, base_all),
        )
    )

    # full model at ~1% and ~5% faults
    hosts: list[int] = []
    for target_rate, floor, ratio in ((0.01, 3e6, 4.0), (0.05, 1e6, 2.0)):
        host_mib, lru_rate = size_host(target_rate, quick=quick)
        hosts.append(host_mib)
        sc = scenario(host_mib, quick=quick)
        ours, ours_all = median_window(lambda sc=sc: run_memsim(sc, budget, None), repeat)
        base, base_all = median_window(lambda sc=sc: run_naive(sc, naive_budget, None), repeat)
        gen, gen_all = median_window(
            lambda sc=sc: run_memsim(sc, budget, None, general=True), repeat
        )
        pct = f"{target_rate:.0%}"
        common = {
            "host_mib": host_mib,
            "lru_estimate_fault_rate": round(lru_rate, 5),
            **window_details("memsim", ours, ours_all),
            **window_details("naive", base, base_all),
        }
        note = (
            f"fault rate {ours.fault_rate:.2%} (naive {base.fault_rate:.2%}), {host_mib} MiB host"
        )
        rows.append(
            _accesses_row(
                f"full model ~{pct}",
                "guest accesses/s",
                ours,
                base,
                target=Target(min_value=floor, min_ratio=ratio),
                note=note,
                **common,
            )
        )
        rows.append(
            _accesses_row(
                f"full model ~{pct}",
                "guest accesses/s, host core vs general path",
                ours,
                gen,
                baseline=GENERAL,
                note=f"general path fault rate {gen.fault_rate:.2%}, {host_mib} MiB host",
                **window_details("general", gen, gen_all),
            )
        )
        nof, nof_all = median_window(
            lambda sc=sc: run_memsim(sc, budget, None, off=("compiled_fault",)), repeat
        )
        rows.append(
            _accesses_row(
                f"full model ~{pct}",
                "guest accesses/s, compiled fault vs without it",
                ours,
                nof,
                baseline=NO_FAULT_CORE,
                note=f"without it: fault rate {nof.fault_rate:.2%}, {host_mib} MiB host",
                **window_details("nofault", nof, nof_all),
            )
        )
        rows.append(
            row(
                f"full model ~{pct}",
                "faults handled/s",
                ours.faults / ours.wall_s,
                "faults/s",
                baseline=NAIVE,
                baseline_value=base.faults / base.wall_s,
                value_cpu=ours.faults / ours.cpu_s if ours.cpu_s else None,
                baseline_value_cpu=base.faults / base.cpu_s if base.cpu_s else None,
                note=note,
                **common,
            )
        )
        rows.append(
            row(
                f"full model ~{pct}",
                "fault rate (faults/access)",
                ours.fault_rate,
                "",
                note=f"aimed at {pct}; exact-LRU estimate {lru_rate:.2%}",
                naive_fault_rate=round(base.fault_rate, 6),
                host_mib=host_mib,
            )
        )

    # the ~1% world with a memcg per VM: two-list lruvecs per memcg, with the core and without
    sc = scenario(hosts[0], quick=quick, memcg=True)
    ours, ours_all = median_window(lambda: run_memsim(sc, budget, None), repeat)
    gen, gen_all = median_window(lambda: run_memsim(sc, budget, None, general=True), repeat)
    rows.append(
        _accesses_row(
            "memcg two-list ~1%",
            "guest accesses/s, host core vs general path",
            ours,
            gen,
            baseline=GENERAL,
            note=(
                f"a memcg per VM; fault rate {ours.fault_rate:.2%} "
                f"(general path {gen.fault_rate:.2%}), {hosts[0]} MiB host"
            ),
            host_mib=hosts[0],
            **window_details("memsim", ours, ours_all),
            **window_details("general", gen, gen_all),
        )
    )

    # the ~1% world with a guest kernel in each VM (which never reclaims): the guest layer's cost
    sc = scenario(hosts[0], quick=quick, guest=True)
    plain = scenario(hosts[0], quick=quick)
    ours, ours_all = median_window(lambda: run_memsim(sc, budget, None), repeat)
    base, base_all = median_window(lambda: run_memsim(plain, budget, None), repeat)
    rows.append(
        _accesses_row(
            "guest kernel ~1%",
            "guest accesses/s, with a guest kernel vs without",
            ours,
            base,
            baseline="the same world with the workload touching gfns directly",
            note=(
                f"fault rate {ours.fault_rate:.2%} (without {base.fault_rate:.2%}), "
                f"{hosts[0]} MiB host"
            ),
            host_mib=hosts[0],
            **window_details("memsim", ours, ours_all),
            **window_details("plain", base, base_all),
        )
    )
    return rows


def _accesses_row(
    bench: str, metric: str, ours: Any, base: Any, baseline: str = NAIVE, **rest: Any
) -> dict[str, Any]:
    """A guest-accesses/s row of memsim against ``baseline`` (the naive model unless said),
    wall and CPU time."""
    return row(
        bench,
        metric,
        ours.rate,
        "acc/s",
        baseline=baseline,
        baseline_value=base.rate,
        value_cpu=ours.cpu_rate,
        baseline_value_cpu=base.cpu_rate,
        **rest,
    )


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=1, default=str))

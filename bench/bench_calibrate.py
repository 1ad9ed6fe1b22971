"""memsim on a ``memsim calibrate`` scenario: simulation speed, and the real guest beside it.

Scenario: ``hotcold-48`` of ``configs/calibrate.yaml`` (a 64 MiB guest under a 48 MiB memcg
limit: a fill writing each of its 16k data pages, then 200k hot/cold accesses); ``--quick``
keeps the guest and limit but cuts the run phase to 20k accesses. The stream and its trace file
are made untimed; one untimed run warms the JIT.

(a) memsim: ``sim.calibrate.harness.run_sim`` exactly as ``memsim calibrate`` runs it (World
built from the matching config, run to the fill/run boundary and to the end), under the held
policy ``two_list`` (a per-memcg two-list lruvec). The figure is accesses simulated (fill plus
run) per second of wall time, median of 3 runs (1 quick). Baselines, same run, same stream:
the ``lru`` policy through the same ``run_sim`` (one global exact-LRU list, the memcg turned
into the host's size), which isolates what the memcg and the two-list policy cost; and
``sim.replay.replay`` (demand-mode LRU at frames = the limit's pages less the VMM overhead),
the cheapest memsim answer to "how many faults", which shows what the full discrete-event
model costs over it.

(b) the real guest, as root with /dev/kvm, a C compiler, cgroup v1 memory and no active swap:
``harness.run_kernel`` in a harness session (swapfile, memcg, memcg stats flushed), the VMM
overhead measured first as the harness does; the figure is accesses per second of guest time
(time inside ``KVM_RUN`` over both phases), median of the repetitions, and memsim's wall time
over the guest's time for the same accesses. The harness refuses to start beside another live
session; then the row is skipped and says so. Without root the rows are skipped.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import REPO, row, skipped, timed
from sim.calibrate import config as calconfig
from sim.calibrate import harness
from sim.calibrate.config import CalibrationConfig, CalScenario

PIN_ONE_CORE = True
CONFIG = REPO / "configs" / "calibrate.yaml"
SCENARIO = "hotcold-48"
QUICK_ACCESSES = 20_000
HELD, BASE = "two_list", "lru"
NOMINAL_OVERHEAD_KIB = 2048  # used when the real overhead cannot be measured here
BENCH = "calibrate"


def scenario(quick: bool) -> tuple[CalibrationConfig, CalScenario]:
    """The calibration config reduced to the one scenario (``--only``), smaller with quick."""
    cfg = calconfig.load(CONFIG)
    (sc,) = [s for s in cfg.scenarios if s.name == SCENARIO]
    if quick:
        sc = sc.model_copy(update={"accesses": QUICK_ACCESSES})
    return cfg.model_copy(update={"scenarios": [sc], "repetitions": 2 if quick else 3}), sc


def real_unavailable() -> str | None:
    """Why the real guest cannot run here (None if it can)."""
    from sim.calibrate import vmm
    from sim.calibrate.host import Host

    h = Host()
    if not h.is_root():
        return "not root"
    if not vmm.kvm_usable():
        return "no usable /dev/kvm"
    if vmm.compiler() is None:
        return "no C compiler"
    if not (h.cgroup_root / "memory.limit_in_bytes").exists():
        return "no cgroup v1 memory controller"
    if h.active_swaps():
        return "swap already active"
    return None


@contextlib.contextmanager
def unpinned() -> Any:
    """Every CPU allowed while the real guest runs (its VMM inherits our affinity, and the
    harness runs unpinned), the bench's pinning restored after."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    old = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def run_real(cfg: CalibrationConfig, sc: CalScenario) -> dict[str, Any]:
    """The scenario on the kernel ``cfg.repetitions`` times; guest time and the overhead."""
    import numpy as np

    from sim.calibrate import host, streams

    chunks = harness.fill_chunks(sc.pages) + list(streams.chunks(sc.stream()))
    want = streams.expected(*(np.concatenate(a) for a in zip(*chunks, strict=True)))
    guest_ns, oom = [], 0
    with unpinned(), host.session() as s, s.swapfile(cfg.swapfile_mib << 20) as swapfile:
        overhead = harness.measure_overhead(s, sc.mem_mib, cfg.timeout_s)
        rotational = harness.swap_rotational(swapfile)
        with s.sysctls({"vm.page-cluster": sc.page_cluster}):
            for rep in range(cfg.repetitions):
                r = harness.run_kernel(s, sc, rep, cfg.timeout_s, chunks, cfg.stats_flush_ms)
                if r.oom_killed:
                    oom += 1
                    continue
                if r.detail["checksum"] != want.checksum:  # a broken run: not a figure
                    raise RuntimeError(f"{sc.name}: the guest's memory does not match the stream")
                guest_ns.append(sum(p.time_ns for p in r.phases))
    facts = harness.HostFacts({sc.mem_mib: overhead}, rotational)
    return {"guest_ns": guest_ns, "oom_killed": oom, "facts": facts, "n": want.accesses}


def run_memsim(
    cfg: CalibrationConfig,
    sc: CalScenario,
    policy: str,
    trace: Path,
    facts: harness.HostFacts,
    rep: int,
) -> tuple[Any, harness.Run]:
    """Timed ``run_sim`` of the scenario under ``policy``: (timing, the last run)."""
    raw = harness.sim_config(cfg, sc, policy, trace, facts)
    return timed(lambda: harness.run_sim(raw, sc, policy), rep)


def majors(r: harness.Run) -> int:
    """Major faults over both phases."""
    return sum(p.counters["pgmajfault"] for p in r.phases)


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows: memsim's speed against its baselines, then the real guest (or why not)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sim.calibrate.vmm import CalibrateError
    from sim.replay import replay

    cfg, sc = scenario(quick)
    rep = 1 if quick else 3
    total = sc.pages + sc.accesses
    why = real_unavailable()
    real: dict[str, Any] | None = None
    if why is None:
        try:
            real = run_real(cfg, sc)
        except CalibrateError as exc:
            why = str(exc)
    facts = real["facts"] if real else harness.HostFacts({sc.mem_mib: NOMINAL_OVERHEAD_KIB})
    overhead = facts.overhead_kib[sc.mem_mib]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        g, w = harness.stream_arrays(sc)
        trace = Path(tmp) / f"{sc.name}.parquet"
        pq.write_table(pa.table({"page": g, "write": w}), trace)
        warm = sc.model_copy(update={"accesses": 2_000})
        warm_trace = Path(tmp) / "warm.parquet"
        wg, ww = harness.stream_arrays(warm)
        pq.write_table(pa.table({"page": wg, "write": ww}), warm_trace)
        for policy in (HELD, BASE):  # untimed: JIT and imports
            harness.run_sim(harness.sim_config(cfg, warm, policy, warm_trace, facts), warm, policy)
        t_held, r_held = run_memsim(cfg, sc, HELD, trace, facts, rep)
        t_base, r_base = run_memsim(cfg, sc, BASE, trace, facts, rep)
        frames = (sc.limit_mib * 1024 - overhead) // 4
        replay(g[:1000], w[:1000], frames=frames, policy="lru")  # untimed warm-up
        c0 = time.process_time()
        rp = replay(g, w, frames=frames, policy="lru")
        rp_cpu = time.process_time() - c0
    rate = total / t_held.wall_s
    what = f"{sc.name}: {sc.mem_mib} MiB guest, {sc.limit_mib} MiB limit, {total:,} accesses"
    rows.append(
        row(
            BENCH,
            f"memsim {HELD} accesses/s vs {BASE}",
            rate,
            "acc/s",
            baseline=f"memsim {BASE} (global list, no memcg)",
            baseline_value=total / t_base.wall_s,
            value_cpu=total / t_held.cpu_s,
            baseline_value_cpu=total / t_base.cpu_s,
            note=f"{what} (fill + run); majors {HELD} {majors(r_held):,}, {BASE} "
            f"{majors(r_base):,}; VMM overhead {overhead} KiB"
            + (" (measured)" if real else " (nominal)"),
            walls=t_held.walls,
            baseline_walls=t_base.walls,
            accesses=total,
        )
    )
    rows.append(
        row(
            BENCH,
            f"memsim {HELD} accesses/s vs demand replay",
            rate,
            "acc/s",
            baseline="sim.replay.replay lru (no time, no memcg)",
            baseline_value=total / rp["replay_s"],
            value_cpu=total / t_held.cpu_s,
            baseline_value_cpu=total / rp_cpu if rp_cpu else None,
            note=f"replay at {frames:,} frames (limit less overhead): {rp['faults']:,} faults "
            f"(first touches included) against {HELD}'s {majors(r_held):,} majors + "
            f"{sc.pages:,} first touches",
            replay_s=rp["replay_s"],
        )
    )
    if real is None or not real["guest_ns"]:
        why = why or f"the guest was OOM-killed in all {cfg.repetitions} repetitions"
        rows.append(skipped(BENCH, "real guest accesses/s (guest time)", "acc/s", why))
        rows.append(skipped(BENCH, "memsim wall time / real guest time", "x", why))
        return rows
    guest_s = statistics.median(real["guest_ns"]) / 1e9
    rows.append(
        row(
            BENCH,
            "real guest accesses/s (guest time)",
            real["n"] / guest_s,
            "acc/s",
            note=f"{what}; time inside KVM_RUN, median of {len(real['guest_ns'])} "
            f"(OOM-killed: {real['oom_killed']})",
            guest_ns=real["guest_ns"],
        )
    )
    rows.append(
        row(
            BENCH,
            "memsim wall time / real guest time",
            t_held.wall_s / guest_s,
            "x",
            note=f"memsim {HELD} {t_held.wall_s * 1e3:,.0f} ms of wall time to simulate what the "
            f"guest ran in {guest_s * 1e3:,.0f} ms (> 1: slower than real time)",
            memsim_wall_s=t_held.wall_s,
            guest_s=guest_s,
        )
    )
    return rows

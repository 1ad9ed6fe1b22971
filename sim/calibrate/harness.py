"""Run calibration scenarios on the real kernel and in memsim, phase by phase.

Models
    A run has two phases, split exactly at an access count: ``fill`` (the guest writes each
    data page once, in order, under the limit) and ``run`` (the scenario's stream). For each
    phase both sides report the same counters, named as in /proc/vmstat:

    - ``pgmajfault`` (swap-ins that waited for the device), ``pswpin``, ``pswpout``,
      ``pgscan`` / ``pgsteal`` (pages scanned / reclaimed by the memcg's limit reclaim:
      ``pgscan_anon + pgscan_file`` and ``pgsteal_anon + pgsteal_file``, which count every
      reclaim, on both sides; ``pgscan_direct`` counts global direct reclaim only, in the
      kernel and in memsim alike), ``workingset_refault_anon``,
      ``pgactivate``, ``pgdeactivate``;
    - ``time_ns``: the guest's time in the phase (the kernel: time inside ``KVM_RUN``; memsim:
      simulated time from the phase's first access to its last);
    - whether the memcg OOM-killed the guest.

Matching memsim to the kernel
    One VM with one vCPU and the guest's data pages as its memory, replaying the same stream
    as a trace that plays once; a memcg with ``memory.max`` = the limit and the VMM's own
    charged memory (measured: the peak usage of a fill without a limit minus the data pages)
    as ``vmm_overhead_kib``; ``memory.memsw.limit_in_bytes`` becomes ``memory.swap.max`` =
    memsw - limit (v2's split of the same budget); shadow paging with one spte per gfn; the
    policy, swappiness and page-cluster of the scenario; a host far larger than the guest (the
    real one has 24 GiB), so only the memcg limit reclaims.

Simplifications
    /proc/vmstat is system-wide: the harness assumes nothing else on the host reclaims or
    swaps while it runs (it refuses to start while other swap is active). The kernel's own
    pages (page tables, KVM's shadow pages) are inside the measured overhead, as a constant.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim.calibrate import streams, vmm
from sim.calibrate.config import CalibrationConfig, CalScenario
from sim.calibrate.host import Session
from sim.calibrate.vmm import CalibrateError
from sim.config import read_yaml

PHASES = ("fill", "run")
COUNTERS = (
    "pgmajfault",
    "pswpin",
    "pswpout",
    "pgscan",
    "pgsteal",
    "workingset_refault_anon",
    "pgactivate",
    "pgdeactivate",
    "swap_ra",
    "swap_ra_hit",
)
SIM_HOST_MIB_MIN = 1024  # memsim's host: ample, so that only the memcg limit reclaims
MEMCG_POLICIES = ("two_list", "mglru")  # the policies with per-memcg lruvecs
DEFAULT_ACCESS_NS = 20.0  # a resident access before calibration (measured: 5-13 ns)
KERNEL_FLUSH_MS = 2000.0  # flush_memcg_stats_dwork: FLUSH_TIME = 2 * HZ


@dataclass
class Phase:
    """One phase of one run (real or simulated)."""

    accesses: int
    time_ns: int
    counters: dict[str, int]
    first_touch: int = 0  # pages touched for the first time (the fill's pages)
    deltas: dict[str, dict[str, int]] = field(default_factory=dict)  # kernel: every counter


@dataclass
class Run:
    """One run of one scenario: its phases (fewer if it was OOM-killed) and the verdict."""

    scenario: str
    side: str  # "kernel" or a memsim policy
    rep: int
    oom_killed: bool
    phases: list[Phase] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> Phase | None:
        i = PHASES.index(name)
        return self.phases[i] if i < len(self.phases) else None


@dataclass
class HostFacts:
    """What a real calibration learned about the host that memsim's matching mode needs."""

    overhead_kib: dict[int, int]  # per guest size (MiB): what the VMM charges besides data
    swap_rotational: bool = False  # the swapfile's device: rotational means slot readahead

    def to_json(self) -> dict[str, Any]:
        return {
            "overhead_kib": {str(k): v for k, v in self.overhead_kib.items()},
            "swap_rotational": self.swap_rotational,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HostFacts:
        return cls(
            {int(k): int(v) for k, v in d["overhead_kib"].items()},
            bool(d.get("swap_rotational", False)),
        )


def swap_rotational(path: Path, sys_root: Path = Path("/sys")) -> bool:
    """Whether the block device holding ``path`` is rotational (its queue's ``rotational``;
    a partition's queue is its disk's). The kernel swaps in by slot (cluster readahead) when
    any active swap area is on such a device. Unknown devices count as not rotational."""
    st = path.stat()
    dev = sys_root / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    for queue in (dev / "queue" / "rotational", dev / ".." / "queue" / "rotational"):
        try:
            return queue.read_text().strip() == "1"
        except OSError:
            continue
    return False


def fill_chunks(pages: int) -> list[tuple[NDArray[np.int64], NDArray[np.bool_]]]:
    """The fill phase: one write to every data page, in order."""
    return [(np.arange(pages, dtype=np.int64), np.ones(pages, dtype=np.bool_))]


def stream_arrays(sc: CalScenario) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Fill then run, as one pair of arrays (what memsim replays)."""
    g, w = streams.generate(sc.stream())
    fill = fill_chunks(sc.pages)[0]
    return np.concatenate([fill[0], g]), np.concatenate([fill[1], w])


# -- the kernel -------------------------------------------------------------------------------


def _counters(vmstat: dict[str, int]) -> dict[str, int]:
    """A phase's counters from a vmstat delta, the kernel's or memsim's (the same names)."""
    c = {k: int(vmstat.get(k, 0)) for k in COUNTERS if k not in ("pgscan", "pgsteal")}
    c["pgscan"] = int(vmstat.get("pgscan_anon", 0) + vmstat.get("pgscan_file", 0))
    c["pgsteal"] = int(vmstat.get("pgsteal_anon", 0) + vmstat.get("pgsteal_file", 0))
    return c


def measure_overhead(s: Session, mem_mib: int, timeout_s: float) -> int:
    """KiB the VMM charges to its memcg besides the guest's data pages: the peak of a fill
    without a limit (guest tables, stream buffer, heap, KVM's shadow pages) minus the data."""
    pages = streams.data_pages(mem_mib)
    with s.cgroup(1 << 40) as cg:
        r = vmm.run(fill_chunks(pages), mem_mib=mem_mib, cgroup=cg, timeout_s=timeout_s)
    assert r.cgroup is not None
    return max(0, (r.cgroup.max_usage_bytes - pages * 4096) >> 10)


@contextlib.contextmanager
def stats_flusher(path: Path, period_ms: float | None) -> Iterator[None]:
    """While inside, read ``path`` (a memory.stat) every ``period_ms`` from a thread: each read
    flushes the memcg's rstat counters, which the kernel otherwise aggregates lazily (every
    2 s, and when reclaim finds them 4 s old). Nothing with ``None``."""
    if period_ms is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_ms / 1000):
            with contextlib.suppress(OSError):
                path.read_bytes()

    t = threading.Thread(target=loop, name="memcg-stats-flush", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def run_kernel(
    s: Session,
    sc: CalScenario,
    rep: int,
    timeout_s: float,
    chunks: list[Any],
    flush_ms: float | None = None,
) -> Run:
    """One real run of ``sc`` in a fresh memcg (the session holds swap and sysctls)."""
    memsw = None if sc.memsw_limit_mib is None else sc.memsw_limit_mib << 20
    with (
        s.cgroup(sc.limit_mib << 20, swappiness=sc.swappiness, memsw_limit_bytes=memsw) as cg,
        stats_flusher(cg.path / "memory.stat", flush_ms),
    ):
        try:
            r = vmm.run(
                chunks,
                mem_mib=sc.mem_mib,
                cgroup=cg,
                timeout_s=timeout_s,
                phase_at=[sc.pages],
            )
        except CalibrateError as exc:
            if exc.cgroup is not None and exc.cgroup.oom_killed:
                return Run(sc.name, "kernel", rep, True, detail={"error": str(exc)})
            raise
    phases = [
        Phase(
            accesses=p.accesses,
            time_ns=p.loop_ns,
            counters=_counters(p.vmstat_delta or {}),
            first_touch=sc.pages if i == 0 else 0,
            deltas={"vmstat": p.vmstat_delta or {}, "memory.stat": p.memcg_stat_delta or {}},
        )
        for i, p in enumerate(r.phases)
    ]
    assert r.cgroup is not None
    detail = {
        "wall_ns": r.wall_ns,
        "checksum": r.checksum,
        "max_usage_bytes": r.cgroup.max_usage_bytes,
        "failcnt": r.cgroup.failcnt,
        "memcg_pgmajfault": r.cgroup.stat_delta.get("pgmajfault", 0),
    }
    return Run(sc.name, "kernel", rep, False, phases, detail)


def run_kernel_all(
    cfg: CalibrationConfig,
    session: Callable[[], Any],
    say: Callable[[str], None],
) -> tuple[list[Run], HostFacts]:
    """Every scenario ``cfg.repetitions`` times on the real kernel; also the VMM overhead of
    each guest size and the swap device's kind. Checks every completed run's memory against
    the stream's prediction."""
    runs: list[Run] = []
    overhead: dict[int, int] = {}
    with session() as s, s.swapfile(cfg.swapfile_mib << 20) as swapfile:
        rotational = swap_rotational(swapfile)
        say(f"swapfile {swapfile}: {'rotational' if rotational else 'non-rotational'} device")
        for mem in sorted({sc.mem_mib for sc in cfg.scenarios}):
            overhead[mem] = measure_overhead(s, mem, cfg.timeout_s)
            say(f"VMM overhead of a {mem} MiB guest: {overhead[mem]} KiB")
        for sc in cfg.scenarios:
            fill = fill_chunks(sc.pages)
            run = list(streams.chunks(sc.stream()))
            chunks = fill + run
            g = np.concatenate([c[0] for c in chunks])
            w = np.concatenate([c[1] for c in chunks])
            want = streams.expected(g, w)
            with s.sysctls({"vm.page-cluster": sc.page_cluster}):
                for rep in range(cfg.repetitions):
                    flush = cfg.stats_flush_ms if sc.flush_stats else None
                    r = run_kernel(s, sc, rep, cfg.timeout_s, chunks, flush)
                    if not r.oom_killed and r.detail["checksum"] != want.checksum:
                        raise CalibrateError(
                            f"scenario {sc.name}: the guest's memory does not match the stream "
                            f"(checksum {r.detail['checksum']} != {want.checksum})"
                        )
                    runs.append(r)
                    say(_line(r))
    return runs, HostFacts(overhead, rotational)


def _line(r: Run) -> str:
    if r.oom_killed:
        return f"{r.scenario:<16} {r.side:<9} rep {r.rep}: OOM-killed"
    ph = r.phase("run")
    assert ph is not None
    c = ph.counters
    return (
        f"{r.scenario:<16} {r.side:<9} rep {r.rep}: majors {c['pgmajfault']:>7} "
        f"pswpout {c['pswpout']:>7} pgscan {c['pgscan']:>7} run {ph.time_ns / 1e6:8.1f} ms"
    )


# -- memsim -----------------------------------------------------------------------------------


def sim_config(
    cfg: CalibrationConfig,
    sc: CalScenario,
    policy: str,
    trace: Path,
    facts: HostFacts,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The memsim scenario matching ``sc`` on the kernel (see the module docstring); with a
    cost profile (``profile.yaml``) included as a user would, and the guest's access rate
    from its ``measured`` section."""
    overhead_kib = facts.overhead_kib[sc.mem_mib]
    memcg: dict[str, Any] | None = {"max_mib": sc.limit_mib, "vmm_overhead_kib": overhead_kib}
    host: dict[str, Any] = {"memory_mib": max(SIM_HOST_MIB_MIN, 4 * sc.mem_mib)}
    swap_mib = cfg.swapfile_mib
    if sc.memsw_limit_mib is not None:
        assert memcg is not None
        memcg["swap_max_mib"] = sc.memsw_limit_mib - sc.limit_mib
    reclaim: dict[str, Any] = {"policy": policy}
    if policy == "two_list":
        reclaim["swappiness"] = sc.swappiness
    # the memcg statistics as the real run keeps them: flushed by the harness's reader every
    # stats_flush_ms, or by the kernel's own worker every 2 s (plus the VMM's own reads of
    # memory.stat, which run_sim mirrors)
    flush_ms = cfg.stats_flush_ms if sc.flush_stats else None
    host["memcg_stats"] = "lazy"
    host["memcg_stats_flush_ms"] = flush_ms if flush_ms is not None else KERNEL_FLUSH_MS
    if policy not in MEMCG_POLICIES:
        # a global list: the host itself is the limit (what the guest's pages may hold), with
        # watermarks as small as they go; memory+swap becomes the swap device's size
        memcg = None
        host = {
            "memory_mib": -(-(sc.limit_mib * 1024 - overhead_kib) // 1024),
            "min_free_kbytes": 128,
            "watermark_scale_factor": 1,
        }
        if sc.memsw_limit_mib is not None:
            swap_mib = sc.memsw_limit_mib - sc.limit_mib
    rotational = {"rotational": True} if facts.swap_rotational else {}
    access_ns = DEFAULT_ACCESS_NS
    if profile is not None:
        measured = read_yaml(profile).get("measured") or {}
        access_ns = float(measured.get("access_ns") or DEFAULT_ACCESS_NS)
    raw: dict[str, Any] = {
        "name": f"calibrate-{sc.name}",
        "seed": 1,
        "duration_s": 3600.0,
        "host": host,
        "reclaim": reclaim,
        "swap": {"size_mib": swap_mib, "page_cluster": sc.page_cluster, **rotational},
        "kvm": {"mmu": "shadow", "shadow_sptes_per_gfn": 1},  # one guest page table
        "costs": {"profile": str(profile)} if profile is not None else {},
        "vms": [
            {
                "name": "guest",
                "memory_mib": sc.mem_mib - 2,
                "vcpus": 1,
                "access_rate_per_s": max(1, round(1e9 / access_ns)),
                "workload": {"type": "trace", "path": str(trace), "repeat": False},
                **({"memcg": memcg} if memcg is not None else {}),
            }
        ],
    }
    return raw


class _Until:
    """A stream that hands out accesses up to a boundary, then none (the vCPU halts);
    ``done`` counts the accesses handed out before it, from ``start``."""

    def __init__(self, inner: Any, start: int, stop: int) -> None:
        self.inner, self.stop, self.done = inner, stop, start

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        k = min(n, self.stop - self.done)
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.bool_)
        self.done += k
        g, w = self.inner.next(k)
        return g, w


def run_sim(raw: dict[str, Any], sc: CalScenario, policy: str) -> Run:
    """memsim on ``raw``, stopped at the fill/run boundary to read its counters."""
    from sim.config import parse_scenario
    from sim.engine import World

    world = World(parse_scenario(raw, f"calibration scenario {sc.name}"))
    vm = world.vms[0]
    vcpu = vm.vcpus[0]
    inner = vcpu.stream
    total = sc.pages + sc.accesses
    world.start()
    env = world.env
    phases: list[Phase] = []
    before = world.snapshot(int(env.now))
    t_before = int(env.now)
    for i, (start, stop) in enumerate(((0, sc.pages), (sc.pages, total))):
        vcpu.stream = _Until(inner, start, stop)
        if i:
            if getattr(world, "memcg", None) is not None:
                world.memcg.flush_stats(0)  # the VMM reads memory.stat at the boundary
            vcpu.proc = env.process(vcpu.run())
        assert vcpu.proc is not None
        env.run(until=vcpu.proc)
        now = int(env.now)
        after = world.snapshot(now)
        if vm.mm.dead:
            return Run(sc.name, policy, 0, True, phases)
        vs0, vs1 = before["vmstat"], after["vmstat"]
        delta = {k: vs1.get(k, 0) - vs0.get(k, 0) for k in vs1}
        phases.append(
            Phase(
                accesses=after["vms"][0]["accesses"] - before["vms"][0]["accesses"],
                time_ns=now - t_before,
                counters=_counters(delta),
                first_touch=after["vms"][0]["faults"].get("first_touch", 0)
                - before["vms"][0]["faults"].get("first_touch", 0),
            )
        )
        before, t_before = after, now
    return Run(sc.name, policy, 0, False, phases)


def run_sim_all(
    cfg: CalibrationConfig,
    facts: HostFacts,
    workdir: Path,
    say: Callable[[str], None],
    profile: Path | None = None,
    policies: list[str] | None = None,
) -> list[Run]:
    """memsim's prediction of every scenario under each policy (deterministic: one run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: list[Run] = []
    for sc in cfg.scenarios:
        g, w = stream_arrays(sc)
        trace = workdir / f"{sc.name}.parquet"
        if not trace.exists():
            pq.write_table(pa.table({"page": g, "write": w}), trace)
        for policy in policies or cfg.policies:
            raw = sim_config(cfg, sc, policy, trace, facts, profile)
            r = run_sim(raw, sc, policy)
            if profile is not None:
                r.side = f"{policy}+profile"
            out.append(r)
            say(_line(r))
    return out


def median_run(runs: list[Run]) -> dict[str, Any]:
    """Per phase, the median of each counter and of the time over ``runs``, and how many of
    them were OOM-killed."""
    ok = [r for r in runs if not r.oom_killed]
    med: dict[str, Any] = {"runs": len(runs), "oom_killed": len(runs) - len(ok)}
    for name in PHASES:
        phs = [p for r in ok if (p := r.phase(name)) is not None]
        if not phs:
            continue
        med[name] = {
            "time_ns": statistics.median(p.time_ns for p in phs),
            "accesses": phs[0].accesses,
            "first_touch": phs[0].first_touch,
            **{k: statistics.median(p.counters[k] for p in phs) for k in COUNTERS},
        }
    return med

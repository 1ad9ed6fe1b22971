"""Memory: simulator state bytes per simulated page at steady state; peak RSS of a large host.

State per page: the shape of a 16 GiB host with eight 3 GiB VMs (1.5x overcommit, 2 vCPUs each,
default Zipf workload, swap = the overcommitted part), at 1/16 scale: a 1 GiB host with eight
192 MiB VMs (``--quick``: 256 MiB and 8 x 48 MiB). Bytes per page are scale-free (every array
that grows with memory is per guest page, per host frame or per swap slot), and a 16 GiB host
would take minutes of simulation to fill. The world is built as ``memsim run`` builds it, with
a recorder logging evictions (so the analysis-only stamps that log reads exist) into a
temporary directory, and run in ``SLICE_NS`` steps until memory is full, that is free pages at
or below the low watermark and swap-out begun, then ``SETTLE_S`` more of simulated time: LRU
lists, free lists and swap are then at their working sizes, not the near-empty ones of a world
just built. Every numpy array reachable from the world (attributes, containers, closures, bound
methods, the SimPy processes' generator frames) is found, views are charged to the array that
owns their memory, and each owner is put in one class by its path:

- ``kernel``: state the kernel keeps too (page flags, pfn or shadow, sptes, the rmap, LRU
  lists, free lists, counters);
- ``analysis``: state only the eviction log reads (``ANALYSIS``: last access, scans survived,
  and the recorder's bit per page marking an eviction whose refault is not seen yet);
- ``per_vcpu``: access batches, a fixed size per vCPU whatever the memory size (bytes, not per
  page);
- ``output``: the recorder's row buffers, output on its way to parquet.

The row is (kernel + analysis) bytes per guest page; the note splits it, and per host frame.
Python objects that are not arrays are not counted. One world per policy of ``POLICIES``: the
kernel's two (``two_list``, ``mglru``) against the target, the textbook ones for information
(``opt`` needs the future, which only demand mode has: no such world).

Peak RSS: in a fresh subprocess, a 256 GiB host with 32 VMs of 8 GiB (4 KiB pages: 64M frames
and 64M guest pages; 2 vCPUs each, default Zipf workload, 16 GiB swap) is built and run for
``RUN_S``; the row is the child's ``ru_maxrss``, with build and run times in ``details``.
``--quick`` uses a 4 GiB host with 8 VMs of 512 MiB.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import types
from collections import deque
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import REPO, Target, row, skipped
from bench.bench_model import SETTLE_S, SLICE_NS, settle
from sim.config import Scenario, parse_scenario
from sim.engine import build_world

PIN_ONE_CORE = True
RUN_S = 0.002  # simulated seconds the large world runs before its peak RSS is read
STEADY_HORIZON_S = 60.0  # simulated time the steady-state world may take to fill memory
LARGE_TIMEOUT_S = 900
# Arrays only the eviction log reads (idle time, idle rank, scans survived, the refault
# linkage's pending bits): no kernel has them.
ANALYSIS = ("last_access_us", "scans", "pending_refault")
KERNEL_POLICIES = ("two_list", "mglru")  # the target is theirs
POLICIES = (*KERNEL_POLICIES, "clock", "fifo", "lru", "random")
_PER_VCPU = re.compile(r"\.vcpus\[\d+\]")


def scenario(
    host_mib: int,
    nr_vms: int,
    vm_mib: int,
    duration_s: float = RUN_S,
    *,
    log: bool = False,
    policy: str = "two_list",
) -> Scenario:
    """``nr_vms`` VMs of ``vm_mib`` (2 vCPUs, Zipf) on a ``host_mib`` host under ``policy``;
    swap holds the overcommitted part, and at least 1/16 of host memory. ``log``: the recorder
    writes the eviction log only (the other tables are output, not state)."""
    swap_mib = max(nr_vms * vm_mib - host_mib, host_mib // 16)
    raw: dict[str, Any] = {
        "name": "bench-memory",
        "seed": 1,
        "duration_s": duration_s,
        "host": {"memory_mib": host_mib},
        "swap": {"size_mib": swap_mib},
        "reclaim": {"policy": policy},
        "vms": [{"name": "vm", "count": nr_vms, "memory_mib": vm_mib, "vcpus": 2}],
    }
    if log:
        raw["output"] = {"evictions": True, "faults": False, "timeline": False}
    return parse_scenario(raw, "bench-memory")


_LEAVES = (
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
    type,
    types.ModuleType,
    types.BuiltinFunctionType,
)


class _Empty:
    """Stands for an unfilled closure cell."""


_EMPTY = _Empty()


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _EMPTY


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """(label, child) pairs of the references that can hold simulator state."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"[{k!r}]" if not isinstance(k, int) else "[int]", v
    elif isinstance(obj, list | tuple | set | frozenset | deque):
        items = list(obj)
        if items and isinstance(items[0], _LEAVES) and len(items) > 64:
            return  # long lists of scalars: no arrays inside
        for i, v in enumerate(items):
            yield f"[{i}]", v
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
    elif isinstance(obj, types.FunctionType):
        for i, cell in enumerate(obj.__closure__ or ()):
            yield f".<closure {i}>", _cell(cell)
    elif isinstance(obj, partial):
        yield ".func", obj.func
        yield ".args", obj.args
        yield ".keywords", obj.keywords
    elif isinstance(obj, types.GeneratorType):
        if obj.gi_frame is not None:
            yield f".<{obj.__name__} locals>", dict(obj.gi_frame.f_locals)
    else:
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            for k, v in d.items():
                yield f".{k}", v
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if hasattr(obj, slot):
                    yield f".{slot}", getattr(obj, slot)


def reachable_arrays(root: Any, name: str = "world") -> dict[int, tuple[str, np.ndarray]]:
    """Every array that owns memory reachable from ``root``: ``id -> (first path, array)``."""
    owners: dict[int, tuple[str, np.ndarray]] = {}
    seen: set[int] = set()
    queue: deque[tuple[str, Any]] = deque([(name, root)])  # breadth first: shortest paths
    while queue:
        path, obj = queue.popleft()
        if id(obj) in seen or isinstance(obj, _LEAVES):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            owners.setdefault(id(base), (path, base))
            continue
        if isinstance(obj, np.generic):
            continue
        for label, child in _children(obj):
            queue.append((path + label, child))
    return owners


def kind_of(path: str) -> str:
    """The class of the array first reached by ``path`` (see the module docstring)."""
    if path.rsplit(".", 1)[-1] in ANALYSIS:
        return "analysis"
    if path.startswith("world.recorder"):
        return "output"
    if _PER_VCPU.search(path):
        return "per_vcpu"
    return "kernel"


def state_bytes(world: Any) -> tuple[int, list[dict[str, Any]], dict[str, int]]:
    """Total bytes of the arrays reachable from ``world``, the arrays largest first (with their
    class), and the bytes by what an array's length matches (guest pages, host frames, swap
    slots, other)."""
    arrays = sorted(reachable_arrays(world).values(), key=lambda pa: -pa[1].nbytes)
    listing = [
        {
            "path": p,
            "kind": kind_of(p),
            "dtype": str(a.dtype),
            "shape": list(a.shape),
            "bytes": int(a.nbytes),
        }
        for p, a in arrays
    ]
    kinds: dict[int, str] = {}
    for n, label in (
        (world.swap.nr_slots, "per_swap_slot"),
        (world.nr_frames, "per_host_frame"),
        (world.mem.nr_pages, "per_guest_page"),
    ):
        kinds[n] = f"{kinds[n]}_or_{label}" if n in kinds else label
    by_kind: dict[str, int] = {}
    for _, a in arrays:
        k = kinds.get(a.shape[0] if a.ndim else -1, "other")
        by_kind[k] = by_kind.get(k, 0) + int(a.nbytes)
    return sum(a.nbytes for _, a in arrays), listing, by_kind


def measure(host_mib: int, nr_vms: int, vm_mib: int) -> dict[str, Any]:
    """Build and briefly run a world; its sizes, state bytes and timings."""
    sc = scenario(host_mib, nr_vms, vm_mib)
    t0 = time.perf_counter()
    w = build_world(sc, None)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    w.run(steps=1)
    run_s = time.perf_counter() - t1
    total, listing, by_kind = state_bytes(w)
    return {
        "host_mib": host_mib,
        "vms": nr_vms,
        "vm_mib": vm_mib,
        "frames": int(w.nr_frames),
        "guest_pages": int(w.mem.nr_pages),
        "state_bytes": int(total),
        "build_s": round(build_s, 3),
        "run_s": round(run_s, 3),
        "swap_mib": sc.swap.size_mib,
        "bytes_by_length": by_kind,
        "largest_arrays": listing[:12],
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_to_steady_state(w: Any) -> float:
    """Run ``w`` until memory is full (free pages at or below the low watermark and swap-out
    begun) and ``SETTLE_S`` more; returns the simulated seconds at which memory filled."""
    w.start()
    env, mem = w.env, w.mem

    def now() -> int:
        return int(env.now)

    warm = settle(lambda: mem.nr_free <= mem.wmark.low and w.vmstat["pswpout"] > 0, now)
    while not warm():
        if now() >= w.horizon_ns:
            raise RuntimeError(f"memory not full after {now() / 1e9:g} s of simulated time")
        env.run(until=now() + SLICE_NS)
    return (now() - SETTLE_S * 1e9) / 1e9


def measure_steady(
    host_mib: int, nr_vms: int, vm_mib: int, policy: str = "two_list"
) -> dict[str, Any]:
    """State bytes of a world at steady state, by class, with its counts and timings."""
    sc = scenario(host_mib, nr_vms, vm_mib, STEADY_HORIZON_S, log=True, policy=policy)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        w = build_world(sc, Path(tmp))
        t0 = time.perf_counter()
        full_s = run_to_steady_state(w)
        run_s = time.perf_counter() - t0
        total, listing, by_length = state_bytes(w)
        assert w.recorder is not None
        w.recorder.close()  # flush and close the parquet writer before the directory goes
    by_kind = {k: 0 for k in ("kernel", "analysis", "per_vcpu", "output")}
    for a in listing:
        by_kind[a["kind"]] += a["bytes"]
    pages = int(w.mem.nr_pages)
    per_page: dict[str, float] = {}
    for a in listing:
        if a["kind"] in ("kernel", "analysis") and a["bytes"] >= pages // 100:
            per_page[a["path"]] = round(a["bytes"] / pages, 3)
    return {
        "policy": policy,
        "host_mib": host_mib,
        "vms": nr_vms,
        "vm_mib": vm_mib,
        "swap_mib": sc.swap.size_mib,
        "frames": int(w.nr_frames),
        "guest_pages": pages,
        "swap_slots": int(w.swap.nr_slots),
        "memory_full_s": round(full_s, 4),
        "measured_at_s": round(w.env.now / 1e9, 4),
        "run_wall_s": round(run_s, 2),
        "free_pages": int(w.mem.nr_free),
        "wmark_low": int(w.mem.wmark.low),
        "pswpout": int(w.vmstat["pswpout"]),
        "swap_used": int(w.swap.nr_slots - w.swap.nr_free_slots),
        "state_bytes": by_kind["kernel"] + by_kind["analysis"],
        "bytes_by_kind": by_kind,
        "bytes_per_page_by_array": per_page,
        "bytes_by_length": by_length,
        "largest_arrays": listing[:12],
        "all_arrays_bytes": int(total),
    }


def child(host_mib: int, nr_vms: int, vm_mib: int) -> dict[str, Any]:
    """Run ``measure`` in a fresh interpreter (its own peak RSS); None fields on failure."""
    code = (
        "import json, sys; from bench.bench_memory import measure; "
        f"print(json.dumps(measure({host_mib}, {nr_vms}, {vm_mib})))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=LARGE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {LARGE_TIMEOUT_S} s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {p.returncode}: {tail}", "wall_s": time.perf_counter() - t0}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def state_rows(mid: tuple[int, int, int], policy: str, m: dict[str, Any]) -> list[dict[str, Any]]:
    """The state-per-page row of one policy's world (with the target for the kernel's
    policies), and for those the kernel-modelled part alone."""
    pages, kinds = m["guest_pages"], m["bytes_by_kind"]
    kernel = policy in KERNEL_POLICIES
    name = "" if policy == "two_list" else f", {policy}"  # two_list: the row's original name
    target = Target(max_value=16) if kernel else None
    rows = [
        row(
            "memory",
            f"state bytes per simulated 4 KiB page{name}",
            m["state_bytes"] / pages,
            "B/page",
            target=target,
            note=f"{policy}{'' if kernel else ' (information: not a kernel policy)'}; steady "
            f"state of {mid[0]} MiB host, {mid[1]} x {mid[2]} MiB VMs (1.5x overcommit; memory "
            f"full at {m['memory_full_s']:g} s, measured at {m['measured_at_s']:g} s): "
            f"kernel-modelled {kinds['kernel'] / pages:.2f} + analysis "
            f"{kinds['analysis'] / pages:.2f} B/page (kept only for the eviction log); "
            f"{m['state_bytes'] / m['frames']:.1f} B per host frame; plus "
            f"{kinds['per_vcpu'] >> 10} KiB of per-vCPU batches",
            kernel_bytes_per_page=round(kinds["kernel"] / pages, 3),
            analysis_bytes_per_page=round(kinds["analysis"] / pages, 3),
            bytes_per_frame=m["state_bytes"] / m["frames"],
            **m,
        )
    ]
    if kernel:
        rows.append(
            row(
                "memory",
                "kernel-modelled state per page (all a run keeps without the eviction log)" + name,
                kinds["kernel"] / pages,
                "B/page",
                target=target,
                note=f"{policy}: the row above less the analysis state: page flags, pfn or "
                "shadow, spte; per frame the rmap, policy flags, LRU links"
                + (", generation" if policy == "mglru" else ""),
            )
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """State bytes per page (a host at steady state) and peak RSS (large host)."""
    mid = (256, 8, 48) if quick else (1024, 8, 192)  # 16 GiB, 8 x 3 GiB at 1/16 (1/64) scale
    rows = []
    for policy in POLICIES:
        rows.extend(state_rows(mid, policy, measure_steady(*mid, policy=policy)))
    large = (4096, 8, 512) if quick else (262144, 32, 8192)
    desc = f"{large[0] // 1024} GiB host, {large[1]} x {large[2] // 1024 or large[2]}" + (
        " GiB VMs" if large[2] >= 1024 else " MiB VMs"
    )
    r = child(*large)
    if "error" in r:
        rows.append(
            skipped(
                "memory",
                f"peak RSS, {desc}",
                "B",
                r["error"],
                target=Target(max_value=6 * 2**30),
            )
        )
        rows[-1]["details"].update(r)
    else:
        rows.append(
            row(
                "memory",
                f"peak RSS, {desc}",
                float(r["maxrss_bytes"]),
                "B",
                target=Target(max_value=6 * 2**30) if not quick else None,
                note=f"build {r['build_s']:.1f} s, run {RUN_S * 1e3:g} ms simulated in "
                f"{r['run_s']:.1f} s; arrays {r['state_bytes'] / 2**30:.2f} GiB "
                f"({r['state_bytes'] / r['guest_pages']:.1f} B/page; zeroed pages never "
                "written are not resident)",
                **{k: v for k, v in r.items() if k != "maxrss_bytes"},
            )
        )
    return rows

"""Memory: bytes of simulator state per simulated page, and peak RSS of a large host.

State per page: a mid-size watermark world (``build_world(sc, None)``, no recorder: parquet
buffers are output, not state) is built and run for ``RUN_S`` of simulated time, then every
numpy array reachable from it (attributes, containers, closures, bound methods, the SimPy
processes' generator frames) is found, views are charged to the array that owns their memory,
and the owners' ``nbytes`` are summed and divided by the guest pages simulated (and, as a second
figure, by host frames). Python objects that are not arrays are not counted.

Peak RSS: in a fresh subprocess, a 256 GiB host with 32 VMs of 8 GiB (4 KiB pages: 64M frames
and 64M guest pages; 2 vCPUs each, default Zipf workload, 16 GiB swap) is built and run for
``RUN_S``; the row is the child's ``ru_maxrss``, with build and run times in ``details``.
``--quick`` uses a 4 GiB host with 8 VMs of 512 MiB.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import types
from collections import deque
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from bench import REPO, Target, row, skipped
from sim.config import Scenario, parse_scenario
from sim.engine import build_world

PIN_ONE_CORE = True
RUN_S = 0.002  # simulated seconds each world runs before it is measured
LARGE_TIMEOUT_S = 900


def scenario(host_mib: int, nr_vms: int, vm_mib: int) -> Scenario:
    """``nr_vms`` VMs of ``vm_mib`` (2 vCPUs, Zipf) on a ``host_mib`` host; swap holds the
    overcommitted part, and at least 1/16 of host memory."""
    swap_mib = max(nr_vms * vm_mib - host_mib, host_mib // 16)
    return parse_scenario(
        {
            "name": "bench-memory",
            "seed": 1,
            "duration_s": RUN_S,
            "host": {"memory_mib": host_mib},
            "swap": {"size_mib": swap_mib},
            "vms": [{"name": "vm", "count": nr_vms, "memory_mib": vm_mib, "vcpus": 2}],
        },
        "bench-memory",
    )


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


def state_bytes(world: Any) -> tuple[int, list[dict[str, Any]], dict[str, int]]:
    """Total bytes of the arrays reachable from ``world``, the arrays largest first, and the
    bytes by what an array's length matches (guest pages, host frames, swap slots, other)."""
    arrays = sorted(reachable_arrays(world).values(), key=lambda pa: -pa[1].nbytes)
    listing = [
        {"path": p, "dtype": str(a.dtype), "shape": list(a.shape), "bytes": int(a.nbytes)}
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


def run(quick: bool) -> list[dict[str, Any]]:
    """State bytes per page (mid-size host) and peak RSS (large host)."""
    mid = (1024, 4, 384) if quick else (16384, 8, 3072)  # 1.5x overcommit
    m = measure(*mid)
    per_page = m["state_bytes"] / m["guest_pages"]
    facts = {k: v for k, v in m.items() if k != "maxrss_bytes"}
    rows = [
        row(
            "memory",
            "state bytes per simulated 4 KiB page",
            per_page,
            "B/page",
            target=Target(max_value=16),
            note=f"{mid[0] // 1024} GiB host, {mid[1]} x {mid[2]} MiB VMs (1.5x overcommit); "
            f"{m['state_bytes'] / m['frames']:.1f} B per host frame",
            bytes_per_frame=m["state_bytes"] / m["frames"],
            **facts,
        )
    ]
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

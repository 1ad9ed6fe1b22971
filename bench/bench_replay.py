"""Trace replay (``memsim replay``, demand mode) and the one-pass MRC, vs libCacheSim's C loop.

Trace: the first ``TRACE_ACCESSES`` data accesses (4 KiB pages) of CPython starting up and
running a small dict/sort script, recorded with ``valgrind --tool=lackey --trace-mem=yes`` and
read with ``sim.guest.traces.read_trace``; cached in ``bench/.cache/`` (gitignored) after the
first run (about a minute under valgrind). ``--quick``, or a machine without valgrind, uses the
committed ``traces/python3.npy.gz`` (1M accesses) instead.

Our side: ``sim.replay.replay(..., policy=P)`` at frames = half the distinct pages; the figure is
accesses / ``replay_s`` (the replay only: dense-id mapping included, trace loading and JIT
excluded). ``sim.mrc.lru_mrc`` is timed whole (exact LRU faults at every size, one pass).

Their side: ``libcachesim`` (``requirements-bench.txt``) over the same page numbers written as an
``oracleGeneral`` binary trace (their fastest reader: fixed 24-byte records, mmapped), object
size 1 and ``cache_size = frames``, so the cache holds ``frames`` pages, and a hash table
fitted to the trace (``hashpower``); the cache is built untimed and only
``Cache.process_trace`` is timed. Their miss counts are checked against ours (LRU, FIFO and
Belady must agree exactly; their CLOCK is compared, not required to agree). Their per-request
Python API (``cache.get(req)`` in a Python loop) is a second reference row, timed on a prefix.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench import CACHE, REPO, Target, row, skipped, timed
from sim import fastpath
from sim.guest.traces import read_trace
from sim.mrc import lru_mrc
from sim.replay import replay

PIN_ONE_CORE = True
TRACE_ACCESSES = 5_000_000
QUICK_TRACE = REPO / "traces" / "python3.npy.gz"
SCRIPT = (
    "d = {f'key{i:06d}': [i, i * i % 9973, str(i)] for i in range(40000)}\n"
    "items = sorted(d.items(), key=lambda kv: kv[1][1])\n"
)
ORACLE_GENERAL = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
"""libCacheSim's oracleGeneral record: clock time, object id, size, next access (vtime)."""
PY_API_PREFIX = 1_000_000  # requests timed through their per-request Python API


def record_trace(out: Path, n: int = TRACE_ACCESSES) -> None:
    """Record the first ``n`` data accesses of CPython under lackey into ``out`` (.npy)."""
    interp = Path(sys.executable).resolve()  # the real binary, not a venv or shim script
    cmd = [
        "valgrind",
        "--tool=lackey",
        "--trace-mem=yes",
        "--log-fd=9",
        str(interp),
        "-I",
        "-S",
        "-c",
        SCRIPT,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        lackey = Path(tmp) / "trace.lackey"
        with lackey.open("w") as dst:
            proc = subprocess.Popen(
                " ".join(_quote(c) for c in cmd) + " 9>&1 1>/dev/null",
                shell=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            data = 0
            for line in proc.stdout:
                if line.startswith("=="):
                    if data == 0:
                        dst.write(line)  # valgrind's header
                    continue
                if line[:3] in (" L ", " S ", " M "):
                    dst.write(line)
                    data += 1
                    if data >= n:
                        break
            proc.kill()
            proc.wait()
        tr = read_trace(lackey, fmt="lackey")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp.npy")
    np.save(tmp_out, tr.pages)
    tmp_out.replace(out)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def load_trace(quick: bool) -> tuple[NDArray[np.int64], str]:
    """The page trace and a description of where it came from."""
    if not quick:
        cached = CACHE / f"python3-startup-{TRACE_ACCESSES // 1_000_000}M.npy"
        why = " (no valgrind: fell back to the committed sample)"
        if not cached.exists() and shutil.which("valgrind"):
            try:
                record_trace(cached)
            except Exception as exc:  # a broken valgrind must not lose the other rows
                why = f" (recording failed: {exc!r}; fell back to the committed sample)"
        if cached.exists():
            return np.load(cached).astype(np.int64), f"lackey: CPython start-up ({cached.name})"
    else:
        why = ""
    tr = read_trace(QUICK_TRACE)
    return tr.pages, f"traces/python3.npy.gz{why}"


def write_oracle_general(pages: NDArray[np.int64], path: Path) -> None:
    """The trace as libCacheSim oracleGeneral records (size 1, next access for Belady)."""
    rec = np.zeros(pages.size, dtype=ORACLE_GENERAL)
    rec["t"] = np.arange(pages.size, dtype=np.uint32)
    rec["id"] = pages.astype(np.uint64)
    rec["size"] = 1
    nxt = fastpath.next_use(pages)
    rec["next"] = np.where(nxt == fastpath.NO_NEXT, -1, nxt)
    rec.tofile(path)


def ours(pages: NDArray[np.int64], frames: int, policy: str, repeat: int) -> dict[str, Any]:
    """Median ``replay_s`` of ``repeat`` replays, with the counts."""
    writes = np.zeros(pages.size, dtype=np.bool_)
    results, cpus = [], []
    for _ in range(repeat):
        c0 = time.process_time()  # the whole call: replay_s plus argument checks
        results.append(replay(pages, writes, frames=frames, policy=policy))
        cpus.append(time.process_time() - c0)
    r = dict(results[0])
    r["replay_s"] = statistics.median(x["replay_s"] for x in results)
    r["replay_s_all"] = [x["replay_s"] for x in results]
    r["cpu_s"] = statistics.median(cpus)
    return r


def hashpower(distinct: int) -> int:
    """Their hash table size (log2 buckets) fitted to the trace: their default of 24 allocates
    16M buckets, which is slower on a small trace (measured), so they get the faster setting."""
    return max(10, int(np.ceil(np.log2(max(2, distinct)))) + 1)


def theirs(lcs: Any, path: Path, cls: str, frames: int, distinct: int, repeat: int) -> dict:
    """libCacheSim ``process_trace`` on a fresh cache each time (built untimed): median time
    and misses (their miss ratio x requests)."""
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    n = int(path.stat().st_size // ORACLE_GENERAL.itemsize)
    walls, cpus, misses = [], [], []
    for _ in range(repeat):
        cache = getattr(lcs, cls)(cache_size=frames, hashpower=hashpower(distinct))
        w0, c0 = time.perf_counter(), time.process_time()
        miss_ratio, _ = cache.process_trace(reader)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
        misses.append(round(miss_ratio * n))
    return {
        "misses": misses[-1],
        "seconds": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "seconds_all": [round(w, 6) for w in walls],
    }


def theirs_python_api(lcs: Any, pages: NDArray[np.int64], frames: int) -> dict[str, Any]:
    """Their LRU driven one request at a time from Python (``cache.get``), on a prefix."""
    prefix = pages[:PY_API_PREFIX].tolist()
    cache = lcs.LRU(cache_size=frames, hashpower=hashpower(int(np.unique(prefix).size)))
    req = lcs.Request()
    req.obj_size = 1

    def once() -> int:
        misses = 0
        for p in prefix:
            req.obj_id = p
            if not cache.get(req):
                misses += 1
        return misses

    t, misses = timed(once, 1)
    return {"seconds": t.wall_s, "cpu_s": t.cpu_s, "requests": len(prefix), "misses": misses}


def run(quick: bool) -> list[dict[str, Any]]:
    """Replay rows (LRU vs libCacheSim, OPT, CLOCK, FIFO) and the MRC row."""
    repeat = 3 if quick else 5
    pages, source = load_trace(quick)
    fastpath.warm_up()
    n = int(pages.size)
    _, distinct = fastpath.dense_ids(pages)
    frames = distinct // 2
    trace_facts = {"trace": source, "accesses": n, "distinct_pages": distinct, "frames": frames}
    res = {p: ours(pages, frames, p, repeat) for p in ("lru", "opt", "clock", "fifo")}
    rate = {p: n / r["replay_s"] for p, r in res.items()}
    cpu_rate = {p: n / r["cpu_s"] if r["cpu_s"] else None for p, r in res.items()}

    try:
        import libcachesim as lcs
    except ImportError:
        lcs = None
    rows: list[dict[str, Any]] = []
    lcs_name = {"lru": "LRU", "opt": "Belady", "clock": "Clock", "fifo": "FIFO"}
    them: dict[str, dict[str, Any]] = {}
    if lcs is not None:
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            path = Path(tmp) / "trace.oracleGeneral.bin"
            write_oracle_general(pages, path)
            for p, cls in lcs_name.items():
                them[p] = theirs(lcs, path, cls, frames, distinct, repeat)

    def lcs_row(p: str, target: Target | None) -> dict[str, Any]:
        r = res[p]
        common = dict(trace_facts, replay_s=r["replay_s"], replay_s_all=r["replay_s_all"])
        if lcs is None:
            return row(
                "replay",
                f"{p} accesses/s",
                rate[p],
                "acc/s",
                value_cpu=cpu_rate[p],
                target=None,
                note="libcachesim not importable: no baseline (pip install -r "
                "requirements-bench.txt)",
                faults=r["faults"],
                **common,
            )
        t = them[p]
        same = t["misses"] == r["faults"]
        return row(
            "replay",
            f"{p} accesses/s",
            rate[p],
            "acc/s",
            baseline=f"libCacheSim {lcs_name[p]} process_trace",
            baseline_value=n / t["seconds"],
            value_cpu=cpu_rate[p],
            baseline_value_cpu=n / t["cpu_s"] if t["cpu_s"] else None,
            target=target,
            note=f"misses ours {r['faults']:,} / theirs {t['misses']:,}"
            + ("" if same else " (DIFFER)"),
            faults=r["faults"],
            their_misses=t["misses"],
            misses_agree=same,
            their_seconds=t["seconds"],
            their_seconds_all=t["seconds_all"],
            **common,
        )

    rows.append(lcs_row("lru", Target(min_ratio=1.0)))
    rows[-1]["note"] = (
        f"{source}: {n:,} accesses, {distinct:,} pages, {frames:,} frames; " + rows[-1]["note"]
    )
    rows.append(
        row(
            "replay",
            "opt accesses/s vs our lru",
            rate["opt"],
            "acc/s",
            baseline="memsim replay lru",
            baseline_value=rate["lru"],
            value_cpu=cpu_rate["opt"],
            baseline_value_cpu=cpu_rate["lru"],
            target=Target(min_ratio=0.5),
            note=f"OPT misses {res['opt']['faults']:,}",
            **trace_facts,
        )
    )
    for p in ("opt", "clock", "fifo"):
        rows.append(lcs_row(p, None))
    if lcs is not None:
        py = theirs_python_api(lcs, pages, frames)
        rows.append(
            row(
                "replay",
                "lru accesses/s vs per-request API",
                rate["lru"],
                "acc/s",
                baseline="libCacheSim LRU cache.get() loop",
                baseline_value=py["requests"] / py["seconds"],
                value_cpu=cpu_rate["lru"],
                baseline_value_cpu=py["requests"] / py["cpu_s"] if py["cpu_s"] else None,
                note=f"their Python loop timed on the first {py['requests']:,} requests",
                their_prefix_misses=py["misses"],
                **trace_facts,
            )
        )
    else:
        rows.append(
            skipped("replay", "lru accesses/s vs per-request API", "acc/s", "no libcachesim")
        )

    t, curve = timed(lambda: lru_mrc(pages), repeat)
    at = curve.loc[curve["frames"] == frames, "faults"]
    agree = len(at) == 1 and int(at.iloc[0]) == res["lru"]["faults"]
    rows.append(
        row(
            "mrc",
            "exact LRU MRC, all sizes, accesses/s",
            n / t.wall_s,
            "acc/s",
            value_cpu=n / t.cpu_s if t.cpu_s else None,
            target=Target(min_value=5e6),
            note=f"{len(curve):,} sizes in one pass; equals replay lru at {frames} frames: "
            f"{'yes' if agree else 'NO'}",
            seconds=t.wall_s,
            seconds_all=t.walls,
            agrees_with_replay=agree,
            **trace_facts,
        )
    )
    return rows

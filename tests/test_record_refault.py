"""The eviction log's refault linkage (``next_access_ns``, ``refault``) kept in arrays: a
pending bit per page and the row in the page's last-access slot, against the rule it follows
(the first fault on a page after its eviction; an eviction not followed by one stays null)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sim.record as record
from sim.host.memory import PTE_PRESENT, HostMemory, Watermarks
from sim.record import Recorder

NR_PAGES = 64


def _world(tmp: Path, chunk_rows: int = 4) -> tuple[HostMemory, Recorder]:
    """Every page resident and mapped, stamped with its pid (us)."""
    mem = HostMemory(NR_PAGES, NR_PAGES, Watermarks(0, 0, 0, 0), [0], stamps=True)
    pids = np.arange(NR_PAGES, dtype=np.int64)
    mem.alloc_frames(pids)
    mem.flags[:] |= np.uint8(PTE_PRESENT)
    mem.last_access_us[:] = pids.astype(np.uint32)
    enabled = {"evictions": True, "faults": False, "timeline": False}
    rec = Recorder(tmp, ["vm"], np.array([0]), "two_list", mem, enabled, chunk_rows)
    return mem, rec


def _evict(mem: HostMemory, rec: Recorder, t_ns: int, pids: list[int]) -> None:
    """Unmap ``pids`` (reclaim's try_to_unmap), then log them."""
    p = np.array(pids, dtype=np.int64)
    mem.flags[p] &= np.uint8(~PTE_PRESENT & 0xFF)
    rec.evicted(
        t_ns, p, mem.pfn[p].astype(np.int64), np.zeros(len(p), bool), np.ones(len(p), np.uint8)
    )


def _fault(mem: HostMemory, rec: Recorder, t_ns: int, pid: int) -> None:
    """Map ``pid`` and log its fault (the faulting access is stamped later, on retry)."""
    mem.flags[pid] |= np.uint8(PTE_PRESENT)
    rec.fault(t_ns, 0, 0, pid, "major", 1, pid)


def _log(tmp: Path, rec: Recorder) -> pd.DataFrame:
    rec.close()
    assert sorted(p.name for p in tmp.iterdir()) == ["evictions.parquet"]  # side files gone
    return pd.read_parquet(tmp / "evictions.parquet")


@pytest.fixture(params=[record.SLOT_ROWS, 1], ids=["slot", "far"])
def slot_rows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Rows stored in the stamp slot, or (from row 1 on) in the dict past SLOT_ROWS."""
    monkeypatch.setattr(record, "SLOT_ROWS", request.param)
    return int(request.param)


def test_evicted_twice_and_never_back(tmp_path: Path, slot_rows: int) -> None:
    mem, rec = _world(tmp_path)
    _evict(mem, rec, 1_000_000, [5, 9])  # rows 0, 1
    _fault(mem, rec, 2_000_000, 5)  # row 0 comes back
    assert mem.last_access_us[5] == 5  # its stamp is put back
    _fault(mem, rec, 2_500_000, 5)  # a second fault: not a refault of anything
    mem.last_access_us[5] = 2100  # its retried access
    _evict(mem, rec, 3_000_000, [5])  # row 2
    _fault(mem, rec, 4_000_000, 5)
    _fault(mem, rec, 4_000_000, 7)  # never evicted: nothing
    ev = _log(tmp_path, rec)
    assert ev.gfn.tolist() == [5, 9, 5]
    assert ev.last_access_ns.tolist() == [5_000, 9_000, 2_100_000]
    assert ev.idle_ns.tolist() == [995_000, 991_000, 900_000]
    assert ev.refault.tolist() == [True, False, True]
    assert ev.next_access_ns.isna().tolist() == [False, True, False]
    assert ev.next_access_ns.dropna().tolist() == [2_000_000, 4_000_000]
    assert mem.last_access_us[9] == (1 if slot_rows > 1 else slot_rows)  # still holds its row


def test_mapped_again_before_its_fault_is_logged(tmp_path: Path, slot_rows: int) -> None:
    """A refaulted page mapped, then sampled and evicted again before its fault is logged
    (memory.high throttling in between) reads the stamp it had, not its row."""
    mem, rec = _world(tmp_path)
    _evict(mem, rec, 1_000_000, [3, 4])  # rows 0, 1
    mem.flags[3] |= np.uint8(PTE_PRESENT)  # mapped by a fault not logged yet
    assert rec._stamps(np.array([3, 6])).tolist() == [3, 6]  # as the idle-rank sample reads
    _evict(mem, rec, 2_000_000, [3])  # row 2: row 0 never sees its fault
    _fault(mem, rec, 3_000_000, 3)
    assert mem.last_access_us[3] == 3
    ev = _log(tmp_path, rec)
    assert ev.last_access_ns.tolist() == [3_000, 4_000, 3_000]
    assert ev.next_access_ns.isna().tolist() == [True, True, False]
    assert ev.next_access_ns.iloc[2] == 3_000_000


def test_matches_a_map_of_pending_rows(tmp_path: Path, slot_rows: int) -> None:
    """Random evictions, faults, accesses and early re-mappings: the log is the one a map
    from page to its pending row gives (the first fault after an eviction links to it)."""
    rng = np.random.default_rng(3)
    mem, rec = _world(tmp_path, chunk_rows=7)
    stamp = np.arange(NR_PAGES, dtype=np.int64)  # the reference's stamps (us)
    mapped = np.ones(NR_PAGES, dtype=bool)
    pending: dict[int, int] = {}
    rows: list[tuple[int, int]] = []  # (gfn, last access ns)
    nxt: dict[int, int] = {}
    t = 0
    for _ in range(3000):
        t += int(rng.integers(1, 5000))
        op = rng.integers(0, 10)
        if op < 3:  # a reclaim batch
            cand = np.flatnonzero(mapped)
            if len(cand) == 0:
                continue
            batch = rng.choice(cand, min(len(cand), int(rng.integers(1, 6))), replace=False)
            for p in batch.tolist():
                pending[p] = len(rows)
                rows.append((p, int(stamp[p]) * 1000))
                mapped[p] = False
            _evict(mem, rec, t, batch.tolist())
        elif op < 6:  # a fault
            p = int(rng.integers(0, NR_PAGES))
            if p in pending:
                nxt[pending.pop(p)] = t
            mapped[p] = True
            _fault(mem, rec, t, p)
        elif op < 7:  # mapped by a fault whose log entry comes later
            p = int(rng.integers(0, NR_PAGES))
            mapped[p] = True
            mem.flags[p] |= np.uint8(PTE_PRESENT)
        else:  # guest accesses to mapped pages whose fault was logged
            hit = np.flatnonzero(mapped & ~np.isin(np.arange(NR_PAGES), list(pending)))
            hit = hit[rng.random(len(hit)) < 0.2]
            stamp[hit] = t // 1000
            mem.last_access_us[hit] = np.uint32(t // 1000)
    ev = _log(tmp_path, rec)
    assert len(ev) == len(rows) > 500
    assert ev.gfn.tolist() == [g for g, _ in rows]
    assert ev.last_access_ns.tolist() == [a for _, a in rows]
    want = [nxt.get(r) for r in range(len(rows))]
    assert ev.refault.tolist() == [w is not None for w in want]
    got = ev.next_access_ns.tolist()
    assert [None if np.isnan(g) else int(g) for g in got] == want
    assert 50 < len(nxt) < len(rows) - 50

"""Event logs: columnar buffers flushed to parquet in row groups, so memory stays bounded.

Tables (columns documented in README.md, "Output files")
    ``evictions``: one row per folio reclaimed from a guest; ``next_access_ns`` and ``refault``
    are filled in after the run (the next access to an evicted page is always a fault on it).
    A missing value is a null, never NaN: ``next_access_ns`` of a page that did not come back,
    ``idle_rank`` when no resident page could be sampled.
    ``faults``: one row per guest fault. ``timeline``: one row per VM per sample, with host-wide
    columns repeated on each row; counters are cumulative, like ``/proc/vmstat``. Runs with
    memcgs add each VM's memcg columns, runs with a page cache the host's file columns
    (:func:`timeline_schema`); other runs' files stay as they were.

Refault linkage
    ``next_access_ns`` of an eviction is the time of the first fault on the page after it. The
    row waiting for that fault is kept per page without a map: a bit per page
    (``pending_refault``) says the page was evicted and has not faulted since, and its stamp
    (``HostMemory.last_access_us``) holds the row meanwhile, a slot that is otherwise dead: no
    guest access can touch the page before its fault, and every stamp read is of a mapped page.
    The stamp the slot held is written, as the row's ``last_access_ns``, to a side file of four
    bytes per row (``evictions.last_access.part``); the fault puts it back. It is read back too
    in the rare window where a refaulted page is mapped again before its fault is logged (a
    memcg's ``memory.high`` throttling between the two): a reclaim or an idle-rank sample then
    reads the stamp from there, as it would have read the slot. The fault's time goes to a
    second side file, eight bytes per row (``evictions.next_access.part``), which fills the
    column at the end; so what the linkage keeps in memory does not grow with the run (until
    row 2^32 - 1, from which a dict holds the pending rows). Both files
    are deleted at the end.

Determinism
    Row groups are cut at fixed row counts and nothing time- or host-dependent is written, so the
    same config and seed give byte-identical files (with the same library versions).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from sim.host.memory import PTE_PRESENT, HostMemory
from sim.kvm.fault import FAULT_KINDS

EVICTIONS_SCHEMA = pa.schema(
    [
        ("t_ns", pa.int64()),
        ("vm", pa.dictionary(pa.int16(), pa.string())),
        ("gfn", pa.int64()),
        ("pfn", pa.int64()),
        ("policy", pa.dictionary(pa.int8(), pa.string())),
        ("dirty", pa.bool_()),
        ("last_access_ns", pa.int64()),
        ("idle_ns", pa.int64()),
        ("scans_survived", pa.int16()),
        ("idle_rank", pa.float32()),
        ("next_access_ns", pa.int64()),
        ("refault", pa.bool_()),
    ]
)

FAULTS_SCHEMA = pa.schema(
    [
        ("t_ns", pa.int64()),
        ("vm", pa.dictionary(pa.int16(), pa.string())),
        ("vcpu", pa.int16()),
        ("gfn", pa.int64()),
        ("kind", pa.dictionary(pa.int8(), pa.string())),
        ("latency_ns", pa.int64()),
    ]
)

GUEST_EVICTIONS_SCHEMA = pa.schema(
    [
        ("t_ns", pa.int64()),
        ("vm", pa.dictionary(pa.int16(), pa.string())),
        ("gfn", pa.int64()),
        ("page", pa.int64()),
        ("type", pa.dictionary(pa.int8(), pa.string())),
        ("dirty", pa.bool_()),
    ]
)
"""A guest kernel's evictions (``vms[].guest``), at its own level: the guest unmapped an anon
page to swap it (``type`` anon; ``page`` its number in the process) or dropped a page-cache
page (``type`` file; ``page`` its offset in the file); ``gfn`` the frame it leaves."""
GUEST_EVICTION_TYPES = ("anon", "file")

TIMELINE_VM_COLUMNS = [
    "resident_pages",
    "swapped_pages",
    "accesses",
    "faults_first_touch",
    "faults_minor",
    "faults_major",
    "faults_access_tracking",
    "refaults",
    "stall_ns",
    "tlb_flush_exits",
]
TIMELINE_HOST_COLUMNS = [
    "free_pages",
    "writeback_pages",
    "wmark_min",
    "wmark_low",
    "wmark_high",
    "lru_inactive",
    "lru_active",
    "kswapd_busy_ns",
    "pgscan_kswapd",
    "pgsteal_kswapd",
    "pgscan_direct",
    "pgsteal_direct",
    "allocstall",
    "pswpin",
    "pswpout",
    "notifier_calls",
    "remote_tlb_flush",
    "swap_used_pages",
]
TIMELINE_MEMCG_COLUMNS = [
    "memory_current_pages",
    "memory_swap_current_pages",
    "pgscan",
    "pgsteal",
    "workingset_refault_anon",
    "memory_events_low",
    "memory_events_high",
    "memory_events_max",
    "memory_events_oom",
    "memory_events_oom_kill",
    "memory_swap_events_max",
    "inactive_anon_pages",
    "active_anon_pages",
]
"""Per-VM columns of runs where some VM has a memcg (after the per-VM columns)."""
TIMELINE_MEMCG_FILE_COLUMNS = ["file_pages", "inactive_file_pages", "active_file_pages"]
"""Per-VM columns of runs with memcgs and a page cache (after the memcg columns): the page
cache charged to the VM's memcg, and its lruvec's file lists."""
TIMELINE_FILE_COLUMNS = [
    "lru_inactive_file",
    "lru_active_file",
    "file_dirty_pages",
    "file_writeback_pages",
]
"""Host columns of runs with a host page cache (after the host columns)."""


def timeline_schema(memcg: bool = False, files: bool = False) -> pa.Schema:
    """The timeline's columns: the memcg and page-cache columns only in runs that have them,
    so every other run writes the same file as before they existed."""
    vm_cols = TIMELINE_VM_COLUMNS + (TIMELINE_MEMCG_COLUMNS if memcg else [])
    vm_cols += TIMELINE_MEMCG_FILE_COLUMNS if memcg and files else []
    host_cols = TIMELINE_HOST_COLUMNS + (TIMELINE_FILE_COLUMNS if files else [])
    return pa.schema(
        [("t_ns", pa.int64()), ("vm", pa.dictionary(pa.int16(), pa.string()))]
        + [(c, pa.int64()) for c in vm_cols + host_cols]
    )


TIMELINE_SCHEMA = timeline_schema()
TIMELINE_FULL_SCHEMA = timeline_schema(memcg=True, files=True)
"""Every column the timeline can have (the README documents them all)."""

IDLE_RANK_SAMPLE = 64  # resident frames sampled per eviction batch for idle_rank
SLOT_ROWS = 0xFFFFFFFF  # rows from here on do not fit a stamp slot (uint32): a dict holds them

TABLES = {"evictions": EVICTIONS_SCHEMA, "faults": FAULTS_SCHEMA, "timeline": TIMELINE_SCHEMA}


@numba.njit(cache=True, nogil=True)
def _bits(bits: NDArray[np.uint8], pids: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which of pages ``pids`` have their bit set in the bitmap ``bits``."""
    out = np.empty(len(pids), dtype=np.bool_)
    for i in range(len(pids)):
        p = pids[i]
        out[i] = (bits[p >> 3] >> (p & 7)) & 1 != 0
    return out


@numba.njit(cache=True, nogil=True)
def _set_bits(bits: NDArray[np.uint8], pids: NDArray[np.int64]) -> None:
    """Set the bits of pages ``pids`` in the bitmap ``bits``."""
    for i in range(len(pids)):
        p = pids[i]
        bits[p >> 3] |= np.uint8(1 << (p & 7))


class Table:
    """An append-only columnar buffer written to one parquet file in row groups.

    Dictionary (categorical) columns take integer codes into a fixed list of labels.
    """

    def __init__(
        self, path: Path, schema: pa.Schema, labels: dict[str, Sequence[str]], chunk_rows: int
    ) -> None:
        self.path, self.schema, self.chunk_rows = path, schema, chunk_rows
        self.labels = {k: pa.array(list(v), pa.string()) for k, v in labels.items()}
        self.cols: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._rows: list[tuple[Any, ...]] = []  # single-row appends, transposed at flush
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0
        self._buffered = 0

    def append(self, *values: Any) -> None:
        """One row, values in schema order."""
        self._rows.append(values)
        self._buffered += 1
        if self._buffered >= self.chunk_rows:
            self.flush()

    def extend(self, **arrays: NDArray[Any]) -> None:
        """Many rows, one array per column."""
        n = 0
        self._transpose()
        for name, col in self.cols.items():
            a = arrays[name]
            col.extend(a.tolist())
            n = len(a)
        self._buffered += n
        if self._buffered >= self.chunk_rows:
            self.flush()

    def _transpose(self) -> None:
        """Move buffered row tuples into the column lists (keeps row order)."""
        if self._rows:
            for col, vals in zip(self.cols.values(), zip(*self._rows, strict=True), strict=True):
                col.extend(vals)
            self._rows.clear()

    def _batch(self) -> pa.RecordBatch:
        self._transpose()
        arrays = []
        for field in self.schema:
            data = self.cols[field.name]
            if pa.types.is_dictionary(field.type):
                codes = pa.array(data, field.type.index_type)
                arrays.append(pa.DictionaryArray.from_arrays(codes, self.labels[field.name]))
            else:  # a missing value (None, or NaN from numpy) is written as a null
                arrays.append(pa.array(data, field.type, from_pandas=True))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def flush(self) -> None:
        """Write the buffered rows as row groups of at most ``chunk_rows``."""
        if self._buffered == 0:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        batch = self._batch()
        self._writer.write_table(pa.Table.from_batches([batch]), row_group_size=self.chunk_rows)
        self.rows += self._buffered
        self._buffered = 0
        for col in self.cols.values():
            col.clear()

    def close(self) -> int:
        """Flush and close; an empty table still gets a file with the schema. Returns rows."""
        self.flush()
        if self._writer is None:
            pq.write_table(self.schema.empty_table(), self.path, compression="zstd")
        else:
            self._writer.close()
        return self.rows


class Recorder:
    """Collects the run's event tables (the eviction and fault sinks) into ``outdir``.

    Args:
        outdir: directory to write into (the run's temporary directory).
        vm_names: VM names by index.
        vm_base: first global page id of each VM.
        policy: eviction policy name.
        mem: host memory (owner and last-access arrays).
        enabled: which tables to write.
        chunk_rows: rows per row group (and the buffer bound).
        rng_seed: seed of the idle-rank sampler.
        memcg: the timeline has the per-VM memcg columns.
        files: the timeline has the page-cache columns.
    """

    def __init__(
        self,
        outdir: Path,
        vm_names: Sequence[str],
        vm_base: NDArray[np.int64],
        policy: str,
        mem: HostMemory,
        enabled: dict[str, bool],
        chunk_rows: int,
        rng_seed: int = 0,
        *,
        memcg: bool = False,
        files: bool = False,
        kinds: Sequence[str] = FAULT_KINDS,
        guests: bool = False,
    ) -> None:
        self.outdir, self.vm_base, self.mem = outdir, vm_base, mem
        self.chunk_rows = chunk_rows
        labels = {
            "vm": list(vm_names),
            "policy": [policy],
            "kind": list(kinds),
            "type": list(GUEST_EVICTION_TYPES),
        }
        self._kind_code = {k: i for i, k in enumerate(kinds)}
        self.tables: dict[str, Table] = {}
        schemas = {**TABLES, "timeline": timeline_schema(memcg, files)}
        if guests and enabled.get("evictions", True):  # the guest kernels' own evictions
            schemas["guest_evictions"] = GUEST_EVICTIONS_SCHEMA
        for name, schema in schemas.items():
            if enabled.get(name, True):
                path = outdir / (
                    f"{name}.parquet.part" if name == "evictions" else f"{name}.parquet"
                )
                self.tables[name] = Table(path, schema, labels, chunk_rows)
        self.ev = self.tables.get("evictions")
        self.gev = self.tables.get("guest_evictions")
        self.fl = self.tables.get("faults")
        self.tl = self.tables.get("timeline")
        # one bit per page: evicted, its fault not seen yet (its stamp slot holds the row)
        self.pending_refault = np.zeros(
            -(-mem.nr_pages // 8) if self.ev is not None else 0, np.uint8
        )
        self._far_rows: dict[int, int] = {}  # pending rows past SLOT_ROWS (4G evictions on)
        # side files, one record per row: its last-access stamp (uint32 us), and its next
        # access (int64 ns, plus one: 0 where the page has not come back)
        self._side = {k: outdir / f"evictions.{k}_access.part" for k in ("last", "next")}
        self._fd: dict[str, int] = {}
        if self.ev is not None:
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
            self._fd = {k: os.open(path, flags) for k, path in self._side.items()}
        self.n_evictions = 0
        self.rng = np.random.default_rng(rng_seed)
        # per guest pid: pages on no LRU (hugetlbfs, host/hugetlb.py), left out of idle_rank's
        # sample: exact LRU would never evict them
        self.unevictable: NDArray[np.bool_] | None = None

    # -- sinks -------------------------------------------------------------------------------
    def evicted(
        self,
        t_ns: int,
        pids: NDArray[np.int32],
        pfns: NDArray[np.int64],
        dirty: NDArray[np.bool_],
        scans: NDArray[np.uint8],
    ) -> None:
        """EvictionSink: folios left memory at ``t_ns``."""
        n = len(pids)
        if self.ev is None or n == 0:
            self.n_evictions += n
            return
        first = self.n_evictions
        self.n_evictions += n
        vm = self.mem.page_owners(pids).astype(np.int64)
        p = pids.astype(np.int64)
        pending = _bits(self.pending_refault, p)
        last_us = self._stamps(p, pending)
        last = last_us.astype(np.int64) * 1000
        idle_rank = self._idle_rank(last)
        self._park(p, first, last_us, pending)
        self.ev.extend(
            idle_rank=idle_rank,
            t_ns=np.full(n, t_ns, dtype=np.int64),
            vm=vm,
            gfn=pids - self.vm_base[vm],
            pfn=pfns,
            policy=np.zeros(n, dtype=np.int64),
            dirty=dirty,
            last_access_ns=last,
            idle_ns=t_ns - last,
            scans_survived=np.maximum(scans.astype(np.int64) - 1, 0),
            next_access_ns=np.full(n, None, dtype=object),  # null until the refault is seen
            refault=np.zeros(n, dtype=np.bool_),
        )

    def _idle_rank(self, last_ns: NDArray[np.int64]) -> NDArray[np.float32]:
        """Share of a random sample of resident pages (on an LRU) used no earlier than each
        victim.

        1.0: the victim was the coldest page sampled (what exact LRU would evict); 0.0: every
        sampled page was colder. One sample of IDLE_RANK_SAMPLE frames serves a whole batch.
        """
        mem = self.mem
        pfns = self.rng.integers(0, mem.nr_frames, IDLE_RANK_SAMPLE)
        pids = mem.frame_pid[pfns]
        pids = pids[pids >= 0]
        pids = pids[(mem.flags[pids] & PTE_PRESENT) != 0]
        if self.unevictable is not None:
            skip = self.unevictable
            pids = pids[(pids >= len(skip)) | ~skip[np.minimum(pids, len(skip) - 1)]]
        if len(pids) == 0:
            return np.full(len(last_ns), np.nan, dtype=np.float32)
        sample = self._stamps(pids).astype(np.int64) * 1000
        return (sample[None, :] >= last_ns[:, None]).mean(axis=1).astype(np.float32)

    def fault(
        self, t_ns: int, vm: int, vcpu: int, gfn: int, kind: str, latency_ns: int, pid: int
    ) -> None:
        """FaultSink: one guest fault."""
        if (
            self.ev is not None
            and pid >= 0
            and self.pending_refault.item(pid >> 3) >> (pid & 7) & 1
        ):
            row = self._unpark(pid)
            os.pwrite(self._fd["next"], (t_ns + 1).to_bytes(8, "little", signed=True), row * 8)
        if self.fl is not None:
            self.fl.append(t_ns, vm, vcpu, gfn, self._kind_code[kind], latency_ns)

    def discarded(self, pids: NDArray[np.int64], keep: Callable[[int], bool] | None) -> None:
        """DiscardSink: pages ``pids`` were discarded (sim/host/madvise.py) and will never
        refault: an eviction of one still waiting for its refault is final (its row stays
        without a next access), unless ``keep(pid)``: a fault on the page had begun, and is
        that refault when it is logged."""
        if self.ev is None:
            return
        pending = _bits(self.pending_refault, pids)
        for pid in pids[pending].tolist():
            if keep is None or not keep(pid):
                self._unpark(pid)

    # -- pending refaults ---------------------------------------------------------------------

    def _row_of(self, pid: int) -> int:
        """The row of pending page ``pid``'s eviction."""
        row = self.mem.last_access_us.item(pid)
        return self._far_rows[pid] if row == SLOT_ROWS else row

    def _row_stamp(self, row: int) -> int:
        """Row ``row``'s last-access stamp (us), from the side file."""
        return int.from_bytes(os.pread(self._fd["last"], 4, row * 4), "little")

    def _stamps(
        self, pids: NDArray[np.integer], pending: NDArray[np.bool_] | None = None
    ) -> NDArray[np.uint32]:
        """Last-access stamps (us) of mapped pages ``pids`` (``pending``: which of them are,
        if known); a pending one's is its row's."""
        out = self.mem.last_access_us[pids]
        if self.ev is None:
            return out
        if pending is None:
            pending = _bits(self.pending_refault, pids.astype(np.int64))
        if pending.any():
            for i in np.flatnonzero(pending).tolist():
                out[i] = self._row_stamp(self._row_of(int(pids[i])))
        return out

    def _park(
        self,
        pids: NDArray[np.int64],
        first: int,
        last_us: NDArray[np.uint32],
        pending: NDArray[np.bool_],
    ) -> None:
        """Pages ``pids`` (``pending``: those already were) were evicted as rows
        ``first...``: their stamps go to the side file, their rows to their stamp slots, their
        pending bits are set."""
        n = len(pids)
        os.pwrite(self._fd["last"], last_us.astype("<u4").tobytes(), first * 4)
        if pending.any():  # evicted again before their faults were seen
            for q in pids[pending].tolist():
                self._far_rows.pop(q, None)
        if first + n <= SLOT_ROWS:
            self.mem.last_access_us[pids] = np.arange(first, first + n, dtype=np.uint32)
        else:
            rows = np.arange(first, first + n, dtype=np.int64)
            far = rows >= SLOT_ROWS
            self._far_rows.update(zip(pids[far].tolist(), rows[far].tolist(), strict=True))
            self.mem.last_access_us[pids] = np.minimum(rows, SLOT_ROWS).astype(np.uint32)
        _set_bits(self.pending_refault, pids)

    def _unpark(self, pid: int) -> int:
        """Page ``pid`` faulted after its eviction: its pending bit is cleared and its stamp
        put back (no access happened since: the one faulting is stamped when it retries).
        Returns its eviction's row."""
        row = self._row_of(pid)
        self._far_rows.pop(pid, None)
        self.pending_refault[pid >> 3] = self.pending_refault.item(pid >> 3) & ~(1 << (pid & 7))
        self.mem.last_access_us[pid] = self._row_stamp(row)
        return row

    def sample(
        self, t_ns: int, per_vm: Sequence[Sequence[int | None]], host: Sequence[int]
    ) -> None:
        """Timeline rows: one per VM, host columns repeated."""
        if self.tl is None:
            return
        for vm, vals in enumerate(per_vm):
            self.tl.append(t_ns, vm, *vals, *host)

    # -- finish ------------------------------------------------------------------------------
    def guest_evicted(
        self,
        t_ns: int,
        vm: int,
        gfns: NDArray[np.int64],
        pages: NDArray[np.int64],
        file: bool,
        dirty: NDArray[np.bool_],
    ) -> None:
        """A guest kernel evicted pages of VM ``vm`` (its own level; see
        ``GUEST_EVICTIONS_SCHEMA``)."""
        n = len(gfns)
        if self.gev is None or n == 0:
            return
        self.gev.extend(
            t_ns=np.full(n, t_ns, dtype=np.int64),
            vm=np.full(n, vm, dtype=np.int64),
            gfn=np.asarray(gfns, dtype=np.int64),
            page=np.asarray(pages, dtype=np.int64),
            type=np.full(n, int(file), dtype=np.int64),
            dirty=np.asarray(dirty, dtype=np.bool_),
        )

    def close(self) -> dict[str, int]:
        """Write everything, fill in the evictions' next access; return row counts."""
        counts = {name: t.close() for name, t in self.tables.items()}
        if self.ev is not None and self._fd:
            self._finish_evictions()
            for k, fd in self._fd.items():
                os.close(fd)
                self._side[k].unlink()
            self._fd = {}
        return counts

    def _finish_evictions(self) -> None:
        part = self.outdir / "evictions.parquet.part"
        final = self.outdir / "evictions.parquet"
        src = pq.ParquetFile(part)
        writer: pq.ParquetWriter | None = None
        start = 0
        for batch in src.iter_batches(batch_size=self.chunk_rows):
            n = batch.num_rows
            got = np.frombuffer(os.pread(self._fd["next"], 8 * n, 8 * start), dtype="<i8")
            nxt = np.zeros(n, dtype=np.int64)  # past the file's end: none came back
            nxt[: len(got)] = got
            back = nxt > 0
            nxt[back] -= 1
            cols = {name: batch.column(name) for name in EVICTIONS_SCHEMA.names}
            cols["next_access_ns"] = pa.array(nxt, pa.int64(), mask=~back)  # null: never back
            cols["refault"] = pa.array(back, pa.bool_())
            out = pa.Table.from_pydict(cols, schema=EVICTIONS_SCHEMA)
            if writer is None:
                writer = pq.ParquetWriter(final, EVICTIONS_SCHEMA, compression="zstd")
            writer.write_table(out, row_group_size=self.chunk_rows)
            start += n
        if writer is None:
            pq.write_table(EVICTIONS_SCHEMA.empty_table(), final, compression="zstd")
        else:
            writer.close()
        src.close()
        part.unlink()

"""Access streams for calibration: the exact pages a real guest touches, generated in Python.

Models
    The stream a calibration guest replays (``vmm.c``): a sequence of ``(page, write)`` pairs
    over the guest's data pages. Shapes are memsim's own workloads (uniform, Zipf, hot/cold,
    cyclic scan, phases, traces) drawn through :class:`sim.guest.workloads.AccessStream`, so
    the guest sees what a memsim vCPU with the same workload would, plus a ``mix`` of them (a
    scan slightly larger than a memory limit mixed with a hot set, say), which memsim has no
    workload for. The stream is generated here and piped to the VMM, which only replays it:
    there is no second implementation of any sampler to keep in step.

Encoding
    One little-endian ``uint32`` per access: the page number in bits 0..30, bit 31 set for a
    write. Access ``i`` (counted from 1) to page ``p`` touches the 8-byte word at byte
    ``(p & 63) * 64`` of the page: a write stores ``i``, a read adds the word to ``read_sum``.
    The VMM's memory checksum is ``sum(word(p) * (2p + 1)) mod 2**64`` over all data pages.
    :func:`expected` predicts ``read_sum`` and the checksum, so a run proves that every access
    reached the page it names, in order, and that swapped-out pages came back intact.

Determinism
    A stream is a pure function of its :class:`StreamSpec`: chunks have a fixed size whatever
    the caller reads, and every generator is seeded from ``spec.seed`` alone.

Simplifications
    Phase durations are counted in accesses (``duration_s * access_rate_per_s``), as memsim's
    vCPUs count them. The guest has one vCPU, so a memsim comparison uses one vCPU too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from sim.errors import ConfigError
from sim.guest.workloads import AccessStream, SimpleWorkload, WorkloadConfig
from sim.schema import Strict

PAGE_SHIFT = 12
DATA_OFFSET_BYTES = 2 << 20  # vmm.c's DATA_GPA: the first 2 MiB hold the guest's own tables
WRITE_BIT = 1 << 31
MAX_PAGES = WRITE_BIT  # page numbers fit in 31 bits
STREAM_CHUNK = 1 << 16  # accesses generated at a time (a fixed size keeps streams reproducible)
MIX_CHUNK = 4096  # accesses per draw of part choices in a mix
_U64 = np.uint64


def data_pages(mem_mib: int) -> int:
    """Data pages of a guest with ``mem_mib`` MiB of RAM (the first 2 MiB are the guest's)."""
    return max(0, ((mem_mib << 20) - DATA_OFFSET_BYTES) >> PAGE_SHIFT)


class MixPart(Strict):
    """One part of a mix: a simple workload over its own region, chosen with a weight."""

    workload: SimpleWorkload = Field(description="Distribution of this part's accesses.")
    offset_pages: int = Field(0, ge=0, description="Start of the part's region.")
    pages: int = Field(gt=0, description="Size of the part's region.")
    weight: float = Field(gt=0.0, description="Relative share of accesses going to this part.")


class MixConfig(Strict):
    """Each access picks a part by weight, then a page from that part's own stream.

    The case it exists for: a cyclic scan slightly larger than a memory limit, mixed with a hot
    set that fits (LRU evicts the hot set behind the scan; a scan-resistant policy does not).
    """

    type: Literal["mix"] = "mix"
    parts: list[MixPart] = Field(min_length=1, max_length=16, description="The parts.")


StreamWorkload = Annotated[WorkloadConfig | MixConfig, Field(discriminator="type")]


class StreamSpec(Strict):
    """Everything that determines a calibration stream."""

    workload: StreamWorkload = Field(description="memsim workload, or a mix of simple ones.")
    accesses: int = Field(gt=0, description="Length of the stream.")
    pages: int = Field(
        gt=0, lt=MAX_PAGES, description="Pages the workload spans (its working set, from 0)."
    )
    write_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a write.")
    seed: int = Field(0, ge=0, description="Seed of every generator of the stream.")
    access_rate_per_s: int = Field(
        1_000_000, gt=0, description="Converts phase durations into accesses."
    )

    @model_validator(mode="after")
    def _parts_fit(self) -> StreamSpec:
        if isinstance(self.workload, MixConfig):
            for j, part in enumerate(self.workload.parts):
                if part.offset_pages + part.pages > self.pages:
                    raise ValueError(
                        f"mix part {j} spans pages {part.offset_pages}.."
                        f"{part.offset_pages + part.pages - 1}, beyond pages={self.pages}"
                    )
        return self


def _stream(
    workload: WorkloadConfig, pages: int, spec: StreamSpec, rng: np.random.Generator
) -> AccessStream:
    return AccessStream(
        workload,
        vm_pages=pages,
        working_set_pages=pages,
        access_rate_per_s=spec.access_rate_per_s,
        write_ratio=spec.write_ratio,
        vcpu=0,
        nr_vcpus=1,
        rng=rng,
    )


class _Mix:
    """The parts' streams, interleaved by a weighted choice per access."""

    def __init__(self, mix: MixConfig, spec: StreamSpec, seq: np.random.SeedSequence) -> None:
        choose_seq, *part_seqs = seq.spawn(1 + len(mix.parts))
        self.rng = np.random.default_rng(choose_seq)
        weights = np.array([p.weight for p in mix.parts])
        self.cum = np.cumsum(weights / weights.sum())
        self.parts = [
            (_stream(p.workload, p.pages, spec, np.random.default_rng(s)), p.offset_pages)
            for p, s in zip(mix.parts, part_seqs, strict=True)
        ]

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        gfns = np.empty(n, dtype=np.int64)
        writes = np.empty(n, dtype=np.bool_)
        for lo in range(0, n, MIX_CHUNK):
            hi = min(n, lo + MIX_CHUNK)
            which = np.searchsorted(self.cum, self.rng.random(MIX_CHUNK), side="right")
            which = np.minimum(which[: hi - lo], len(self.parts) - 1)
            for j, (stream, offset) in enumerate(self.parts):
                at = lo + np.flatnonzero(which == j)
                if at.size:
                    g, w = stream.next(at.size)
                    gfns[at] = g + offset
                    writes[at] = w
        return gfns, writes


def chunks(spec: StreamSpec) -> Iterator[tuple[NDArray[np.int64], NDArray[np.bool_]]]:
    """The stream in chunks of ``STREAM_CHUNK`` accesses (the last may be shorter)."""
    seq = np.random.SeedSequence(spec.seed)
    if isinstance(spec.workload, MixConfig):
        source: AccessStream | _Mix = _Mix(spec.workload, spec, seq)
    else:
        source = _stream(spec.workload, spec.pages, spec, np.random.default_rng(seq))
    left = spec.accesses
    while left > 0:
        n = min(STREAM_CHUNK, left)
        gfns, writes = source.next(n)
        if not len(gfns):  # a trace played once (repeat: false) has ended
            return
        left -= n
        yield gfns.copy(), writes.copy()


def generate(spec: StreamSpec) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """The whole stream at once (for tests and for writing a trace)."""
    parts = list(chunks(spec))
    return np.concatenate([g for g, _ in parts]), np.concatenate([w for _, w in parts])


def encode(gfns: NDArray[np.int64], writes: NDArray[np.bool_]) -> NDArray[np.uint32]:
    """The VMM's wire format: page | WRITE_BIT for writes, little-endian uint32."""
    if gfns.size and (int(gfns.min()) < 0 or int(gfns.max()) >= MAX_PAGES):
        raise ConfigError(f"page numbers must be in 0..{MAX_PAGES - 1}")
    return (gfns.astype("<u4") | (writes.astype("<u4") << 31)).astype("<u4", copy=False)


Chunks = Iterable[tuple[NDArray[np.int64], NDArray[np.bool_]]]


def write_stream(stream: StreamSpec | Chunks, out: BinaryIO) -> int:
    """Write the encoded stream (a spec's, or given chunks) to ``out`` (a pipe to the VMM);
    return the accesses written."""
    n = 0
    for gfns, writes in chunks(stream) if isinstance(stream, StreamSpec) else stream:
        out.write(encode(gfns, writes).tobytes())
        n += gfns.size
    return n


@dataclass(frozen=True, slots=True)
class Expected:
    """What a correct replay of a stream reports."""

    accesses: int
    read_sum: int
    checksum: int


def expected(gfns: NDArray[np.int64], writes: NDArray[np.bool_]) -> Expected:
    """``read_sum`` and the memory checksum a replay of this stream must report.

    The value a read sees is the 1-based index of the last earlier write to its page (0 if
    none: fresh anonymous memory is zero). Sorting accesses stably by page puts each page's
    accesses in time order; a running maximum of ``group * (n + 1) + write index`` carries the
    last write forward within a page and never across pages, since groups only grow.
    """
    n = int(gfns.size)
    if n == 0:
        return Expected(0, 0, 0)
    idx = np.arange(1, n + 1, dtype=np.int64)
    order = np.argsort(gfns, kind="stable")
    pg, wr, ix = gfns[order], writes[order], idx[order]
    group = np.concatenate(([0], np.cumsum(pg[1:] != pg[:-1])))
    if (int(group[-1]) + 1) * (n + 1) >= 2**63:
        raise ConfigError(f"stream of {n} accesses too long to check in one piece")
    key = group * (n + 1) + np.where(wr, ix, 0)
    last = np.maximum.accumulate(key) - group * (n + 1)
    read_sum = int(last[~wr].astype(_U64).sum(dtype=_U64))
    # the final word of each written page: its last write's index
    tail = np.flatnonzero(np.concatenate((pg[1:] != pg[:-1], [True])))
    words = last[tail].astype(_U64)
    weights = (2 * pg[tail].astype(_U64) + _U64(1)).astype(_U64)
    with np.errstate(over="ignore"):
        checksum = int((words * weights).sum(dtype=_U64))
    return Expected(n, read_sum, checksum)


def write_trace(spec: StreamSpec, path: str | Path) -> Path:
    """Write the stream as a parquet trace (``page``, ``write``) that ``memsim`` can replay.

    memsim renumbers a trace's pages densely in order of first appearance, which keeps the
    stream's reuse pattern exactly (what LRU, CLOCK, OPT and the kernel's LRU act on).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    gfns, writes = generate(spec)
    path = Path(path)
    pq.write_table(pa.table({"page": gfns, "write": writes}), path)
    return path

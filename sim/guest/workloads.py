"""Guest access streams: which guest pages (gfns) a vCPU touches, in vectorised batches.

Models
    The page-granular memory references of a guest vCPU: a stream of ``(gfn, write)`` pairs drawn
    from a distribution over the VM's working set, or replayed from a recorded trace of a real
    program (:mod:`sim.guest.traces`). Streams are pure: they know nothing of SimPy or of memory
    state, so the same seed gives the same stream whatever the host does (which is what lets
    exact LRU and Belady's OPT be computed on it later).

Determinism
    Accesses are generated in fixed chunks and served from a buffer, so the stream of a given
    seed is the same whatever batch sizes it is read in.

Simplifications
    Phase boundaries are counted in the vCPU's own accesses (``duration_s * access_rate_per_s``),
    not in simulated time, so a vCPU stalled on faults does not skip through its phases and the
    stream stays independent of memory pressure. A trace is replayed at the vCPU's access rate,
    not at its recorded timestamps, and cyclically: after its last access it starts over
    (unless it is played once, ``repeat: false``: then the stream ends, and the vCPU halts).
    A trace's pages are packed densely into guest memory in order of first appearance, so the
    guest layout keeps the trace's reuse pattern but not its virtual-address gaps.

Invariants
    Every gfn is in ``[offset, offset + working_set)`` of its phase and below the VM's page count;
    a trace's gfns are ``0 .. D-1`` for its ``D`` distinct pages, ``D`` at most the VM's pages.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numba
import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from sim import fast
from sim.errors import TraceError
from sim.guest.traces import detect_format, read_trace
from sim.host.memory import PAGE_SHIFT, PAGE_SIZE
from sim.schema import Strict

# --------------------------------------------------------------------------------------------
# config

MAX_PHASE_S = 4000.0  # no vCPU lives longer than the longest run


class UniformConfig(Strict):
    """Every page of the working set is equally likely."""

    type: Literal["uniform"] = "uniform"


class ZipfConfig(Strict):
    """Page popularity follows Zipf's law: the k-th hottest page has weight ``k**-alpha``."""

    type: Literal["zipf"] = "zipf"
    alpha: float = Field(0.99, gt=0.0, le=5.0, description="Zipf exponent (skew).")


class HotColdConfig(Strict):
    """A hot set of pages takes most accesses; the rest are uniform over the cold set."""

    type: Literal["hotcold"] = "hotcold"
    hot_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of pages that are hot.")
    hot_access_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="Share of accesses that go to the hot pages."
    )


class ScanConfig(Strict):
    """A cyclic sequential scan of the working set (the case LRU handles worst)."""

    type: Literal["scan"] = "scan"


SimpleWorkload = Annotated[
    UniformConfig | ZipfConfig | HotColdConfig | ScanConfig, Field(discriminator="type")
]


class PhaseConfig(Strict):
    """One phase of a phased workload: a distribution over its own region for a while."""

    duration_s: float = Field(
        gt=0.0, le=MAX_PHASE_S, description="Length of the phase in the vCPU's own time."
    )
    workload: SimpleWorkload = Field(
        default_factory=ZipfConfig, description="Distribution during this phase."
    )
    offset_mib: int = Field(0, ge=0, description="Start of this phase's region in guest memory.")
    working_set_mib: int | None = Field(
        None, gt=0, description="Size of this phase's region (default: the VM's working set)."
    )


class PhasesConfig(Strict):
    """A sequence of phases (the hot set moves); repeats from the first after the last."""

    type: Literal["phases"] = "phases"
    phases: list[PhaseConfig] = Field(min_length=1, description="The phases, in order.")
    repeat: bool = Field(True, description="Start over after the last phase (else stay in it).")


class TraceConfig(Strict):
    """Replay a recorded trace of a real program (valgrind lackey, CSV, .npy or parquet).

    The trace's distinct pages become guest pages ``0 .. D-1`` in order of first appearance, so
    ``memory_mib`` must hold them all; ``working_set_mib`` does not apply. Writes come from the
    trace (loads are reads; stores and modifies are writes; .npy traces only read), so the VM's
    ``write_ratio`` is ignored. With a ``vcpu`` column each vCPU replays its own accesses;
    otherwise every vCPU replays the whole trace, vCPU ``j`` of ``n`` starting ``j/n`` of the way
    in. Each vCPU starts over at the end, or with ``repeat: false`` halts there.
    """

    type: Literal["trace"] = "trace"
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Trace file (gzip'd or not); a relative path is relative to the directory of "
        "the file that names it (the current directory for --set); config.yaml records it "
        "resolved.",
    )
    format: Literal["auto", "lackey", "csv", "npy", "parquet"] = Field(
        "auto",
        description="File format; auto: by extension (.npy, .parquet, .csv, a trailing .gz "
        "ignored), anything else is valgrind lackey output.",
    )
    page_size: int = Field(
        4096,
        ge=512,
        le=1 << 30,
        description="Bytes per trace page (a power of two): page numbers in the trace count "
        "pages of this size, addresses are cut into them. Each becomes one guest page (a size "
        "under 4096 falls into the 4 KiB page holding it).",
    )
    instructions: bool = Field(
        False,
        description="Replay lackey's instruction fetches (I lines) as reads too; off: data "
        "accesses only.",
    )
    repeat: bool = Field(
        True,
        description="false: each vCPU replays its accesses once and then halts; the run ends "
        "when every vCPU of every VM has halted, or at duration_s.",
    )

    @field_validator("page_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"page_size must be a power of two (got {v})")
        return v

    @model_validator(mode="after")
    def _instructions_need_lackey(self) -> TraceConfig:
        fmt = detect_format(self.path) if self.format == "auto" else self.format
        if self.instructions and fmt != "lackey":
            raise ValueError(
                f"instructions: only lackey traces have instruction fetches, and this one is "
                f"read as {fmt}; remove instructions"
            )
        return self


WorkloadConfig = Annotated[
    UniformConfig | ZipfConfig | HotColdConfig | ScanConfig | PhasesConfig | TraceConfig,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------------
# samplers


def _coprime_stride(n: int) -> int:
    """A stride near ``n / golden ratio`` that is coprime to ``n``: a cheap bijective scatter."""
    if n <= 2:
        return 1
    s = max(1, int(n * 0.6180339887498949))
    while math.gcd(s, n) != 1:
        s += 1
    return s


class ZipfSampler:
    """Exact Zipf(alpha) ranks in ``[1, n]`` by rejection-inversion (Hörmann and Derflinger, 1996).

    O(1) memory whatever ``n`` (no CDF table), vectorised over a batch; the acceptance rate is
    above 90% for every exponent, so the rejection loop runs once or twice.
    """

    def __init__(self, n: int, alpha: float) -> None:
        self.n, self.s = n, alpha
        self.h_x1 = self._h_integral(1.5) - 1.0
        self.h_n = self._h_integral(n + 0.5)
        self.sd = 2.0 - self._h_integral_inv(self._h_integral(2.5) - self._h(2.0))
        # the constants the compiled kernels take
        self._consts = (self.h_n, self.h_x1 - self.h_n, 1.0 - alpha, -alpha, float(n), self.sd)
        self._table: NDArray[np.int32] | None = None  # built on first use

    def _h(self, x: NDArray[np.float64] | float) -> NDArray[np.float64]:
        return np.exp(-self.s * np.log(x))

    def _h_integral(self, x: NDArray[np.float64] | float) -> NDArray[np.float64]:
        lx = np.log(x)
        return _expm1_over_x((1.0 - self.s) * lx) * lx

    def _h_integral_inv(self, x: NDArray[np.float64] | float) -> NDArray[np.float64]:
        t = np.maximum(np.asarray(x, dtype=np.float64) * (1.0 - self.s), -1.0)
        return np.exp(_log1p_over_x(t) * x)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.int64]:
        """Return ``size`` ranks (1 = most popular).

        Each round draws one uniform per rank still wanted and accepts most of them; the rest
        are drawn again, in order, in the next round. The per-rank arithmetic is compiled
        (``_zipf_round``): the same IEEE operations and libm calls as ``sample_numpy``, so the
        ranks are identical to it, and most uniforms skip the arithmetic altogether through
        ``_zipf_table`` (which cannot change a rank either).
        """
        return self.sample_scattered(rng, size, 1) + 1

    def sample_scattered(
        self, rng: np.random.Generator, size: int, stride: int
    ) -> NDArray[np.int64]:
        """``(rank - 1) * stride % n`` of ``size`` ranks: ``sample`` and a scatter in one pass
        (``sample_numpy``'s ranks scattered when the ``zipf_compiled`` fast path is off)."""
        if not fast.enabled("zipf_compiled"):
            return (self.sample_numpy(rng, size) - 1) * stride % self.n
        fast.took("zipf_compiled")
        out = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        left = size
        if self._table is None:
            self._table = _zipf_table(self.n, self.s)
        table, c = self._table, self._consts
        while left:
            left = _zipf_round(rng.random(left), table, *c, stride, out, todo)
        return out

    def sample_numpy(self, rng: np.random.Generator, size: int) -> NDArray[np.int64]:
        """``sample`` in plain numpy: the reference the compiled rounds are tested against."""
        out = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        while todo.size:
            u = self.h_n + rng.random(todo.size) * (self.h_x1 - self.h_n)
            x = self._h_integral_inv(u)
            k = np.clip(np.floor(x + 0.5), 1, self.n)
            ok = k - x <= self.sd
            rest = np.flatnonzero(~ok)
            if rest.size:  # the exact test, only where the cheap squeeze did not accept
                kr = k[rest]
                ok[rest] = u[rest] >= self._h_integral(kr + 0.5) - self._h(kr)
            out[todo[ok]] = k[ok].astype(np.int64)
            todo = todo[~ok]
        return out


# Uniforms from ``Generator.random`` are multiples of 2**-53 in [0, 1).
_R_ULP = 2.0**-53
# A bucket's rank is trusted only if its ends keep this relative distance from every decision
# boundary: the computed x is within a few ulps (about 1e-15 relative) of a monotone function.
_MARGIN = 1e-9


@numba.njit(cache=True, nogil=True)
def _zipf_x(u: float, one_minus_s: float) -> float:
    """``_h_integral_inv(u)``, with the numpy helpers' operations in their order."""
    t = max(u * one_minus_s, -1.0)
    q = 1.0 - t / 2.0 + t * t / 3.0 if abs(t) < 1e-8 else math.log1p(t) / t
    return math.exp(q * u)


@numba.njit(cache=True, nogil=True)
def _zipf_round(
    r: NDArray[np.float64],
    table: NDArray[np.int32],
    h_n: float,
    span: float,
    one_minus_s: float,
    neg_s: float,
    n: float,
    sd: float,
    stride: int,
    out: NDArray[np.int64],
    todo: NDArray[np.int64],
) -> int:
    """One rejection-inversion round: rank ``k`` for ``todo[i]`` from uniform ``r[i]`` where
    accepted, stored as ``(k - 1) * stride % n``.

    A uniform whose ``table`` bucket holds a rank takes it; any other goes through the
    arithmetic. The rejected ranks are compacted, in order, to the front of ``todo``; returns
    how many.
    """
    left = 0
    m = table.size
    ni = np.int64(n)
    for i in range(r.size):
        rank = table[int(r[i] * m)]
        if rank > 0:
            out[todo[i]] = (np.int64(rank) - 1) * stride % ni
            continue
        u = h_n + r[i] * span
        x = _zipf_x(u, one_minus_s)
        k = min(max(math.floor(x + 0.5), 1.0), n)
        ok = k - x <= sd
        if not ok:  # the exact test: u >= _h_integral(k + 0.5) - _h(k)
            lx = math.log(k + 0.5)
            z = one_minus_s * lx
            e = 1.0 + z / 2.0 + z * z / 6.0 if abs(z) < 1e-8 else math.expm1(z) / z
            ok = u >= e * lx - math.exp(neg_s * math.log(k))
        if ok:
            out[todo[i]] = (np.int64(k) - 1) * stride % ni
        else:
            todo[left] = todo[i]
            left += 1
    return left


@numba.njit(cache=True, nogil=True)
def _zipf_buckets(
    bits: int, h_n: float, span: float, one_minus_s: float, n: float, sd: float
) -> NDArray[np.int32]:
    """The rank every uniform of each of ``2**bits`` equal buckets of [0, 1) gets, or 0.

    A bucket gets a rank only when both its ends (its least and greatest representable uniform)
    round to it, pass the squeeze, and sit clear of every boundary those decisions have (x at
    rank +- 0.5 and at rank - sd) by ``_MARGIN``. x is monotone in the uniform and computed
    within a few ulps of it, so no uniform inside such a bucket can decide differently.
    """
    m = 1 << bits
    table = np.zeros(m, dtype=np.int32)
    for j in range(m):
        lo, hi = j / m, (j + 1) / m - _R_ULP
        x_lo = _zipf_x(h_n + lo * span, one_minus_s)
        x_hi = _zipf_x(h_n + hi * span, one_minus_s)
        k = min(max(math.floor(x_lo + 0.5), 1.0), n)
        if min(max(math.floor(x_hi + 0.5), 1.0), n) != k:
            continue
        safe = True
        for x in (x_lo, x_hi):
            gap = _MARGIN * max(1.0, x)
            if k > 1.0 and x - (k - 0.5) <= gap:
                safe = False
            if k < n and (k + 0.5) - x <= gap:
                safe = False
            if x - (k - sd) <= gap:
                safe = False
        if safe:
            table[j] = np.int32(k)
    return table


@functools.lru_cache(maxsize=32)
def _zipf_table(n: int, s: float) -> NDArray[np.int32]:
    """``_zipf_buckets`` for Zipf(s) over ``n`` ranks, shared by every sampler that needs it.

    ``2**bits`` buckets, about 16 per rank (between 2**12 and 2**18: at most 1 MiB), so the
    buckets of the popular ranks, which take most of the draws, lie inside them.
    """
    if n >= 1 << 31:
        return np.zeros(1, dtype=np.int32)  # ranks beyond int32: always the arithmetic
    bits = min(max((n - 1).bit_length() + 4, 12), 18)
    h_n, span, one_minus_s, _, nf, sd = ZipfSampler(n, s)._consts
    table = _zipf_buckets(bits, h_n, span, one_minus_s, nf, sd)
    table.flags.writeable = False
    return table


def _expm1_over_x(x: NDArray[np.float64]) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-8
    if not small.any():  # the usual case: skip the series (same values either way)
        return np.expm1(x) / x
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 + x / 2.0 + x * x / 6.0, np.expm1(safe) / safe)


def _log1p_over_x(x: NDArray[np.float64]) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-8
    if not small.any():
        return np.log1p(x) / x
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 - x / 2.0 + x * x / 3.0, np.log1p(safe) / safe)


CHUNK = 4096  # accesses generated at a time, whatever the caller asks for


@dataclass(frozen=True, slots=True)
class DenseTrace:
    """A trace with its pages renumbered ``0 .. distinct-1`` in order of first appearance."""

    gfns: NDArray[np.int64]
    writes: NDArray[np.bool_]
    vcpu: NDArray[np.int64] | None
    distinct: int
    source: str


def load_trace(cfg: TraceConfig) -> DenseTrace:
    """The trace ``cfg`` names, read once per process however many vCPUs and VMs replay it.

    Guest pages are ``max(cfg.page_size, PAGE_SIZE)`` bytes of the trace (then renumbered
    densely). The cache key includes the file's size and modification time, so a file
    rewritten in place is read again.
    """
    path = Path(cfg.path).expanduser().resolve()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TraceError(f"{cfg.path}: cannot read: {exc.strerror or exc}") from None
    page_size = max(cfg.page_size, PAGE_SIZE)
    key = (str(path), cfg.format, page_size, cfg.page_size, cfg.instructions)
    return _load_trace(cfg.path, *key, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load_trace(
    shown: str,
    path: str,
    fmt: str,
    page_size: int,
    numbers_page_size: int,
    instructions: bool,
    size: int,
    mtime_ns: int,
) -> DenseTrace:
    tr = read_trace(
        path,
        fmt=fmt,
        page_size=page_size,
        instructions=instructions,
        numbers_page_size=numbers_page_size,
    )
    uniq, first, inverse = np.unique(tr.pages, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size, dtype=np.int64)
    gfns = rank[inverse.reshape(-1)]
    for a in (gfns, tr.writes, tr.vcpu):
        if a is not None:
            a.flags.writeable = False  # shared by every stream replaying this file
    return DenseTrace(gfns, tr.writes, tr.vcpu, int(uniq.size), shown)


class _Replay:
    """One vCPU's walk over its accesses of a trace: cyclic, or once (``left`` counts what is
    still to come; -1: forever)."""

    def __init__(self, cfg: TraceConfig, vm_pages: int, vcpu: int, nr_vcpus: int) -> None:
        tr = load_trace(cfg)
        if tr.distinct > vm_pages:
            mib = -(-(tr.distinct << PAGE_SHIFT) // (1 << 20))
            raise TraceError(
                f"{cfg.path}: the trace touches {tr.distinct} distinct pages but the VM has "
                f"{vm_pages}; raise memory_mib to at least {mib}"
            )
        if tr.vcpu is None:
            self.gfns, self.writes = tr.gfns, tr.writes
            self.pos = (vcpu * tr.gfns.size) // max(1, nr_vcpus)
            self.left = -1 if cfg.repeat else int(tr.gfns.size)
            return
        top = int(tr.vcpu.max())
        if top >= nr_vcpus:
            raise TraceError(
                f"{cfg.path}: the trace's vcpu column goes up to {top} but the VM has "
                f"{nr_vcpus} vCPUs; raise vcpus to at least {top + 1}"
            )
        mine = np.flatnonzero(tr.vcpu == vcpu)
        if mine.size == 0:
            raise TraceError(
                f"{cfg.path}: the trace has no accesses for vCPU {vcpu}; lower vcpus to the "
                f"vCPUs the trace uses"
            )
        self.gfns, self.writes = tr.gfns[mine], tr.writes[mine]
        self.pos = 0
        self.left = -1 if cfg.repeat else int(mine.size)

    def take(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """The next ``n`` accesses (fewer, then none, at the end of a replay played once)."""
        if self.left >= 0:
            n = min(n, self.left)
            self.left -= n
        idx = (self.pos + np.arange(n, dtype=np.int64)) % self.gfns.size
        self.pos = int((self.pos + n) % self.gfns.size)
        return self.gfns[idx], self.writes[idx]


class _Region:
    """One distribution over ``[offset, offset + size)`` pages, sampled in batches."""

    def __init__(
        self,
        cfg: UniformConfig | ZipfConfig | HotColdConfig | ScanConfig,
        offset: int,
        size: int,
        start: int,
    ) -> None:
        self.cfg, self.offset, self.size = cfg, offset, size
        self.stride = _coprime_stride(size)
        self.pos = start % size  # scan position
        if isinstance(cfg, ZipfConfig):
            self.zipf = ZipfSampler(size, cfg.alpha)
        if isinstance(cfg, HotColdConfig):
            self.n_hot = max(1, min(size - 1, round(size * cfg.hot_fraction))) if size > 1 else 1

    def _scatter(self, rank0: NDArray[np.int64]) -> NDArray[np.int64]:
        """Map popularity ranks (0 = hottest) to pages, spread over the region."""
        return (rank0 * self.stride) % self.size

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
        cfg = self.cfg
        if isinstance(cfg, UniformConfig):
            idx = rng.integers(0, self.size, n, dtype=np.int64)
        elif isinstance(cfg, ZipfConfig):
            idx = self.zipf.sample_scattered(rng, n, self.stride)
        elif isinstance(cfg, HotColdConfig):
            hot = rng.random(n) < cfg.hot_access_fraction
            rank = np.where(
                hot,
                rng.integers(0, self.n_hot, n, dtype=np.int64),
                self.n_hot + rng.integers(0, max(1, self.size - self.n_hot), n, dtype=np.int64),
            )
            idx = self._scatter(np.minimum(rank, self.size - 1))
        else:  # scan
            idx = (self.pos + np.arange(n, dtype=np.int64)) % self.size
            self.pos = int((self.pos + n) % self.size)
        return idx + self.offset


class AccessStream:
    """The access stream of one vCPU: ``next(n)`` returns ``n`` gfns and their write flags.

    Args:
        workload: the VM's workload config.
        vm_pages: guest memory of the VM, in pages.
        working_set_pages: default region size (from the VM config).
        access_rate_per_s: the vCPU's access rate, which converts phase durations to accesses.
        write_ratio: probability that an access is a write (not for traces, which carry theirs).
        vcpu: index of this vCPU in its VM (staggers scan and trace start positions).
        nr_vcpus: vCPUs in the VM.
        rng: this vCPU's own generator.

    Raises:
        TraceError: a trace workload's file cannot be read, or does not fit the VM.
    """

    def __init__(
        self,
        workload: WorkloadConfig,
        *,
        vm_pages: int,
        working_set_pages: int,
        access_rate_per_s: int,
        write_ratio: float,
        vcpu: int,
        nr_vcpus: int,
        rng: np.random.Generator,
    ) -> None:
        self.rng, self.write_ratio = rng, write_ratio
        self._gfns = np.empty(0, dtype=np.int64)  # generated, not yet handed out from _off
        self._writes = np.empty(0, dtype=np.bool_)
        self._off = 0
        self.replay: _Replay | None = None
        if isinstance(workload, TraceConfig):
            self.replay = _Replay(workload, vm_pages, vcpu, nr_vcpus)
            return

        def pages(mib: int) -> int:
            return (mib << 20) >> PAGE_SHIFT

        if isinstance(workload, PhasesConfig):
            specs = [
                (
                    ph.workload,
                    pages(ph.offset_mib),
                    pages(ph.working_set_mib) if ph.working_set_mib else working_set_pages,
                    max(1, round(ph.duration_s * access_rate_per_s)),
                )
                for ph in workload.phases
            ]
            self.repeat = workload.repeat
        else:
            specs = [(workload, 0, working_set_pages, 0)]
            self.repeat = False
        self.regions: list[_Region] = []
        self.lengths: list[int] = []
        for wl, off, size, length in specs:
            size = max(1, min(size, vm_pages - off))
            self.regions.append(_Region(wl, off, size, start=(vcpu * size) // max(1, nr_vcpus)))
            self.lengths.append(length)
        self.phase = 0
        self.left = self.lengths[0] if len(self.regions) > 1 or self.repeat else -1

    def _advance_phase(self) -> None:
        nxt = self.phase + 1
        if nxt >= len(self.regions):
            if not self.repeat:
                self.left = -1  # stay in the last phase forever
                return
            nxt = 0
        self.phase = nxt
        self.left = self.lengths[nxt]

    def _chunk(self) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Generate the next fixed-size chunk (clipped at a phase boundary).

        Chunk sizes depend only on the phase lengths, never on what callers ask for, so the
        generator is consumed identically whatever batch sizes the vCPU uses.
        """
        if self.replay is not None:
            return self.replay.take(CHUNK)
        take = CHUNK if self.left < 0 else min(CHUNK, self.left)
        gfns = self.regions[self.phase].sample(self.rng, take)
        if self.write_ratio <= 0.0:
            writes = np.zeros(take, dtype=np.bool_)
        elif self.write_ratio >= 1.0:
            writes = np.ones(take, dtype=np.bool_)
        else:
            writes = self.rng.random(take) < self.write_ratio
        if self.left >= 0:
            self.left -= take
            if self.left == 0:
                self._advance_phase()
        return gfns, writes

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Return the next ``n`` accesses: gfns (int64) and write flags; fewer only at the end
        of a trace played once (``repeat: false``), and from then on none."""
        if n <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.bool_)
        off = self._off
        have = len(self._gfns) - off
        if have == 0:  # the usual case when chunks hold whole batches: no copy
            self._gfns, self._writes = self._chunk()
            off, have = 0, len(self._gfns)
        if have < n:
            gs, ws = [self._gfns[off:]], [self._writes[off:]]
            while have < n:
                g, w = self._chunk()
                if not len(g):  # the stream has ended
                    break
                gs.append(g)
                ws.append(w)
                have += len(g)
            self._gfns, self._writes = np.concatenate(gs), np.concatenate(ws)
            off = 0
            n = min(n, have)
        self._off = off + n
        return self._gfns[off : off + n], self._writes[off : off + n]

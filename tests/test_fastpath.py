"""The compiled replays (sim/fastpath.py) and the LRU miss-ratio curve (sim/mrc.py).

Every kernel is held to a brute-force reference written here straight from the definitions,
with plain Python lists and no code shared with ``sim``: hypothesis draws traces over small
alphabets (so there are many hits), sometimes remapped to huge sparse page numbers, and every
memory size from one frame to more than the distinct pages. Textbook examples and edge cases pin
known counts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import fastpath, mrc
from sim.fastpath import NO_NEXT, ReplayCount
from sim.mrc import COLD

INF = float("inf")

# --------------------------------------------------------------------------------------------
# references: (faults, evictions) straight from the definitions


def ref_lru(pages: list[int], frames: int) -> tuple[int, int]:
    """``stack[-1]`` is the most recently used page."""
    stack: list[int] = []
    faults = evictions = 0
    for p in pages:
        if p in stack:
            stack.remove(p)
        else:
            faults += 1
            if len(stack) == frames:
                stack.pop(0)
                evictions += 1
        stack.append(p)
    return faults, evictions


def ref_fifo(pages: list[int], frames: int) -> tuple[int, int]:
    """``queue[0]`` has been resident longest."""
    queue: list[int] = []
    faults = evictions = 0
    for p in pages:
        if p in queue:
            continue
        faults += 1
        if len(queue) == frames:
            queue.pop(0)
            evictions += 1
        queue.append(p)
    return faults, evictions


def ref_clock(pages: list[int], frames: int) -> tuple[int, int]:
    """A queue of ``[page, referenced]``; the bit is set on every touch, the fault included."""
    queue: list[list[int]] = []
    faults = evictions = 0
    for p in pages:
        entry = next((e for e in queue if e[0] == p), None)
        if entry is not None:
            entry[1] = 1
            continue
        faults += 1
        if len(queue) == frames:
            while queue[0][1]:
                head = queue.pop(0)
                head[1] = 0
                queue.append(head)
            queue.pop(0)
            evictions += 1
        queue.append([p, 1])
    return faults, evictions


def ref_next_access(pages: list[int], i: int, p: int) -> float:
    """Position of the first access to ``p`` after ``i``, infinity if none."""
    return next((j for j in range(i + 1, len(pages)) if pages[j] == p), INF)


def ref_opt(pages: list[int], frames: int) -> tuple[int, int]:
    """Belady's MIN: evict the resident page whose next access is farthest away."""
    resident: list[int] = []
    faults = evictions = 0
    for i, p in enumerate(pages):
        if p in resident:
            continue
        faults += 1
        if len(resident) == frames:
            victim = max(resident, key=lambda q: ref_next_access(pages, i, q))
            resident.remove(victim)
            evictions += 1
        resident.append(p)
    return faults, evictions


def ref_next_use(pages: list[int]) -> list[int]:
    out = []
    for i, p in enumerate(pages):
        j = ref_next_access(pages, i, p)
        out.append(NO_NEXT if j == INF else int(j))
    return out


def ref_stack_distances(pages: list[int]) -> list[int]:
    """``stack[0]`` is the most recently used page; distance = 1-based depth before the access."""
    stack: list[int] = []
    out = []
    for p in pages:
        if p in stack:
            out.append(stack.index(p) + 1)
            stack.remove(p)
        else:
            out.append(COLD)
        stack.insert(0, p)
    return out


KERNELS: dict[str, tuple[Callable[..., ReplayCount], Callable[..., tuple[int, int]]]] = {
    "lru": (fastpath.lru, ref_lru),
    "fifo": (fastpath.fifo, ref_fifo),
    "clock": (fastpath.clock, ref_clock),
    "opt": (fastpath.opt, ref_opt),
}


def replay(name: str, pages: list[int], frames: int) -> ReplayCount:
    """Run a kernel and check the counts every replay must satisfy."""
    got = KERNELS[name][0](np.array(pages, dtype=np.int64), frames)
    distinct = len(set(pages))
    assert got.accesses == len(pages)
    assert got.distinct_pages == distinct
    assert got.evictions == max(0, got.faults - frames)
    assert got.faults == got.evictions + min(frames, distinct)
    assert got.faults >= distinct
    return got


# --------------------------------------------------------------------------------------------
# random traces


@st.composite
def traces(draw: st.DrawFn) -> list[int]:
    """Up to 300 accesses over 1-12 pages; sometimes remapped to huge, sparse page numbers."""
    alphabet = draw(st.integers(1, 12))
    pages = draw(st.lists(st.integers(0, alphabet - 1), max_size=300))
    remap = draw(st.sampled_from(["none", "stride", "random"]))
    if remap == "stride":
        return [p * (1 << 40) + 7 for p in pages]
    if remap == "random":
        values = draw(
            st.lists(
                st.integers(0, int(NO_NEXT)), min_size=alphabet, max_size=alphabet, unique=True
            )
        )
        return [values[p] for p in pages]
    return pages


@settings(max_examples=150)
@given(pages=traces(), extra=st.integers(0, 3), data=st.data())
def test_kernels_match_references(pages: list[int], extra: int, data: st.DataObject) -> None:
    distinct = len(set(pages))
    frames = data.draw(st.integers(1, distinct + extra + 1), label="frames")
    counts = {}
    for name, (_, ref) in KERNELS.items():
        got = replay(name, pages, frames)
        assert (got.faults, got.evictions) == ref(pages, frames), name
        counts[name] = got.faults
    assert counts["opt"] <= min(counts.values())


@settings(max_examples=100)
@given(pages=traces())
def test_next_use_matches_reference(pages: list[int]) -> None:
    got = fastpath.next_use(np.array(pages, dtype=np.int64))
    assert got.dtype == np.int64
    assert got.tolist() == ref_next_use(pages)


@settings(max_examples=100)
@given(pages=traces())
def test_stack_distances_match_reference(pages: list[int]) -> None:
    got = mrc.stack_distances(np.array(pages, dtype=np.int64))
    assert got.dtype == np.int64
    assert got.tolist() == ref_stack_distances(pages)


@settings(max_examples=100)
@given(pages=traces())
def test_mrc_equals_lru_at_every_size(pages: list[int]) -> None:
    arr = np.array(pages, dtype=np.int64)
    distinct = len(set(pages))
    curve = mrc.lru_mrc(arr)
    assert list(curve.columns) == ["frames", "faults", "miss_ratio"]
    assert curve.frames.tolist() == list(range(1, distinct + 1))
    for f, faults in zip(curve.frames, curve.faults, strict=True):
        assert faults == fastpath.lru(arr, int(f)).faults
    assert (np.diff(curve.faults) <= 0).all()
    if pages:
        assert np.allclose(curve.miss_ratio, curve.faults / len(pages))
    sizes = [distinct + 5, 1, distinct + 1]
    picked = mrc.lru_mrc(arr, sizes)
    assert picked.frames.tolist() == sizes
    assert picked.faults.tolist() == [fastpath.lru(arr, s).faults for s in sizes]


@settings(max_examples=100)
@given(pages=traces())
def test_dense_ids_first_access_order(pages: list[int]) -> None:
    ids, distinct = fastpath.dense_ids(np.array(pages, dtype=np.int64))
    first: dict[int, int] = {}
    for p in pages:
        first.setdefault(p, len(first))
    assert distinct == len(first)
    assert ids.tolist() == [first[p] for p in pages]


def test_many_distinct_sparse_pages_grow_the_hash_table() -> None:
    """Thousands of distinct pages (the hash table rehashes several times) give the same counts
    as the same trace over dense page numbers, and LRU/FIFO/CLOCK match their references."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 3000, 6000)
    huge = rng.choice(np.iinfo(np.int64).max, 3000, replace=False)[small]
    ids, distinct = fastpath.dense_ids(huge)
    assert distinct == len(np.unique(small))
    assert np.array_equal(fastpath.dense_ids(small)[0], ids)
    for name in KERNELS:
        for frames in (1, 700, distinct - 1, distinct):
            a, b = replay(name, small.tolist(), frames), replay(name, huge.tolist(), frames)
            assert a == b
            if name != "opt" and frames == 700:
                assert (a.faults, a.evictions) == KERNELS[name][1](small.tolist(), frames)
    assert np.array_equal(mrc.stack_distances(huge), mrc.stack_distances(small))
    assert np.array_equal(fastpath.next_use(huge), fastpath.next_use(small))


def test_64_bit_ids_give_the_same_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Traces of 2**31 accesses or more get 64-bit ids and per-page state; the kernels are the
    same code, so forcing the wide ids on a small trace checks that path."""
    rng = np.random.default_rng(4)
    pages = rng.integers(0, 40, 2000) * 1_000_003
    narrow = {n: [KERNELS[n][0](pages, f) for f in (1, 7, 39)] for n in KERNELS}
    distances = mrc.stack_distances(pages)
    for module in (fastpath, mrc):
        monkeypatch.setattr(module, "id_dtype", lambda n: np.int64)
    assert {n: [KERNELS[n][0](pages, f) for f in (1, 7, 39)] for n in KERNELS} == narrow
    assert np.array_equal(mrc.stack_distances(pages), distances)


# --------------------------------------------------------------------------------------------
# textbook examples and edge cases

TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


@pytest.mark.parametrize(("name", "faults"), [("fifo", 15), ("lru", 12), ("opt", 9)])
def test_textbook_reference_string(name: str, faults: int) -> None:
    assert replay(name, TEXTBOOK, 3).faults == faults


def test_clock_textbook_reference_string() -> None:
    """Traced by hand: hits only at accesses 5, 7, 10, 13, 15 and 19 (1-based)."""
    assert replay("clock", TEXTBOOK, 3).faults == 14


def test_belady_anomaly_fifo() -> None:
    pages = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    assert replay("fifo", pages, 3).faults == 9
    assert replay("fifo", pages, 4).faults == 10


@pytest.mark.parametrize("name", list(KERNELS))
def test_one_frame_faults_on_every_page_change(name: str) -> None:
    pages = [1, 1, 2, 2, 2, 1, 3, 3, 1]
    assert replay(name, pages, 1).faults == 5


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("extra", [0, 1, 100, 10**30])
def test_enough_frames_only_cold_misses(name: str, extra: int) -> None:
    pages = [5, 3, 5, 9, 3, 3, 5, 9, 1, 1]
    got = replay(name, pages, 4 + extra)
    assert (got.faults, got.evictions) == (4, 0)


@pytest.mark.parametrize("name", list(KERNELS))
def test_single_repeated_page(name: str) -> None:
    assert replay(name, [42] * 50, 1) == ReplayCount(1, 0, 50, 1)


@pytest.mark.parametrize("frames", [1, 2, 3, 8])
def test_cyclic_scan_one_page_larger_than_memory(frames: int) -> None:
    """LRU, FIFO and CLOCK miss on every access; MIN does too with one frame (the trace
    alternates), but with more it keeps pages that are needed soon and hits."""
    pages = list(range(frames + 1)) * 10
    for name in ("lru", "fifo", "clock"):
        assert replay(name, pages, frames).faults == len(pages), name
    best = replay("opt", pages, frames).faults
    assert best == ref_opt(pages, frames)[0]
    assert (best == len(pages)) == (frames == 1)


@pytest.mark.parametrize("name", list(KERNELS))
def test_sparse_huge_page_numbers(name: str) -> None:
    top = int(NO_NEXT)
    dense = [0, 1, 2, 0, 3, 1, 0, 2, 2, 3, 1, 0]
    sparse = [[top, 0, 1 << 62, 123_456_789_012][p] for p in dense]
    for frames in (1, 2, 3, 4):
        assert replay(name, sparse, frames) == replay(name, dense, frames)


@pytest.mark.parametrize("name", list(KERNELS))
def test_empty_trace(name: str) -> None:
    assert replay(name, [], 3) == ReplayCount(0, 0, 0, 0)


def test_empty_trace_mrc_and_helpers() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert mrc.stack_distances(empty).size == 0
    assert fastpath.next_use(empty).size == 0
    assert mrc.lru_mrc(empty).empty
    assert mrc.lru_mrc(empty, [1, 4]).faults.tolist() == [0, 0]


def test_next_use_example() -> None:
    got = fastpath.next_use(np.array([3, 1, 3, 3, 2, 1]))
    assert got.tolist() == [2, 5, 3, NO_NEXT, NO_NEXT, NO_NEXT]


def test_stack_distances_example() -> None:
    got = mrc.stack_distances(np.array([1, 2, 1, 3, 2, 1, 1]))
    assert got.tolist() == [COLD, COLD, 2, COLD, 3, 3, 1]


def test_accepts_other_integer_dtypes_and_lists() -> None:
    expected = fastpath.lru(np.array(TEXTBOOK, dtype=np.int64), 3)
    assert fastpath.lru(TEXTBOOK, 3) == expected
    assert fastpath.lru(np.array(TEXTBOOK, dtype=np.uint16), np.int32(3)) == expected


@pytest.mark.parametrize(
    ("pages", "frames", "error"),
    [
        ([1, -2, 3], 2, ValueError),
        ([1, 2, 3], 0, ValueError),
        ([1.0, 2.0], 2, TypeError),
        ([[1, 2]], 2, ValueError),
        (np.array([2**64 - 1], dtype=np.uint64), 2, ValueError),
        ([1, 2, 3], 2.5, TypeError),
    ],
)
def test_rejects_bad_input(pages: object, frames: object, error: type[Exception]) -> None:
    for name in KERNELS:
        with pytest.raises(error):
            KERNELS[name][0](pages, frames)


def test_mrc_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        mrc.lru_mrc([1, 2, 1], [0, 1])
    with pytest.raises(ValueError, match="integers"):
        mrc.lru_mrc([1, 2, 1], [1.5])


def test_warm_up_runs() -> None:
    fastpath.warm_up()

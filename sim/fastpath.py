"""Exact replays of textbook demand paging (LRU, FIFO, CLOCK, OPT) as compiled kernels.

Models
    A memory of ``frames`` page frames under pure demand paging: every access to a non-resident
    page faults (cold misses included) and loads it; a fault with memory full first evicts exactly
    one resident page, chosen by the policy:

    - ``lru``: the least recently used page.
    - ``fifo``: the page resident longest; hits do not change the order.
    - ``clock``: a FIFO queue with one referenced bit per page, set on every touch including the
      faulting one (as a hardware accessed bit is). The head page is evicted if its bit is clear,
      else its bit is cleared and it moves to the tail, until a clear head is found.
    - ``opt``: Belady's MIN, the page whose next access is farthest away (never again = infinitely
      far). Its fault count is the minimum over all policies and does not depend on tie-breaking.

    The textbook model of the simulator's demand mode (``reclaim.trigger: demand``), exact and
    fast enough (tens of millions of accesses per second, ``bench/bench_fastpath.py``) to replay
    whole traces many times, e.g. over a range of memory sizes.

Fast path of the general one
    ``memsim replay`` takes these kernels for ``lru``, ``opt``, ``fifo`` and ``clock`` unless
    the mechanism is changed (``--set``) or ``--engine general`` is asked for; the general path
    is demand.py (the policy, rmap, notifiers and sptes on the vCPU's touch walk and KVM's fault
    path). They must count the same: tests/test_replay.py replays random traces at random
    memory sizes both ways and compares faults and evictions, for every kernel here; the
    demand-mode tests of tests/test_policies.py hold exact LRU's and OPT's misses in the general
    path to these kernels' (``quality`` in the summary), and tests/test_golden.py keeps the
    general path's exact counts on a real trace.

Simplifications
    Counts only: no timing, no dirty pages, no prefetch. Pages are first mapped to dense ids
    ``0..D-1`` in order of first access (a direct table when page numbers are dense enough, else an
    open-addressing hash table, both O(N)), so the kernels index flat arrays (32-bit ids whenever
    there are fewer than 2**31 accesses).

Invariants
    ``faults == evictions + min(frames, distinct_pages)`` (evictions are counted, not derived);
    ``faults >= distinct_pages``; ``opt <= lru, fifo, clock`` faults at the same ``frames``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

NO_NEXT = np.iinfo(np.int64).max
"""``next_use`` of the last access to a page: no next access."""

_DIRECT_SLACK = 1 << 16  # page numbers below 4 * N + this use a direct table, not a hash


@dataclass(frozen=True)
class ReplayCount:
    """What one replay counted."""

    faults: int
    evictions: int
    accesses: int
    distinct_pages: int


def as_pages(pages: ArrayLike) -> NDArray[np.int64]:
    """Check a page trace (1-D, integer, non-negative) and return it as contiguous int64."""
    arr = np.asarray(pages)
    if arr.ndim != 1:
        raise ValueError(f"pages must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"pages must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.max() > NO_NEXT:
        raise ValueError("page numbers must fit in int64")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.min() < 0:
        raise ValueError("page numbers must be non-negative")
    return arr


def _as_frames(frames: int) -> int:
    f = operator.index(frames)
    if f < 1:
        raise ValueError(f"frames must be >= 1, got {f}")
    return f


@numba.njit(cache=True, inline="always")
def _slot(page: int, bits: int) -> int:
    """Fibonacci hashing: the top ``bits`` bits of the page times 2**64 / golden ratio."""
    return np.int64((np.uint64(page) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))


@numba.njit(cache=True)
def _probe(
    kv: NDArray[np.int64],
    bits: int,
    pages: NDArray[np.int64],
    ids: NDArray[np.integer],
    start: int,
    d: int,
) -> tuple[int, int]:
    """Map ``pages[start:]`` through the open-addressing table ``kv`` (key, id pairs, one cache
    line per probe, linear probing) until done or the table is half full; returns where it
    stopped and the ids handed out so far. The caller grows the table (rehashing the old one):
    this loop is most of the cost of replaying sparse page numbers and is kept tight."""
    mask = (1 << bits) - 1
    limit = 1 << (bits - 1)
    for i in range(start, pages.size):
        p = pages[i]
        h = _slot(p, bits)
        while True:
            k = kv[2 * h]
            if k == p:
                ids[i] = kv[2 * h + 1]
                break
            if k < 0:
                if d == limit:
                    return i, d
                kv[2 * h] = p
                kv[2 * h + 1] = d
                ids[i] = d
                d += 1
                break
            h = (h + 1) & mask
    return pages.size, d


@numba.njit(cache=True)
def _fill_dense_ids(pages: NDArray[np.int64], ids: NDArray[np.integer]) -> int:
    """Write dense ids in order of first access into ``ids``; return how many (pages >= 0)."""
    n = pages.size
    hi = 0
    for i in range(n):
        if pages[i] > hi:
            hi = pages[i]
    d = 0
    if hi < 4 * n + _DIRECT_SLACK:
        table = np.full(hi + 1, -1, dtype=ids.dtype)
        for i in range(n):
            p = pages[i]
            t = table[p]
            if t < 0:
                t = d
                table[p] = d
                d += 1
            ids[i] = t
        return d
    bits = 10
    kv = np.full(2 << bits, -1, dtype=np.int64)
    i, d = _probe(kv, bits, pages, ids, 0, 0)
    while i < n:  # the table is half full: double it and go on
        old = kv
        bits += 1
        kv = np.full(2 << bits, -1, dtype=np.int64)
        mask = (1 << bits) - 1
        for s in range(0, old.size, 2):
            if old[s] >= 0:
                h = _slot(old[s], bits)
                while kv[2 * h] >= 0:
                    h = (h + 1) & mask
                kv[2 * h] = old[s]
                kv[2 * h + 1] = old[s + 1]
        i, d = _probe(kv, bits, pages, ids, i, d)
    return d


def dense_ids_as(
    arr: NDArray[np.int64], dtype: type[np.integer]
) -> tuple[NDArray[np.integer], int]:
    """``dense_ids`` of a checked trace (``as_pages``) into ids of the given dtype."""
    ids = np.empty(arr.size, dtype=dtype)
    return ids, int(_fill_dense_ids(arr, ids))


def id_dtype(n: int) -> type[np.integer]:
    """32-bit ids (and per-page state) whenever they fit: half the memory traffic."""
    return np.int32 if n <= np.iinfo(np.int32).max else np.int64


def dense_ids(pages: ArrayLike) -> tuple[NDArray[np.int64], int]:
    """Map page numbers to ``0..D-1`` in order of first access; returns ``(ids, D)``.

    O(N), unlike ``np.unique(..., return_inverse=True)``, which sorts.
    """
    return dense_ids_as(as_pages(pages), np.int64)


@numba.njit(cache=True)
def _lru(ids: NDArray[np.integer], d: int, frames: int) -> tuple[int, int]:
    """LRU as a circular doubly linked list through sentinel ``d``, both links of page ``p`` side
    by side (``link[2p]`` previous, ``link[2p + 1]`` next); previous ``< 0``: not resident."""
    link = np.full(2 * (d + 1), -1, dtype=ids.dtype)
    head = d
    link[2 * head] = head
    link[2 * head + 1] = head
    resident = 0
    faults = 0
    evictions = 0
    for i in range(ids.size):
        p = np.int64(ids[i])
        if link[2 * p] >= 0:
            if link[2 * head + 1] == p:
                continue
            a = np.int64(link[2 * p])
            b = np.int64(link[2 * p + 1])
            link[2 * a + 1] = b
            link[2 * b] = a
        else:
            faults += 1
            if resident == frames:
                v = np.int64(link[2 * head])
                a = np.int64(link[2 * v])
                link[2 * a + 1] = head
                link[2 * head] = a
                link[2 * v] = -1
                evictions += 1
            else:
                resident += 1
        first = np.int64(link[2 * head + 1])
        link[2 * p + 1] = first
        link[2 * first] = p
        link[2 * p] = head
        link[2 * head + 1] = p
    return faults, evictions


@numba.njit(cache=True)
def _fifo(ids: NDArray[np.integer], d: int, frames: int) -> tuple[int, int]:
    """FIFO over a ring of ``frames`` slots; the hand is the oldest slot once memory is full."""
    ring = np.empty(max(frames, 1), dtype=ids.dtype)
    resident = np.zeros(d, dtype=np.bool_)
    used = 0
    hand = 0
    faults = 0
    evictions = 0
    for i in range(ids.size):
        p = ids[i]
        if resident[p]:
            continue
        faults += 1
        resident[p] = True
        if used < frames:
            ring[used] = p
            used += 1
        else:
            resident[ring[hand]] = False
            evictions += 1
            ring[hand] = p
            hand += 1
            if hand == frames:
                hand = 0
    return faults, evictions


@numba.njit(cache=True)
def _clock(ids: NDArray[np.integer], d: int, frames: int) -> tuple[int, int]:
    """CLOCK: with memory full the queue fills the ring, so moving the head to the tail is
    advancing the hand. ``state``: 0 not resident, 1 resident, 2 resident and referenced."""
    ring = np.empty(max(frames, 1), dtype=ids.dtype)
    state = np.zeros(d, dtype=np.uint8)
    used = 0
    hand = 0
    faults = 0
    evictions = 0
    for i in range(ids.size):
        p = ids[i]
        if state[p] != 0:
            state[p] = 2
            continue
        faults += 1
        state[p] = 2
        if used < frames:
            ring[used] = p
            used += 1
            continue
        while state[ring[hand]] == 2:
            state[ring[hand]] = 1
            hand += 1
            if hand == frames:
                hand = 0
        state[ring[hand]] = 0
        evictions += 1
        ring[hand] = p
        hand += 1
        if hand == frames:
            hand = 0
    return faults, evictions


@numba.njit(cache=True)
def _next_use_keys(ids: NDArray[np.integer], d: int, tmpl: NDArray[np.integer]) -> NDArray[Any]:
    """``next_use`` over dense ids in one backward pass (O(N), no sort), in ``tmpl``'s dtype, its
    maximum standing for never again (int32 halves the memory traffic of OPT's two passes
    whenever the string is under 2**31 long)."""
    n = ids.size
    never = tmpl[0]
    out = np.empty(n, dtype=tmpl.dtype)
    last = np.full(d, never, dtype=tmpl.dtype)
    for i in range(n - 1, -1, -1):
        p = ids[i]
        out[i] = last[p]
        last[p] = i
    return out


def _opt(ids: NDArray[np.integer], d: int, frames: int) -> tuple[int, int]:
    """MIN over dense ids (``_opt_keys`` with the narrowest key type that holds the string)."""
    key = np.int32 if ids.size < np.iinfo(np.int32).max else np.int64
    return _opt_keys(ids, d, frames, np.array([np.iinfo(key).max], dtype=key))


@numba.njit(cache=True)
def _opt_keys(
    ids: NDArray[np.integer], d: int, frames: int, tmpl: NDArray[np.integer]
) -> tuple[int, int]:
    """MIN with an indexed 4-ary max-heap of resident pages keyed by next use.

    A hit at ``i`` finds its page keyed ``i`` (the smallest key, so at a leaf) and raises the key
    to the page's next use (sift up); a fault with memory full replaces the root (the farthest
    next use) by the new page (sift down). Four children per node halve the depth of a binary
    heap and share a cache line.
    """
    nu = _next_use_keys(ids, d, tmpl)
    hkey = np.empty(max(frames, 1), dtype=tmpl.dtype)
    hpage = np.empty(max(frames, 1), dtype=ids.dtype)
    pos = np.full(d, -1, dtype=ids.dtype)
    size = 0
    faults = 0
    evictions = 0
    for i in range(ids.size):
        p = ids[i]
        key = nu[i]
        j = np.int64(pos[p])
        if j < 0:
            faults += 1
            if size < frames:
                j = size
                size += 1
            else:
                pos[hpage[0]] = -1
                evictions += 1
                j = 0
                while True:  # sift the new page down from the root
                    c = 4 * j + 1
                    if c >= size:
                        break
                    m = c
                    mk = hkey[c]
                    for cc in range(c + 1, min(c + 4, size)):
                        if hkey[cc] > mk:
                            mk = hkey[cc]
                            m = cc
                    if mk <= key:
                        break
                    q = hpage[m]
                    hkey[j] = mk
                    hpage[j] = q
                    pos[q] = j
                    j = m
                hkey[j] = key
                hpage[j] = p
                pos[p] = j
                continue
        while j > 0:  # the key only grows: sift up
            parent = (j - 1) >> 2
            kp = hkey[parent]
            if kp >= key:
                break
            q = hpage[parent]
            hkey[j] = kp
            hpage[j] = q
            pos[q] = j
            j = parent
        hkey[j] = key
        hpage[j] = p
        pos[p] = j
    return faults, evictions


def _replay(kernel: Callable[..., tuple[int, int]], pages: ArrayLike, frames: int) -> ReplayCount:
    f = _as_frames(frames)
    arr = as_pages(pages)
    if arr.size == 0:
        return ReplayCount(0, 0, 0, 0)
    ids, d = dense_ids_as(arr, id_dtype(arr.size))
    faults, evictions = kernel(ids, np.int64(d), np.int64(min(f, d)))  # more frames: no eviction
    return ReplayCount(int(faults), int(evictions), int(arr.size), d)


def lru(pages: ArrayLike, frames: int) -> ReplayCount:
    """Exact LRU: a fault with memory full evicts the least recently used page."""
    return _replay(_lru, pages, frames)


def fifo(pages: ArrayLike, frames: int) -> ReplayCount:
    """FIFO: a fault with memory full evicts the page resident longest."""
    return _replay(_fifo, pages, frames)


def clock(pages: ArrayLike, frames: int) -> ReplayCount:
    """CLOCK (second chance), referenced bit set on every touch including the fault."""
    return _replay(_clock, pages, frames)


def opt(pages: ArrayLike, frames: int) -> ReplayCount:
    """Belady's MIN: a fault with memory full evicts the page used again farthest in the future."""
    return _replay(_opt, pages, frames)


def next_use(pages: ArrayLike) -> NDArray[np.int64]:
    """Position of the next access to the same page after each position, or ``NO_NEXT``.

    Vectorised: a stable sort groups each page's positions in increasing order, and every
    position's successor within its group is its next use.
    """
    arr = as_pages(pages)
    out = np.full(arr.size, NO_NEXT, dtype=np.int64)
    if arr.size < 2:
        return out
    order = np.argsort(arr, kind="stable")
    same = arr[order[1:]] == arr[order[:-1]]
    out[order[:-1][same]] = order[1:][same]
    return out


def warm_up() -> None:
    """Compile (or load from the cache) every kernel, ``sim.mrc``'s included, so benchmarks and
    CLIs can exclude JIT time."""
    from sim import mrc  # imported here: mrc builds on this module

    trace = np.array([1, 2, 3, 1, 4, 1 << 40, 2, 5], dtype=np.int64)
    for replay in (lru, fifo, clock, opt):
        replay(trace, 2)
    mrc.stack_distances(trace)
    dense_ids(trace)

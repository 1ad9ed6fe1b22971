"""Exact LRU miss-ratio curve for every memory size, in one pass over the trace.

Models
    Mattson's stack algorithm: LRU is a stack algorithm (the pages resident in ``F`` frames are
    always the ``F`` most recently used), so one pass computing each access's stack distance (the
    1-based depth of its page in the LRU stack just before the access) gives the LRU fault count
    at every size at once: an access faults in ``F`` frames exactly when its distance exceeds
    ``F``, and first accesses (``COLD``) fault at every size.

    The distance is found with a Fenwick tree over time positions holding one mark at each page's
    latest access: the pages used since a page's previous access ``q`` are exactly the marks after
    ``q``, so distance = marks at positions ``>= q`` (the page's own mark included). O(N log N).

Simplifications
    Pure LRU under demand paging, as ``sim.fastpath.lru`` (which the curve equals at every size).
    OPT is a stack algorithm too but needs a priority stack, not computed here; FIFO and CLOCK are
    not (Belady's anomaly), so their curves take one replay per size.

Invariants
    ``faults`` is non-increasing in ``frames``; ``faults(1) == accesses - repeats`` of the same
    page back to back; ``faults(F) == distinct_pages`` for ``F >= distinct_pages``.
"""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from sim.fastpath import as_pages, dense_ids_as, id_dtype

COLD = np.iinfo(np.int64).max
"""Stack distance of a page's first access: it misses at every memory size."""


@numba.njit(cache=True)
def _stack_distances(ids: NDArray[np.integer], d: int) -> NDArray[np.int64]:
    """Fenwick tree (1-based, counts as wide as the ids) over positions; ``last[p]`` is ``p``'s
    latest one."""
    n = ids.size
    out = np.empty(n, dtype=np.int64)
    tree = np.zeros(n + 1, dtype=ids.dtype)
    last = np.full(d, -1, dtype=ids.dtype)
    marks = 0
    for i in range(n):
        p = ids[i]
        q = last[p]
        if q < 0:
            out[i] = COLD
            marks += 1
        else:
            before = 0  # marks at positions < q
            k = q
            while k > 0:
                before += tree[k]
                k &= k - 1
            out[i] = marks - before
            k = q + 1
            while k <= n:
                tree[k] -= 1
                k += k & -k
        last[p] = i
        k = i + 1
        while k <= n:
            tree[k] += 1
            k += k & -k
    return out


def stack_distances(pages: ArrayLike) -> NDArray[np.int64]:
    """LRU stack distance of every access (distinct pages touched since its page's previous
    access, plus one); ``COLD`` for first accesses."""
    arr = as_pages(pages)
    ids, d = dense_ids_as(arr, id_dtype(arr.size))
    return _stack_distances(ids, np.int64(d))


def lru_mrc(pages: ArrayLike, sizes: ArrayLike | None = None) -> pd.DataFrame:
    """LRU faults and miss ratio at each memory size (default every size 1..distinct pages).

    Returns columns ``frames``, ``faults``, ``miss_ratio`` (faults / accesses; 0 for an empty
    trace), one row per size in the order given.
    """
    dist = stack_distances(pages)
    n = dist.size
    warm = dist[dist != COLD]
    distinct = n - warm.size
    if sizes is None:
        frames = np.arange(1, distinct + 1, dtype=np.int64)
    else:
        frames = np.asarray(sizes)
        if frames.ndim != 1 or (frames.size and frames.dtype.kind not in "iu"):
            raise ValueError("sizes must be a 1-D sequence of integers")
        frames = frames.astype(np.int64)
        if frames.size and frames.min() < 1:
            raise ValueError("sizes must be >= 1")
    # hits[F]: accesses with distance <= F (warm distances are 1..distinct)
    hits = np.cumsum(np.bincount(warm, minlength=distinct + 1))
    faults = n - hits[np.minimum(frames, distinct)]
    ratio = faults / n if n else np.zeros(frames.size)
    return pd.DataFrame(
        {"frames": frames, "faults": faults.astype(np.int64), "miss_ratio": ratio.astype(float)}
    )

"""Write-back completions drained compiled: the plain ``folio_end_writeback`` of a run of them.

Where
    Above the host and the policy, as sim/core.py is: it fuses ``folio_end_writeback``
    (sim/host/vmscan.py) with the two-list policy's ``folio_rotate_reclaimable``
    (sim/reclaim/two_list.py) and the engine's write-back timers (sim/engine.py
    :class:`~sim.engine.Timers`), which no one layer may do alone.

Models
    Nothing new. A reclaim batch's swap writes end one by one, each at its own place in
    SimPy's event order (time, NORMAL, the id its own timeout would have had). When one ends,
    :meth:`WritebackDrain.drain` does it and every later one of the same batch that is due
    before anything else in the event queue, in one compiled call (:func:`_drain`), as long as
    each is the plain case of ``folio_end_writeback`` (mm/filemap.c): PG_writeback cleared
    (``nr_writeback``), and a folio still marked PG_reclaim loses the mark and, clean, goes to
    the tail of its lruvec's inactive list (mm/swap.c ``folio_rotate_reclaimable`` ->
    ``lru_move_tail``: unlinked from the active or inactive list, not active any more;
    ``pgrotated``), as ``TwoList.folio_rotate_reclaimable`` and ``PageQueue.add_tail_one``
    do. ``reclaim_throttle``'s accounting of the ended writes (``acct_reclaim_writeback``) is
    counted for the run in one step, and the run stops before the end that would wake the
    throttled reclaimers.

Invariant
    When a drain returns, every end before the one it returns is done and the timers are
    queued at that one's (time, NORMAL, id): each end is done once, in the event order separate
    timeouts would have, before any event that sorts after it.

What stops a run
    The drain crosses an end only if nothing else would run first: its (time, NORMAL, id)
    sorts before the head of ``env._queue`` (read when the drain starts; nothing is queued
    while it runs). A later end that needs Python stops it and the timers
    are queued at that end, which then fires on its own and goes through
    ``Vmscan.folio_end_writeback`` exactly as on the general path (with ``env.now`` its time):
    a large folio (host.thp), a KSM stable node, a page of an mm that died or has pages zapped
    during their I/O (madvise.py), an end that would wake the throttled reclaimers, and a
    ``Vmscan.on_writeback_end`` other than the world's ``ReclaimThrottle.writeback_ended``. A
    rotation onto or off a list whose single adds are buffered (``PageQueue._pending``) stops
    the compiled call before that end; Python drains the buffer, as ``unlink`` or
    ``add_tail_one`` would have at that end, and the call resumes. An end whose next one is
    not due before the queue's head (a run of one) goes through ``folio_end_writeback`` too:
    the engine's :class:`~sim.engine.DrainedTimers` tells that from the heap in one compare,
    and the general path costs less than a drain's set-up then.

Why
    The general path spends some eight Python calls and a SimPy step per page written
    (``Timers._fire``, ``_push``, ``folio_end_writeback``, ``page_owner``,
    ``folio_rotate_reclaimable``, ``add_tail_one``, ``unlink``, the counters); here a run of
    ends is one call, with its counters added once.

Simplifications
    None of the model's: the same flags, links, list sizes and counters as the general path,
    in the same order. ``env.now`` is not advanced to the drained ends' times: nothing they do
    reads it, and the next event SimPy runs sets it (it sorts after every drained end).

When
    The world was built for it (:func:`writeback_drain_for`: the fast path
    ``writeback_drain`` of sim/fast.py is on, and the policy is two-list, on the node's
    lruvec or one per memcg, sharing one set of flags and links); otherwise every end takes
    the general path (``MEMSIM_FAST_DISABLE=writeback_drain``). tests/test_wbdrain.py and
    tests/test_fastpaths.py run worlds both ways and compare every array and counter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numba
import numpy as np
from numpy.typing import NDArray
from simpy.events import NORMAL

from sim import fast
from sim.host.huge_memory import HPAGE_PMD_SHIFT, THP_LARGE
from sim.host.memory import PG_DIRTY, PG_RECLAIM, PG_WRITEBACK
from sim.host.vmstat import VmStat
from sim.reclaim.base import PageQueue
from sim.reclaim.memcg import MemcgTwoList
from sim.reclaim.two_list import LRU_ACTIVE, LRU_FILE, LRU_INACTIVE, TwoList

if TYPE_CHECKING:
    from sim.host.kswapd import ReclaimThrottle
    from sim.host.vmscan import Vmscan

# why a drain stopped (io[IO_WHY])
DONE = 0  # every end of the timers is done
NOT_DUE = 1  # the next end sorts after the head of the event queue
PYTHON = 2  # the next end needs Python (folio_end_writeback's general path)
PENDING = 3  # the next end rotates onto or off lists with buffered adds (io[IO_SRC], IO_DST)

# io: scalars in and out of a drain (the outputs first: one read takes them)
IO_K = 0  # in/out: the next end to do
IO_WHY = 1  # out: why it stopped
IO_ENDED = 2  # out: ends done (nr_writeback down)
IO_ROTATED = 3  # out: folios rotated (pgrotated)
IO_MOVED = 4  # out: ... of them from an active list (list lengths change: qs[Q_SIZE])
IO_SRC = 5  # out (PENDING): the list the folio leaves
IO_DST = 6  # out (PENDING): the list it joins
IO_OUT = 7
IO_BUDGET = 7  # in/out: ends that wake nobody (reclaim_throttle), -1: no limit
IO_HEAD_T = 8  # in: the event queue's head: its time,
IO_HEAD_PRIO = 9  # ... priority
IO_HEAD_ID = 10  # ... and id
IO_FILE_BASE = 11  # in: the first page-cache pid (no mm)
IO_THP_PAGES = 12  # in: pids THP blocks cover (0: no host.thp)
IO_NODE_LO = 13  # in: KSM's stable node pids, from
IO_NODE_HI = 14  # ... up to (both 0: no KSM)
IO_SIZE = 15

# ends rows: a batch's ends in firing order
E_T, E_ID, E_PID, E_PFN = range(4)

# qs rows: per LRU list
Q_SENTINEL = 0  # its sentinel in the links
Q_SIZE = 1  # out: its change in length

_NO_LIMIT = np.iinfo(np.int64).max
_PGROTATED = VmStat.PGROTATED.value


@numba.njit("int64[:, ::1](int64[:, ::1], int64, int64)", cache=True, nogil=True)
def sorted_ends(a: NDArray[np.int64], now: int, first: int) -> NDArray[np.int64]:
    """A batch's ends (rows: times, pids, pfns, in submission order) in firing order, as
    ``ends`` rows: each time at least ``now``, the event ids from ``first`` in submission
    order, sorted by (time, id) as :class:`~sim.engine.Timers` sorts them."""
    n = a.shape[1]
    t = np.maximum(a[0], now)
    order = np.argsort(t, kind="mergesort")  # stable: ties keep submission (id) order
    out = np.empty((4, n), dtype=np.int64)
    for j in range(n):
        i = order[j]
        out[E_T, j] = t[i]
        out[E_ID, j] = first + i
        out[E_PID, j] = a[1, i]
        out[E_PFN, j] = a[2, i]
    return out


_SIG = (
    "void(int64[::1], int64[:, ::1], uint8[::1], int32[::1], int64[::1], boolean[::1],"
    " uint8[::1], int64[::1], int64[:, ::1], int64[:, ::1], int64[::1], uint8[::1], int32[::1],"
    " int32[::1])"
)


@numba.njit(_SIG, cache=True, nogil=True)
def _drain(
    io: NDArray[np.int64],
    ends: NDArray[np.int64],
    flags: NDArray[np.uint8],
    frame_pid: NDArray[np.int32],
    pid_base: NDArray[np.int64],
    special: NDArray[np.bool_],
    thp_block: NDArray[np.uint8],
    lruvec_of: NDArray[np.int64],
    lists: NDArray[np.int64],
    qs: NDArray[np.int64],
    pending: NDArray[np.int64],
    fl: NDArray[np.uint8],
    nxt: NDArray[np.int32],
    prev: NDArray[np.int32],
) -> None:
    """The ends from ``io[IO_K]`` on, while each sorts before the event queue's head and is
    plain; see the module docstring. ``special[mm]``: the mm died or has pages zapped during
    their I/O; ``lists[lruvec]``: the list numbers of the lruvec's inactive, active, inactive
    file and active file lists (columns of ``qs``); ``pending[list]``: its buffered single
    adds."""
    k = io[IO_K]
    n = ends.shape[1]
    budget = io[IO_BUDGET]
    head_t, head_prio, head_id = io[IO_HEAD_T], io[IO_HEAD_PRIO], io[IO_HEAD_ID]
    file_base, thp_pages = io[IO_FILE_BASE], io[IO_THP_PAGES]
    node_lo, node_hi = io[IO_NODE_LO], io[IO_NODE_HI]
    ended = 0
    rotated = 0
    moved = 0
    why = DONE
    while k < n:
        tk, ek = ends[E_T, k], ends[E_ID, k]
        if tk > head_t or (
            tk == head_t and (head_prio < NORMAL or (head_prio == NORMAL and ek > head_id))
        ):
            why = NOT_DUE  # (tk, NORMAL, ek) sorts after the head
            break
        pid, pfn = ends[E_PID, k], ends[E_PFN, k]
        if pid < thp_pages and thp_block[pid >> HPAGE_PMD_SHIFT] & THP_LARGE:
            why = PYTHON
            break
        if node_lo <= pid < node_hi:  # a KSM stable node
            why = PYTHON
            break
        if pid < file_base and special[np.searchsorted(pid_base, pid, side="right") - 1]:
            why = PYTHON
            break
        if budget == 0:  # this end would wake the throttled reclaimers
            why = PYTHON
            break
        f = flags[pid] & ~np.uint8(PG_WRITEBACK)
        src = -1
        dst = -1
        if f & PG_RECLAIM and not f & PG_DIRTY:  # folio_rotate_reclaimable
            lv = lruvec_of[np.searchsorted(pid_base, frame_pid[pfn], side="right") - 1]
            lf = fl[pfn]
            col = 2 if lf & LRU_FILE else 0
            if lf & LRU_ACTIVE:
                src, dst = lists[lv, col + 1], lists[lv, col]
            elif lf & LRU_INACTIVE:
                src = dst = lists[lv, col]
            if src >= 0 and (pending[src] or pending[dst]):
                why = PENDING
                io[IO_SRC] = src
                io[IO_DST] = dst
                break
        if f & PG_RECLAIM:
            f &= ~np.uint8(PG_RECLAIM)
            if not f & PG_DIRTY:
                rotated += 1
        flags[pid] = f
        if src >= 0:
            a, b = prev[pfn], nxt[pfn]  # unlink
            nxt[a] = b
            prev[b] = a
            qs[Q_SIZE, src] -= 1
            fl[pfn] = (fl[pfn] & ~np.uint8(LRU_ACTIVE)) | np.uint8(LRU_INACTIVE)
            s = qs[Q_SENTINEL, dst]  # add_tail
            tail = nxt[s]
            prev[pfn] = s
            nxt[s] = pfn
            nxt[pfn] = tail
            prev[tail] = pfn
            qs[Q_SIZE, dst] += 1
            if src != dst:
                moved += 1
        ended += 1
        if budget > 0:
            budget -= 1
        k += 1
    io[IO_K] = k
    io[IO_WHY] = why
    io[IO_ENDED] = ended
    io[IO_ROTATED] = rotated
    io[IO_MOVED] = moved
    io[IO_BUDGET] = budget


class WritebackDrain:
    """The compiled drain of a world's write-back ends (see the module docstring).

    Args:
        vmscan: the world's reclaim machinery (memory, mms, KSM, THP, the throttle's hook).
        lruvecs: the two-list lruvecs, in memcg order (one: the node's).
        lruvec_of: the lruvec of each page owner (mm) of host memory.
        throttle: the world's reclaim throttle (``vmscan.on_writeback_end`` is its
            ``writeback_ended`` when the drain may count ends for it).
    """

    def __init__(
        self,
        vmscan: Vmscan,
        lruvecs: list[TwoList],
        lruvec_of: NDArray[np.int64],
        throttle: ReclaimThrottle,
    ) -> None:
        self.vmscan, self.mem, self.throttle = vmscan, vmscan.mem, throttle
        self._lruvec_of = np.ascontiguousarray(lruvec_of, dtype=np.int64)
        queues: list[PageQueue] = []
        rows = []
        for lv in lruvecs:
            row = []
            for q in (lv.inactive, lv.active, lv.inactive_file, lv.active_file):
                if not any(q is x for x in queues):
                    queues.append(q)
                row.append(next(i for i, x in enumerate(queues) if x is q))
            rows.append(row)
        self._queues = queues
        self._lists = np.array(rows, dtype=np.int64)
        self._qs = np.zeros((2, len(queues)), dtype=np.int64)
        self._qs[Q_SENTINEL] = [q._s for q in queues]
        self._pending = np.zeros(len(queues), dtype=np.int64)
        self._fl = lruvecs[0].fl
        self._nxt, self._prev = queues[0]._nxt, queues[0]._prev
        self._special = np.zeros(len(self.mem.pid_base), dtype=np.bool_)
        self._hook = throttle.writeback_ended
        # what does not change after the world is built: where page cache, THP blocks and
        # KSM's stable nodes are
        self._io = io = np.zeros(IO_SIZE, dtype=np.int64)
        io[IO_FILE_BASE] = self.mem.file_base
        thp, ksm = vmscan.thp, vmscan.ksm
        self._block = np.zeros(1, dtype=np.uint8) if thp is None else thp.block
        if thp is not None:
            io[IO_THP_PAGES] = thp.nr_vm_pages
        if ksm is not None:
            io[IO_NODE_LO], io[IO_NODE_HI] = ksm.node_base, ksm.node_base + ksm.nr_nodes
        # the compiled pass's own entry point, its one signature: the dispatcher's resolution
        # of 14 argument types would cost about as much as a short run of ends
        self._pass = _drain.overloads[_drain.signatures[0]].entry_point
        self._sort = sorted_ends.overloads[sorted_ends.signatures[0]].entry_point

    def ends(
        self, times: list[int], pids: list[int], pfns: list[int], now: int, first: int
    ) -> NDArray[np.int64]:
        """A batch's ends in firing order (:func:`sorted_ends`)."""
        return self._sort(np.array((times, pids, pfns), dtype=np.int64), now, first)

    def drain(self, ends: NDArray[np.int64], k: int, queue: list[tuple[Any, ...]]) -> int:
        """Do a batch's ends (``ends``: rows ``E_*``, in firing order) from ``k`` on while
        each is due before the head of ``queue`` (SimPy's event heap) and plain; returns the
        first end not done (all: ``ends.shape[1]``). The end at ``k`` is the one SimPy just
        fired (the heap holds nothing before it)."""
        mem, vmscan, io = self.mem, self.vmscan, self._io
        io[IO_K] = k
        hook = vmscan.on_writeback_end  # reclaim_throttle's, or another that may wake anyone
        if hook is None:
            io[IO_BUDGET] = -1
        else:
            io[IO_BUDGET] = self.throttle.writeback_budget() if hook == self._hook else 0
        if queue:
            first = queue[0]
            io[IO_HEAD_T], io[IO_HEAD_PRIO], io[IO_HEAD_ID] = first[0], first[1], first[2]
        else:
            io[IO_HEAD_T] = _NO_LIMIT
        special = self._special
        for i, mm in enumerate(vmscan.mms):
            special[i] = mm.dead or bool(mm.zapped)
        pending, queues = self._pending, self._queues
        for i, q in enumerate(queues):
            pending[i] = len(q._pending)
        ended = rotated = moved = 0
        while True:
            self._pass(
                io,
                ends,
                mem.flags,
                mem.frame_pid,
                mem.pid_base,
                special,
                self._block,
                self._lruvec_of,
                self._lists,
                self._qs,
                pending,
                self._fl,
                self._nxt,
                self._prev,
            )
            k, why, n, r, m, src, dst = io[:IO_OUT].tolist()
            ended += n
            rotated += r
            moved += m
            if why != PENDING:
                break
            for j in (src, dst):  # as unlink, then add_tail_one, drain them
                queues[j].drain()
                pending[j] = 0
        if rotated:
            if moved:  # an active list shorter, an inactive one longer
                sizes = self._qs[Q_SIZE]
                for j, d in enumerate(sizes.tolist()):
                    queues[j]._size += d
                sizes[:] = 0
            vmscan.vmstat[_PGROTATED] += rotated
        if ended:
            mem.nr_writeback -= ended
            if hook is not None:
                self.throttle.writebacks_ended(ended)
            fast.took("writeback_drain", ended)
        return k


def writeback_drain_for(vmscan: Vmscan, throttle: ReclaimThrottle) -> WritebackDrain | None:
    """The compiled drain for a world, or None when its policy needs the general path: the
    two-list policy, on the node's lruvec or one per memcg, all sharing one set of flags and
    links (see the module docstring's "When")."""
    if not fast.enabled("writeback_drain"):
        return None
    policy = vmscan.policy
    mem = vmscan.mem
    if type(policy) is TwoList:
        lruvecs = [policy]
        lruvec_of = np.zeros(len(mem.pid_base), dtype=np.int64)
    elif type(policy) is MemcgTwoList:
        lruvecs = list(policy.lruvecs)
        lruvec_of = np.asarray(policy._memcg_arr, dtype=np.int64)
    else:
        return None
    first = lruvecs[0]
    if any(
        type(lv) is not TwoList
        or lv.fl is not first.fl
        or lv.inactive._nxt is not first.inactive._nxt
        for lv in lruvecs
    ):
        return None
    return WritebackDrain(vmscan, lruvecs, lruvec_of, throttle)

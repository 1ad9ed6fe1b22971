"""``PageQueue`` (sim/reclaim/base.py) against ``collections.deque`` reference models.

Each deque's left end is the tail (oldest), its right end the head (newest). Two queues share
one ``LruLinks``, as a policy's lists do, and folios move between them, so a link written for
one list must never disturb the other. A folio is on at most one list, as the policies keep it,
and leaves it from anywhere in O(1) (``remove``, ``unlink``, ``lru_del``).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim.reclaim.base import PageQueue, lru_del, lru_links

NR_FRAMES = 64
_dtype = st.sampled_from([np.int64, np.int32, np.uint32])
_which = st.integers(0, 1)


class PageQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.links = lru_links(NR_FRAMES)
        self.q = [PageQueue(self.links), PageQueue(self.links)]
        self.ref: list[deque[int]] = [deque(), deque()]
        self.npend = [0, 0]  # newest items of ref that are still buffered single adds

    def _free(self) -> list[int]:
        on = set(self.ref[0]) | set(self.ref[1])
        return [p for p in range(NR_FRAMES) if p not in on]

    def _draw_free(self, data: st.DataObject, max_size: int) -> list[int]:
        return data.draw(st.lists(st.sampled_from(self._free()), unique=True, max_size=max_size))

    def _check_out(self, got: np.ndarray, want: list[int]) -> None:
        assert got.dtype == np.int64
        assert got.tolist() == want

    def _add(self, which: int, values: list[int], dtype: type[np.integer], tail: bool) -> None:
        arr = np.array(values, dtype=dtype)
        if tail:
            self.q[which].add_tail(arr)
            self.ref[which].extendleft(reversed(values))
        else:
            self.q[which].add_head(arr)
            self.ref[which].extend(values)
        self.npend[which] = 0

    def _isolate(self, which: int, n: int) -> list[int]:
        ref = self.ref[which]
        want = [ref.popleft() for _ in range(min(n, len(ref)))]
        self._check_out(self.q[which].isolate_tail(n), want)
        self.npend[which] = 0
        return want

    def _add_one(self, which: int, value: int) -> None:
        self.q[which].add_one(value)
        self.ref[which].append(value)
        n = self.npend[which] + 1
        self.npend[which] = 0 if n >= 4096 else n

    @precondition(lambda self: len(self._free()) > 0)
    @rule(which=_which, data=st.data(), dtype=_dtype, tail=st.booleans())
    def add(self, which: int, data: st.DataObject, dtype: type[np.integer], tail: bool) -> None:
        self._add(which, self._draw_free(data, 20), dtype, tail)

    @precondition(lambda self: len(self._free()) > 0)
    @rule(which=_which, data=st.data())
    def add_ones(self, which: int, data: st.DataObject) -> None:
        for v in self._draw_free(data, 10):
            self._add_one(which, v)
        assert len(self.q[which]) == len(self.ref[which])

    @rule(which=_which, value=st.integers(0, NR_FRAMES - 1))
    def take_pending(self, which: int, value: int) -> None:
        """Only the newest buffered single add can be taken back."""
        ref = self.ref[which]
        hit = self.npend[which] > 0 and ref[-1] == value
        assert self.q[which].take_pending(value) == hit
        if hit:
            ref.pop()
            self.npend[which] -= 1

    @rule(which=_which, n=st.one_of(st.integers(0, 8), st.integers(0, 70)))
    def isolate_tail(self, which: int, n: int) -> None:
        self._isolate(which, n)

    @rule(which=_which, n=st.integers(0, 12), rounds=st.integers(1, 6), back=st.booleans())
    def rotate(self, which: int, n: int, rounds: int, back: bool) -> None:
        """Isolate at the tail and add the same folios at a head: of the same list (rotation),
        or of the other one (activation, deactivation)."""
        for _ in range(rounds):
            got = self._isolate(which, n)
            self._add(which if back else 1 - which, got, np.int64, tail=False)

    @rule(which=_which, n=st.integers(0, 12), keep=st.integers(0, 12))
    def isolate_and_put_back(self, which: int, n: int, keep: int) -> None:
        """Folios isolated but not taken go back to the tail, in order (as MGLRU's scan)."""
        got = self._isolate(which, n)
        self._add(which, got[len(got) - min(keep, len(got)) :], np.int64, tail=True)

    @rule(which=_which, data=st.data())
    def remove(self, which: int, data: st.DataObject) -> None:
        """Folios leave a list from anywhere (an mm exits; buffered adds drain first)."""
        ref = self.ref[which]
        if not ref:
            return
        victims = data.draw(st.lists(st.sampled_from(list(ref)), unique=True, max_size=10))
        self.q[which].remove(np.array(victims, dtype=np.int64))
        gone = set(victims)
        self.ref[which] = deque(v for v in ref if v not in gone)
        self.npend[which] = 0

    @rule(which=_which, data=st.data(), to_tail=st.booleans())
    def unlink_and_rotate(self, which: int, data: st.DataObject, to_tail: bool) -> None:
        """One folio leaves its list from the middle and rejoins it at the tail
        (``folio_rotate_reclaimable``) or moves to the other list's head (activation)."""
        ref = self.ref[which]
        if not ref:
            return
        v = data.draw(st.sampled_from(list(ref)))
        self.q[which].unlink(v)
        ref.remove(v)
        self.npend[which] = 0
        if to_tail:
            self._add(which, [v], np.int64, tail=True)
        else:
            self._add(1 - which, [v], np.int64, tail=False)

    @precondition(lambda self: len(self._free()) > 0)
    @rule(
        which=_which,
        data=st.data(),
        op=st.sampled_from(["add", "isolate", "take_pending", "len"]),
        n=st.integers(0, 30),
    )
    def add_ones_then(self, which: int, data: st.DataObject, op: str, n: int) -> None:
        """Buffered single adds must be drained, in order, before any other operation."""
        singles = self._draw_free(data, 10)
        for v in singles:
            self._add_one(which, v)
        if op == "add" and self._free():
            self._add(which, self._draw_free(data, 10), np.int64, tail=n % 2 == 1)
        elif op == "isolate":
            self._isolate(which, n)
        elif op == "take_pending":
            for _ in range(min(n, len(singles))):
                if self.npend[which]:
                    v = self.ref[which][-1]
                    assert self.q[which].take_pending(v)
                    self.ref[which].pop()
                    self.npend[which] -= 1
        else:
            assert len(self.q[which]) == len(self.ref[which])

    @rule(which=_which)
    def drain(self, which: int) -> None:
        q, ref = self.q[which], self.ref[which]
        q.drain()
        self.npend[which] = 0
        assert q.take_pending(ref[-1] if ref else 0) is False

    @invariant()
    def same_contents(self) -> None:
        for which in (0, 1):
            assert len(self.q[which]) == len(self.ref[which])
            self._check_out(self.q[which].snapshot(), list(self.ref[which]))
            self._check_out(self.q[which].snapshot(), list(self.ref[which]))  # not consumed
            self.npend[which] = 0


PageQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestPageQueue = PageQueueMachine.TestCase


# --------------------------------------------------------------------------------------------
# targeted cases


def test_lists_share_one_link_per_frame() -> None:
    """Folios moving between two lists: each keeps its order, and the links are all the
    storage there is (one int32 per frame, whatever the lists' lengths)."""
    links = lru_links(16)
    inactive, active = PageQueue(links), PageQueue(links)
    inactive.add_head(np.arange(10))
    active.add_head(inactive.isolate_tail(4))  # 0..3 activated
    inactive.add_head(np.array([12, 11]))
    active.add_tail(np.array([15, 14]))
    assert inactive.snapshot().tolist() == [4, 5, 6, 7, 8, 9, 12, 11]
    assert active.snapshot().tolist() == [15, 14, 0, 1, 2, 3]
    inactive.add_head(active.isolate_tail(6))  # all of them deactivated
    assert inactive.snapshot().tolist() == [4, 5, 6, 7, 8, 9, 12, 11, 15, 14, 0, 1, 2, 3]
    assert len(active) == 0
    assert active.snapshot().tolist() == []
    inactive.remove(np.array([4, 3, 12]))
    assert len(inactive) == 11
    assert inactive.isolate_tail(100).tolist() == [5, 6, 7, 8, 9, 11, 15, 14, 0, 1, 2]
    # two int32 links per frame, plus one sentinel slot per list
    assert links.nxt.nbytes + links.prev.nbytes == (16 + 2) * 4 * 2


def test_unsized_lists_lose_folios_without_naming_the_list() -> None:
    """MGLRU's lists: ``lru_del`` takes folios off whichever list holds them, even the head or
    the tail, and the lists stay well formed (no sizes to keep)."""
    links = lru_links(16, 4)
    gens = [PageQueue(links, sized=False) for _ in range(4)]
    gens[0].add_head(np.array([0, 1, 2]))
    gens[1].add_head(np.array([3]))
    gens[2].add_head(np.array([4, 5]))
    lru_del(links, np.array([0, 3, 5]))
    assert gens[0].snapshot().tolist() == [1, 2]
    assert gens[1].is_empty()
    assert gens[2].snapshot().tolist() == [4]
    assert gens[3].is_empty()
    gens[1].add_tail(np.array([5, 0]))
    assert gens[1].snapshot().tolist() == [5, 0]
    assert gens[1].isolate_tail(10).tolist() == [5, 0]
    with pytest.raises(TypeError):
        len(gens[0])


def test_many_single_adds_drain_automatically_in_order() -> None:
    """More than 4096 buffered single adds, interleaved with reads, keep FIFO order."""
    q = PageQueue(lru_links(10_000))
    ref: deque[int] = deque()
    for i in range(10_000):
        q.add_one(i)
        ref.append(i)
        if i % 3001 == 3000:
            got = q.isolate_tail(1000).tolist()
            assert got == [ref.popleft() for _ in range(1000)]
    assert len(q) == len(ref)
    assert q.snapshot().tolist() == list(ref)


def test_take_pending_only_before_the_batch_drains() -> None:
    q = PageQueue(lru_links(4096))
    for i in range(4095):
        q.add_one(i)
    assert q.take_pending(4093) is False  # not the newest
    assert q.take_pending(4094) is True
    assert q.take_pending(4093) is True
    assert len(q) == 4093
    for i in range(4093, 4096):
        q.add_one(i)  # the 4096th buffered add drains the batch into the list
    assert q.take_pending(4095) is False  # already on the list, not in the per-CPU batch
    assert len(q) == 4096
    assert q.snapshot().tolist() == list(range(4096))


def test_empty_queue() -> None:
    q = PageQueue(lru_links(8))
    assert len(q) == 0
    assert q.snapshot().tolist() == []
    assert q.isolate_tail(3).tolist() == []
    assert q.isolate_tail(0).dtype == np.int64
    q.remove(np.array([], dtype=np.int64))
    assert q.is_empty()
    q.add_head(np.array([], dtype=np.int64))
    q.add_tail(np.array([], dtype=np.int64))
    assert len(q) == 0
    q.add_tail(np.array([7]))  # the first folio, from either end
    assert q.snapshot().tolist() == [7]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_isolating_everything_then_refilling(n: int) -> None:
    q = PageQueue(lru_links(8))
    q.add_head(np.arange(n))
    assert q.isolate_tail(n).tolist() == list(range(n))
    assert len(q) == 0
    q.add_head(np.array([7, 6]))
    assert q.snapshot().tolist() == [7, 6]

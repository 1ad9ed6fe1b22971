"""The spte rules (sim/kvm/spte.py) agree in their three uses: Python scalars (KVM's fault
path), numpy arrays (KVM's walks) and compiled code (the touch walk, the fused reclaim walk);
and they say what the layout says."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from sim.kvm import spte as sp
from sim.kvm.spte import SPTE_ACCESS_TRACKED, SPTE_ACCESSED, SPTE_DIRTY, SPTE_PRESENT

ALL = np.arange(16, dtype=np.uint8)  # every combination of the four bits


@numba.njit(cache=False)
def _compiled(s: np.ndarray, out: np.ndarray) -> None:
    for i in range(s.size):
        x = s[i]
        out[i, 0] = sp.is_present(x)
        out[i, 1] = sp.is_hit(x)
        out[i, 2] = sp.needs_fault(x)
        out[i, 3] = sp.is_access_tracked(x)
        out[i, 4] = sp.is_dirty(x)
        out[i, 5] = sp.is_young(x, True)
        out[i, 6] = sp.is_young(x, False)
        out[i, 7] = np.uint8(sp.touch(x, False))
        out[i, 8] = np.uint8(sp.touch(x, True))
        out[i, 9] = np.uint8(sp.age(x, True))
        out[i, 10] = np.uint8(sp.age(x, False))
        out[i, 11] = np.uint8(sp.fast_page_fault(x, False))
        out[i, 12] = np.uint8(sp.fast_page_fault(x, True))


def _python(x: int) -> list[int]:
    return [
        int(sp.is_present(x)),
        int(sp.is_hit(x)),
        int(sp.needs_fault(x)),
        int(sp.is_access_tracked(x)),
        int(sp.is_dirty(x)),
        int(sp.is_young(x, True)),
        int(sp.is_young(x, False)),
        sp.touch(x, False),
        sp.touch(x, True),
        sp.age(x, True),
        sp.age(x, False),
        sp.fast_page_fault(x, False),
        sp.fast_page_fault(x, True),
    ]


def _numpy(s: np.ndarray) -> np.ndarray:
    cols = [
        sp.is_present(s),
        sp.is_hit(s),
        sp.needs_fault(s),
        sp.is_access_tracked(s),
        sp.is_dirty(s),
        sp.is_young(s, True),
        sp.is_young(s, False),
        sp.touch(s, False),
        sp.touch(s, True),
        sp.age(s, True),
        sp.age(s, False),
        sp.fast_page_fault(s, False),
        sp.fast_page_fault(s, True),
    ]
    return np.stack([np.asarray(c).astype(np.int64) for c in cols], axis=1)


def test_python_numpy_and_compiled_agree() -> None:
    want = np.array([_python(int(x)) for x in ALL], dtype=np.int64)
    out = np.zeros((len(ALL), want.shape[1]), dtype=np.int64)
    _compiled(ALL, out)
    assert np.array_equal(out, want)
    assert np.array_equal(_numpy(ALL), want)
    assert _numpy(ALL).max() < 256  # results stay in a byte


@pytest.mark.parametrize("x", range(16))
def test_rules_follow_the_layout(x: int) -> None:
    present = bool(x & SPTE_PRESENT)
    tracked = bool(x & SPTE_ACCESS_TRACKED)
    assert sp.is_hit(x) == (present and not tracked) != sp.needs_fault(x)
    assert sp.is_access_tracked(x) == (present and tracked)
    assert sp.is_young(x, True) == (present and bool(x & SPTE_ACCESSED))
    assert sp.is_young(x, False) == sp.is_hit(x)
    assert sp.touch(x, True) == x | SPTE_ACCESSED | SPTE_DIRTY
    assert sp.age(x, True) == x & ~SPTE_ACCESSED
    # access tracking parks only present sptes
    assert sp.age(x, False) == ((x | SPTE_ACCESS_TRACKED) & ~SPTE_ACCESSED if present else x)
    if sp.is_access_tracked(x):  # the fast page fault makes it a hit again
        assert sp.is_hit(sp.fast_page_fault(x, False))
        assert sp.is_dirty(sp.fast_page_fault(x, True))
    assert sp.is_hit(sp.mapped(False))
    assert not sp.is_dirty(sp.mapped(False))
    assert sp.is_dirty(sp.mapped(True))
    assert sp.is_young(sp.mapped(True), True)
    assert not sp.is_present(sp.SPTE_NONPRESENT)

"""The fused TDP walk (sim/kvm/shortcut.py) against the notifier chain it short-cuts.

Worlds are built twice from one scenario, once with the shortcut and once without it (the
chain: rmap -> mmu_notifier -> KVM notifier -> KVM MMU), run to their horizon, and every piece
of state and every counter must be equal: host flags, frames, swap slots, sptes, vmstat, the
notifier call counts, KVM's counters and the summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.engine import build_world
from sim.host.mmu_notifier import MmuNotifierOps
from sim.host.vmscan import ScanControl
from sim.kvm.shortcut import TdpShortcut
from tests.conftest import tiny

VARIANTS: dict[str, dict[str, Any]] = {
    "two_list": {},
    "mglru": {"reclaim": {"policy": "mglru"}},
    "flush_on_age": {"kvm__flush_on_age": True},
    "notifiers_off": {"kvm__mmu_notifiers": False},
    "three_vms": {"vms__0__count": 3, "host": {"memory_mib": 12}},
    "clock": {"reclaim": {"policy": "clock"}},
}


def _state(w: Any) -> dict[str, Any]:
    mem = w.mem
    s = w.summary(0.0)
    s.pop("wall_s", None)
    return {
        "summary": s,
        "flags": mem.flags.copy(),
        "pfn": mem.pfn.copy(),
        "frame_pid": mem.frame_pid.copy(),
        "spte": w.spte.copy(),
        "kvm": [(vm.mmu.zapped, vm.mmu.mmu_invalidate_seq, vm.stats) for vm in w.vms],
        "vmstat": dict(w.vmstat),
        "vmstat_per_vm": [dict(c) for c in w.vmstat.per_mm],
    }


def _run(changes: dict[str, Any], shortcut: bool) -> dict[str, Any]:
    w = build_world(tiny(duration_s=0.05, **changes), None)
    assert (w.rmap.shortcut is not None) == (w.k == 1)
    if not shortcut:
        w.rmap.shortcut = None
    w.run()
    return _state(w)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("name", VARIANTS)
def test_shortcut_changes_nothing(name: str) -> None:
    fused, chain = _run(VARIANTS[name], True), _run(VARIANTS[name], False)
    assert fused["summary"]["host"]["pswpout"] > 0  # reclaim ran
    for key in fused:
        assert _equal(fused[key], chain[key]), f"{name}: {key} differs"


def test_shortcut_steps_aside_for_another_subscriber() -> None:
    """A second subscriber on an mm makes the shortcut decline, so the chain calls it."""
    w = build_world(tiny(duration_s=0.05), None)
    assert isinstance(w.rmap.shortcut, TdpShortcut)
    seen: list[int] = []

    def young(start: Any, end: Any, work: Any) -> np.ndarray:
        seen.append(len(start))
        return np.zeros(len(start), dtype=np.bool_)

    w.vms[0].mm.notifiers.register(MmuNotifierOps(clear_flush_young=young))
    w.run()
    assert sum(seen) > 0


def test_no_shortcut_under_shadow_paging() -> None:
    w = build_world(tiny(duration_s=0.01, kvm__mmu="shadow"), None)
    assert w.rmap.shortcut is None


def test_a_registration_reaches_only_its_own_mm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering on one mm re-examines that mm's subscribers only: in another world in the
    same process nothing is touched, and in its own world only that mm takes the chain."""
    told: list[tuple[int, int]] = []
    changed = TdpShortcut._subscribers_changed

    def spy(self: TdpShortcut, i: int) -> None:
        told.append((id(self), i))
        changed(self, i)

    monkeypatch.setattr(TdpShortcut, "_subscribers_changed", spy)
    a = build_world(tiny(duration_s=0.05, vms__0__count=3, host={"memory_mib": 12}), None)
    b = build_world(tiny(duration_s=0.05), None)
    sa, sb = a.rmap.shortcut, b.rmap.shortcut
    assert isinstance(sa, TdpShortcut)
    assert isinstance(sb, TdpShortcut)
    assert len(a.vms) == 3
    a.vms[1].mm.notifiers.register(MmuNotifierOps())
    assert told == [(id(sa), 1)]
    assert sa._usable.tolist() == [True, False, True]
    assert sb._usable.all()
    a.run()
    work = ScanControl(nr_to_reclaim=1)
    for vm in a.vms:  # a resident page of each VM, one call each
        mine = np.flatnonzero(a.mem.flags[vm.mm.pid_base : vm.mm.pid_base + vm.mm.nr_pages])
        pid = np.array([vm.mm.pid_base + mine[0]], dtype=np.int32)
        took = sa.folio_referenced(pid, work, flush=True) is not None
        assert took == (vm.index != 1), vm.index

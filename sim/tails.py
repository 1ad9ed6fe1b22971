"""Tails over time: vCPU stall per window and fault latencies, after the warm-up.

Why
    A VM's mean stall fraction hides bursts: a tenth of a second at 60% stall in a minute at 1%
    is what a user notices. :class:`VcpuTime` splits every stretch of vCPU time the vCPUs
    already account (``VmStats.stall_ns`` / ``compute_ns``, guest/vcpu.py) across fixed windows
    of ``metrics.window_ms``, exactly: a stretch that crosses a window boundary is cut there. It
    is a breakdown of those two totals, not a second count (:meth:`VcpuTime.check` asserts
    that the windows add up to them). :class:`FaultLatencies` keeps the latency of every guest
    fault resolved at or after the warm-up, by VM and kind, so percentiles need no faults log.

Windows
    Window ``i`` covers ``[i * window, (i + 1) * window)`` from time 0; the last one ends at the
    horizon (it may be shorter). The tails use the windows that begin at or after the warm-up
    and hold some vCPU time (an OOM-killed VM's windows after its death hold none).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim.kvm.fault import FAULT_KINDS, FaultSink

Segment = tuple[int, int, bool]  # [start, end) in ns, and whether it is stall (else compute)


def tail(values: NDArray[Any] | Sequence[float]) -> dict[str, float | None]:
    """p50, p99 (numpy's linear interpolation) and max of ``values``; None for each if empty."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(a, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(a.max())}


def _spread(row: Any, start: int, end: int, w: int) -> None:
    """Add ``[start, end)`` to the windows of length ``w`` of ``row`` (a list or an array)."""
    if end <= start:
        return
    i, j = start // w, (end - 1) // w
    if i == j:
        row[i] += end - start
        return
    row[i] += (i + 1) * w - start
    for k in range(i + 1, j):
        row[k] += w
    row[j] += end - j * w


class VcpuTime:
    """Each VM's vCPU stall and compute time per window (a breakdown of ``VmStats``).

    Args:
        nr_vms: VMs.
        horizon_ns: end of the run; time after it is not counted (a step in flight at the end
            has counted its whole length in ``VmStats`` and the summary takes it back).
        window_ns: window length.
    """

    def __init__(self, nr_vms: int, horizon_ns: int, window_ns: int) -> None:
        self.window, self.horizon = window_ns, horizon_ns
        nw = max(1, -(-horizon_ns // window_ns))
        # Python lists, not arrays: a vCPU step adds to one or two windows, and a list item
        # add costs a fraction of a numpy scalar's (this runs once per step)
        self._rows = {
            True: [[0] * nw for _ in range(nr_vms)],
            False: [[0] * nw for _ in range(nr_vms)],
        }

    @property
    def stall(self) -> NDArray[np.int64]:
        """Stall per VM and window, credited so far (a copy)."""
        return np.array(self._rows[True], dtype=np.int64)

    @property
    def compute(self) -> NDArray[np.int64]:
        """Compute per VM and window, credited so far (a copy)."""
        return np.array(self._rows[False], dtype=np.int64)

    def add(self, vm: int, start: int, end: int, stall: bool) -> None:
        """Credit ``[start, end)`` of one vCPU of ``vm`` as stall or compute."""
        _spread(self._rows[stall][vm], start, min(end, self.horizon), self.window)

    def credit(self, vm: int, t: int, n: int) -> None:
        """Compute time ``n`` (ns, maybe negative) counted at ``t`` without a stretch of its
        own: a step cut short hands back its accesses' guest time, which rounds apart from
        the stretch it keeps by a nanosecond."""
        self._rows[False][vm][min(max(t, 0), self.horizon - 1) // self.window] += n

    def add_step(self, vm: int, t0: int, ends: Sequence[int], stalls: Sequence[bool]) -> None:
        """A vCPU step that began at ``t0``: segments ending ``ends[k]`` ns after it."""
        w = self.window
        last = t0 + ends[-1]
        if t0 // w == (last - 1) // w and last <= self.horizon:  # the usual case: one window
            i = t0 // w
            start = 0
            for end, is_stall in zip(ends, stalls, strict=True):
                self._rows[is_stall][vm][i] += end - start
                start = end
            return
        start = 0
        for end, is_stall in zip(ends, stalls, strict=True):
            self.add(vm, t0 + start, t0 + end, is_stall)
            start = end

    def at(self, in_flight: Iterable[tuple[int, Segment]]) -> tuple[NDArray[Any], NDArray[Any]]:
        """(stall, compute) per VM and window with the stretches still in flight added (the
        stretches are credited for good when they end)."""
        stall, compute = self.stall, self.compute
        for vm, (a, b, is_stall) in in_flight:
            _spread((stall if is_stall else compute)[vm], a, min(b, self.horizon), self.window)
        return stall, compute

    def fractions(
        self, stall: NDArray[Any], compute: NDArray[Any], vm: int, warmup_ns: int
    ) -> NDArray[np.float64]:
        """Stall fraction of each window of ``vm`` that begins at or after ``warmup_ns`` and
        holds vCPU time."""
        first = -(-warmup_ns // self.window)
        s = stall[vm, first:].astype(np.float64)
        run = s + compute[vm, first:]
        keep = run > 0
        return s[keep] / run[keep]


class FaultLatencies:
    """Latencies of the guest faults resolved at or after the warm-up, by VM and kind; passes
    every fault on to the faults log (``log``) when there is one.

    Args:
        nr_vms: VMs.
        warmup_ns: faults before this time are not kept.
        log: the recorder (None: no faults log).
    """

    def __init__(
        self,
        nr_vms: int,
        warmup_ns: int,
        log: FaultSink | None,
        kinds: Sequence[str] = FAULT_KINDS,
    ) -> None:
        self.warmup, self.log, self.kinds = warmup_ns, log, tuple(kinds)
        self.lat = [{k: array("q") for k in self.kinds} for _ in range(nr_vms)]

    def fault(
        self, t_ns: int, vm: int, vcpu: int, gfn: int, kind: str, latency_ns: int, pid: int
    ) -> None:
        """FaultSink: keep the latency (after the warm-up), then log the fault."""
        if t_ns >= self.warmup:
            self.lat[vm][kind].append(latency_ns)
        if self.log is not None:
            self.log.fault(t_ns, vm, vcpu, gfn, kind, latency_ns, pid)

    def of(self, vm: int, kind: str) -> NDArray[np.int64]:
        """Latencies (ns) of ``vm``'s faults of ``kind`` after the warm-up, in order."""
        return np.frombuffer(self.lat[vm][kind], dtype=np.int64)

    def summary(self, vms: Sequence[int]) -> dict[str, dict[str, float | None]]:
        """Per kind, the tail of the latencies of the faults of ``vms`` pooled."""
        return {k: tail(np.concatenate([self.of(v, k) for v in vms])) for k in self.kinds}

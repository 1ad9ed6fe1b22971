"""What is checked before anything runs: every file a scenario names.

The config models check values; this module opens the files they name. ``validate`` (and
the expansion of every sweep point and plan candidate) reads at most
:data:`~sim.guest.traces.CHECK_BYTES` of each trace: its format, that it has accesses, that
the distinct pages it touches fit the VM's memory and that its ``vcpu`` column fits the VM's
vCPUs (on what was read, if the trace is longer). ``run`` and ``replay`` load each trace
whole before they start (the same load the run then uses), so a trace the check could only
sample fails there with the same one-line error, before any result is written.

Then memory: :func:`prepare_run` and :func:`check_points_memory` refuse work whose estimate
(:mod:`sim.budget`) exceeds what the machine has (or ``--max-memory``), before allocating.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from sim.budget import Estimate, check_fits, estimate_run
from sim.config import Scenario
from sim.errors import TraceError
from sim.guest.traces import CHECK_BYTES, read_trace
from sim.guest.workloads import TraceConfig, load_trace
from sim.host.memory import PAGE_SHIFT, PAGE_SIZE


@dataclass(frozen=True, slots=True)
class TraceFacts:
    """What a check learnt about one trace (as replayed with one guest page size)."""

    accesses: int  # accesses read (all of them if complete)
    distinct: int  # distinct guest pages among them
    vcpus: frozenset[int] | None  # vCPU indices in its vcpu column, if it has one
    complete: bool


Cache = dict[tuple[object, ...], TraceFacts]


def trace_facts(cfg: TraceConfig, *, full: bool, cache: Cache | None = None) -> TraceFacts:
    """Read ``cfg``'s trace (whole with ``full``, else at most ``CHECK_BYTES``); with
    ``cache`` (one per sweep or plan expansion) the points that share a trace read it once."""
    try:
        st = os.stat(cfg.path)
        version: tuple[object, ...] = (st.st_size, st.st_mtime_ns, st.st_ino)
    except (OSError, ValueError):
        version = ()
    key = (cfg.path, cfg.format, cfg.page_size, cfg.instructions, full, *version)
    facts = None if cache is None else cache.get(key)
    if facts is None:
        if full:
            dense = load_trace(cfg)
            vcpus = None if dense.vcpu is None else frozenset(np.unique(dense.vcpu).tolist())
            facts = TraceFacts(dense.gfns.size, dense.distinct, vcpus, True)
        else:
            tr = read_trace(
                cfg.path,
                fmt=cfg.format,
                page_size=max(cfg.page_size, PAGE_SIZE),
                numbers_page_size=cfg.page_size,
                instructions=cfg.instructions,
                limit_bytes=CHECK_BYTES,
            )
            vcpus = None if tr.vcpu is None else frozenset(np.unique(tr.vcpu).tolist())
            facts = TraceFacts(len(tr), int(np.unique(tr.pages).size), vcpus, tr.complete)
        if version and cache is not None:
            cache[key] = facts
    return facts


def check_traces(
    sc: Scenario, source: str, *, full: bool, cache: Cache | None = None
) -> dict[str, TraceFacts]:
    """Check every trace ``sc`` replays against its VM; the facts by trace path.

    Raises :class:`TraceError` (one line, naming the VM profile) for a trace that cannot be
    read, is malformed, touches more distinct pages than its VM has, or whose vcpu column
    does not match the VM's vCPUs.
    """
    out: dict[str, TraceFacts] = {}
    for i, vm in enumerate(sc.vms):
        cfg = vm.workload
        if not isinstance(cfg, TraceConfig):
            continue
        where = f"{source}: vms[{i}].workload.path"
        try:
            facts = trace_facts(cfg, full=full, cache=cache)
        except TraceError as exc:
            raise TraceError(f"{where}: {exc}") from None
        pages = sc.host.pages(vm.memory_mib)
        if facts.distinct > pages:
            mib = -(-(facts.distinct << PAGE_SHIFT) // (1 << 20))
            seen = "" if facts.complete else f" in its first {CHECK_BYTES >> 20} MiB"
            raise TraceError(
                f"{where}: the trace touches {facts.distinct:,} distinct pages{seen} but the VM "
                f"has {pages:,}; raise vms[{i}].memory_mib to at least {mib}"
            )
        if facts.vcpus is not None:
            top = max(facts.vcpus)
            if top >= vm.vcpus:
                raise TraceError(
                    f"{where}: the trace's vcpu column goes up to {top} but the VM has "
                    f"{vm.vcpus} vCPUs; raise vms[{i}].vcpus to at least {top + 1}"
                )
            idle = sorted(set(range(vm.vcpus)) - facts.vcpus)
            if idle and facts.complete:
                raise TraceError(
                    f"{where}: the trace has no accesses for vCPU {idle[0]}; lower "
                    f"vms[{i}].vcpus to the vCPUs the trace uses"
                )
        out[cfg.path] = facts
    return out


def prepare_run(sc: Scenario, source: str) -> Estimate:
    """Before a run starts: load and check every trace whole (the run reuses the load), then
    refuse the run if its memory estimate exceeds the limit. Returns the estimate."""
    facts = check_traces(sc, source, full=True)
    est = estimate_run(sc, {path: f.accesses for path, f in facts.items()})
    check_fits(est, f"{source}: this run")
    return est


def check_points_memory(scenarios: list[Scenario], parallel: int, source: str) -> Estimate:
    """Refuse a sweep or plan whose largest run, times the runs it has in flight at once,
    exceeds the memory limit (traces measured by the bounded check). Returns the estimate of
    one run at its largest."""
    cache: Cache = {}
    worst: Estimate | None = None
    seen: set[str] = set()
    for sc in scenarios:
        key = sc.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        facts = check_traces(sc, source, full=False, cache=cache)
        est = estimate_run(sc, {path: f.accesses for path, f in facts.items()})
        if worst is None or est.total > worst.total:
            worst = est
    assert worst is not None
    check_fits(worst, f"{source}: its largest run")
    if parallel > 1:
        check_fits(worst.times(parallel), f"{source}: running {parallel} runs at once")
    return worst

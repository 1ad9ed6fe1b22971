"""Capacity planning: how many VMs fit a host (or how little memory, how much overcommit)
under a service-level objective, with replicated seeds and a stated uncertainty.

A plan file is YAML (:class:`PlanSpec`; unknown keys are errors, each a one-line message)::

    base: quickstart.yaml            # scenario file (relative to the plan) or mapping; its vms
                                     # are replaced by the profile or mix below
    profile: {name: web, memory_mib: 2048, vcpus: 2, workload: {type: zipf, alpha: 1.2}}
    # or a mix, split by weight (largest remainder, ties to the earlier entry):
    # mix: [{vm: {name: web, ...}, weight: 2}, {vm: {name: db, ...}, weight: 1}]
    search: {variable: vms, low: 1, high: 16}          # or host.memory_mib / overcommit /
                                                       # memcg.max_mib with step and vms: N
                                                       # (VMs of the mix)
    slo: {metric: stall_window_p99, max: 0.2}
    seeds: [1, 2, 3]
    confidence: 0.9
    warmup_s: 2.0                    # every candidate's warmup_s (default: the base's)

Trace paths are relative to the file that names them (a profile's or mix's to the plan file).
``--set`` changes the base scenario (not ``vms`` when a profile or mix replaces them, nor
``host.memory_mib`` when it is searched), ``--seeds`` replaces ``seeds``; every candidate is
validated, traces included, before any run.

Metrics, one number per run (README "Capacity planning" has the same list), all read from
the run's summary.json and so all measured after the scenario's ``warmup_s``:
    ``stall_mean_p99_vms``: 99th percentile over the run's VMs (linear interpolation) of each
    VM's mean vCPU stall fraction (time lost to faults, reclaim and forced exits / vCPU time);
    with fewer than 100 VMs it lies between the worst and second-worst VM (it was called
    ``stall_p99``). ``stall_max``, ``stall_mean``: the worst VM, the mean VM.
    ``stall_window_p99``: the worst VM's 99th percentile over its ``metrics.window_ms`` windows
    of the stall fraction in each window (bursts a mean hides); ``stall_window_max``: the worst
    window of any VM. ``major_latency_p99_ms``: the 99th percentile of the latency of every
    major fault of the run's VMs (0 if there were none). ``major_faults_per_s``: the worst
    VM's major faults per second; ``major_faults_per_s_mean``: the mean VM's.
    ``promotion_rate_per_min``: the worst VM's pages read back from swap (major faults) per
    minute as a fraction of its working set (``working_set_mib``, else its memory), e.g.
    0.002 = 0.2% of the working set per minute. ``oom_kills``: how many VMs the OOM killer
    (host-wide or a memcg's) killed. A run in which the OOM killer killed a VM violates any
    other SLO (its metric is infinite); ``oom_kills`` is the count itself, so
    ``{metric: oom_kills, max: 0}`` asks for the hardest candidate nothing is killed at.

``memcg.max_mib`` searches the smallest ``memory.max`` (MiB) of the VMs of the profile or
mix (or of the base's VMs without one), or of the VM profiles named in ``search.apply_to``:
each candidate writes it into their ``memcg`` section, keeping its other settings
(``memory.low``, ...); every other search keeps the profiles' ``memcg`` as written, so an
overcommit or vms search of guests with ``memcg: {low_mib: ...}`` plans under that
protection. Its candidates must be at most the limited VMs' memory.

Warm-up: one notion, the scenario's ``warmup_s``. A plan's ``warmup_s``, if given, is written
into every candidate scenario (replacing the base's); if omitted the base's applies.

Search: the metric is assumed monotone in the variable (more VMs, more overcommit, less memory
or a smaller memory.max never help). Candidates are ordered from easiest to hardest; each
evaluated candidate runs every seed as one batch on the sweep engine. Per candidate the mean
and a two-sided t interval over seeds decide: *pass* if the upper bound meets the SLO, *fail*
if the lower bound violates it, else *uncertain*. The search brackets (both ends), bisects for
the hardest passing candidate, then bisects beyond it for the hardest candidate that does not
fail (several candidates per round when the workers outnumber the seeds); the answer is the
first, and the candidates up to the second are reported as uncertain.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from sim.config import (
    MAX_DURATION_S,
    MAX_VMS,
    Scenario,
    VmConfig,
    parse_scenario,
    resolve_paths,
    set_dotted,
)
from sim.errors import ConfigError, UserError, shown, shown_path
from sim.host.memcontrol import MAX_MIB
from sim.results import FRACTION_METRICS, ResultName, host_row, vm_rows, write_atomic
from sim.schema import Strict
from sim.stats import t_interval
from sim.sweep import (
    MAX_POINTS,
    Point,
    Seed,
    _base_is_file_or_mapping,
    apply_base_overrides,
    check_points,
    load_base,
    read_spec,
    run_points,
)

# variable -> +1 if a larger value is harder (worse for the SLO), -1 if a smaller one is
VARIABLES = {"vms": +1, "overcommit": +1, "host.memory_mib": -1, "memcg.max_mib": -1}
SHORT = {"vms": "vms", "host.memory_mib": "mem", "overcommit": "oc", "memcg.max_mib": "max"}
METRICS = {
    "stall_mean_p99_vms": "p99 over VMs of mean vCPU stall fraction",
    "stall_max": "worst VM's vCPU stall fraction",
    "stall_mean": "mean VM's vCPU stall fraction",
    "stall_window_p99": "worst VM's p99 over windows of the stall fraction per window",
    "stall_window_max": "worst window's stall fraction, any VM",
    "major_latency_p99_ms": "p99 latency of major faults, all VMs (ms)",
    "major_faults_per_s": "worst VM's major faults/s",
    "major_faults_per_s_mean": "mean VM's major faults/s",
    "promotion_rate_per_min": "worst VM's swap-ins/min as a fraction of its working set",
    "oom_kills": "VMs killed by the OOM killer (global or memcg)",
}
RENAMED = {"stall_p99": "stall_mean_p99_vms"}


class PlanError(RuntimeError):
    """Runs of a plan failed (a simulator bug, not bad input): the search cannot go on."""


class SearchSpec(Strict):
    """``search:``: the variable, its range and grid spacing."""

    variable: Literal["vms", "overcommit", "host.memory_mib", "memcg.max_mib"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    step: float | None = Field(None, gt=0)
    vms: int | None = Field(None, ge=1, le=MAX_VMS)
    # memcg.max_mib: the VM profiles (by name) whose memory.max is searched; None: every VM
    apply_to: list[str] | None = Field(None, min_length=1, max_length=MAX_VMS)

    @model_validator(mode="after")
    def _range(self) -> SearchSpec:
        if not self.low < self.high:
            raise ValueError(
                f"search: expected 0 < low < high, got low={self.low:g} high={self.high:g}"
            )
        if self.variable != "overcommit":
            for key, v in (("low", self.low), ("high", self.high), ("step", self.step)):
                if v is not None and not float(v).is_integer():
                    raise ValueError(
                        f"search.{key}: expected an integer for {self.variable}, got {v:g}"
                    )
        if self.step is None and self.variable != "vms":
            raise ValueError(f"search.step: required for {self.variable} (the grid spacing)")
        if self.variable == "vms" and self.vms is not None:
            raise ValueError(
                "search.vms: only for host.memory_mib/overcommit/memcg.max_mib searches"
            )
        if self.apply_to is not None and self.variable != "memcg.max_mib":
            raise ValueError("search.apply_to: only for memcg.max_mib searches; remove it")
        if self.variable == "memcg.max_mib" and self.high > MAX_MIB:
            raise ValueError(f"search.high: memcg.max_mib at most {MAX_MIB} MiB (64 TiB)")
        span = (self.high - self.low) / (self.step or 1.0)
        if not span < MAX_POINTS:  # also an infinite span
            raise ValueError(
                f"search: {span:,.0f} candidates; at most {MAX_POINTS:,}: raise step or "
                "narrow the range"
            )
        return self


class SloSpec(Strict):
    """``slo:``: the metric and its largest acceptable value."""

    metric: Literal[tuple(METRICS)]  # type: ignore[valid-type]
    max: float = Field(ge=0)

    @field_validator("metric", mode="before")
    @classmethod
    def _renamed(cls, v: Any) -> Any:
        if isinstance(v, str) and v in RENAMED:
            raise ValueError(
                f"{v} was renamed {RENAMED[v]} (the p99 over VMs of each VM's mean stall); "
                "for the tail over time use stall_window_p99"
            )
        return v


class MixItem(Strict):
    """One kind of VM in a mix and its share."""

    vm: dict[str, Any]
    weight: float = Field(1.0, gt=0)


class PlanSpec(Strict):
    """A plan file (module docstring)."""

    name: ResultName | None = None
    base: str | dict[str, Any]
    profile: dict[str, Any] | None = None
    mix: list[MixItem] | None = Field(None, min_length=1, max_length=MAX_VMS)
    search: SearchSpec
    slo: SloSpec
    seeds: list[Seed] = Field([1, 2, 3], min_length=1, max_length=MAX_POINTS)
    confidence: float = Field(0.9, gt=0, lt=1)
    warmup_s: float | None = Field(None, ge=0, le=MAX_DURATION_S)

    _base = field_validator("base", mode="before")(_base_is_file_or_mapping)

    @model_validator(mode="after")
    def _rules(self) -> PlanSpec:
        if self.profile is not None and self.mix is not None:
            raise ValueError("give either profile or mix, not both")
        if self.profile is not None and "count" in self.profile:
            raise ValueError("profile.count: the plan sets the count; remove it")
        for i, item in enumerate(self.mix or []):
            if "count" in item.vm:
                raise ValueError(f"mix[{i}].vm.count: the plan sets counts; use weight")
        if self.search.variable == "memcg.max_mib":
            written = [("profile", self.profile)] if self.profile is not None else []
            written += [(f"mix[{i}].vm", item.vm) for i, item in enumerate(self.mix or [])]
            for where, vm in written:
                memcg = vm.get("memcg")
                if isinstance(memcg, dict) and "max_mib" in memcg:
                    raise ValueError(
                        f"{where}.memcg.max_mib: the plan searches it (search.variable); remove it"
                    )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: expected a list of distinct non-negative integers")
        has_mix = self.profile is not None or self.mix is not None
        if self.search.variable == "vms" and not has_mix:
            raise ValueError("profile: required to search over vms (or give a mix)")
        if self.search.variable != "vms" and has_mix and self.search.vms is None:
            raise ValueError("search.vms: required with a profile or mix (how many VMs)")
        return self


@dataclass(frozen=True)
class Plan:
    """A validated plan file."""

    name: str
    base: dict[str, Any]
    mix: list[tuple[dict[str, Any], float]] | None  # (vm profile, weight); None: base's vms
    variable: str
    values: list[float]  # candidates, easiest first
    vms: int | None  # VM count for host.memory_mib / overcommit searches
    metric: str
    slo_max: float
    seeds: list[int]
    confidence: float
    warmup_s: float | None  # written into every candidate's warmup_s; None: the base's
    apply_to: tuple[str, ...] | None = None  # memcg.max_mib: VM profiles limited; None: all

    def scenario(self, value: float, seed: int, where: str = "plan") -> Scenario:
        """The scenario at one candidate value and seed."""
        raw = copy.deepcopy(self.base)
        n = int(value) if self.variable == "vms" else self.vms
        if self.mix is not None:
            assert n is not None
            raw["vms"] = [
                {**vm, "count": c}
                for (vm, _), c in zip(self.mix, split(n, self.mix), strict=True)
                if c > 0
            ]
        if self.variable == "host.memory_mib":
            set_dotted(raw, "host.memory_mib", int(value), where)
        elif self.variable == "overcommit":
            guest = sum(_mib(v, "memory_mib") * _mib(v, "count", 1) for v in _vm_dicts(raw))
            set_dotted(raw, "host.memory_mib", max(1, round(guest / value)), where)
        elif self.variable == "memcg.max_mib":
            for vm in self.limited(raw):  # other memcg settings (memory.low, ...) are kept
                memcg = vm.get("memcg")
                vm["memcg"] = {**(memcg if isinstance(memcg, dict) else {}), "max_mib": int(value)}
        raw["seed"] = seed
        if self.warmup_s is not None:
            raw["warmup_s"] = self.warmup_s
        raw["name"] = f"{self.name}-{SHORT[self.variable]}{fmt_value(value)}"
        return parse_scenario(raw, where)

    def limited(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        """The VM profiles of a raw scenario whose memory.max a memcg.max_mib search sets."""
        return [
            v for v in _vm_dicts(raw) if self.apply_to is None or v.get("name") in self.apply_to
        ]

    def label(self, value: float) -> str:
        """A candidate as a label: ``vms=7``, ``host.memory_mib=4096``, ``overcommit=1.5``."""
        return f"{self.variable}={fmt_value(value)}"


def _vm_dicts(raw: dict[str, Any]) -> list[dict[str, Any]]:
    vms = raw.get("vms")
    return [v for v in vms if isinstance(v, dict)] if isinstance(vms, list) else []


def _mib(vm: dict[str, Any], key: str, default: int = 0) -> int:
    """A VM's size or count for the overcommit arithmetic (the scenario validates it after)."""
    v = vm.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53 else default


def fmt_value(v: float) -> str:
    """Integers without a decimal point, ratios as short decimals."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def split(n: int, mix: list[tuple[dict[str, Any], float]]) -> list[int]:
    """Split ``n`` VMs over the mix by weight: largest remainder, ties to the earlier entry."""
    weights = [w for _, w in mix]
    total = sum(weights)
    if not math.isfinite(total):  # weights near the float maximum: compare them scaled down
        top = max(weights)
        weights = [w / top for w in weights]
        total = sum(weights)
    quotas = [n * w / total for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(mix)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _candidates(search: SearchSpec) -> list[float]:
    """The candidate values, easiest first."""
    step = search.step or 1.0
    values = [float(v) for v in np.arange(search.low, search.high + step / 2, step)]
    integer = search.variable != "overcommit"
    values = [int(v) if integer else round(v, 9) for v in values if v <= search.high + 1e-9]
    if VARIABLES[search.variable] < 0:
        values.reverse()
    return values


def load_plan(
    path: Path, overrides: list[str] | None = None, seeds: list[int] | None = None
) -> Plan:
    """Read and validate a plan file; every candidate scenario is validated (traces included)
    before any run. ``overrides`` (``--set``) change the base scenario, ``seeds``
    (``--seeds``) replace the file's seeds."""
    from sim.checks import Cache, check_traces

    _, spec = read_spec(path, PlanSpec)
    raw = load_base(path, spec.base)
    mix: list[tuple[dict[str, Any], float]] | None = None
    if spec.profile is not None:
        mix = [(spec.profile, 1.0)]
    elif spec.mix is not None:
        mix = [(item.vm, item.weight) for item in spec.mix]
    for vm, _ in mix or []:  # written in the plan file: paths relative to it
        resolve_paths({"vms": [vm]}, path.parent)
    if overrides:
        taken = {"name": "each candidate's run name"}
        if mix is not None:
            taken["vms"] = "profile/mix"
        if spec.search.variable in ("host.memory_mib", "overcommit"):
            taken["host.memory_mib"] = f"search.variable: {spec.search.variable}"
        if spec.search.variable == "memcg.max_mib" and mix is None:
            names = spec.search.apply_to
            for i, vm in enumerate(_vm_dicts(raw)):
                if names is None or vm.get("name") in names:
                    taken[f"vms.{i}.memcg.max_mib"] = "search.variable: memcg.max_mib"
        raw = apply_base_overrides(path, raw, overrides, taken)
    seeds = seeds or list(spec.seeds)
    values = _candidates(spec.search)
    check_points(path, len(values) * len(seeds), "runs (candidates x seeds)")
    plan = Plan(
        spec.name or path.stem,
        raw,
        mix,
        spec.search.variable,
        values,
        spec.search.vms,
        spec.slo.metric,
        spec.slo.max,
        seeds,
        spec.confidence,
        spec.warmup_s,
        None if spec.search.apply_to is None else tuple(spec.search.apply_to),
    )
    source = shown_path(path)
    if plan.variable == "memcg.max_mib":
        _check_memcg_search(plan, spec.search, source)
    cache: Cache = {}
    for v in values:
        where = f"{source}: {plan.label(v)}"
        try:
            sc = plan.scenario(v, seeds[0], where)
            check_traces(sc, where, full=False, cache=cache)
        except UserError as exc:
            raise ConfigError(str(exc)) from None
        if plan.variable == "memcg.max_mib":
            limited = [vm for vm in sc.vms if plan.apply_to is None or vm.name in plan.apply_to]
            # the VMM's overhead is charged beside guest RAM: memory.max may exceed RAM by it
            room = [vm.memory_mib + -(-_overhead_kib(vm) // 1024) for vm in limited]
            over = [(vm, r) for vm, r in zip(limited, room, strict=True) if v > r]
            if over:
                vm, r = over[0]
                raise ConfigError(
                    f"{source}: search.high: memcg.max_mib {fmt_value(v)} exceeds the memory of "
                    f"VM profile {vm.name} ({r} MiB with the VMM's overhead; a larger memory.max "
                    f"limits nothing); lower search.high to {r}"
                )
        if (
            plan.metric.startswith("stall_window")
            and sc.warmup_s + (sc.metrics.window_ms / 1000) > sc.duration_s
        ):
            raise ConfigError(
                f"{where}: {plan.metric} needs a whole window after the warm-up: warmup_s "
                f"({sc.warmup_s:g} s) + metrics.window_ms ({sc.metrics.window_ms:g} ms) exceeds "
                f"duration_s ({sc.duration_s:g} s); shorten either or lengthen the run"
            )
    return plan


def _overhead_kib(vm: VmConfig) -> int:
    """The VMM memory a VM profile charges to its memcg besides guest RAM."""
    return 0 if vm.memcg is None else vm.memcg.vmm_overhead_kib


def _check_memcg_search(plan: Plan, search: SearchSpec, source: str) -> None:
    """A memcg.max_mib search limits VM profiles the plan has (else every candidate would be
    refused one by one, naming a scenario key the plan file does not have)."""
    names = [v.get("name") for v in _vm_dicts(plan.base)]
    if plan.mix is not None:
        names = [vm.get("name") for vm, _ in plan.mix]
    missing = [n for n in plan.apply_to or () if n not in names]
    if missing:
        known = ", ".join(str(n) for n in names)
        raise ConfigError(
            f"{source}: search.apply_to: no VM profile named {shown(missing[0])} (the plan's "
            f"VM profiles: {known}); name one of them or remove apply_to"
        )


# --------------------------------------------------------------------------------------------
# metrics


def run_metrics(sc: Scenario, summary: dict[str, Any]) -> dict[str, float]:
    """Every SLO metric of one run (see the module docstring for the definitions), from its
    summary: after the scenario's warm-up, as every figure there."""
    cfgs = [cfg for _, cfg in sc.vm_list()]
    vms = vm_rows(summary)
    stall = [v["stall_fraction"] for v in vms]
    majors = [v["major_faults_per_s"] for v in vms]
    windows_p99 = [v["stall_window_p99"] for v in vms if v.get("stall_window_p99") is not None]
    windows_max = [v["stall_window_max"] for v in vms if v.get("stall_window_max") is not None]
    host = host_row(summary)
    major_p99 = host.get("fault_latency_ns_major_p99")
    tails = "warmup_ns" in summary  # else a summary from before memsim kept tails: NaN
    ws_pages = [sc.host.pages(cfg.working_set_mib or cfg.memory_mib) for cfg in cfgs]
    promo = [m * 60 / w for m, w in zip(majors, ws_pages, strict=True)]
    out = {
        "stall_mean_p99_vms": float(np.percentile(stall, 99)),
        "stall_max": float(max(stall)),
        "stall_mean": float(np.mean(stall)),
        "stall_window_p99": float(max(windows_p99, default=0.0)) if tails else math.nan,
        "stall_window_max": float(max(windows_max, default=0.0)) if tails else math.nan,
        "major_latency_p99_ms": (0.0 if major_p99 is None else major_p99 / 1e6)
        if tails
        else math.nan,
        "major_faults_per_s": float(max(majors)),
        "major_faults_per_s_mean": float(np.mean(majors)),
        "promotion_rate_per_min": float(max(promo)),
    }
    if host["oom_kills"]:
        out = {k: math.inf for k in out}
    out["oom_kills"] = float(len(host["oom_kills"]))
    return out


@dataclass
class Outcome:
    """One candidate value over all seeds."""

    value: float
    label: str
    n: int
    mean: float
    low: float
    high: float
    n_meet: int  # seeds whose run meets the SLO
    status: str  # pass | uncertain | fail
    values: list[float] = field(default_factory=list)


def judge(value: float, label: str, xs: list[float], slo_max: float, conf: float) -> Outcome:
    """Pass if the interval's upper bound meets the SLO, fail if its lower bound violates it."""
    n_meet = sum(x <= slo_max for x in xs)
    if all(math.isfinite(x) for x in xs):
        mean, lo, hi = t_interval(xs, conf)
        status = "pass" if hi <= slo_max else "fail" if lo > slo_max else "uncertain"
    else:  # an OOM kill in some seed: never a pass; the lower bound is the best finite seed
        finite = [x for x in xs if math.isfinite(x)]
        mean, lo, hi = math.inf, min(finite, default=math.inf), math.inf
        status = "fail" if n_meet == 0 else "uncertain"
    return Outcome(value, label, len(xs), mean, lo, hi, n_meet, status, list(xs))


# --------------------------------------------------------------------------------------------
# search


@dataclass
class PlanResult:
    """What a plan found."""

    plan: Plan
    outcomes: dict[int, Outcome]  # candidate index -> outcome
    answer: int | None  # index of the hardest passing candidate
    not_failing: int | None  # index of the hardest candidate that does not fail
    rows: pd.DataFrame  # one row per run

    def statement(self) -> str:
        """The answer in one sentence, with its uncertainty."""
        p = self.plan
        what = {
            "vms": "fits {} VMs",
            "host.memory_mib": "needs {} MiB of host memory",
            "overcommit": "holds an overcommit of {}x",
            "memcg.max_mib": "needs a memory.max of {} MiB "
            + ("per VM" if p.apply_to is None else "for " + ", ".join(p.apply_to)),
        }[p.variable]
        slo = f"{p.metric} <= {fmt_value(p.slo_max)}"
        n = len(p.seeds)
        if self.answer is None:
            first = self.outcomes[0]
            return (
                f"{p.name}: no candidate meets {slo}: even {first.label} is {first.status} "
                f"({first.n_meet}/{n} seeds meet it); widen the search range"
            )
        ans = self.outcomes[self.answer]
        text = f"{p.name}: {what.format(fmt_value(ans.value))} with {slo}"
        text += f" (mean {_fmt_metric(p.metric, ans.mean)}, {p.confidence:.0%} CI up to "
        text += f"{_fmt_metric(p.metric, ans.high)} over {n} seed{'s' * (n > 1)})"
        top = self.answer if self.not_failing is None else max(self.answer, self.not_failing)
        if top > self.answer:
            seen = [o for i, o in sorted(self.outcomes.items()) if self.answer < i <= top]
            span = fmt_value(p.values[self.answer + 1])
            if top > self.answer + 1:
                span += f" to {fmt_value(p.values[top])}"
            text += (
                f"; {span} uncertain ("
                + ", ".join(f"{fmt_value(o.value)}: {o.n_meet}/{n} seeds meet it" for o in seen)
                + ")"
            )
        if top == len(p.values) - 1:
            text += "; the hardest candidate does not fail: widen the search range"
        else:
            text += f"; {fmt_value(p.values[top + 1])} fails"
        if n == 1:
            text += " (one seed: no uncertainty estimate)"
        return text


def _fmt_metric(metric: str, v: float) -> str:
    if not math.isfinite(v):
        return "OOM"
    return f"{100 * v:.2f}%" if metric in FRACTION_METRICS else f"{v:.3g}"


Runner = Callable[..., pd.DataFrame]


def search(
    plan: Plan,
    target: Path,
    *,
    runner: Runner = run_points,
    on_outcome: Callable[[Outcome], None] | None = None,
    values_per_round: int | None = None,
    **runner_kwargs: Any,
) -> PlanResult:
    """Run the search into ``target`` (runs under ``target/runs/``, finished ones reused).

    ``runner`` is the sweep engine (``sim.sweep.run_points`` by default); ``runner_kwargs``
    (``workers``, ``progress``, or whatever a Dask runner takes) are passed through unchanged.
    Each round evaluates ``values_per_round`` candidates at once (default: as many as the
    workers can run with every seed, at least one), so more workers mean fewer rounds.
    """
    if values_per_round is None:
        workers = runner_kwargs.get("workers") or os.cpu_count() or 1
        values_per_round = max(1, workers // len(plan.seeds))
    outcomes: dict[int, Outcome] = {}
    frames: list[pd.DataFrame] = []
    next_index = [0]

    def evaluate(idxs: list[int]) -> None:
        todo = [i for i in dict.fromkeys(idxs) if i not in outcomes]
        if not todo:
            return
        points, owner = [], {}
        for i in todo:
            v = plan.values[i]
            for seed in plan.seeds:
                sc = plan.scenario(v, seed)
                pt = Point(next_index[0], plan.label(v), {plan.variable: v, "seed": seed}, sc)
                owner[pt.index] = (i, sc)
                next_index[0] += 1
                points.append(pt)
        df = runner(points, target, **runner_kwargs)
        failed = df[df.status == "failed"]
        if len(failed):
            row = failed.iloc[0]
            raise PlanError(
                f"{len(failed)} run(s) failed, first {row['run']} ({row['label']}): "
                f"{row.get('error', '?')}; see {target / 'runs.parquet'}"
            )
        recs = []
        for _, row in df.iterrows():
            i, sc = owner[int(row["index"])]
            run_dir = target / "runs" / str(row["run"])
            summary = json.loads((run_dir / "summary.json").read_text())
            metrics = run_metrics(sc, summary)
            if math.isnan(metrics[plan.metric]):
                raise UserError(
                    f"{run_dir}: its summary.json predates {plan.metric} (a run reused from "
                    "an older memsim); remove that run directory or plan into another --out"
                )
            recs.append({**row.to_dict(), **metrics, "_i": i})
        batch = pd.DataFrame(recs)
        frames.append(batch)
        for i in todo:
            xs = batch[batch._i == i][plan.metric].tolist()
            outcomes[i] = judge(
                plan.values[i], plan.label(plan.values[i]), xs, plan.slo_max, plan.confidence
            )
            if on_outcome:
                on_outcome(outcomes[i])

    last = len(plan.values) - 1
    evaluate([0, last])  # bracket
    width = values_per_round
    answer = _bisect(0, last, lambda i: outcomes[i].status == "pass", evaluate, width)
    start = -1 if answer is None else answer
    not_failing = _bisect(start, last, lambda i: outcomes[i].status != "fail", evaluate, width)
    rows = pd.concat(frames, ignore_index=True).drop(columns="_i")
    rows = rows.sort_values([plan.variable, "seed"]).reset_index(drop=True)
    return PlanResult(plan, outcomes, answer, not_failing, rows)


def _bisect(
    lo: int,
    hi: int,
    ok: Callable[[int], bool],
    evaluate: Callable[[list[int]], None],
    width: int = 1,
) -> int | None:
    """Hardest index in [lo, hi] where ``ok`` holds, assuming it holds up to a point.

    ``lo`` is a known-ok index or -1 (nothing known); evaluated indices are reused. Each round
    evaluates ``width`` evenly spaced indices in one batch (``width=1``: plain bisection).
    """
    if lo >= 0:
        evaluate([lo])
        if not ok(lo):
            return None
    evaluate([hi])
    if ok(hi):
        return hi
    while hi - lo > 1:  # invariant: lo ok (or -1), hi not ok
        k = min(width, hi - lo - 1)
        mids = sorted({lo + (j + 1) * (hi - lo) // (k + 1) for j in range(k)})
        evaluate(mids)
        for m in mids:
            if ok(m):
                lo = m
        hi = min((m for m in mids if m > lo and not ok(m)), default=hi)
    return lo if lo >= 0 else None


def write_plan(result: PlanResult, target: Path) -> None:
    """``plan.json`` (the answer and every candidate), ``plan.parquet`` (every run) and
    ``runs.parquet``, each written to a temporary file and renamed into place."""
    p = result.plan
    rows = result.rows.copy()
    rows["metric"] = p.metric
    rows["slo_value"] = rows[p.metric]
    for c in rows.columns:
        if rows[c].dtype == object:
            rows[c] = rows[c].astype(str)
    write_atomic(target / "plan.parquet", lambda p: rows.to_parquet(p, index=False))
    meta = {
        "name": p.name,
        "variable": p.variable,
        "apply_to": None if p.apply_to is None else list(p.apply_to),
        "direction": "larger is harder" if VARIABLES[p.variable] > 0 else "smaller is harder",
        "slo": {"metric": p.metric, "max": p.slo_max, "description": METRICS[p.metric]},
        "seeds": p.seeds,
        "confidence": p.confidence,
        "warmup_s": p.scenario(p.values[0], p.seeds[0]).warmup_s,
        "candidates": p.values,
        "answer": None if result.answer is None else p.values[result.answer],
        "largest_not_failing": (
            None if result.not_failing is None else p.values[result.not_failing]
        ),
        "statement": result.statement(),
        "evaluated": [
            {k: _json_num(v) for k, v in asdict(o).items()}
            for _, o in sorted(result.outcomes.items())
        ],
    }
    write_atomic(target / "plan.json", json.dumps(meta, indent=2) + "\n")
    # runs.parquet as a sweep directory would have it: every run of the plan, not the last batch
    runs = result.rows.drop(columns=list(METRICS))
    write_atomic(target / "runs.parquet", lambda p: runs.to_parquet(p, index=False))


def _json_num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_num(x) for x in v]
    return v

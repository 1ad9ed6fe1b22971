"""Scaling a question down: a scenario (or a plan) at 1/factor of its size, kept comparable.

The rule (README "Scaling a question down"; docs/MODEL.md 9): divide every size in MiB by
``factor`` (host memory, each VM's memory, working set, phase regions and memcg limits, the
swap area, the host page cache's files), divide every access rate (the guests' and the page
cache readers') and the swap device's concurrency (``queue_depth``, ``nr_requests``) by it, and
pin ``host.min_free_kbytes`` at the full-size host's value divided by it. Times (durations,
warm-up, windows, latencies, CPU costs) are kept. The scaled world is then a sample of the full
one in which each page stands for ``factor`` pages and is touched as often per second of
vCPU time:

- faults and swap-outs per access, the resident and swapped shares of each guest and every
  per-page time constant are preserved (per wall second only while stalls are small: a
  stalled vCPU touches its pages less often);
- counts and rates of events (faults, pswpout, pgscan, faults/s, kswapd's busy time) and page
  counts are 1/factor of full size;
- a vCPU's ratio of stall to compute time is 1/factor of full size (it meets 1/factor of the
  faults per second of compute, each costing the same), so a stall fraction converts back as
  ``x = s / (1 - s)``, ``x_full = factor * x`` (:func:`stall_up`).

Watermarks: the kernel derives ``min_free_kbytes`` as ``sqrt(16 * kB)``, so a host 1/factor the
size would keep sqrt(factor) times the fraction of its memory free; pinning it keeps the
fractions (kswapd wakes as often, and reclaims 1/factor of the pages per wake-up, as the free
pages are taken 1/factor as fast). What is not preserved is listed in the README: fixed-size
batches (SWAP_CLUSTER_MAX = 32 pages, readahead windows) are factor times larger relative to
memory; with alpha < 1 Zipf's head holds a smaller share of fewer pages (more misses); tails
over windows are noisier; fewer device servers queue longer at the same utilisation; the THP
swap link is less loaded.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.config import (
    HostConfig,
    Scenario,
    VmConfig,
    parse_scenario,
    read_yaml,
    resolve_paths,
)
from sim.errors import ConfigError, shown_path
from sim.guest.workloads import PhasesConfig, TraceConfig
from sim.host.memory import SWAP_CLUSTER_MAX

MAX_FACTOR = 1 << 20
MIN_VM_PAGES = 256  # a guest (and its working set) smaller than this has no skew left to model
MIN_HOST_PAGES = 1024  # 32 reclaim batches of SWAP_CLUSTER_MAX pages
STALL_METRICS = (
    "stall_mean_p99_vms",
    "stall_max",
    "stall_mean",
    "stall_window_p99",
    "stall_window_max",
)
RATE_METRICS = ("major_faults_per_s", "major_faults_per_s_mean")


def stall_down(s: float, factor: int) -> float:
    """The stall fraction a scaled world shows for a full-size stall fraction ``s``: the
    stall-to-compute ratio ``s / (1 - s)`` divided by ``factor``."""
    return s / (s + factor * (1.0 - s)) if s < 1.0 else 1.0


def stall_up(s: float, factor: int) -> float:
    """The full-size stall fraction a scaled world's stall fraction ``s`` stands for (the
    inverse of :func:`stall_down`)."""
    return factor * s / (1.0 - s + factor * s) if s < 1.0 else 1.0


@dataclass
class Scaled:
    """A scaled scenario or plan: its mapping, and what the rule could not keep exactly."""

    raw: dict[str, Any]
    factor: int
    source: str
    kind: str  # "scenario" or "plan"
    notes: list[str] = field(default_factory=list)
    watermarks: str = ""

    def header(self) -> str:
        """The comment block written above the scaled YAML."""
        f = self.factor
        # a YAML comment ends at any line break, \x85 and \u2028 included: escape them all
        source = "".join(c if c.isprintable() else repr(c)[1:-1] for c in self.source)
        lines = [
            f"Scaled down by 'memsim scale --factor {f}' from {source}: every size and "
            f"access rate / {f},",
            f"the swap device's queue_depth and nr_requests / {f}, min_free_kbytes pinned at the "
            f"full-size value / {f};",
            "times (durations, windows, latencies, costs) unchanged. Read results back as:",
            "  same: faults per access, resident and swapped shares of each guest, latency per "
            "fault,",
            "        promotion_rate_per_min, oom_kills;",
            f"  x {f}: counts and per-second rates of events (faults, pswpin/pswpout, pgscan, "
            "major_faults_per_s),",
            "        page counts (resident, swapped, free, pool frames), kswapd busy time, "
            "accesses;",
            f"  stall fraction s: x = s / (1 - s) is 1/{f} of full size: s_full = "
            f"{f}x / (1 + {f}x).",
        ]
        if self.watermarks:
            lines.append(self.watermarks)
        lines += [f"Note: {n}" for n in self.notes]
        return "".join(f"# {ln}\n" for ln in lines)

    def yaml(self) -> str:
        """The header and the scaled mapping."""
        import yaml

        return self.header() + yaml.safe_dump(self.raw, sort_keys=False)


class Refused(ConfigError):
    """A size the factor does not divide into enough whole pages (the fix is added after)."""


def _with_fix(scale: Callable[[int, bool], Scaled | _Sizer], factor: int) -> Scaled:
    """``scale(factor)``; if a size refuses it, the message names the largest factor below it
    that scales every size (or says none does), found from the sizes a probe records."""
    try:
        out = scale(factor, False)
    except Refused as exc:
        probe = scale(factor, True)
        assert isinstance(probe, _Sizer)
        g = probe.largest_factor(factor - 1)
        fix = (
            f"use a smaller factor (--factor {g} scales every size)"
            if g > 1
            else ("no factor above 1 scales every size of this file")
        )
        raise ConfigError(f"{exc}; {fix}") from None
    assert isinstance(out, Scaled)
    return out


class _Sizer:
    """Divides sizes and rates by the factor, refusing what does not divide into whole MiB
    (guest RAM with THP: whole 2 MiB blocks) or leaves too few pages; collects the notes on
    what was rounded."""

    def __init__(self, factor: int, source: str, *, thp: bool, probe: bool = False) -> None:
        self.f, self.source, self.thp, self.probe = factor, source, thp, probe
        self.notes: list[str] = []
        # (MiB, least pages after scaling, MiB it must stay a multiple of) of each size
        self.sizes: list[tuple[int, int, int]] = []

    def largest_factor(self, at_most: int) -> int:
        """The largest factor up to ``at_most`` that scales every recorded size (1 if none):
        a divisor of the sizes' greatest common divisor in their units, leaving enough pages."""
        g = 0
        for mib, _, unit in self.sizes:
            g = math.gcd(g, mib // unit)
        divisors = {d for i in range(1, math.isqrt(g) + 1) if g % i == 0 for d in (i, g // i)}
        ok = [
            d
            for d in divisors
            if d <= at_most and all(self.pages(m // d) >= least for m, least, _ in self.sizes)
        ]
        return max(ok, default=1)

    @staticmethod
    def pages(mib: int) -> int:
        return mib << 8

    def mib(
        self,
        where: str,
        mib: int,
        *,
        min_pages: int = 0,
        guest_ram: bool = False,
        huge_mib: int = 0,
    ) -> int:
        """``mib / factor``, which must be a whole number of MiB (of 2 MiB THP blocks for
        ``guest_ram`` with THP on; of ``huge_mib`` MiB huge pages for hugetlbfs-backed guest
        RAM), and at least ``min_pages`` 4 KiB pages."""
        f, unit = self.f, huge_mib or (2 if guest_ram and self.thp else 1)
        self.sizes.append((mib, min_pages, unit))
        if self.probe:
            return max(mib // f, unit)
        if mib % (f * unit):
            what = "MiB" if unit == 1 else "2 MiB THP blocks"
            if huge_mib:
                what = f"{huge_mib} MiB huge pages (memory_backing: hugetlbfs)"
            raise Refused(
                f"{self.source}: {where}: {mib} MiB / {f} is not a whole number of {what}"
            )
        out = mib // f
        if self.pages(out) < min_pages:
            raise Refused(
                f"{self.source}: {where}: {mib} MiB / {f} leaves {self.pages(out)} pages of "
                f"4 KiB, fewer than the {min_pages} it needs to mean anything"
            )
        return out

    def rate(self, where: str, rate: int) -> int:
        """``rate / factor``, rounded to a whole rate of at least 1 per second."""
        out = max(1, round(rate / self.f))
        if out * self.f != rate:
            self.notes.append(f"{where} {rate:,} / {self.f} rounded to {out:,}")
        return out

    def count(self, where: str, n: int) -> int:
        """A server or tag count / factor, at least 1 (rounded up)."""
        out = max(1, -(-n // self.f))
        if out * self.f != n:
            self.notes.append(
                f"{where} {n} / {self.f} rounded up to {out} (the device is relatively "
                f"{'less' if out * self.f > n else 'more'} loaded)"
            )
        return out


def check_factor(factor: Any) -> int:
    """The factor as an integer >= 1, or a one-line ConfigError."""
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= MAX_FACTOR:
        raise ConfigError(
            f"--factor: expected an integer from 1 to {MAX_FACTOR:,} (e.g. 8 or 32), got {factor!r}"
        )
    return factor


def _scale_vm(raw_vm: dict[str, Any], vm: VmConfig, z: _Sizer, at: str) -> None:
    """Scale one VM profile's mapping in place (``vm``: the same profile, parsed)."""
    if isinstance(vm.workload, TraceConfig):
        raise ConfigError(
            f"{z.source}: {at}.workload: a trace's pages are the traced program's and cannot be "
            "scaled down; give the VM a synthetic workload (zipf, hotcold, ...) or do not scale"
        )
    huge = vm.hugepage_size_kib >> 10 if vm.memory_backing == "hugetlbfs" else 0
    raw_vm["memory_mib"] = z.mib(
        f"{at}.memory_mib", vm.memory_mib, min_pages=MIN_VM_PAGES, guest_ram=True, huge_mib=huge
    )
    if vm.working_set_mib is not None:
        raw_vm["working_set_mib"] = z.mib(
            f"{at}.working_set_mib", vm.working_set_mib, min_pages=MIN_VM_PAGES
        )
    raw_vm["access_rate_per_s"] = z.rate(f"{at}.access_rate_per_s", vm.access_rate_per_s)
    if isinstance(vm.workload, PhasesConfig):
        phases = raw_vm["workload"]["phases"]
        for j, ph in enumerate(vm.workload.phases):
            pw = f"{at}.workload.phases[{j}]"
            phases[j]["offset_mib"] = z.mib(f"{pw}.offset_mib", ph.offset_mib)
            if ph.working_set_mib is not None:
                phases[j]["working_set_mib"] = z.mib(
                    f"{pw}.working_set_mib", ph.working_set_mib, min_pages=MIN_VM_PAGES
                )
    if vm.memcg is not None:
        memcg = raw_vm["memcg"]
        for key, mib in vm.memcg.sizes():
            if mib is not None:
                memcg[key] = z.mib(f"{at}.memcg.{key}", mib)
        if vm.memcg.vmm_overhead_kib:
            memcg["vmm_overhead_kib"] = -(-vm.memcg.vmm_overhead_kib // z.f)


def _scale_shared(
    raw: dict[str, Any], sc: Scenario, z: _Sizer, mfk: int | None, *, memory: bool = True
) -> None:
    """Scale the host, swap and page-cache sections of a scenario mapping in place (``sc``:
    a parsed scenario with the same sections; ``mfk``: the full-size min_free_kbytes to pin,
    or None to pin the one ``sc``'s host derives; ``memory``: scale host.memory_mib, unless a
    plan searches it)."""
    host = raw.setdefault("host", {})
    if memory:
        host["memory_mib"] = z.mib("host.memory_mib", sc.host.memory_mib, min_pages=MIN_HOST_PAGES)
    full = sc.host.watermarks().min_free_kbytes if mfk is None else mfk
    host["min_free_kbytes"] = round(full / z.f)
    if full % z.f:
        z.notes.append(f"host.min_free_kbytes {full} / {z.f} rounded to {round(full / z.f)}")
    swap = raw.setdefault("swap", {})
    swap["size_mib"] = z.mib("swap.size_mib", sc.swap.size_mib)
    swap["queue_depth"] = z.count("swap.queue_depth", sc.swap.queue_depth)
    swap["nr_requests"] = z.count("swap.nr_requests", sc.swap.nr_requests)
    if sc.host_files is not None:
        sections = raw["host_files"] if isinstance(raw["host_files"], list) else [raw["host_files"]]
        many = isinstance(raw["host_files"], list)
        for k, (rf, hf) in enumerate(zip(sections, sc.file_sections(), strict=True)):
            at = f"host_files[{k}]" if many else "host_files"
            rf["size_mib"] = z.mib(f"{at}.size_mib", hf.size_mib, min_pages=1)
            rf["access_rate_per_s"] = z.rate(f"{at}.access_rate_per_s", hf.access_rate_per_s)


def _watermark_line(full: HostConfig, scaled: HostConfig, factor: int, notes: list[str]) -> str:
    """The watermarks of both hosts as fractions of memory; a note where they differ."""
    fw, sw = full.watermarks(), scaled.watermarks()
    fp, sp = full.pages(full.memory_mib), scaled.pages(scaled.memory_mib)
    pairs = [(fw.min, sw.min), (fw.low, sw.low), (fw.high, sw.high)]
    worst = max(abs(s * factor - f) / f for f, s in pairs if f)
    if worst > 0.05:
        notes.append(
            f"watermarks differ from full size by up to {worst:.0%} of their value (whole "
            "pages); the scaled host keeps a different share of its memory free"
        )
    if sw.high - sw.low < SWAP_CLUSTER_MAX:
        notes.append(
            f"the low-high watermark gap is {sw.high - sw.low} pages, less than one reclaim "
            f"batch (SWAP_CLUSTER_MAX = {SWAP_CLUSTER_MAX}); kswapd overshoots the high "
            "watermark relatively more than at full size"
        )
    pct = "/".join(f"{100 * w / fp:.3f}" for w in (fw.min, fw.low, fw.high))
    spct = "/".join(f"{100 * w / sp:.3f}" for w in (sw.min, sw.low, sw.high))
    return (
        f"Watermarks min/low/high: full size {fw.min}/{fw.low}/{fw.high} of {fp} pages "
        f"({pct}%), scaled {sw.min}/{sw.low}/{sw.high} of {sp} ({spct}%)."
    )


def scale_scenario(
    scenario: Scenario | dict[str, Any], factor: int, source: str = "config"
) -> Scaled:
    """The scenario (parsed, or its raw mapping) scaled down by ``factor`` (module docstring).

    Refused, as one-line ConfigErrors: a factor that is not an integer >= 1, a size that does
    not divide into whole pages, a VM or working set left with fewer than MIN_VM_PAGES pages,
    a host with fewer than MIN_HOST_PAGES, a trace workload.
    """
    f = check_factor(factor)
    if isinstance(scenario, Scenario):
        sc, raw = scenario, scenario.model_dump(mode="json")
    else:
        raw = copy.deepcopy(scenario)
        sc = parse_scenario(copy.deepcopy(raw), source)
    return _with_fix(lambda g, probe: _scale_scenario(sc, raw, g, source, probe), f)


def _scale_scenario(
    sc: Scenario, raw: dict[str, Any], f: int, source: str, probe: bool
) -> Scaled | _Sizer:
    """Scale ``raw`` (parsed as ``sc``); a probe returns its sizer, with every size recorded."""
    raw = copy.deepcopy(raw)
    z = _Sizer(f, source, thp=sc.host.thp is not None, probe=probe)
    _scale_shared(raw, sc, z, None)
    for i, vm in enumerate(sc.vms):
        _scale_vm(raw["vms"][i], vm, z, f"vms[{i}]")
    raw["name"] = f"{sc.name}-div{f}"
    if probe:
        return z
    out = parse_scenario(copy.deepcopy(raw), f"{source} scaled by {f}")
    wm = _watermark_line(sc.host, out.host, f, z.notes)
    return Scaled(raw, f, source, "scenario", z.notes, wm)


def scale_plan(path: Path, factor: int) -> Scaled:
    """A plan file scaled down by ``factor``: its base (inlined as a mapping), its profile or
    mix, a searched size and its SLO (stall fractions through :func:`stall_down`, faults/s
    / factor). Searches of host memory or overcommit need ``host.min_free_kbytes`` pinned in
    the base: each candidate's derived watermarks grow as the square root of its memory, which
    one scaled value cannot follow."""
    f = check_factor(factor)
    return _with_fix(lambda g, probe: _scale_plan(path, g, probe), f)


def _scale_plan(path: Path, f: int, probe: bool) -> Scaled | _Sizer:
    """Scale the plan file at ``path``; a probe returns its sizer, with every size recorded."""
    from sim.plan import PlanSpec, load_plan
    from sim.sweep import load_base, read_spec

    source = shown_path(path)
    plan = load_plan(path)
    raw, spec = read_spec(path, PlanSpec)
    raw = copy.deepcopy(raw)
    base = load_base(path, spec.base)
    sc = plan.scenario(plan.values[0], plan.seeds[0], source)
    z = _Sizer(f, source, thp=sc.host.thp is not None, probe=probe)
    mfk: int | None = None
    if plan.variable in ("host.memory_mib", "overcommit"):
        host = base.get("host") or {}
        if host.get("min_free_kbytes") is None:
            raise ConfigError(
                f"{source}: search.variable {plan.variable}: each candidate host derives its "
                "min_free_kbytes from its own memory (as its square root), which one scaled "
                "value cannot follow; pin base.host.min_free_kbytes, or scale a plan searching "
                "vms or memcg.max_mib"
            )
        mfk = int(host["min_free_kbytes"])
    searched = plan.variable in ("host.memory_mib", "overcommit")
    _scale_shared(base, sc, z, mfk, memory=not searched)
    if plan.mix is None:
        for i, vm in enumerate(sc.vms):
            _scale_vm(base["vms"][i], vm, z, f"base.vms[{i}]")
        if plan.variable == "memcg.max_mib":
            for vm in plan.limited(base):
                vm.get("memcg", {}).pop("max_mib", None)
    else:
        written = [("profile", raw["profile"])] if spec.profile is not None else []
        written += [(f"mix[{i}].vm", item["vm"]) for i, item in enumerate(raw.get("mix") or [])]
        for (where, vm_raw), (vm, _) in zip(written, plan.mix, strict=True):
            resolved = copy.deepcopy(vm)
            try:
                parsed = VmConfig.model_validate(resolved)
            except Exception as exc:  # validated with the plan: only a bug gets here
                raise ConfigError(f"{source}: {where}: {exc}") from None
            _scale_vm(vm_raw, parsed, z, where)
    base.pop("seed", None)
    base.pop("name", None)
    raw["base"] = base
    search = raw["search"]
    if plan.variable in ("host.memory_mib", "memcg.max_mib"):
        least = MIN_HOST_PAGES if plan.variable == "host.memory_mib" else 0
        for key in ("low", "high", "step"):
            if search.get(key) is not None:
                need = least if key != "step" else 0
                search[key] = z.mib(f"search.{key}", int(search[key]), min_pages=need)
    slo = raw["slo"]
    if plan.metric in STALL_METRICS:
        slo["max"] = round(stall_down(float(slo["max"]), f), 9)
    elif plan.metric in RATE_METRICS:
        slo["max"] = round(float(slo["max"]) / f, 9)
    raw["name"] = f"{plan.name}-div{f}"
    if probe:
        return z
    full_host = sc.host  # the first candidate's
    # the first candidate's host has page_size_kib: 2048 expanded into its thp already
    scaled = {k: v for k, v in base["host"].items() if k != "page_size_kib"}
    scaled_host = HostConfig.model_validate(
        {**sc.host.model_dump(), **scaled, "memory_mib": max(sc.host.memory_mib // f, 1)}
    )
    wm = _watermark_line(full_host, scaled_host, f, z.notes)
    if plan.metric == "stall_window_p99" or plan.metric == "stall_window_max":
        z.notes.append(
            f"slo {plan.metric}: each window holds 1/{f} of the faults, so the tail over "
            "windows is noisier than at full size and the converted SLO is conservative"
        )
    return Scaled(raw, f, source, "plan", z.notes, wm)


def scale_file(path: Path, factor: int) -> Scaled:
    """A scenario or plan file scaled down by ``factor`` (plans are told by their ``search``)."""
    check_factor(factor)
    raw = read_yaml(path)
    if "search" in raw:
        return scale_plan(path, factor)
    if "base" in raw:
        raise ConfigError(
            f"{shown_path(path)}: a sweep file; scale its base scenario (memsim scale BASE) "
            "and point the sweep at the result"
        )
    raw = resolve_paths(raw, path.parent)
    raw.setdefault("name", path.stem)
    return scale_scenario(raw, factor, shown_path(path))

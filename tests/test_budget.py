"""Sizes that cannot fit fail fast (before anything is allocated), with how much they need;
and commands refuse options they would ignore, so results say what was run."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sim import budget
from sim.budget import estimate_run, fmt_bytes, parse_size
from sim.cli import main
from sim.config import parse_scenario
from sim.errors import UserError
from tests.conftest import TINY


@pytest.fixture(autouse=True)
def _no_limit_left_behind() -> Any:
    """--max-memory sets a process-wide limit: every test starts and ends without one."""
    budget.set_memory_limit(None)
    yield
    budget.set_memory_limit(None)


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def _exit_2(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def test_parse_size() -> None:
    assert parse_size("512M") == 512 << 20
    assert parse_size("4G") == 4 << 30
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("2t") == 2 << 40
    assert parse_size("1048576") == 1 << 20
    for bad in ("", "x", "-1G", "0", "4Q", "1k"):
        with pytest.raises(UserError, match="--max-memory"):
            parse_size(bad)
    assert fmt_bytes(3 << 29) == "1.5 GiB"
    assert fmt_bytes(300 << 20) == "300 MiB"


# shadow paging, whichever way the KVM config spells it
SHADOW = {"mmu": "shadow"}


def test_estimate_grows_with_every_size() -> None:
    base = parse_scenario({**TINY})
    small = estimate_run(base).total
    for change in (
        {"host": {"memory_mib": 64}},
        {"vms": [{**TINY["vms"][0], "memory_mib": 64}]},
        {"vms": [{**TINY["vms"][0], "count": 40}]},
        {"vms": [{**TINY["vms"][0], "vcpus": 16}]},
        {"output": {"chunk_rows": 1 << 20}},
        {"reclaim": {"policy": "random"}},
        {"kvm": {**SHADOW, "shadow_sptes_per_gfn": 8}},
        {"reclaim": {"policy": "opt", "trigger": "demand"}},
    ):
        assert estimate_run(parse_scenario({**TINY, **change})).total > small, change
    assert estimate_run(base, {"t": 10**6}).total > small


def test_the_largest_host_is_refused_with_what_it_needs(tmp_path: Path) -> None:
    """The documented maximum host (64 TiB) validates as a config but cannot run here."""
    cfg = _write(tmp_path, TINY)
    sets = ["--set", "host.memory_mib=67108864", "--set", "vms.0.memory_mib=67108864"]
    for cmd in ("validate", "run"):
        line = _exit_2(cmd, str(cfg), *sets, *(["-q"] if cmd == "run" else []))
        assert "needs about" in line
        assert "needs about 780 GiB of memory (" in line
        assert "host frames" in line
        assert "available" in line
    assert list(tmp_path.iterdir()) == [cfg]


def test_max_memory_limits_run_validate_sweep_and_plan(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {**TINY, "duration_s": 0.01})
    out = tmp_path / "out"
    line = _exit_2("run", str(cfg), "-q", "--out", str(out), "--max-memory", "32M")
    assert "allowed by --max-memory" in line
    assert not out.exists()
    r = CliRunner().invoke(main, ["validate", str(cfg), "--max-memory", "4G"])
    assert r.exit_code == 0, r.output
    assert "memory about" in r.output
    sweep = _write(
        tmp_path, {"base": {**TINY, "duration_s": 0.01}, "seeds": [1, 2, 3, 4]}, "sweep.yaml"
    )
    one = budget.estimate_run(parse_scenario(TINY)).total
    limit = f"{(one * 3 // 2) >> 20}M"  # one run fits, two at once do not
    line = _exit_2("sweep", str(sweep), "--workers", "2", "--max-memory", limit, "--out", str(out))
    assert "running 2 runs at once needs about" in line
    assert not out.exists()
    plan = {
        "base": {**TINY, "duration_s": 0.01, "vms": []},
        "profile": {k: v for k, v in TINY["vms"][0].items() if k != "count"},
        "search": {"variable": "vms", "low": 1, "high": 4},
        "slo": {"metric": "stall_mean_p99_vms", "max": 0.05},
    }
    plan_path = _write(tmp_path, plan, "plan.yaml")
    line = _exit_2("plan", str(plan_path), "--max-memory", "16M", "--out", str(out))
    assert "its largest run needs about" in line
    assert "--max-memory 'lots'" in _exit_2("validate", str(cfg), "--max-memory", "lots")


def test_npy_header_claiming_2_to_the_40_entries_allocates_nothing(tmp_path: Path) -> None:
    import gzip

    buf = io.BytesIO()
    header = {"descr": "<i8", "fortran_order": False, "shape": (2**40,)}
    np.lib.format.write_array_header_1_0(buf, header)
    p = tmp_path / "huge.npy.gz"
    p.write_bytes(gzip.compress(buf.getvalue() + b"\0" * 800))  # 100 entries really there
    line = _exit_2("replay", str(p), "--frames", "10", "--policy", "lru")
    assert "loading 1,099,511,627,776 accesses needs about" in line
    budget.set_memory_limit(1 << 40)  # let the header pass: then the data runs out
    line = _exit_2("replay", str(p), "--frames", "10", "--policy", "lru", "--max-memory", "64T")
    assert "claims 1,099,511,627,776 entries but the data ends after 100" in line


# -- results say what was run -----------------------------------------------------------------


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A small page trace: 400 pages, 4,000 accesses."""
    p = tmp_path / "t.npy"
    np.save(p, np.random.default_rng(0).integers(0, 400, 4000))
    return p


def _replay(trace: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["replay", str(trace), "--frames", "200", *args])


def test_replay_reports_the_policy_it_ran_and_refuses_what_it_ignores(trace: Path) -> None:
    r = _replay(
        trace, "--policy", "fifo", "--engine", "general", "--set", "reclaim.policy=fifo", "--json"
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["policy"] == "fifo"
    for args, needle in (
        (("--policy", "two_list", "--set", "reclaim.policy=fifo"), "conflicts with --policy"),
        (("--policy", "two_list", "--set", "reclaim={policy: fifo}"), "conflicts with --policy"),
        (("--policy", "two_list", "--set", "reclaim.trigger=watermark"), "demand mode"),
        (("--policy", "two_list", "--set", "host.memory_mib=4"), "replay does not use it"),
        (("--policy", "two_list", "--set", "vms.0.vcpus=2"), "replay does not use it"),
        (("--policy", "lru", "--engine", "fast", "--set", "kvm.ept_ad_bits=false"), "general"),
        (("--policy", "lru", "--page-size", "8192"), "--page-size: a .npy trace"),
        (("--policy", "lru", "--instructions"), "--instructions: only lackey"),
        (("--policy", "lru", "--format", "csv", "--instructions"), "is read as csv"),
    ):
        r = _replay(trace, *args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_replay_with_more_frames_than_pages_allocates_only_the_pages(trace: Path) -> None:
    """The general engine never needs more frames than the trace has pages."""
    r = _replay(trace, "--policy", "two_list", "--engine", "general", "--json")
    small = json.loads(r.output)
    r = CliRunner().invoke(
        main,
        ["replay", str(trace), "--frames", str(10**15), "--policy", "two_list", "--json"],
    )
    assert r.exit_code == 0, r.output
    big = json.loads(r.output)
    assert big["evictions"] == 0
    assert big["faults"] == big["distinct_pages"] == small["distinct_pages"]


def test_mrc_refuses_options_it_would_ignore(tmp_path: Path, trace: Path) -> None:
    args = ["mrc", str(trace), "--policies", "lru", "--out", str(tmp_path / "m")]
    assert "--sizes: only for the policies" in _exit_2(*args, "--sizes", "10,20")
    assert "--engine: only for the policies" in _exit_2(*args, "--engine", "fast")
    assert not (tmp_path / "m").exists()


def test_a_trace_workload_refuses_instructions_its_format_lacks(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.arange(10))
    wl = {"type": "trace", "path": "t.npy", "instructions": True}
    cfg = _write(tmp_path, {**TINY, "vms": [{"name": "a", "memory_mib": 8, "workload": wl}]})
    assert "instructions: only lackey traces" in _exit_2("validate", str(cfg))


def test_mrc_caps_the_sizes(trace: Path) -> None:
    sizes = ",".join(str(i) for i in range(1, 1002))
    assert "at most 1,000" in _exit_2("mrc", str(trace), "--sizes", sizes)


def test_the_prefault_fill_is_in_the_estimate() -> None:
    """The fill ranks every prefaulted VM's touched pages at once: its peak (traced) stays
    under the estimate, and the estimate counts it."""
    import tracemalloc

    from sim.budget import estimate_run
    from sim.config import parse_scenario
    from sim.engine import World

    vm = {"name": "g", "count": 4, "memory_mib": 256, "working_set_mib": 192, "prefault": True}
    raw = {
        "name": "pf",
        "duration_s": 0.01,
        "host": {"memory_mib": 512},
        "swap": {"size_mib": 1024},
        "vms": [vm],
    }
    sc = parse_scenario(raw)
    cold = parse_scenario({**raw, "vms": [{**vm, "prefault": False}]})
    est = estimate_run(sc)
    assert dict(est.parts)["prefault ranking"] == 56 * 4 * 192 * 256
    tracemalloc.start()
    try:
        World(sc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < est.total
    assert est.total > estimate_run(cold).total


def test_the_page_cache_is_in_the_estimate() -> None:
    """Every host_files section's pages cost their flags, pfn and dirtied-at stamp."""
    from sim.budget import estimate_run
    from sim.config import parse_scenario

    raw = {
        "name": "pc",
        "duration_s": 0.01,
        "host": {"memory_mib": 64},
        "reclaim": {"policy": "two_list"},
        "vms": [{"name": "g", "memory_mib": 32}],
        "host_files": [{"size_mib": 16}, {"size_mib": 48}],
    }
    parts = dict(estimate_run(parse_scenario(raw)).parts)
    assert parts["page cache"] == 13 * 64 * 256

"""``memsim scale``: the arithmetic of the rule, its refusals, the command, and the property
that matters: a world and its scaled-down version agree on what the rule says it preserves
(faults per access, swap-outs per access, resident share, and the stall-to-compute ratio
times the factor), within the tolerances measured here and stated in the README."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sim.cli import main
from sim.config import load_scenario, parse_scenario
from sim.engine import run_scenario
from sim.errors import ConfigError
from sim.plan import load_plan
from sim.scale import (
    MIN_HOST_PAGES,
    scale_file,
    scale_plan,
    scale_scenario,
    stall_down,
    stall_up,
)

REPO = Path(__file__).resolve().parent.parent


def _quickstart() -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "configs/quickstart.yaml").read_text())
    return raw


def test_sizes_rates_and_queue_divide_and_watermarks_keep_their_fractions() -> None:
    raw = _quickstart()
    full = parse_scenario(copy.deepcopy(raw))
    out = scale_scenario(raw, 8)
    sc = parse_scenario(out.raw)
    assert sc.host.memory_mib == 64
    assert sc.swap.size_mib == 128
    assert [vm.memory_mib for vm in sc.vms] == [24, 24]
    assert [vm.access_rate_per_s for vm in sc.vms] == [31250, 31250]
    assert (sc.swap.queue_depth, sc.swap.nr_requests) == (4, 32)
    assert [vm.count for vm in sc.vms] == [2, 2]
    assert [vm.vcpus for vm in sc.vms] == [2, 2]
    assert sc.duration_s == full.duration_s
    # the kernel's own min_free_kbytes for 64 MiB would keep sqrt(8) times the share free
    fw, sw = full.host.watermarks(), sc.host.watermarks()
    assert sc.host.min_free_kbytes == round(fw.min_free_kbytes / 8)
    for a, b in ((fw.min, sw.min), (fw.low, sw.low), (fw.high, sw.high)):
        assert abs(b * 8 - a) / a < 0.02
    derived = parse_scenario({**out.raw, "host": {"memory_mib": 64}}).host.watermarks()
    assert derived.min > 2 * sw.min
    assert raw == _quickstart(), "the input mapping is not changed"


def test_a_parsed_scenario_scales_like_its_mapping() -> None:
    raw = _quickstart()
    a = parse_scenario(scale_scenario(raw, 4).raw)
    b = parse_scenario(scale_scenario(parse_scenario(copy.deepcopy(raw)), 4).raw)
    assert a.model_dump() == b.model_dump()


def test_memcg_phases_and_page_cache_scale() -> None:
    raw = {
        "duration_s": 1.0,
        "host": {"memory_mib": 4096},
        "swap": {"size_mib": 8192},
        "vms": [
            {
                "name": "a",
                "memory_mib": 2048,
                "working_set_mib": 1536,
                "memcg": {
                    "max_mib": 1024,
                    "low_mib": 512,
                    "swap_max_mib": 256,
                    "vmm_overhead_kib": 10000,
                },
                "workload": {
                    "type": "phases",
                    "phases": [
                        {"duration_s": 1, "offset_mib": 512, "working_set_mib": 1024},
                        {"duration_s": 1, "workload": {"type": "scan"}},
                    ],
                },
            }
        ],
        "host_files": {"size_mib": 512, "access_rate_per_s": 1000},
    }
    sc = parse_scenario(scale_scenario(raw, 2).raw)
    vm = sc.vms[0]
    assert (sc.host.memory_mib, sc.swap.size_mib, vm.memory_mib, vm.working_set_mib) == (
        2048,
        4096,
        1024,
        768,
    )
    assert vm.memcg is not None
    assert (vm.memcg.max_mib, vm.memcg.low_mib, vm.memcg.swap_max_mib) == (512, 256, 128)
    assert vm.memcg.vmm_overhead_kib == 5000
    ph = vm.workload.phases  # type: ignore[union-attr]
    assert (ph[0].offset_mib, ph[0].working_set_mib, ph[0].duration_s) == (256, 512, 1)
    assert sc.file_sections()[0].size_mib == 256
    assert sc.file_sections()[0].access_rate_per_s == 500
    small = {"duration_s": 1.0, "host": {"memory_mib": 64}, "vms": [{"name": "a"}]}
    small["vms"][0]["memory_mib"] = 64
    with pytest.raises(ConfigError, match=r"host.memory_mib: 64 MiB / 32 leaves 512 pages of 4"):
        scale_scenario(small, 32)
    with pytest.raises(
        ConfigError,
        match=r"swap.size_mib: 8192 MiB / 3 is not a whole number of MiB; use a smaller "
        r"factor \(--factor 2 scales every size\)",
    ):
        scale_scenario({**raw, "host": {"memory_mib": 6144}}, 3)


def test_guest_ram_with_thp_scales_to_whole_2mib_blocks() -> None:
    raw = {
        "duration_s": 1.0,
        "host": {"memory_mib": 4096, "page_size_kib": 2048},
        "swap": {"size_mib": 8192},
        "vms": [{"name": "a", "memory_mib": 2052}],
    }
    sc = parse_scenario(scale_scenario(raw, 2).raw)
    assert (sc.host.memory_mib, sc.vms[0].memory_mib) == (2048, 1026)
    assert sc.host.thp is not None
    with pytest.raises(
        ConfigError,
        match=r"vms\[0\]\.memory_mib: 2052 MiB / 4 is not a whole number of 2 MiB THP blocks; "
        r"use a smaller factor \(--factor 2 scales every size\)",
    ):
        scale_scenario(raw, 4)  # 513 MiB: without THP it would be fine
    no_thp = {**raw, "host": {"memory_mib": 4096}}
    assert parse_scenario(scale_scenario(no_thp, 4).raw).vms[0].memory_mib == 513


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        (0, "--factor: expected an integer from 1"),
        (2.5, "--factor: expected an integer from 1"),
        (True, "--factor: expected an integer from 1"),
        (
            5,
            r"host.memory_mib: 512 MiB / 5 is not a whole number of MiB; use a smaller factor "
            r"\(--factor 4 scales every size\)",
        ),
        (
            128,
            r"vms\[0\].memory_mib: 192 MiB / 128 is not a whole number of MiB; use a smaller "
            r"factor \(--factor 64 scales every size\)",
        ),
    ],
)
def test_refusals_are_one_line_and_name_the_field(factor: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        scale_scenario(_quickstart(), factor)
    assert "\n" not in str(err.value)


def test_too_few_pages_are_refused_with_the_largest_factor_that_works() -> None:
    raw = _quickstart()
    one = {**raw, "host": {"memory_mib": 768}, "vms": [{"name": "v", "memory_mib": 192}]}
    with pytest.raises(
        ConfigError,
        match=r"vms\[0\]\.memory_mib: 192 MiB / 192 leaves 256 pages "
        r"of 4 KiB, fewer than the 256|--factor 64 scales",
    ):
        scale_scenario(one, 192)
    with pytest.raises(ConfigError, match=r"host\.memory_mib: 512 MiB / 256 leaves 512 pages"):
        scale_scenario({**raw, "vms": [{"name": "v", "memory_mib": 512}]}, 256)
    assert MIN_HOST_PAGES == 1024
    trace = {
        **raw,
        "vms": [
            {
                "name": "t",
                "memory_mib": 64,
                "workload": {"type": "trace", "path": str(REPO / "traces/x.npy")},
            }
        ],
    }
    with pytest.raises(ConfigError, match=r"vms\[0\]\.workload: a trace's pages"):
        scale_scenario(trace, 2)


def test_stall_conversion_is_the_stall_to_compute_ratio() -> None:
    for s in (0.0, 0.001, 0.1, 0.5, 0.9):
        for f in (1, 8, 32):
            assert stall_up(stall_down(s, f), f) == pytest.approx(s, abs=1e-12)
            if s:
                x = s / (1 - s)
                y = stall_down(s, f) / (1 - stall_down(s, f))
                assert y == pytest.approx(x / f)


def test_a_plan_scales_its_base_mix_and_slo() -> None:
    out = scale_plan(REPO / "configs/plan_fullsize.yaml", 32)
    assert out.kind == "plan"
    base = out.raw["base"]
    assert base["host"] == {"memory_mib": 2048, "min_free_kbytes": 1024}
    assert base["swap"]["size_mib"] == 4096
    assert base["swap"]["queue_depth"] == 2
    web, db = (item["vm"] for item in out.raw["mix"])
    assert (web["memory_mib"], web["working_set_mib"], web["access_rate_per_s"]) == (128, 64, 3125)
    assert db["working_set_mib"] == 96
    assert out.raw["search"] == {"variable": "vms", "low": 16, "high": 40}
    assert out.raw["slo"]["max"] == pytest.approx(stall_down(0.1, 32), abs=1e-9)
    assert stall_up(out.raw["slo"]["max"], 32) == pytest.approx(0.1, abs=1e-7)


def test_the_fix_names_the_largest_factor_that_scales_every_size_of_a_plan() -> None:
    # 64 GiB host, 4 GiB guests with 2 and 3 GiB working sets: by 1024 the 3 GiB working set
    # is 768 pages and the guests 1024; no larger factor below 2**20 divides them all
    with pytest.raises(ConfigError, match=r"--factor 1024 scales every size\)$"):
        scale_plan(REPO / "configs/plan_fullsize.yaml", (1 << 20) - 1)
    assert (
        scale_plan(REPO / "configs/plan_fullsize.yaml", 1024).raw["mix"][1]["vm"]["working_set_mib"]
        == 3
    )


def test_a_scaled_plan_validates_and_a_memory_search_needs_pinned_watermarks(
    tmp_path: Path,
) -> None:
    target = tmp_path / "p.yaml"
    target.write_text(scale_plan(REPO / "configs/plan_fullsize.yaml", 16).yaml())
    plan = load_plan(target)
    assert plan.scenario(plan.values[0], 1).host.memory_mib == 4096
    spec = yaml.safe_load((REPO / "configs/plan_consolidation.yaml").read_text())
    spec["search"] = {
        "variable": "host.memory_mib",
        "low": 1024,
        "high": 4096,
        "step": 512,
        "vms": 4,
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="pin base.host.min_free_kbytes"):
        scale_plan(tmp_path / "m.yaml", 2)
    spec["base"]["host"]["min_free_kbytes"] = 4000
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    out = scale_plan(tmp_path / "m.yaml", 2)
    assert out.raw["search"] == {
        "variable": "host.memory_mib",
        "low": 512,
        "high": 2048,
        "step": 256,
        "vms": 4,
    }
    assert out.raw["base"]["host"]["min_free_kbytes"] == 2000
    (tmp_path / "m2.yaml").write_text(out.yaml())
    assert load_plan(tmp_path / "m2.yaml").values[0] == 2048


def test_cli_writes_atomically_with_a_header_and_refuses_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "qs8.yaml"
    args = ["scale", str(REPO / "configs/quickstart.yaml"), "--factor", "8", "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert text.startswith("# Scaled down by 'memsim scale --factor 8' from ")
    assert "s_full = 8x / (1 + 8x)" in text
    sc = load_scenario(out)
    assert sc.name == "quickstart-div8"
    assert sc.host.memory_mib == 64
    assert [p.name for p in tmp_path.iterdir()] == ["qs8.yaml"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2
    assert "add --force" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    for bad in (["--factor", "0"], ["--factor", "x"], ["--factor", "7"]):
        r = CliRunner().invoke(main, ["scale", str(REPO / "configs/quickstart.yaml"), *bad])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert "Traceback" not in r.output
    r = CliRunner().invoke(
        main, ["scale", str(REPO / "configs/plan_fullsize.yaml"), "--factor", "32"]
    )
    assert r.exit_code == 0
    assert "name: plan_fullsize-div32" in r.output


def test_a_sweep_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "x.yaml", "seeds": [1]}))
    with pytest.raises(ConfigError, match="a sweep file; scale its base scenario"):
        scale_file(tmp_path / "s.yaml", 2)


# --------------------------------------------------------------------------------------------
# the property: full size and scaled agree on what the rule preserves

WORKLOADS: dict[str, dict[str, Any]] = {
    "uniform": {"type": "uniform"},
    "hotcold": {"type": "hotcold", "hot_fraction": 0.25, "hot_access_fraction": 0.9},
    "zipf": {"type": "zipf", "alpha": 0.9},
    "scan": {"type": "scan"},
}


def world(workload: dict[str, Any], seed: int = 1) -> dict[str, Any]:
    """Two prefaulted 96 MiB guests using 80 MiB each on a 128 MiB host (1.25x their working
    sets), measured for 1 s after a 1 s warm-up."""
    return {
        "name": f"eq-{workload['type']}",
        "seed": seed,
        "duration_s": 2.0,
        "warmup_s": 1.0,
        "host": {"memory_mib": 128},
        "reclaim": {"policy": "two_list"},
        "swap": {"size_mib": 256, "queue_depth": 32},
        "output": {"evictions": False, "faults": False, "timeline": False},
        "vms": [
            {
                "name": "g",
                "count": 2,
                "memory_mib": 96,
                "vcpus": 2,
                "working_set_mib": 80,
                "access_rate_per_s": 50_000,
                "prefault": True,
                "workload": workload,
            }
        ],
    }


def preserved(raw: dict[str, Any], factor: int) -> dict[str, float]:
    """The figures the rule preserves, read from the run's summary after its warm-up; the
    stall-to-compute ratio multiplied back by ``factor``."""
    s = run_scenario(parse_scenario(copy.deepcopy(raw)), None).summary
    v = s["host"]["vmstat_after_warmup"]
    vms = s["vms"]
    accesses = sum(vm["accesses"] for vm in vms)
    pages = sum(vm["memory_pages"] for vm in vms)
    return {
        "major_per_access": v.get("pgmajfault", 0) / accesses,
        "pswpout_per_access": v.get("pswpout", 0) / accesses,
        "resident_share": sum(vm["resident_pages"] for vm in vms) / pages,
        "stall_x": factor * sum(vm["stall_ns"] for vm in vms) / sum(vm["compute_ns"] for vm in vms),
    }


# measured (seed 1): the largest relative difference of each figure, scaled vs full size, over
# uniform, hotcold and scan at factors 4 and 8; Zipf(0.9) separately (README table)
TOLERANCE = {"major_per_access": 0.15, "pswpout_per_access": 0.15, "stall_x": 0.15}
ZIPF_TOLERANCE = 0.35  # Zipf's head: fewer pages, a smaller share for the top ones


def _agree(name: str, factor: int) -> None:
    raw = world(WORKLOADS[name])
    full = preserved(raw, 1)
    small = preserved(scale_scenario(raw, factor).raw, factor)
    assert small["resident_share"] == pytest.approx(full["resident_share"], abs=0.01)
    for key, tol in TOLERANCE.items():
        if name == "zipf":
            # the bias has a sign: the scaled guest misses more, never less
            assert full[key] * 0.97 <= small[key] <= full[key] * (1 + ZIPF_TOLERANCE), key
        else:
            assert small[key] == pytest.approx(full[key], rel=tol), (key, full, small)


@pytest.mark.parametrize("name", ["uniform", "hotcold"])
def test_full_size_and_scaled_by_4_agree(name: str) -> None:
    _agree(name, 4)


@pytest.mark.slow
@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_full_size_and_scaled_agree_on_every_workload(name: str, factor: int) -> None:
    _agree(name, factor)

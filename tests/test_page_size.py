"""``host.page_size_kib: 2048``: THP-backed guest RAM simulated in 2 MiB pages.

The page becomes 2 MiB everywhere (frames, gfns, sptes, swap slots, working sets, traces), the
watermarks keep the kernel's bytes to within one huge page, first touch and swap I/O pay for
the bytes they move, and sizes that are not whole huge pages are one-line config errors. The
4 KiB default is unchanged (tests/test_determinism.py holds its results).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.config import parse_scenario
from sim.costs import CostsConfig
from sim.engine import World, build_world
from sim.errors import ConfigError
from sim.guest.workloads import AccessStream, TraceConfig
from sim.host.memory import PTE_PRESENT, setup_per_zone_wmarks
from sim.host.swap import SwapConfig, SwapDevice
from tests.conftest import TINY, run_checked, tiny

HUGE = 2 << 20
BASE = 4 << 10

# Big enough that 2 MiB pages still overcommit: a 32-frame host, two 32-page guests.
SIZES: dict[str, Any] = {
    "host__memory_mib": 64,
    "swap__size_mib": 256,
    "vms__0__memory_mib": 64,
}


def _huge(**changes: Any) -> Any:
    return tiny(**{**SIZES, "host__page_size_kib": 2048, **changes})


@pytest.mark.parametrize("trigger", ["watermark", "demand"])
def test_2mib_scenario_runs_with_every_invariant(trigger: str) -> None:
    sc = _huge(
        duration_s=0.2 if trigger == "watermark" else 0.001,
        reclaim={"policy": "two_list", "trigger": trigger},
    )
    w = build_world(sc, None)
    run_checked(w, 5_000_000)
    s = w.summary(0.0)
    assert s["host"]["page_size_kib"] == 2048
    assert s["host"]["memory_pages"] == 32
    assert s["host"]["pswpout"] > 0  # the guests (64 pages) do not fit: it swapped
    assert sum(v["faults"]["major"] for v in s["vms"]) > 0
    assert all(v["memory_pages"] == 32 for v in s["vms"])


@pytest.mark.parametrize("policy", ["mglru", "clock", "lru"])
def test_every_kind_of_policy_reclaims_2mib_pages(policy: str) -> None:
    w = World(_huge(duration_s=0.2, reclaim={"policy": policy}))
    run_checked(w, 5_000_000)
    assert w.vmscan.pmd_mapped  # no look-around from a PMD-mapped THP
    resident = w.mem.pfn[(w.mem.flags & PTE_PRESENT) != 0]
    assert w.vmscan.lookaround(int(resident[0])).size == 0
    assert w.summary(0.0)["host"]["pswpout"] > 0


def test_page_counts_are_1_512_of_the_4kib_ones() -> None:
    small, huge = World(tiny(**SIZES)), World(_huge())
    assert small.nr_frames == 512 * huge.nr_frames == 64 * 256
    assert small.mem.nr_pages == 512 * huge.mem.nr_pages
    assert small.swap.nr_slots == 512 * huge.swap.nr_slots
    assert len(small.spte) == 512 * len(huge.spte)
    for a, b in zip(small.vms, huge.vms, strict=True):
        assert a.mm.nr_pages == 512 * b.mm.nr_pages
        assert a.vcpus[0].stream.regions[0].size == 512 * b.vcpus[0].stream.regions[0].size


def test_phase_regions_and_working_sets_convert_at_the_page_size() -> None:
    phases = {
        "type": "phases",
        "phases": [{"duration_s": 1.0, "offset_mib": 4, "working_set_mib": 10}],
    }
    sc = _huge(vms__0__workload=phases, vms__0__working_set_mib=32)
    stream = World(sc).vms[0].vcpus[0].stream
    region = stream.regions[0]
    assert (region.offset, region.size) == (2, 5)
    g, _ = stream.next(10_000)
    assert g.min() >= 2
    assert g.max() < 7


@pytest.mark.parametrize("memory_mib", [64, 512, 2048, 16384, 1 << 20])
@pytest.mark.parametrize("scale", [1, 10, 100])
@pytest.mark.parametrize("mfk", [None, 1000, 65536])
def test_watermarks_in_bytes_match_the_4kib_ones_within_one_huge_page(
    memory_mib: int, scale: int, mfk: int | None
) -> None:
    base = setup_per_zone_wmarks(memory_mib * 256, mfk, scale)
    huge = setup_per_zone_wmarks(memory_mib // 2, mfk, scale, page_shift=21)
    assert huge.min_free_kbytes == base.min_free_kbytes
    for level in ("min", "low", "high"):
        b, h = getattr(base, level) * BASE, getattr(huge, level) * HUGE
        assert 0 <= h - b < HUGE, (level, b, h)  # rounded up: never fewer bytes kept free


def test_a_world_uses_the_huge_page_watermarks() -> None:
    w = World(_huge(host__memory_mib=4096))
    assert w.mem.wmark == setup_per_zone_wmarks(2048, page_shift=21)
    assert w.mem.wmark.high < setup_per_zone_wmarks(4096 * 256).high  # counted in huge pages


def _trace_stream(path: Path, page_shift: int, vm_pages: int = 64, **cfg: Any) -> AccessStream:
    return AccessStream(
        TraceConfig(path=str(path), **cfg),
        vm_pages=vm_pages,
        working_set_pages=vm_pages,
        access_rate_per_s=1_000_000,
        write_ratio=0.0,
        vcpu=0,
        nr_vcpus=1,
        rng=np.random.default_rng(0),
        page_shift=page_shift,
    )


def _dense(keys: list[int]) -> list[int]:
    order: dict[int, int] = {}
    return [order.setdefault(k, len(order)) for k in keys]


def test_a_trace_maps_addresses_to_2mib_gfns(tmp_path: Path) -> None:
    addrs = [0x7F00_0000_1000, 0x7F00_0020_0000, 0x7F00_001F_F000, 0x1000, 0x7F00_0040_0008]
    p = tmp_path / "t.csv"
    p.write_text("addr\n" + "\n".join(hex(a) for a in addrs) + "\n")
    g, _ = _trace_stream(p, 21).next(len(addrs))
    assert g.tolist() == _dense([a >> 21 for a in addrs]) == [0, 1, 0, 2, 3]
    g4, _ = _trace_stream(p, 12).next(len(addrs))
    assert g4.tolist() == _dense([a >> 12 for a in addrs]) == [0, 1, 2, 3, 4]


def test_a_trace_of_4kib_page_numbers_merges_into_2mib_pages(tmp_path: Path) -> None:
    pages = np.array([0, 511, 512, 5, 1024, 1535], dtype=np.int64)
    p = tmp_path / "t.npy"
    np.save(p, pages)
    g, _ = _trace_stream(p, 21).next(len(pages))
    assert g.tolist() == _dense((pages >> 9).tolist()) == [0, 0, 1, 0, 2, 2]


def test_an_access_crossing_4kib_inside_a_2mib_page_touches_it_once(tmp_path: Path) -> None:
    p = tmp_path / "t.lackey"
    p.write_text(" L 00000ffc,8\n S 001ffffc,8\n")  # crosses 4 KiB; crosses 2 MiB
    small = _trace_stream(p, 12).next(4)
    huge = _trace_stream(p, 21).next(3)
    assert small[0].tolist() == [0, 1, 2, 3]  # 0x0, 0x1, 0x1ff, 0x200 (4 KiB pages)
    assert huge[0].tolist() == [0, 0, 1]  # 2 MiB pages 0; 0, 1
    assert huge[1].tolist() == [False, True, True]


def test_a_trace_too_big_for_the_vm_names_the_memory_in_mib(tmp_path: Path) -> None:
    p = tmp_path / "t.npy"
    np.save(p, np.arange(0, 5 * 512, 512, dtype=np.int64))  # five 2 MiB pages
    with pytest.raises(Exception, match="5 distinct pages but the VM has 4; .* at least 10"):
        _trace_stream(p, 21, vm_pages=4)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"host__memory_mib": 65}, "host.memory_mib: 65 "),
        ({"swap__size_mib": 255}, "swap.size_mib: 255 "),
        ({"vms__0__memory_mib": 63}, "vms[0].memory_mib: 63 "),
        ({"vms__0__working_set_mib": 7}, "vms[0].working_set_mib: 7 "),
        (
            {
                "vms__0__workload": {
                    "type": "phases",
                    "phases": [{"duration_s": 1.0, "offset_mib": 3, "working_set_mib": 8}],
                }
            },
            "vms[0].workload.phases[0].offset_mib: 3 ",
        ),
    ],
)
def test_sizes_must_be_whole_huge_pages(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _huge(**changes)
    msg = str(exc.value)
    assert field in msg
    assert "multiple of the 2 MiB page" in msg
    assert "\n" not in msg
    assert "host.page_size_kib" in msg
    tiny(**{**SIZES, **changes})  # fine with 4 KiB pages


def test_bad_page_size_and_odd_sizes_exit_2_on_the_command_line(tmp_path: Path) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "host": {"memory_mib": 9}}))
    r = CliRunner().invoke(main, ["validate", str(cfg), "--set", "host.page_size_kib=1024"])
    assert r.exit_code == 2
    assert "host.page_size_kib" in r.output
    assert "4 or 2048" in r.output
    r = CliRunner().invoke(main, ["validate", str(cfg), "--set", "host.page_size_kib=2048"])
    assert r.exit_code == 2
    assert "host.memory_mib: 9 is not a multiple" in r.output
    assert "use 8 or 10" in r.output
    r = CliRunner().invoke(
        main,
        ["validate", str(cfg), "--set", "host.page_size_kib=2048", "--set", "host.memory_mib=8"],
    )
    assert r.exit_code == 0
    assert "pages of 2048 KiB" in r.output


def test_first_touch_zeroes_the_whole_page() -> None:
    c = CostsConfig()
    assert c.for_page_size(BASE) == c  # 4 KiB: unchanged
    assert c.for_page_size(HUGE).first_touch_ns == c.first_touch_ns + 511 * c.clear_page_ns
    w = World(_huge())
    assert w.vms[0].vcpus[0].costs.first_touch_ns == c.for_page_size(HUGE).first_touch_ns


def test_a_huge_swap_io_moves_its_bytes_over_a_shared_link() -> None:
    cfg = SwapConfig(latency_cv=0.0, read_latency_us=80, read_bandwidth_mib_per_s=2048)
    base = SwapDevice(cfg, 8, np.random.default_rng(0))
    assert base.submit(0, write=False, n=2) == [80_000, 80_000]  # parallel, no transfer term
    huge = SwapDevice(cfg, 8, np.random.default_rng(0), page_bytes=HUGE)
    xfer = round((HUGE - BASE) * 1e9 / (2048 << 20))
    assert huge.transfer_ns[False] == xfer
    # both accesses overlap; the second transfer waits for the first on the link
    assert huge.submit(0, write=False, n=2) == [80_000 + xfer, 80_000 + 2 * xfer]
    assert huge.busy_ns == 2 * (80_000 + xfer)
    assert huge.wait_ns == xfer


def test_4kib_stays_the_default_and_is_recorded() -> None:
    sc = parse_scenario(dict(TINY))
    assert (sc.host.page_size_kib, sc.host.page_shift, sc.host.pages(3)) == (4, 12, 768)
    w = World(sc)
    assert w.swap.transfer_ns == {False: 0, True: 0}
    assert not w.vmscan.pmd_mapped
    assert w.costs == sc.costs
    assert w.summary(0.0)["host"]["page_size_kib"] == 4

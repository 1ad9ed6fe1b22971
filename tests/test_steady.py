"""Steady-state starts (``vms[].prefault``), the warm-up (``warmup_s``) and the tails over
time (``metrics.window_ms``, fault-latency percentiles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import World, run_scenario
from sim.errors import ConfigError
from sim.guest.workloads import _coprime_stride
from sim.host.memory import PAGE_SIZE, PG_SWAP, PTE_PRESENT
from sim.host.zpool import Zpool
from sim.plan import SloSpec
from sim.prefault import _store, heat
from sim.tails import VcpuTime, tail
from tests.conftest import run_checked
from tests.test_invariants import scenarios


def _raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "steady",
        "seed": 3,
        "duration_s": 0.2,
        "host": {"memory_mib": 32},
        "swap": {"size_mib": 128},
        "metrics": {"window_ms": 20},
        "vms": [
            {
                "name": "db",
                "memory_mib": 64,
                "vcpus": 2,
                "access_rate_per_s": 300_000,
                "workload": {"type": "hotcold", "hot_fraction": 0.25, "hot_access_fraction": 0.95},
            }
        ],
    }
    raw.update(over)
    return raw


def _prefaulted(**over: Any) -> dict[str, Any]:
    raw = _raw(**over)
    raw["vms"] = [{**vm, "prefault": True} for vm in raw["vms"]]
    return raw


# -- windows and percentiles, by hand -----------------------------------------------------------


def test_windows_split_every_stretch_exactly_at_the_boundaries() -> None:
    """Two vCPUs over three 100 ns windows: [0, 150) stall then [150, 250) compute on one,
    [90, 210) compute on the other; the last window ends at the horizon (250)."""
    t = VcpuTime(1, horizon_ns=250, window_ns=100)
    t.add(0, 0, 150, True)
    t.add(0, 150, 400, False)  # past the horizon: clipped to 250
    t.add(0, 90, 210, False)
    assert t.stall[0].tolist() == [100, 50, 0]
    assert t.compute[0].tolist() == [10, 150, 60]
    fr = t.fractions(t.stall, t.compute, 0, warmup_ns=0)
    assert fr.tolist() == pytest.approx([100 / 110, 50 / 200, 0.0])
    # windows that begin at or after the warm-up: 100 -> windows 1 and 2; 101 -> window 2
    assert t.fractions(t.stall, t.compute, 0, warmup_ns=100).tolist() == pytest.approx([0.25, 0])
    assert len(t.fractions(t.stall, t.compute, 0, warmup_ns=101)) == 1


def test_in_flight_stretches_are_added_to_a_copy() -> None:
    t = VcpuTime(2, horizon_ns=1000, window_ns=300)
    stall, compute = t.at([(1, (250, 650, True))])
    assert stall[1].tolist() == [50, 300, 50, 0]
    assert not t.stall.any()
    assert not compute.any()


def test_tail_is_numpys_percentiles() -> None:
    """1..100: p50 = 50.5 and p99 = 99.01 by linear interpolation, max 100."""
    got = tail(np.arange(1, 101))
    assert got == {"p50": 50.5, "p99": pytest.approx(99.01), "max": 100.0}
    rng = np.random.default_rng(0)
    x = rng.lognormal(10, 1, 997)
    got = tail(x)
    assert got["p99"] == pytest.approx(float(np.percentile(x, 99)))
    assert tail([]) == {"p50": None, "p99": None, "max": None}


# -- the windows of a run -------------------------------------------------------------------------


def test_windows_of_a_run_match_the_timeline_and_add_up(tmp_path: Path) -> None:
    """With timeline samples at the window boundaries, each window's stall is the difference
    of two samples of the VM's stall: two independent paths to the same numbers."""
    raw = _raw(engine={"sample_interval_ms": 20}, warmup_s=0.04)
    sc = parse_scenario(raw, "t")
    out = tmp_path / "run"
    res = run_scenario(sc, out, command=[])
    tl = pd.read_parquet(out / "timeline.parquet")
    tl = tl.assign(vm=tl.vm.astype(str)).sort_values("t_ns")
    stall = tl[tl.vm == "db"].set_index("t_ns").stall_ns
    w = World(sc)
    w.run()
    w.check()  # the windows add up to each VM's stall and compute
    s, c = w.accrual.at(w._in_flight(int(w.env.now)))
    by_timeline = np.diff([*stall.loc[range(0, 200_000_001, 20_000_000)[:-1]], s[0].sum()])
    assert s[0].tolist() == by_timeline.tolist()
    assert s[0][2:].sum() == res.summary["vms"][0]["stall_ns"]  # after the 40 ms warm-up
    fr = s[0][2:] / (s[0][2:] + c[0][2:])
    v = res.summary["vms"][0]
    assert v["stall_window"]["windows"] == 8
    assert v["stall_window"]["p99"] == pytest.approx(float(np.percentile(fr, 99)))
    assert v["stall_window"]["max"] == pytest.approx(float(fr.max()))


def test_fault_latencies_are_the_logs_after_the_warmup(tmp_path: Path) -> None:
    sc = parse_scenario(_raw(warmup_s=0.05), "t")
    res = run_scenario(sc, tmp_path / "run", command=[])
    log = pd.read_parquet(tmp_path / "run" / "faults.parquet")
    log = log[log.t_ns >= 50_000_000]
    for kind in ("first_touch", "major"):
        lat = log[log.kind.astype(str) == kind].latency_ns.to_numpy()
        assert len(lat) > 10, kind
        want = {k: pytest.approx(float(v)) for k, v in tail(lat).items()}
        assert res.summary["vms"][0]["fault_latency_ns"][kind] == want
        assert res.summary["host"]["fault_latency_ns"][kind] == want
    off = parse_scenario({**_raw(warmup_s=0.05), "output": {"faults": False}}, "t")
    same = run_scenario(off, tmp_path / "nolog", command=[]).summary
    assert same["host"]["fault_latency_ns"] == res.summary["host"]["fault_latency_ns"]


# -- the warm-up ----------------------------------------------------------------------------------


def test_warmup_is_left_out_of_every_guest_figure_and_vmstat_after_warmup() -> None:
    sc = parse_scenario(_raw(warmup_s=0.1), "t")
    w = World(sc)
    w.run()
    s = w.summary(0.0)
    snap = w.at_warmup
    assert snap is not None
    v, b = s["vms"][0], snap["vms"][0]
    st = w.vms[0].stats
    assert v["faults"] == {k: n - b["faults"][k] for k, n in st.faults.items()}
    assert v["faults"]["first_touch"] < b["faults"]["first_touch"]  # the fault-in is before
    assert v["accesses"] == st.accesses - b["accesses"]
    assert v["major_faults_per_s"] == pytest.approx(v["faults"]["major"] / 0.1)
    after = s["host"]["vmstat_after_warmup"]
    assert after["pswpout"] == s["host"]["vmstat"]["pswpout"] - snap["vmstat"]["pswpout"]
    assert 0 < after["pgfault"] < s["host"]["vmstat"]["pgfault"]
    assert s["warmup_ns"] == 100_000_000


def test_without_warmup_the_summary_is_whole_run() -> None:
    w = World(parse_scenario(_raw(), "t"))
    w.run()
    s = w.summary(0.0)
    assert s["host"]["vmstat_after_warmup"] == s["host"]["vmstat"]
    assert s["vms"][0]["faults"] == w.vms[0].stats.faults
    assert s["vms"][0]["stall_window"]["windows"] == 10


# -- prefault -------------------------------------------------------------------------------------


def test_prefault_places_the_hot_set_above_the_high_watermark() -> None:
    """64 MiB of guest on 32 MiB: the hot quarter (16 MiB) is resident, free memory is just
    above the high watermark, what did not fit is in swap with its slots, nothing counted."""
    w = World(parse_scenario(_prefaulted(), "t"))
    w.check()
    mem, vm = w.mem, w.vms[0]
    size = vm.mm.nr_pages
    hot = (np.arange(round(size * 0.25)) * _coprime_stride(size)) % size
    present = (mem.flags & PTE_PRESENT) != 0
    assert present[hot].all()
    assert mem.nr_free == mem.wmark.high + 1
    assert int(present.sum()) == mem.nr_frames - mem.nr_free
    swapped = (mem.flags & PG_SWAP) != 0
    assert int(swapped.sum()) == int(mem.nr_swapped[0]) == w.swap.nr_slots - w.swap.nr_free_slots
    assert swapped.sum() > 0
    assert not (swapped & present).any()
    assert not any(w.vmstat.values())
    assert vm.mmu.pf_fixed == 0
    assert int((vm.mmu.spte & 1).sum()) == int(present.sum())
    w.run()
    w.check()


def test_prefault_without_swap_leaves_the_rest_untouched() -> None:
    w = World(parse_scenario(_prefaulted(swap={"size_mib": 0}), "t"))
    w.check()
    assert w.mem.nr_swapped.sum() == 0
    assert w.mem.nr_free == w.mem.wmark.high + 1


def test_prefault_removes_the_first_touch_storm(tmp_path: Path) -> None:
    """The first window of a cold start is spent faulting pages in; a prefaulted start's is
    not (numbers from the two runs, same seed)."""
    first: dict[str, Any] = {}
    for name, raw in (("cold", _raw()), ("warm", _prefaulted())):
        res = run_scenario(parse_scenario(raw, name), tmp_path / name, command=[])
        log = pd.read_parquet(tmp_path / name / "faults.parquet")
        early = log[(log.t_ns < 20_000_000) & (log.kind.astype(str) == "first_touch")]
        first[name] = (len(early), res.summary["vms"][0]["stall_window"]["max"])
    assert first["cold"][0] > 1000
    assert first["warm"][0] * 20 < first["cold"][0]
    assert first["warm"][1] < first["cold"][1]


def test_prefault_keeps_default_runs_bit_identical(tmp_path: Path) -> None:
    """prefault: false on every VM is the default: the same run, byte for byte."""
    a = run_scenario(parse_scenario(_raw(), "t"), tmp_path / "a", command=[])
    raw = _raw()
    raw["vms"] = [{**vm, "prefault": False} for vm in raw["vms"]]
    b = run_scenario(parse_scenario(raw, "t"), tmp_path / "b", command=[])
    for t in ("faults", "timeline", "evictions"):
        assert (tmp_path / "a" / f"{t}.parquet").read_bytes() == (
            tmp_path / "b" / f"{t}.parquet"
        ).read_bytes()
    assert json.dumps(a.summary["vms"]) == json.dumps(b.summary["vms"])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"warmup_s": 0.2}, "warmup_s: 0.2 s is not shorter than duration_s"),
        ({"warmup_s": -1}, "warmup_s: must be at least 0"),
        ({"metrics": {"window_ms": 0}}, "metrics.window_ms: must be at least 0.01 ms"),
        ({"duration_s": 4000, "metrics": {"window_ms": 1}}, "metrics.window_ms: 1 ms"),
        (
            {"reclaim": {"policy": "lru", "trigger": "demand"}, "warmup_s": 0.1},
            "warmup_s: demand mode",
        ),
    ],
)
def test_bad_steady_input_is_one_line(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        parse_scenario(_raw(**change), "t")
    assert "\n" not in str(err.value)


def test_prefault_in_demand_mode_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"vms\[0\].prefault: needs watermark reclaim"):
        parse_scenario(_prefaulted(reclaim={"policy": "lru", "trigger": "demand"}), "t")


def _swapped(w: World) -> np.ndarray:
    return np.flatnonzero((w.mem.flags & PG_SWAP) != 0)


def test_prefault_with_a_memcg_starts_under_memory_max_and_the_rest_in_swap() -> None:
    """memory.max 8 MiB (2048 pages) on a VM whose hot quarter is 16 MiB: its 2048 hottest
    pages are resident and charged, memory.swap.max 4 MiB (1024 pages) of the rest start in
    swap (the warmest), charged to memory.swap.current; what is left is untouched."""
    raw = _prefaulted()
    raw["vms"][0]["memcg"] = {"max_mib": 8, "swap_max_mib": 4}
    w = World(parse_scenario(raw, "t"))
    w.check()
    assert w.memcg is not None
    assert w.memcg.usage(0) == int(w.mem.nr_resident[0]) == 8 * 256
    assert int(w.memcg.swap_usage[0]) == len(_swapped(w)) == 4 * 256
    assert w.mem.nr_free > w.mem.wmark.high + 1  # the cap, not the host, stopped the fill
    assert not any(w.vmstat.values())
    h = heat(w, 0, w.sc.vms[0])
    resident = np.flatnonzero((w.mem.flags & PTE_PRESENT) != 0)
    swapped = _swapped(w)
    assert h[resident].min() > h[swapped].max()  # hottest resident, the next warmest in swap
    untouched = np.setdiff1d(np.flatnonzero(h > 0), np.concatenate((resident, swapped)))
    assert h[swapped].min() > h[untouched].max()
    assert run_checked(w, every_ns=20_000_000) >= 10
    s = w.summary(0.0)["vms"][0]["memcg"]
    assert s["current_pages"] <= s["max_pages"] + 2  # at most one page per vCPU over


def test_prefault_with_memory_high_and_an_unlimited_neighbour() -> None:
    """memory.high 6 MiB holds the capped VM to 1536 pages; its unlimited neighbour takes the
    host's remaining room above the high watermark."""
    raw = _prefaulted()
    vm = raw["vms"][0]
    raw["vms"] = [{**vm, "name": "capped", "memcg": {"high_mib": 6, "max_mib": 8}}, {**vm}]
    w = World(parse_scenario(raw, "t"))
    w.check()
    assert int(w.mem.nr_resident[0]) == 6 * 256
    assert w.mem.nr_free == w.mem.wmark.high + 1
    assert int(w.mem.nr_resident[1]) == w.mem.nr_frames - w.mem.nr_free - 6 * 256
    assert run_checked(w, every_ns=20_000_000) >= 10


def test_prefault_with_zram_stores_the_swapped_pages_in_the_pool() -> None:
    """Every page that starts swapped is in zram's pool, whose frames (the bytes of its
    objects, rounded up to pages) come out of the room above the high watermark."""
    w = World(parse_scenario(_prefaulted(swap={"size_mib": 128, "device": "zram"}), "t"))
    w.check()
    pool, mem = w.swap.zpool, w.mem
    assert pool is not None
    swapped = _swapped(w)
    assert len(swapped) > 0
    assert pool.stored[swapped].all()
    assert pool.nr_stored == len(swapped)
    page = PAGE_SIZE
    assert mem.nr_pool == -(-int(pool.obj_bytes[swapped].sum()) // page) > 0
    assert mem.nr_free == mem.wmark.high + 1
    assert int(mem.nr_resident.sum()) + mem.nr_pool == mem.nr_frames - mem.nr_free
    assert not any(w.vmstat.values())
    assert run_checked(w, every_ns=20_000_000) >= 10
    assert w.vmstat["pswpin"] > 0
    assert w.vmstat["pgmajfault"] > 0


@pytest.mark.parametrize("as_is", [True, False])
def test_prefault_with_zswap_fills_the_pool_to_its_limit_and_spills_to_the_device(
    as_is: bool,
) -> None:
    """zswap at 10% of a 32 MiB host (819 pages): the fill stores the oldest evictions first,
    so the pool filled, rejected the rest of that reclaim batch, and its shrink worker sent
    the oldest entries to the device down to the accept threshold, again and again: the
    newest (warmest) evictions are in the pool and the pool ends between the accept threshold
    and its limit. Pages that do not compress are in the pool with the rest (6.18+), or, with
    ``store_incompressible: false``, on the device."""
    zs = {"enabled": True, "max_pool_percent": 10, "store_incompressible": as_is}
    w = World(parse_scenario(_prefaulted(swap={"size_mib": 128, "zswap": zs}), "t"))
    w.check()
    pool, zswap, mem = w.swap.zpool, w.swap.zswap, w.mem
    assert pool is not None
    assert zswap is not None
    assert not any(w.vmstat.values())
    swapped = _swapped(w)
    stored, disk = swapped[pool.stored[swapped]], swapped[~pool.stored[swapped]]
    assert len(stored) > 0
    assert len(disk) > 0
    assert zswap.accept_thr_pages <= mem.nr_pool <= zswap.max_pages
    # above the high watermark, short of it by less than the pool's hysteresis (one resident
    # page fewer can let the shrink worker drop the pool from its limit to the threshold)
    hysteresis = zswap.max_pages - zswap.accept_thr_pages
    assert mem.wmark.high < mem.nr_free <= mem.wmark.high + 1 + hysteresis
    assert int(mem.nr_resident.sum()) + mem.nr_pool == mem.nr_frames - mem.nr_free
    h = heat(w, 0, w.sc.vms[0])
    poor = pool.obj_bytes[swapped] >= PAGE_SIZE
    assert poor.any()
    if as_is:  # every page is stored alike: the pool holds the newer (warmer) evictions, but
        # for those of the batches that found it full (rejected to the device)
        assert np.median(h[stored]) > np.median(h[disk])
        assert pool.nr_incompressible() > 0
    else:  # the pool holds the newest evictions, but for the batches' pages it rejected
        assert not pool.stored[swapped[poor]].any()
        warm = swapped[~poor]
        assert pool.stored[warm[np.argmax(h[warm])]]
        compressible = pool.obj_bytes[disk] < PAGE_SIZE
        assert np.median(h[stored]) > np.median(h[disk[compressible]])
    assert pool.lru_order()[0] == stored[np.argmin(h[stored])]  # its LRU tail: the coldest
    assert run_checked(w, every_ns=20_000_000) >= 10
    assert w.vmstat["zswpin"] > 0


def test_the_old_plan_metric_name_says_the_new_one() -> None:
    with pytest.raises(ValueError, match="stall_p99 was renamed stall_mean_p99_vms"):
        SloSpec.model_validate({"metric": "stall_p99", "max": 0.05})


@settings(max_examples=8)
@given(scenarios(), st.floats(0.0, 0.9), st.sampled_from([0.5, 3.0, 100.0]))
def test_invariants_hold_after_the_fill_and_throughout(
    raw: dict[str, Any], warm: float, window_ms: float
) -> None:
    """Random small worlds, every VM prefaulted (disk, zram or zswap; page cache or not), with
    a warm-up and windows: every invariant right after the fill and every simulated
    millisecond (the windows adding up included).
    Not ``pswpin <= pswpout``: pages the fill placed in swap were written before time 0."""
    raw = {
        **raw,
        "vms": [{**vm, "prefault": True} for vm in raw["vms"]],
        "warmup_s": round(warm * raw["duration_s"], 6),
        "metrics": {"window_ms": window_ms},
    }
    w = World(parse_scenario(raw))
    w.check()
    assert not any(w.vmstat.values())
    assert run_checked(w) >= 10
    s = w.summary(0.0)
    for v in s["vms"]:
        assert v["stall_ns"] >= 0
        assert all(n >= 0 for n in v["faults"].values())
    assert all(n >= 0 for n in s["host"]["vmstat_after_warmup"].values())


def test_the_fill_stores_into_zswap_as_reclaim_batches_would() -> None:
    """By hand: 1024 frames, max_pool_percent 1 (a 10-frame limit, accept threshold 9 frames),
    every page compressing 2:1 (two objects a frame). Pages 0..99, oldest eviction first, in
    batches of 32: the first batch stores 0..18 (19 objects: ceil(9.5) = 10 frames), finds the
    pool full at 19 and rejects the rest of the batch; the shrink worker writes back 0 (18
    objects, 9 frames: the accept threshold). Each later batch stores its first page (the pool
    is at the threshold again, so it accepts), is full at its second, and the oldest entry
    goes: 1, 2, 3. The pool ends with 4..18, 32, 64, 96 and "full"; nothing is counted in the
    run's vmstat."""
    raw = _raw(host={"memory_mib": 4}, swap={"size_mib": 64, "zswap": {"enabled": True}})
    raw["swap"]["zswap"]["max_pool_percent"] = 1
    raw["vms"][0] |= {"memory_mib": 16, "compress_ratio": 2.0, "compress_ratio_cv": 0.0}
    w = World(parse_scenario(raw, "t"))
    pool = w.swap.zpool
    assert pool is not None
    assert w.swap.zswap is not None
    assert (w.swap.zswap.max_pages, w.swap.zswap.accept_thr_pages) == (10, 9)
    scratch = Zpool(w.mem, pool.obj_bytes, track_lru=True)
    zswap = _store(w, scratch, np.arange(100, dtype=np.int64))
    assert zswap is not None
    assert zswap.reached_full
    assert scratch.lru_order() == [*range(4, 19), 32, 64, 96]
    assert scratch.frames_needed() == 9
    assert not any(w.vmstat.values())

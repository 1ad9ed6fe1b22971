"""The guest kernel's memory management (``vms[].guest``, sim/guest/kernel.py): guest RAM, the
guest's own LRU, kswapd and swap, and what the two levels cost each other."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import build_world
from sim.errors import ConfigError
from sim.guest.kernel import DOUBLE_PAGING, FALSE_SWAP_READS, STALE_SWAP_READS
from sim.host.memory import PG_RESIDENT, PG_SWAP, PTE_PRESENT
from tests.conftest import TINY, run_checked


def _raw(host_mib: int, ram_mib: int, footprint_mib: int, **guest: Any) -> dict[str, Any]:
    """One VM whose guest process has ``footprint_mib`` of anon memory in ``ram_mib`` of
    guest RAM, on a host of ``host_mib``."""
    raw = copy.deepcopy(TINY)
    raw["host"]["memory_mib"] = host_mib
    raw["duration_s"] = 0.08
    vm = raw["vms"][0]
    vm.update(count=1, memory_mib=ram_mib, vcpus=1, access_rate_per_s=1_000_000)
    vm["workload"] = {"type": "zipf", "alpha": 0.6}
    vm["guest"] = {"footprint_mib": footprint_mib, **guest}
    return raw


def _world(raw: dict[str, Any]) -> Any:
    w = build_world(parse_scenario(raw), None)
    run_checked(w, every_ns=5_000_000)
    return w


def test_a_footprint_over_guest_ram_makes_the_guest_swap_and_the_host_sees_none_of_it() -> None:
    w = _world(_raw(host_mib=32, ram_mib=8, footprint_mib=12))
    g = w.vms[0].guest
    gv = g.vmstat
    assert gv["pswpout"] > 0
    assert gv["pgmajfault"] > 0
    assert gv["pgscan_kswapd"] > 0
    assert g.mem.nr_free < g.mem.wmark.high * 2  # the guest keeps its RAM full
    # the host has room: no host reclaim, no host swap, nothing between the levels
    assert w.vmstat["pswpout"] == 0
    assert w.vmstat["pgscan_kswapd"] == 0
    assert dict(g.stats) == {FALSE_SWAP_READS: 0, STALE_SWAP_READS: 0, DOUBLE_PAGING: 0}
    # the host never backs more than guest RAM, however large the guest's footprint
    assert w.mem.nr_resident[0] <= w.vms[0].mm.nr_pages
    s = w.summary(0.0)["vms"][0]
    assert s["guest"]["pswpout"] == gv["pswpout"]
    assert s["guest_memory"]["total"] == g.nr_gfns == 8 * 256
    assert s["guest_memory"]["footprint"] == 12 * 256


def test_a_footprint_within_guest_ram_never_makes_the_guest_reclaim() -> None:
    w = _world(_raw(host_mib=5, ram_mib=8, footprint_mib=7))
    gv = w.vms[0].guest.vmstat
    assert gv["pswpout"] == gv["pgscan_kswapd"] == gv["pgscan_direct"] == 0
    # one first touch per page of the footprint touched, and no other guest fault
    touched = int(np.count_nonzero(w.vms[0].guest.mem.flags & PTE_PRESENT))
    assert gv["pgfault"] == touched > 6 * 256
    assert w.vmstat["pswpout"] > 0  # the host reclaims alone
    assert dict(w.vms[0].guest.stats)[DOUBLE_PAGING] == 0


def test_double_paging_needs_both_levels_reclaiming() -> None:
    both = _world(_raw(host_mib=6, ram_mib=8, footprint_mib=12))
    g = both.vms[0].guest
    assert g.vmstat["pswpout"] > 0
    assert both.vmstat["pswpout"] > 0
    assert g.stats[DOUBLE_PAGING] > 0
    # each double-paged write made the host read the gfn back: host swap-ins at least as many
    # as QEMU needed (the vCPU's own host faults add more)
    assert both.vmstat["pswpin"] >= g.stats[DOUBLE_PAGING]
    assert g.stats[DOUBLE_PAGING] <= g.vmstat["pswpout"]


def test_a_guest_read_into_a_gfn_the_host_swapped_is_a_stale_swap_read() -> None:
    w = build_world(parse_scenario(_raw(host_mib=6, ram_mib=8, footprint_mib=12)), None)
    w.start()
    w.env.run(until=40_000_000)
    g = w.vms[0].guest
    base = w.vms[0].mm.pid_base
    f = w.mem.flags[base : base + g.nr_gfns]
    gone = np.flatnonzero((f & (PG_RESIDENT | PG_SWAP)) == PG_SWAP)
    assert len(gone), "the host swapped some gfns out by now"
    gfn = int(gone[0])
    before, pswpin = g.stats[STALE_SWAP_READS], w.vmstat["pswpin"]
    proc = w.env.process(g._before_read([gfn]))
    w.env.run(until=proc)
    assert g.stats[STALE_SWAP_READS] == before + 1
    assert w.mem.flags[base + gfn] & PTE_PRESENT  # QEMU's pin mapped it on the host
    assert w.vmstat["pswpin"] >= pswpin + 1


def test_zeroing_a_gfn_the_host_swapped_is_a_false_swap_read() -> None:
    w = build_world(parse_scenario(_raw(host_mib=6, ram_mib=8, footprint_mib=12)), None)
    w.start()
    w.env.run(until=40_000_000)
    g = w.vms[0].guest
    base = w.vms[0].mm.pid_base
    f = w.mem.flags[base : base + g.nr_gfns]
    gone = int(np.flatnonzero((f & (PG_RESIDENT | PG_SWAP)) == PG_SWAP)[0])
    here = int(np.flatnonzero(f & PTE_PRESENT)[0])
    before = g.stats[FALSE_SWAP_READS]
    g.zeroed(here)
    assert g.stats[FALSE_SWAP_READS] == before
    g.zeroed(gone)
    assert g.stats[FALSE_SWAP_READS] == before + 1


def test_guest_accesses_set_the_guest_accessed_bits_its_reclaim_clears() -> None:
    w = build_world(parse_scenario(_raw(host_mib=32, ram_mib=8, footprint_mib=4)), None)
    w.start()
    w.env.run(until=5_000_000)
    g = w.vms[0].guest
    mapped = np.flatnonzero(g.mem.flags & PTE_PRESENT)
    assert len(mapped)
    assert (g.mem.flags[mapped] & 0x02).all()
    from sim.host.vmscan import ScanControl

    sc = ScanControl(nr_to_reclaim=1)
    pfns = g.mem.pfn[mapped[:10]].astype(np.int64)
    assert g.rmap.folio_referenced(pfns, sc).all()
    assert not g.rmap.folio_referenced(pfns, sc).any()  # tested and cleared


@pytest.mark.parametrize("tlb", [False, True])
def test_the_same_seed_gives_the_same_run(tlb: bool) -> None:
    def once() -> dict[str, Any]:
        raw = _raw(host_mib=6, ram_mib=8, footprint_mib=12)
        if tlb:
            raw["vms"][0]["guest_tlb"] = {"entries": 64, "ways": 4}
        w = build_world(parse_scenario(raw), None)
        w.run()
        return w.summary(0.0)["vms"]

    assert once() == once()


def test_guest_faults_are_logged_at_the_guest_level(tmp_path: Any) -> None:
    import json

    import pandas as pd

    from sim.engine import run_scenario

    raw = _raw(host_mib=6, ram_mib=8, footprint_mib=12)
    out = tmp_path / "out"
    run_scenario(parse_scenario(raw), out)
    faults = pd.read_parquet(out / "faults.parquet")
    kinds = faults["kind"].astype(str)
    assert {"guest_first_touch", "guest_major", "first_touch"} <= set(kinds)
    g = json.loads((out / "summary.json").read_text())["vms"][0]["guest"]
    # every guest fault once, at its own level (one may be in flight at the end)
    assert g["pgfault"] - 1 <= kinds.str.startswith("guest_").sum() <= g["pgfault"]
    assert (kinds == "guest_major").sum() <= g["pgmajfault"]
    # the guest's evictions have their own table; the host's log has only the host's
    gev = pd.read_parquet(out / "guest_evictions.parquet")
    assert set(gev["type"].astype(str)) == {"anon"}
    assert g["pswpout"] <= len(gev) <= g["pswpout"] + 64  # unmapped, then written
    assert gev["gfn"].between(0, 8 * 256 - 1).all()
    assert gev["page"].between(0, 12 * 256 - 1).all()


def test_the_guest_page_cache_drops_are_logged_at_the_guest_level(tmp_path: Any) -> None:
    import json

    import pandas as pd

    from sim.engine import run_scenario

    raw = _raw(host_mib=32, ram_mib=4, footprint_mib=1, file_mib=8)
    raw["vms"][0]["guest"]["swap"] = {"read_latency_us": 10}
    raw["duration_s"] = 0.3
    out = tmp_path / "out"
    run_scenario(parse_scenario(raw), out)
    g = json.loads((out / "summary.json").read_text())["vms"][0]["guest"]
    gev = pd.read_parquet(out / "guest_evictions.parquet")
    files = gev[gev["type"].astype(str) == "file"]
    assert len(files) == g["pgsteal_file"] > 0  # each drop once, where the guest counts it
    assert not files["dirty"].any()
    assert files["page"].between(0, 8 * 256 - 1).all()


@pytest.mark.parametrize(
    ("guest", "match"),
    [
        ({"reclaim": {"policy": "lru"}}, "not a kernel LRU"),
        ({"swap": {"device": "zram"}}, "only device disk"),
        ({"footprint_mib": 0}, "footprint_mib"),
    ],
)
def test_bad_guest_sections_are_one_line_errors(guest: dict[str, Any], match: str) -> None:
    raw = _raw(32, 8, 12)
    raw["vms"][0]["guest"] = guest
    with pytest.raises(ConfigError, match=match):
        parse_scenario(raw)


def test_guest_needs_watermark_reclaim_and_takes_a_guest_tlb() -> None:
    raw = _raw(32, 8, 12)
    raw["reclaim"] = {"policy": "two_list", "trigger": "demand"}
    with pytest.raises(ConfigError, match=r"vms\[0\]\.guest: needs watermark"):
        parse_scenario(raw)
    raw = _raw(32, 8, 12)
    raw["vms"][0]["guest_tlb"] = {}
    sc = parse_scenario(raw)
    assert sc.vms[0].guest is not None
    assert sc.vms[0].guest_tlb is not None
    raw = _raw(32, 8, 4)
    raw["vms"][0]["working_set_mib"] = 6
    with pytest.raises(ConfigError, match="guest.footprint_mib"):
        parse_scenario(raw)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host_mib=st.integers(4, 16),
    ram_mib=st.integers(4, 10),
    over=st.floats(0.5, 2.0),
    policy=st.sampled_from(["two_list", "mglru"]),
    cluster=st.sampled_from([0, 3]),
    vcpus=st.integers(1, 2),
    mmu=st.sampled_from(["tdp", "shadow"]),
    apf=st.sampled_from([0.0, 0.5]),
    file_mib=st.sampled_from([0, 4]),
    disk_cache=st.sampled_from(["none", "writeback", "writethrough"]),
    seed=st.integers(0, 50),
    tlb=st.sampled_from([None, (4, 1, 0), (16, 4, 50), (64, 4, 0)]),
)
def test_every_invariant_holds_at_both_levels(
    host_mib: int,
    ram_mib: int,
    over: float,
    policy: str,
    cluster: int,
    vcpus: int,
    mmu: str,
    apf: float,
    file_mib: int,
    disk_cache: str,
    seed: int,
    tlb: tuple[int, int, int] | None,
) -> None:
    """Random guests, with or without a TLB per vCPU, keep every invariant of both levels
    throughout (World.check: with a TLB, every cached translation is of a page the guest
    has, in its page table or page cache, at the gfn of the present spte it holds)."""
    raw = _raw(
        host_mib,
        ram_mib,
        max(1, round(ram_mib * over)),
        reclaim={"policy": policy},
        swap={"size_mib": 64, "page_cluster": cluster},
        file_mib=file_mib,
        disk_cache=disk_cache,
    )
    raw["seed"] = seed
    raw["duration_s"] = 0.03
    raw["kvm"] = {"mmu": mmu}
    raw["vms"][0].update(vcpus=vcpus, async_pf=apf)
    if tlb is not None:
        raw["vms"][0]["guest_tlb"] = dict(
            zip(("entries", "ways", "context_switch_us"), tlb, strict=True)
        )
    raw["vms"].append({"name": "plain", "memory_mib": 4, "access_rate_per_s": 500_000})
    w = _world(raw)
    g = w.vms[0].guest
    if tlb is not None:
        t = w.summary(0.0)["vms"][0]["guest_tlb"]
        assert t["hits"] + t["fills"] > 0
    # every guest page in exactly one state: untouched, mapped, in the swap cache, in swap
    f = g.mem.flags
    mapped = (f & PTE_PRESENT) != 0
    assert (~mapped | ((f & PG_RESIDENT) != 0)).all()
    assert not mapped[g.nr_anon :].any()  # page-cache pages are never mapped
    assert int(np.count_nonzero(f & PG_RESIDENT)) == g.mem.nr_frames - g.mem.nr_free
    # what the guest has mapped and the vCPUs reach, the host backs or can fault in; the
    # host never backs more than the VM's RAM
    assert w.mem.nr_resident[0] + w.mem.nr_swapped[0] <= w.vms[0].mm.nr_pages
    assert g.stats[DOUBLE_PAGING] <= g.vmstat["pswpout"]


def test_a_job_exit_frees_the_guest_memory_but_not_the_host_backing() -> None:
    raw = _raw(host_mib=32, ram_mib=8, footprint_mib=6, job={"run_s": 0.03, "idle_s": 0.02})
    raw["duration_s"] = 0.045
    w = build_world(parse_scenario(raw), None)
    w.start()
    w.env.run(until=29_000_000)
    g = w.vms[0].guest
    used = g.mem.nr_frames - g.mem.nr_free
    assert used > 1000
    w.env.run(until=31_000_000)  # the job exited at 30 ms: the guest's memory is all free
    assert g.mem.nr_free == g.mem.nr_frames
    assert g.stats["jobs_exited"] == 1
    backed = int(w.mem.nr_resident[0])
    assert backed >= used  # the host never learns of the free: it still backs every gfn
    accesses = w.vms[0].stats.accesses
    w.env.run(until=45_000_000)  # idle until 50 ms: the vCPU halts, no accesses
    assert w.vms[0].stats.accesses == accesses
    assert int(w.mem.nr_resident[0]) == backed
    assert g.mem.nr_free == g.mem.nr_frames
    w.check()


def test_a_new_job_zeroing_gfns_the_host_swapped_counts_false_swap_reads() -> None:
    raw = _raw(host_mib=6, ram_mib=8, footprint_mib=7, job={"run_s": 0.04, "idle_s": 0.0})
    raw["duration_s"] = 0.12
    w = _world(raw)
    g = w.vms[0].guest
    assert g.stats["jobs_exited"] == 2
    assert g.stats[FALSE_SWAP_READS] > 0
    assert g.vmstat["pswpout"] == 0  # the guest itself never swapped: all host work


def test_a_file_is_read_through_the_guest_page_cache() -> None:
    raw = _raw(host_mib=32, ram_mib=4, footprint_mib=1, file_mib=8)
    raw["vms"][0]["guest"]["swap"] = {"read_latency_us": 10}
    raw["duration_s"] = 0.3
    w = _world(raw)
    g = w.vms[0].guest
    v = g.vmstat
    assert v["pgpgin"] > 0  # page-cache misses read the virtual disk
    assert v["pgsteal_file"] > 0  # clean page-cache pages dropped by the guest's reclaim
    assert v["workingset_refault_file"] > 0  # and read again
    f = g.mem.flags[g.nr_anon : g.nr_vpages]
    assert not (f & PTE_PRESENT).any()  # read(): the page cache has no pte
    s = w.summary(0.0)["vms"][0]
    assert s["guest"]["pgpgin"] == v["pgpgin"]
    assert s["guest_memory"]["page_cache"] == int(np.count_nonzero(f & PG_RESIDENT))


def test_the_host_swapping_clean_guest_page_cache_is_silent_writes() -> None:
    raw = _raw(host_mib=6, ram_mib=8, footprint_mib=3, file_mib=8)
    raw["vms"][0]["guest"]["swap"] = {"read_latency_us": 10}
    raw["duration_s"] = 0.3
    w = _world(raw)
    g = w.vms[0].guest
    assert w.vmstat["pswpout"] > 0
    assert 0 < g.stats["silent_swap_writes"] <= w.vms[0].stats.accesses
    plain = _world(_raw(host_mib=6, ram_mib=8, footprint_mib=12))
    assert "silent_swap_writes" not in plain.vms[0].guest.stats  # no file, no such writes


def test_a_virtual_disk_on_the_host_swap_device_shares_its_queue() -> None:
    own = _world(_raw(host_mib=6, ram_mib=8, footprint_mib=12))
    raw = _raw(host_mib=6, ram_mib=8, footprint_mib=12, disk="host_swap")
    shared = _world(raw)
    g = shared.vms[0].guest
    assert g.swap._q is shared.swap._q  # one device: one queue
    assert g.swap.cfg.queue_depth == shared.swap.cfg.queue_depth
    # the host device now serves the guest's I/O too, and each level's counts stay its own
    assert shared.swap.busy_ns > own.swap.busy_ns
    assert g.vmstat["pswpout"] > 0
    assert shared.vmstat["pswpout"] > 0
    raw["swap"]["device"] = "zram"
    with pytest.raises(ConfigError, match="host_swap needs a disk"):
        parse_scenario(raw)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10**6),
    host_mib=st.integers(5, 20),
    ram_mib=st.integers(4, 10),
    footprint=st.integers(1, 12),
    file_mib=st.sampled_from([0, 3]),
    guest_swap=st.sampled_from([0, 16]),
    disk=st.sampled_from(["own", "host_swap"]),
    disk_cache=st.sampled_from(["none", "writeback", "writethrough"]),
    read_ahead_kb=st.sampled_from([0, 16, 128]),
    scan=st.booleans(),
    job=st.booleans(),
    target=st.one_of(st.none(), st.integers(1, 10)),
    reporting=st.booleans(),
    hint=st.booleans(),
    mom=st.booleans(),
    memcg=st.booleans(),
)
def test_every_guest_mechanism_together_keeps_every_invariant(
    seed: int,
    host_mib: int,
    ram_mib: int,
    footprint: int,
    file_mib: int,
    guest_swap: int,
    disk: str,
    disk_cache: str,
    read_ahead_kb: int,
    scan: bool,
    job: bool,
    target: int | None,
    reporting: bool,
    hint: bool,
    mom: bool,
    memcg: bool,
) -> None:
    """Guest reclaim, a page cache read ahead or not, jobs, the balloon with MOM, free page
    reporting and hinting, a shared disk, its image in the host page cache and a memcg at
    once: a run ends without error and every invariant of both levels holds throughout (a
    stale file-read registry once broke it: a read waits for its frame before it locks it)."""
    raw = _raw(
        host_mib,
        ram_mib,
        footprint,
        file_mib=file_mib,
        disk=disk,
        disk_cache=disk_cache,
        read_ahead_kb=read_ahead_kb,
    )
    raw.update(seed=seed, duration_s=0.1)
    if scan:  # a sequential reader: its file reads take the readahead windows
        raw["vms"][0]["workload"] = {"type": "scan"}
    g = raw["vms"][0]["guest"]
    g["swap"] = {"size_mib": guest_swap, "read_latency_us": 10}
    if job:
        g["job"] = {"run_s": 0.03, "idle_s": 0.01}
    balloon: dict[str, Any] = {"enabled": True, "stats_interval_s": 1, "deflate_on_oom": True}
    if target is not None:
        balloon["initial_target_mib"] = min(target, ram_mib)
    if reporting:
        balloon["free_page_reporting"] = {"enabled": True, "order": 3, "delay_ms": 10}
    if hint:  # a live migration mid-run borrows the guest's free 4 MiB blocks
        balloon["free_page_hint"] = {"enabled": True, "migrations_s": [0.02], "precopy_s": 0.05}
    raw["vms"][0]["balloon"] = balloon
    if memcg:
        raw["vms"][0]["memcg"] = {"max_mib": max(2, ram_mib - 2)}
    if mom:
        raw["mom"] = {
            "enabled": True,
            "interval_s": 1,
            "monitor_interval_s": 1,
            "sample_history_length": 1,
        }
    raw["vms"].append({"name": "plain", "memory_mib": 4, "access_rate_per_s": 500_000})
    w = _world(raw)
    w.summary(0.0)


def test_a_shuffled_guest_defeats_the_hosts_swap_readahead() -> None:
    """Decayed swap sequentiality: a sequential scan by the guest process is sequential on the
    host only if the guest's frames are handed out in order."""

    def readahead(shuffle: bool) -> tuple[int, int]:
        raw = _raw(host_mib=6, ram_mib=10, footprint_mib=8, shuffle=shuffle)
        raw["vms"][0].update(workload={"type": "scan"}, working_set_mib=8)
        raw["swap"] = {"size_mib": 64, "latency_cv": 0.0, "page_cluster": 3}
        raw["duration_s"] = 0.2
        w = _world(raw)
        return w.vmstat["swap_ra"], w.vmstat["swap_ra_hit"]

    ra, hit = readahead(False)
    assert ra > 1000
    assert hit > 0.9 * ra  # neighbouring gfns are the next pages of the scan
    _, hit_s = readahead(True)
    assert hit_s < 0.1 * hit  # scattered: nothing worth reading ahead


def test_shuffle_puts_every_frame_on_the_free_stack_in_random_order() -> None:
    w = build_world(parse_scenario(_raw(32, 8, 4, shuffle=True)), None)
    g = w.vms[0].guest
    free = g.mem.free_list()
    assert sorted(free.tolist()) == list(range(g.nr_gfns))
    assert (np.diff(free.astype(np.int64)) != -1).any()  # not in order
    g.mem.check()

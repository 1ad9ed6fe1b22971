"""Cluster swap readahead on a rotational device (``swap.rotational``): slot identities from the
kernel's cluster allocator, the aligned block ``swap_cluster_readahead`` reads, the global window
of ``swapin_nr_pages``, and worlds that read ahead by slot."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.host.fault import HostFaultHandler
from sim.host.swap import SWAPFILE_CLUSTER, SwapConfig, SwapDevice
from sim.host.swap_state import SwapClusterRa, swap_cluster_ra_block
from tests.conftest import TINY, run_checked, tiny
from tests.test_invariants import _check_random_world, scenarios


def _summary(**changes: Any) -> dict[str, Any]:
    w = World(tiny(**changes))
    run_checked(w)
    return w.summary(0.0)


def _scan(page_cluster: int, rotational: bool = True, **changes: Any) -> dict[str, Any]:
    """One VM scanning its RAM over and over, larger than the host's memory."""
    scan: dict[str, Any] = {
        "vms__0__count": 1,
        "vms__0__vcpus": 1,
        "vms__0__workload": {"type": "scan"},
        "vms__0__access_rate_per_s": 500_000,
    }
    return _summary(
        swap__page_cluster=page_cluster, swap__rotational=rotational, **{**scan, **changes}
    )


def test_rotational_false_is_todays_behaviour() -> None:
    base = _summary(swap__page_cluster=3)
    assert _summary(swap__page_cluster=3, swap__rotational=False) == base


def test_rotational_false_keeps_the_config_hash() -> None:
    """Results named by the hash before the field existed keep their directories."""
    assert tiny(swap__rotational=False).config_hash() == tiny().config_hash()
    assert tiny(swap__rotational=True).config_hash() != tiny().config_hash()


def test_zram_is_never_rotational() -> None:
    raw = {**TINY, "swap": {**TINY["swap"], "device": "zram", "rotational": True}}
    with pytest.raises(ConfigError) as exc:
        parse_scenario(raw, "tiny")
    assert "\n" not in str(exc.value)
    assert "rotational" in str(exc.value)


def test_a_sequential_scan_reads_ahead_by_slot_and_hits() -> None:
    on = _scan(3)
    vs = on["host"]["vmstat"]
    assert vs["swap_ra"] > 0
    assert 0 < vs["swap_ra_hit"] <= vs["swap_ra"]
    assert 0 <= vs["pswpin"] - vs["swap_ra"] - vs["pgmajfault"] <= 1  # one read in flight
    off = _scan(0)
    assert off["host"]["vmstat"]["swap_ra"] == off["host"]["vmstat"]["swap_ra_hit"] == 0
    assert on["vms"][0]["faults"]["major"] < off["vms"][0]["faults"]["major"]


def _device(nr_slots: int, nr_pages: int) -> SwapDevice:
    dev = SwapDevice(SwapConfig(rotational=True), nr_slots, np.random.default_rng(0))
    dev.track_slots(nr_pages)
    return dev


def test_the_allocator_gives_consecutive_slots_in_reclaim_order() -> None:
    """Non-full clusters before free ones (a device without discard): at swapon the header's
    cluster 0 and the partial last cluster are non-full, so they fill first, in order; slots
    freed behind the cursor are refilled when their cluster comes round again, before the
    free clusters 1 and 2 are opened."""
    c = SWAPFILE_CLUSTER
    last = 4 * c - 47  # si->max: slots 0 .. 4c - 48, the last cluster is partial
    dev = _device(4 * c - 48, 10_000)
    pids = np.arange(100, 100 + c + 88)
    assert dev.alloc_slots(len(pids), pids) == len(pids)
    want = np.concatenate([np.arange(1, c), np.arange(3 * c, 3 * c + 89)])
    assert np.array_equal(dev.page_slot[pids], want)  # cluster 0 after its header, then 3
    freed = pids[88:98]  # slots 89 .. 98, in cluster 0 (now full but for them)
    dev.free_slots(len(freed), freed)
    more = np.arange(1000, 1005)
    dev.alloc_slots(len(more), more)
    assert np.array_equal(dev.page_slot[more], np.arange(3 * c + 89, 3 * c + 94))
    rest = np.arange(2000, 2000 + dev.nr_free_slots)
    dev.alloc_slots(len(rest), rest)
    got = dev.page_slot[rest]
    n3 = last - (3 * c + 94)
    assert np.array_equal(got[:n3], np.arange(3 * c + 94, last))  # cluster 3 to its end
    assert np.array_equal(got[n3 : n3 + 10], np.arange(89, 99))  # the non-full cluster 0
    assert np.array_equal(got[n3 + 10 :], np.arange(c, 3 * c))  # then the free ones
    assert dev.nr_free_slots == 0
    assert dev.slot_owner[0] < 0
    swapped = np.concatenate([pids[:88], pids[98:], more, rest])
    dev.check_slots(swapped)


def test_the_block_is_aligned_and_skips_the_header() -> None:
    assert swap_cluster_ra_block(13, 8, 1000) == (8, 15)  # 13 & ~7, 13 | 7
    assert swap_cluster_ra_block(16, 8, 1000) == (16, 23)
    assert swap_cluster_ra_block(3, 8, 1000) == (1, 7)  # slot 0 is the swap header
    assert swap_cluster_ra_block(1001, 8, 1002) == (1000, 1002)  # not past si->max - 1
    assert swap_cluster_ra_block(13, 1, 1000) == (13, 13)
    assert swap_cluster_ra_block(13, 2, 1000) == (12, 13)


def test_the_global_window_grows_with_hits_whoever_made_them() -> None:
    """``swapin_nr_pages``: one state for every fault; hits (from any VM's readahead) since the
    last fault grow the next window, and without hits it decays by halves."""
    ra = SwapClusterRa()
    assert ra.nr_pages(1000, 3) == 1  # first fault, not adjacent
    assert ra.nr_pages(1001, 3) == 2  # adjacent to the last: 2
    ra.hits += 1  # VM a touches a page read ahead
    assert ra.nr_pages(5000, 3) == 4  # VM b's fault far away: 3 -> 4
    assert ra.prev_offset == 1001  # with hits the offset is not remembered
    ra.hits += 3
    assert ra.nr_pages(9000, 3) == 8
    ra.hits += 30
    assert ra.nr_pages(9001, 3) == 8  # capped at 1 << page_cluster
    assert [ra.nr_pages(o, 3) for o in (20_000, 30_000, 40_000, 50_000)] == [4, 2, 1, 1]
    assert ra.nr_pages(7, 0) == 1  # page_cluster 0: the state is untouched
    assert ra.last_pages == 1


def test_faults_read_other_vms_pages_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots are shared: a block around one VM's slot holds the pages reclaim swapped out next
    to it, of whatever VM; they are read into the swap cache and charged to their own memcg."""
    pairs: list[tuple[int, int]] = []
    real = HostFaultHandler._read_swap_cache_async

    def spy(self: HostFaultHandler, pid: int, cand: Any) -> Any:
        out = yield from real(self, pid, cand)
        pairs.extend((self.mem.page_owner(pid), self.mem.page_owner(p)) for p, _, _ in out)
        return out

    monkeypatch.setattr(HostFaultHandler, "_read_swap_cache_async", spy)
    s = _summary(
        swap__page_cluster=3,
        swap__rotational=True,
        vms=[
            {
                "name": "scan",
                "memory_mib": 8,
                "vcpus": 1,
                "access_rate_per_s": 500_000,
                "workload": {"type": "scan"},
                "memcg": {"max_mib": 7},
            },
            {
                "name": "zipf",
                "memory_mib": 8,
                "vcpus": 1,
                "access_rate_per_s": 50_000,
                "workload": {"type": "uniform"},
                "memcg": {},
            },
        ],
    )
    assert s["host"]["vmstat"]["swap_ra"] == len(pairs) > 0
    assert any(a != b for a, b in pairs), "no readahead crossed VMs"


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"swap__zswap": {"enabled": True, "max_pool_percent": 20}},
        {"reclaim__policy": "mglru"},
    ],
)
def test_invariants_hold_with_memcgs(extra: dict[str, Any]) -> None:
    sc = tiny(
        swap__page_cluster=3,
        swap__rotational=True,
        vms__0__memcg={"max_mib": 6, "high_mib": 5, "swap_max_mib": 6},
        vms__0__workload={"type": "hotcold", "hot_fraction": 0.3, "hot_access_fraction": 0.9},
        **extra,
    )
    w = World(sc)
    assert run_checked(w, every_ns=250_000) > 100
    assert w.swap.tracks_slots
    s = w.summary(0.0)
    assert s["host"]["vmstat"]["pswpin"] > 0


@settings(max_examples=10)
@given(scenarios())
def test_invariants_hold_throughout_random_rotational_worlds(raw: dict[str, Any]) -> None:
    """test_invariants' random worlds (every policy, zswap, a page cache, several VMs) on a
    rotational disk reading ahead by slot."""
    swap = raw["swap"]
    swap["device"], swap["rotational"] = "disk", True
    swap["page_cluster"] = max(swap["page_cluster"], 1)
    _check_random_world(raw)


def test_two_scanning_vms_keep_the_global_window_shut_and_runs_repeat() -> None:
    """Two VMs faulting in turn never present adjacent offsets to the one global window, so
    they read ahead far less by slot than by address; the same run gives the same summary."""
    a = _scan(3, vms__0__count=2)
    assert _scan(3, vms__0__count=2) == a
    by_address = _scan(3, rotational=False, vms__0__count=2)
    assert a["host"]["vmstat"]["swap_ra"] * 10 < by_address["host"]["vmstat"]["swap_ra"]

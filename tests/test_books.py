"""The books: every figure counted once, where the kernel counts it, and read from there.

For every policy in both reclaim modes, on a short quickstart: each figure ``summary.json``
reports in more than one place is equal (the top-level host keys are read from vmstat), every
per-VM breakdown adds up to its host total, the event tables agree with the counters, the stall
credited per timeline window never exceeds the window times the vCPUs, and each VM's stall plus
compute is exactly its vCPUs' elapsed time. Then the write-back cases: a host whose swap device
cannot keep up keeps its pages under write-back bounded, direct reclaim frees a fair share of
what it scans, and the major faults land on the cold pages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sim.config import load_scenario
from sim.engine import run_scenario
from sim.guest.workloads import _coprime_stride
from sim.host.memory import SWAP_CLUSTER_MAX
from sim.host.mmu_notifier import OPS

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# the quickstart at an eighth of its memory, long enough to swap
SMALL = [
    "duration_s=0.6",
    "host.memory_mib=64",
    "swap.size_mib=256",
    "vms.0.memory_mib=24",
    "vms.1.memory_mib=24",
    "engine.sample_interval_ms=5",
]
HOST_KEYS = {  # summary host key -> the vmstat counter it is read from
    "pswpin": "pswpin",
    "pswpout": "pswpout",
    "tlb_flushes": "remote_tlb_flush",
    "kswapd_scanned": "pgscan_kswapd",
    "kswapd_reclaimed": "pgsteal_kswapd",
    "kswapd_wakeups": "kswapd_wakeups",
    "direct_reclaims": "allocstall_normal",
    "direct_scanned": "pgscan_direct",
    "direct_reclaimed": "pgsteal_direct",
    "host_rmap_walked": "rmap_walked",
    "kvm_sptes_walked": "kvm_sptes_walked",
}
CASES = [
    *(("watermark", p) for p in ("two_list", "mglru", "clock", "fifo", "random", "lru")),
    *(("demand", p) for p in ("two_list", "mglru", "clock", "fifo", "random", "lru", "opt")),
]


def assert_books(out: Path) -> dict[str, Any]:
    """Every repeated figure of a result directory agrees; returns its summary."""
    s = json.loads((out / "summary.json").read_text())
    h, vs = s["host"], s["host"]["vmstat"]
    for key, counter in HOST_KEYS.items():
        assert h[key] == vs[counter], f"host.{key} {h[key]} != vmstat.{counter} {vs[counter]}"
    for op in OPS:
        assert h["notifier"][op] == vs[f"mmu_notifier_{op}"], op
    assert h["swap"]["full_failures"] == vs["swap_full"]
    assert len(h["oom_kills"]) == vs["oom_kill"]
    assert h["swap"]["used_end"] <= h["swap"]["slots"]
    for key in s["vms"][0]["vmstat"]:  # per-VM breakdowns add up to the host's counters
        assert sum(v["vmstat"][key] for v in s["vms"]) == vs[key], key
    assert vs["pgsteal_kswapd"] <= vs["pgscan_kswapd"]
    assert vs["pgsteal_direct"] <= vs["pgscan_direct"] + vs["pgscan_kswapd"]
    if "demand" in h:
        assert h["demand"]["evictions"] == vs["pgsteal_direct"]
    faults = pd.read_parquet(out / "faults.parquet")
    by_kind = faults.groupby("kind", observed=True).size()
    for kind in ("first_touch", "minor", "major", "access_tracking"):
        assert by_kind.get(kind, 0) == sum(v["faults"][kind] for v in s["vms"]), kind
    evictions = pd.read_parquet(out / "evictions.parquet")
    assert len(evictions) == vs["mmu_notifier_invalidate_range_start"]  # one unmap each
    tl = pd.read_parquet(out / "timeline.parquet")
    for name, g in tl.groupby("vm", observed=True):
        g = g.sort_values("t_ns")
        dt, stall = np.diff(g.t_ns.to_numpy()), np.diff(g.stall_ns.to_numpy())
        vcpus = next(v["vcpus"] for v in s["vms"] if v["name"] == name)
        assert (stall >= 0).all(), name
        assert (stall <= dt * vcpus).all(), f"{name}: a window stalled longer than it lasted"
    if h["trigger"] == "watermark":
        for v in s["vms"]:
            if not v["oom_killed"]:  # every vCPU either stalled or ran guest code throughout
                assert v["stall_ns"] + v["compute_ns"] == v["vcpus"] * s["sim_time_ns"], v["name"]
    return s


@pytest.mark.parametrize(("trigger", "policy"), CASES)
def test_every_figure_is_counted_once(tmp_path: Path, trigger: str, policy: str) -> None:
    changes = [*SMALL, f"reclaim.policy={policy}", f"reclaim.trigger={trigger}"]
    if trigger == "demand":  # exactly the host's frames: fewer than the guests touch
        changes += ["host.memory_mib=32", "duration_s=0.15"]
    run_scenario(load_scenario(QUICKSTART, changes), tmp_path / "out")
    s = assert_books(tmp_path / "out")
    assert s["host"]["vmstat"]["pswpout"] > 0  # reclaim ran and wrote


@pytest.mark.parametrize("mmu", ["tdp", "legacy_tdp", "shadow"])
@pytest.mark.parametrize("notifiers", [True, False])
def test_books_with_every_mmu_and_without_notifiers(
    tmp_path: Path, mmu: str, notifiers: bool
) -> None:
    sc = load_scenario(
        QUICKSTART, [*SMALL, f"kvm.mmu={mmu}", f"kvm.mmu_notifiers={str(notifiers).lower()}"]
    )
    run_scenario(sc, tmp_path / "out")
    s = assert_books(tmp_path / "out")
    h = s["host"]
    # only KVM's rmap walks (legacy TDP, shadow) count as rmap work beside the host's
    kvm_rmap = 0 if mmu == "tdp" else h["kvm_sptes_walked"]
    assert h["rmap_walked"] == h["host_rmap_walked"] + kvm_rmap


# --------------------------------------------------------------------------------------------
# write-back


def _hot_pages(size: int, hot_fraction: float) -> set[int]:
    """The hot set of a hotcold workload over ``size`` pages (its scatter of the top ranks)."""
    n_hot = max(1, min(size - 1, round(size * hot_fraction)))
    return set(((np.arange(n_hot) * _coprime_stride(size)) % size).tolist())


@pytest.mark.slow
def test_write_back_stays_bounded_and_faults_follow_the_skew(tmp_path: Path) -> None:
    """Pages under write-back stay within the request tags plus one batch per submitter
    (kswapd and every vCPU in direct reclaim); direct reclaim frees at least a third of what it
    scans; after the fill, the cold tenth of accesses takes almost all the major faults."""
    pages_per_vm, settled_s = 32768, 1.5  # 11 x 128 MiB guests on a 1 GiB host
    sc = load_scenario(REPO / "configs" / "writeback.yaml", ["duration_s=3"])
    run_scenario(sc, tmp_path / "out")
    s = assert_books(tmp_path / "out")
    vs = s["host"]["vmstat"]
    submitters = 1 + sum(v["vcpus"] for v in s["vms"])
    tl = pd.read_parquet(tmp_path / "out" / "timeline.parquet")
    assert tl.writeback_pages.max() <= sc.swap.nr_requests + submitters * SWAP_CLUSTER_MAX
    assert vs["pgscan_direct"] <= 3 * max(1, vs["pgsteal_direct"])
    assert vs["pgsteal_kswapd"] + vs["pgsteal_direct"] > 0
    faults = pd.read_parquet(tmp_path / "out" / "faults.parquet")
    late = faults[(faults.kind == "major") & (faults.t_ns >= settled_s * 1e9)]
    assert len(late) > 100
    hot = _hot_pages(pages_per_vm, 0.1)
    on_hot = late.gfn.isin(hot).mean()  # the hot tenth of the pages takes 95% of the accesses
    assert on_hot < 0.25, f"{on_hot:.0%} of the major faults hit the hot pages"


def test_the_old_tdp_mmu_key_names_its_replacement() -> None:
    """``kvm.tdp_mmu`` mislabelled the legacy TDP MMU as shadow paging; it is gone, and using
    it says what to write instead, on one line."""
    from sim.config import parse_scenario
    from sim.errors import ConfigError
    from tests.conftest import TINY

    with pytest.raises(ConfigError) as err:
        parse_scenario({**TINY, "kvm": {"tdp_mmu": False}}, "cfg.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert "kvm" in msg
    assert "mmu: shadow" in msg
    assert "legacy_tdp" in msg

"""Same config and seed give byte-identical tables; another seed gives other tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sim.engine import World, run_scenario
from tests.conftest import tiny

TABLES = ("evictions.parquet", "faults.parquet", "timeline.parquet")


SWAP_MODES = {
    "disk": {},
    "readahead+zswap": {"page_cluster": 3, "zswap": {"enabled": True, "max_pool_percent": 5}},
    "zram": {"device": "zram"},
}


@pytest.mark.parametrize("swap", SWAP_MODES.values(), ids=SWAP_MODES.keys())
def test_same_seed_gives_byte_identical_parquet(tmp_path: Path, swap: dict[str, Any]) -> None:
    sc = tiny(duration_s=0.1, swap=swap)
    a = run_scenario(sc, tmp_path / "a")
    b = run_scenario(sc, tmp_path / "b")
    assert a.summary["host"]["pswpout"] > 0  # the run really evicts
    for name in TABLES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    strip = {"wall_s"}
    assert {k: v for k, v in a.summary.items() if k not in strip} == {
        k: v for k, v in b.summary.items() if k not in strip
    }


def test_other_seed_gives_other_tables(tmp_path: Path) -> None:
    run_scenario(tiny(duration_s=0.1, seed=1), tmp_path / "a")
    run_scenario(tiny(duration_s=0.1, seed=2), tmp_path / "b")
    assert (tmp_path / "a" / "faults.parquet").read_bytes() != (
        tmp_path / "b" / "faults.parquet"
    ).read_bytes()


def test_adding_a_vm_leaves_other_vms_streams_unchanged() -> None:
    """Each component's generator is keyed by its name, not by its position."""
    vm = {"name": "vm", "memory_mib": 8, "workload": {"type": "zipf"}}
    other = {"name": "other", "memory_mib": 4, "workload": {"type": "uniform"}}
    alone = World(tiny(vms=[vm]))
    behind = World(tiny(vms=[other, vm]))  # "vm" is now the second VM
    a = alone.vms[0].vcpus[0].stream.next(100)
    b = behind.vms[1].vcpus[0].stream.next(100)
    assert (a[0] == b[0]).all()
    assert (a[1] == b[1]).all()

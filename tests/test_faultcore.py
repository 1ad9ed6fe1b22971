"""The fused plain major fault (sim/faultcore.py): its compiled pass by hand, the stale fault's
retry world against world, the worlds it is built for, and ``memsim run``'s note."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from sim import fast
from sim.cli import main
from sim.config import parse_scenario
from sim.core import general_path_reason
from sim.engine import World
from sim.faultcore import _ACTIVATED, _RESTORED, _swapin_map, fault_path_reason
from sim.host.memory import PG_LOCKED, PG_RESIDENT, PG_SWAP
from sim.kvm.spte import mapped
from tests.conftest import tiny
from tests.test_fastpaths import check_world
from tests.test_invariants import scenarios

_READ_IN = PG_SWAP | PG_RESIDENT | PG_LOCKED  # 0x68: swapin_begin's page, its read done


def _pass(
    *, free_swap: bool, dirty: bool, write: bool, shadow: int, age: int, active: int, spte: int = 0
) -> tuple[int, int, int, int, int]:
    """One pass over page 3 (frame 5, gfn 3, rmap kept): (result, page flags, LRU flags,
    spte, rmap count)."""
    flags = np.zeros(8, dtype=np.uint8)
    flags[3] = _READ_IN
    fl = np.zeros(8, dtype=np.uint8)
    sptes = np.zeros(8, dtype=np.uint8)
    sptes[3] = spte
    rmap = np.zeros(8, dtype=np.uint8)
    out = _swapin_map(
        flags, fl, sptes, rmap, 3, 5, 3, 3, free_swap, dirty, mapped(write), shadow, age, active
    )
    return out, int(flags[3]), int(fl[5]), int(sptes[3]), int(rmap[3])


def test_a_refault_within_the_workingset_is_activated_and_restored() -> None:
    # distance (100 - 90) = 10 <= 10 active folios; the shadow's top bit is PG_workingset.
    # Page flags: 0x68 unlocked (0x48), mapped young (0x4B), dirty after KVM's release (0x4F).
    # LRU flags: active 0x2 | referenced 0x4 | workingset 0x8. The spte: present | accessed.
    assert _pass(
        free_swap=False, dirty=True, write=False, shadow=90 | 1 << 31, age=100, active=10
    ) == (_ACTIVATED | _RESTORED, 0x4F, 0x0E, 0x03, 1)


def test_a_refault_beyond_the_workingset_ends_active_by_the_second_mark() -> None:
    # distance 10 > 9 active folios: inactive, then referenced, then activated by KVM's mark
    # (flags 0x2 only). A write frees the swap copy: 0x4B without PG_swap, dirty: 0x47; the
    # spte is dirty too (0x07).
    assert _pass(
        free_swap=True, dirty=True, write=True, shadow=90 | 1 << 31, age=100, active=9
    ) == (0, 0x47, 0x02, 0x07, 1)


def test_the_refault_distance_wraps_with_the_workingset_clock() -> None:
    # age 5 after the 31-bit clock wrapped, eviction at 0x7FFFFFFE: distance 7 <= 10, no
    # PG_workingset in the shadow: activated, not restored (0x2 | 0x4). Not dirty: 0x4B.
    # A present spte (never for a fault; the rmap count is only for a new one) stays counted.
    assert _pass(
        free_swap=False, dirty=False, write=False, shadow=0x7FFFFFFE, age=5, active=10, spte=0x03
    ) == (_ACTIVATED, 0x4B, 0x06, 0x03, 0)


_WORLD: dict[str, Any] = {
    "name": "fc",
    "seed": 3,
    "duration_s": 0.06,
    "host": {"memory_mib": 2},
    "reclaim": {"policy": "two_list"},
    "swap": {"size_mib": 64, "device": "disk", "page_cluster": 0},
    "kvm": {"mmu": "tdp", "ept_ad_bits": True},
    "vms": [
        {
            "name": "v",
            "count": 2,
            "memory_mib": 4,
            "vcpus": 2,
            "access_rate_per_s": 1_000_000,
            "write_ratio": 0.3,
            "workload": {"type": "zipf", "alpha": 0.8},
        }
    ],
}


def test_stale_faults_take_the_pass_and_count_their_retry() -> None:
    """Reclaim zaps other sptes of a VM while its vCPUs' reads are in flight: those faults
    are stale (KVM retries them). Taken and not, the worlds are equal, retries included."""
    taken, general = check_world(copy.deepcopy(_WORLD), ("compiled_fault",))
    assert taken["compiled_fault"] > 1000
    assert all(k["pf_retry"] > 100 for k in general["kvm"])
    assert general["vmstat"]["workingset_restore_anon"] > 0


def _built(raw: dict[str, Any]) -> list[bool]:
    """Per VM: whether its vCPUs got the fused path."""
    w = World(parse_scenario(raw))
    return [all(v.fault_core is not None for v in vm.vcpus) for vm in w.vms]


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({}, [True, True]),
        ({"reclaim": {"policy": "mglru"}}, [False, False]),
        ({"kvm": {"mmu": "tdp", "ept_ad_bits": False}}, [False, False]),  # no host core
        ({"host": {"memory_mib": 2, "ksm": {}}}, [False, False]),
        ({"swap": _WORLD["swap"] | {"page_cluster": 3}}, [False, False]),  # readahead
        ({"swap": {"size_mib": 64, "device": "zram"}}, [False, False]),
    ],
    ids=["plain", "mglru", "no-host-core", "ksm", "readahead", "zram"],
)
def test_built_for_the_host_cores_two_list_worlds(
    change: dict[str, Any], expect: list[bool]
) -> None:
    assert _built(copy.deepcopy(_WORLD) | change) == expect


@pytest.mark.parametrize(
    "vm", [{"memcg": {}}, {"guest": {}}, {"async_pf": 0.5}], ids=["memcg", "guest", "async-pf"]
)
def test_not_built_for_memcgs_guest_kernels_or_async_faults(vm: dict[str, Any]) -> None:
    raw = copy.deepcopy(_WORLD)
    other = raw["vms"][0] | {"name": "w", "count": 1} | vm
    raw["vms"] = [raw["vms"][0] | {"count": 1}, other]
    assert _built(raw) == ([False, False] if "memcg" in vm else [True, False])


def test_not_built_with_the_fast_path_off() -> None:
    with fast.disabled("compiled_fault"):
        assert _built(copy.deepcopy(_WORLD)) == [False, False]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_run_note_names_exactly_the_worlds_without_it(raw: dict[str, Any]) -> None:
    """Where the host core runs, ``memsim run`` says the compiled fault is not used exactly
    when some vCPU of the built world has none."""
    sc = parse_scenario(raw, "prop")
    if general_path_reason(sc) is not None:
        return
    w = World(sc)
    fused = all(v.fault_core is not None for vm in w.vms for v in vm.vcpus)
    assert (fault_path_reason(sc) is None) == fused, fault_path_reason(sc)


@pytest.mark.parametrize(
    ("vm", "reason"),
    [
        ({"memcg": {}}, "memcgs (charging)"),
        ({"guest": {}}, "vms[].guest (on those VMs)"),
        ({"async_pf": 0.5}, "vms[].async_pf (on those VMs)"),
    ],
)
def test_the_run_note_names_per_vm_reasons(vm: dict[str, Any], reason: str) -> None:
    raw = copy.deepcopy(_WORLD)
    raw["vms"] = [raw["vms"][0] | {"count": 1}, raw["vms"][0] | {"name": "w", "count": 1} | vm]
    assert fault_path_reason(parse_scenario(raw)) == reason


def test_run_says_once_when_the_compiled_fault_is_not_used(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny(duration_s=0.01, swap__page_cluster=3).to_yaml())
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("compiled fault: not used (swap.page_cluster (readahead))") == 1
    cfg.write_text(tiny(duration_s=0.01).to_yaml())
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "compiled fault" not in r.stderr

"""Traces played once (``repeat: false``): vCPUs halt at the end of their accesses and the run
ends with the last; pausing a vCPU and resuming it; and the VMM's own memory charged to a VM's
memcg (``vmm_overhead_kib``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.guest.workloads import AccessStream
from sim.host.memcontrol import MemcgConfig, MemcgLimits
from tests.conftest import run_checked, tiny

N = 5000  # accesses in the trace


@pytest.fixture
def trace(tmp_path: Path) -> str:
    """A Zipf-ish trace over 1500 pages (about 6 MiB: fits an 8 MiB VM, not two on the host)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "t.npy"
    np.save(path, (rng.zipf(1.2, N) % 1500).astype(np.int64))
    return str(path)


def _once(trace: str, repeat: bool = False, **changes: Any) -> Any:
    wl = {"type": "trace", "path": trace, **({} if repeat else {"repeat": False})}
    return tiny(vms__0__workload=wl, **{"duration_s": 1.0, **changes})


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two summaries equal but for the wall-clock time."""
    assert {**a, "wall_s": 0} == {**b, "wall_s": 0}


def test_one_vcpu_halts_after_the_trace_and_the_run_ends_there(trace: str) -> None:
    w = World(_once(trace, vms__0__count=1, vms__0__vcpus=1))
    seen: list[float] = []
    w.run(seen.append)
    w.check()
    s = w.summary(0.0)
    (vm,) = s["vms"]
    v = w.vms[0].vcpus[0]
    assert vm["accesses"] == N
    assert v.halted.triggered
    assert v.halted_ns is not None
    assert s["sim_time_ns"] == v.halted_ns == w.ended_ns < 1_000_000_000
    assert vm["finished_s"] == v.halted_ns / 1e9
    assert seen[-1] == 1.0
    # the vCPU's time is accounted to the end: it ran (or stalled) all the time until it halted
    assert vm["stall_ns"] + vm["compute_ns"] == v.halted_ns


def test_every_vcpu_of_every_vm_halts_under_pressure(trace: str) -> None:
    """Two VMs of two vCPUs each on a host too small for both: reclaim goes on while vCPUs halt
    one by one, every invariant holds throughout, each vCPU replays the trace exactly once."""
    w = World(_once(trace))
    run_checked(w, every_ns=200_000)
    s = w.summary(0.0)
    assert sum(vm["faults"]["major"] for vm in s["vms"]) > 0  # there was pressure
    ends = []
    for vm, sv in zip(w.vms, s["vms"], strict=True):
        assert sv["accesses"] == 2 * N
        halted = [v.halted_ns for v in vm.vcpus]
        assert None not in halted
        assert sv["finished_s"] == max(halted) / 1e9  # type: ignore[type-var]
        ends.append(max(halted))  # type: ignore[type-var]
    assert s["sim_time_ns"] == max(ends)
    assert s["vms"][0]["stall_window"]["windows"] > 0


def test_vcpu_column_each_replays_its_own_once(tmp_path: Path) -> None:
    rows = ["t_ns,vcpu,page,write"] + [f"{i},{i % 3 % 2},{i % 97},{i % 5 == 0}" for i in range(900)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    w = World(_once(str(tmp_path / "t.csv"), vms__0__count=1))
    w.run()
    (vm,) = w.summary(0.0)["vms"]
    assert vm["accesses"] == 900
    assert [v._done for v in w.vms[0].vcpus] == [600, 300]  # vCPU 0: i % 3 in (0, 2)


def test_same_seed_same_summary(trace: str) -> None:
    a, b = World(_once(trace)), World(_once(trace))
    a.run()
    b.run()
    _same(a.summary(0.0), b.summary(0.0))


def test_repeat_true_is_what_it_always_was(trace: str) -> None:
    """An explicit ``repeat: true`` is the trace replay as before: same config hash, same run to
    duration_s, nothing finished."""
    implicit = _once(trace, repeat=True, duration_s=0.02)
    explicit = tiny(
        vms__0__workload={"type": "trace", "path": trace, "repeat": True}, duration_s=0.02
    )
    assert implicit.config_hash() == explicit.config_hash()
    a, b = World(implicit), World(explicit)
    a.run()
    b.run()
    sa, sb = a.summary(0.0), b.summary(0.0)
    _same(sa, sb)
    assert sa["sim_time_ns"] == 20_000_000
    assert all(vm["finished_s"] is None for vm in sa["vms"])
    assert all(vm["accesses"] > N for vm in sa["vms"])  # it went round


def test_some_vms_replaying_forever_keep_the_run_to_the_horizon(trace: str) -> None:
    sc = _once(trace, duration_s=0.02, vms=[_vm("a", trace, False), _vm("b", trace, True)])
    w = World(sc)
    w.run()
    s = w.summary(0.0)
    assert s["sim_time_ns"] == 20_000_000
    a, b = s["vms"]
    assert a["accesses"] == N
    assert a["finished_s"] is not None
    assert b["finished_s"] is None


def _vm(name: str, trace: str, repeat: bool, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "memory_mib": 8,
        "vcpus": 1,
        "access_rate_per_s": 2_000_000,
        "workload": {"type": "trace", "path": trace, "repeat": repeat},
        **extra,
    }


def test_an_oom_killed_vm_never_finishes_and_does_not_hold_the_run(trace: str) -> None:
    killed = _vm("a", trace, False, memcg={"max_mib": 1, "swap_max_mib": 0})
    sc = _once(
        trace,
        host={"memory_mib": 64},
        reclaim={"policy": "two_list"},
        vms=[killed, _vm("b", trace, False)],
    )
    w = World(sc)
    run_checked(w)
    s = w.summary(0.0)
    a, b = s["vms"]
    assert a["oom_killed"]
    assert a["finished_s"] is None
    assert b["accesses"] == N
    assert b["finished_s"] is not None
    assert s["sim_time_ns"] == round(b["finished_s"] * 1e9) < 1_000_000_000


def test_a_halt_before_the_warmup_ends_leaves_nothing_after_it(trace: str) -> None:
    w = World(_once(trace, warmup_s=0.5))
    w.run()
    s = w.summary(0.0)
    assert s["sim_time_ns"] < 500_000_000
    for vm in s["vms"]:
        assert vm["accesses"] == 0
        assert vm["stall_ns"] == 0
        assert vm["compute_ns"] == 0
        assert vm["stall_window"]["windows"] == 0
        assert vm["finished_s"] is not None


def test_demand_mode_refuses_a_trace_played_once(trace: str) -> None:
    with pytest.raises(ConfigError) as e:
        _once(trace, reclaim={"policy": "lru", "trigger": "demand"})
    assert "vms[0].workload.repeat" in str(e.value)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# pause and resume


class _Gate:
    """A vCPU's stream that ends after ``limit`` accesses until the limit is lifted."""

    def __init__(self, inner: AccessStream, limit: int) -> None:
        self.inner, self.limit, self.taken = inner, limit, 0

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        if self.limit >= 0:
            n = min(n, self.limit - self.taken)
        g, w = self.inner.next(n)
        self.taken += len(g)
        return g, w


def _drive(trace: str, pause_at: int = -1) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run a two-VM world (memory pressure, one vCPU each) to every vCPU's halt, driving the
    environment directly; with ``pause_at``, VM 0's vCPU halts after that many accesses, the
    counts are taken, and it is started again. Returns the summary and the counts taken."""
    w = World(_once(trace, vms__0__vcpus=1))
    env = w.env
    v = w.vms[0].vcpus[0]
    gate = _Gate(v.stream, pause_at)
    v.stream = gate  # type: ignore[assignment]
    w.start()
    snap = None
    if pause_at >= 0:
        env.run(until=v.halted)
        snap = w.snapshot(int(env.now))
        w.check()
        gate.limit = -1
        env.process(v.run())
    env.run(until=env.all_of([u.halted for vm in w.vms for u in vm.vcpus]))
    w.check()
    return w.summary(0.0), snap


def test_pause_and_resume_equals_an_uninterrupted_run(trace: str) -> None:
    """A vCPU stopped at a batch boundary and started again at the same instant takes the same
    steps as one that never stopped: every count of the run is the same."""
    pause_at = 16 * 128  # whole batches (engine.batch_accesses: 128)
    whole, _ = _drive(trace)
    paused, snap = _drive(trace, pause_at)
    assert snap is not None
    assert snap["vms"][0]["accesses"] == pause_at
    assert whole["vms"][0]["accesses"] == paused["vms"][0]["accesses"] == N
    assert whole["host"]["vmstat"]["pswpin"] > 0  # under pressure
    _same(whole, paused)


def test_resume_mid_batch_keeps_the_accounting(trace: str) -> None:
    """Stopped inside a batch, the vCPU's later steps fall elsewhere (so timing may move), but
    every access is made once and its time is all accounted."""
    paused, snap = _drive(trace, 1000)
    assert snap is not None
    assert snap["vms"][0]["accesses"] == 1000
    vm = paused["vms"][0]
    assert vm["accesses"] == N
    assert vm["compute_ns"] == N * 1_000_000_000 // 2_000_000


# --------------------------------------------------------------------------------------------
# the VMM's overhead in the memcg


def _memcg_world(memcg: dict[str, Any]) -> World:
    raw = {
        "name": "overhead",
        "seed": 5,
        "duration_s": 0.1,
        "host": {"memory_mib": 128},
        "swap": {"size_mib": 128},
        "reclaim": {"policy": "two_list"},
        "vms": [
            {
                "name": "a",
                "memory_mib": 32,
                "access_rate_per_s": 400_000,
                "workload": {"type": "hotcold", "hot_fraction": 0.5, "hot_access_fraction": 0.95},
                "memcg": memcg,
            }
        ],
    }
    return World(parse_scenario(raw))


def test_overhead_takes_its_share_of_memory_max() -> None:
    """memory.max M + 4 MiB with 4 MiB of VMM overhead gives guest RAM what memory.max M does;
    memory.current counts the overhead on top."""
    m = 8  # a quarter of the VM
    with_overhead = _memcg_world({"max_mib": m + 4, "vmm_overhead_kib": 4096})
    plain = _memcg_world({"max_mib": m})
    run_checked(with_overhead)
    run_checked(plain)
    a, b = with_overhead.summary(0.0)["vms"][0], plain.summary(0.0)["vms"][0]
    assert a["memcg"]["events"]["max"] > 0  # the limit bites
    overhead = 4096 // 4
    for key in ("accesses", "faults", "resident_pages", "swapped_pages", "oom_killed", "vmstat"):
        assert a[key] == b[key], key
    ma, mb = a["memcg"], b["memcg"]
    assert ma["current_pages"] == mb["current_pages"] + overhead == a["resident_pages"] + overhead
    assert ma["max_pages"] == mb["max_pages"] + overhead
    assert ma["events"] == mb["events"]


def test_overhead_rounds_up_to_pages() -> None:
    cfgs = [MemcgConfig(vmm_overhead_kib=k) for k in (0, 1, 4096, 4097)]
    assert MemcgLimits.from_configs(cfgs, 256).overhead == [0, 1, 1024, 1025]
    assert MemcgLimits.from_configs(cfgs, 0.5).overhead == [0, 1, 2, 3]


def test_overhead_with_no_limit_is_only_counted() -> None:
    w = _memcg_world({"vmm_overhead_kib": 1024})
    w.run()
    a = w.summary(0.0)["vms"][0]
    assert a["faults"]["major"] == 0
    assert a["memcg"]["current_pages"] == a["resident_pages"] + 256


@pytest.mark.parametrize(
    ("memcg", "needle"),
    [
        ({"max_mib": 4, "vmm_overhead_kib": 4096}, "vms[0].memcg: vmm_overhead_kib: 4096 KiB"),
        ({"max_mib": 0, "vmm_overhead_kib": 1}, "vms[0].memcg: vmm_overhead_kib: 1 KiB"),
        ({"vmm_overhead_kib": -1}, "vms[0].memcg.vmm_overhead_kib"),
        ({"vmm_overhead_kib": "x"}, "vms[0].memcg.vmm_overhead_kib"),
    ],
)
def test_bad_overhead_is_a_one_line_error(memcg: dict[str, Any], needle: str) -> None:
    raw = {
        "name": "x",
        "duration_s": 0.1,
        "host": {"memory_mib": 64},
        "vms": [{"name": "a", "memory_mib": 32, "memcg": memcg}],
    }
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_overhead_default_leaves_the_config_hash_alone() -> None:
    def sc(memcg: dict[str, Any]) -> Any:
        return parse_scenario(
            {
                "name": "x",
                "duration_s": 0.1,
                "host": {"memory_mib": 64},
                "vms": [{"name": "a", "memory_mib": 32, "memcg": memcg}],
            }
        )

    assert (
        sc({"max_mib": 8}).config_hash() == sc({"max_mib": 8, "vmm_overhead_kib": 0}).config_hash()
    )
    assert (
        sc({"max_mib": 8}).config_hash() != sc({"max_mib": 8, "vmm_overhead_kib": 4}).config_hash()
    )

"""``memsim calibrate`` end to end on the real kernel: a tiny calibration, then ``--from``.

Slow and host-dependent (root, /dev/kvm, a C compiler, cgroup v1 memory with swap accounting,
no active swap), so it skips elsewhere with the reason. It tests the harness, not the model:
the result directory is complete, OOM kills agree, memsim's majors are within a loose 10% of
the kernel's, the host is left as found, and ``--from`` reproduces the kernel columns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from sim.calibrate import vmm
from sim.calibrate.host import CGROUP_PREFIX, Host

REPO = Path(__file__).resolve().parent.parent
MEMCG = Path("/sys/fs/cgroup/memory")
BUSY = "another calibration harness is running"
BUSY_TRIES = 10
BUSY_WAIT_S = 30.0
MAJORS_BOUND = 0.10  # loose on purpose: the harness is under test, not the model
RESULT_FILES = (
    "comparison.md",
    "comparison.csv",
    "kernel.json",
    "memsim.json",
    "host.json",
    "profile.yaml",
    "config.yaml",
    "calibrate.png",
    "manifest.json",
)
POLICIES = ["two_list", "lru"]
SCENARIO = {"mem_mib": 24, "limit_mib": 14}  # a limit of about 60% of the guest


def _unavailable() -> str | None:
    """Why the real calibration cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "not root"
    if not vmm.kvm_usable():
        return "no usable /dev/kvm"
    if vmm.compiler() is None:
        return "no C compiler"
    if not (MEMCG / "memory.memsw.limit_in_bytes").exists():
        return "no cgroup v1 memory controller with swap accounting"
    if Host().active_swaps():
        return "swap already active"
    return None


def config() -> dict[str, Any]:
    """Two guests that swap under the limit (one fit, one check) and one whose memory plus
    swap (18 MiB) cannot hold its 24 MiB of written pages, so the memcg must OOM-kill it."""
    return {
        "name": "real-test",
        "repetitions": 2,
        "swapfile_mib": 64,
        "policies": POLICIES,
        "scenarios": [
            {
                "name": "hotcold",
                "use": "fit",
                **SCENARIO,
                "workload": {"type": "hotcold", "hot_fraction": 0.1, "hot_access_fraction": 0.9},
                "accesses": 30_000,
                "seed": 1,
            },
            {
                "name": "zipf",
                "use": "check",
                **SCENARIO,
                "workload": {"type": "zipf", "alpha": 0.9},
                "accesses": 30_000,
                "seed": 2,
            },
            {
                "name": "memsw-oom",
                **SCENARIO,
                "memsw_limit_mib": 18,
                "workload": {"type": "uniform"},
                "accesses": 20_000,
                "seed": 3,
            },
        ],
    }


def memsim(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sim ARGS`` from the repository, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def calibrate_when_free(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``memsim calibrate``, waiting while another harness session holds the host (the
    harness refuses to start beside one)."""
    for _ in range(BUSY_TRIES - 1):
        p = memsim("calibrate", *args)
        if BUSY not in p.stderr:
            return p
        time.sleep(BUSY_WAIT_S)
    return memsim("calibrate", *args)


def host_state() -> dict[str, Any]:
    """What the harness must leave as found: its cgroups, active swap, vm.page-cluster."""
    shown = subprocess.run(["swapon", "--show"], capture_output=True, text=True, check=False)
    return {
        "cgroups": sorted(p.name for p in MEMCG.glob(f"{CGROUP_PREFIX}*")),
        "swapon": shown.stdout,
        "page_cluster": Path("/proc/sys/vm/page-cluster").read_text(),
    }


@pytest.mark.slow
@pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))
def test_calibrate_end_to_end_and_from(tmp_path: Path) -> None:
    cfg_path = tmp_path / "calibrate.yaml"
    cfg_path.write_text(yaml.safe_dump(config(), sort_keys=False))
    out, again = tmp_path / "out", tmp_path / "again"
    before = host_state()
    assert before["cgroups"] == []
    assert before["swapon"] == ""

    p = calibrate_when_free(str(cfg_path), "-o", str(out))
    after = host_state()
    assert p.returncode == 0, p.stderr[-3000:]
    assert after == before  # no cgroup, no swap, page-cluster as it was

    for name in RESULT_FILES:
        assert (out / name).is_file(), name
    verdict = json.loads((out / "manifest.json").read_text())["verdict"]
    n = len(config()["scenarios"])
    assert verdict["scenarios"] == n
    assert verdict["oom_matches"] == n, verdict

    table = pd.read_csv(out / "comparison.csv").set_index("scenario")
    oom = table.loc["memsw-oom"]
    assert oom["kernel_oom_killed"] == oom["kernel_runs"] == 2
    assert bool(oom["kernel_oom"])
    for policy in POLICIES:
        assert bool(oom[f"{policy}_oom"]), policy
    live = table[~table["kernel_oom"].astype(bool)]
    assert sorted(live.index) == ["hotcold", "zipf"]
    for name, r in live.iterrows():
        assert r["kernel_pgmajfault"] > 0, name  # the limit made it swap
        err = abs(r["memsim_pgmajfault"] - r["kernel_pgmajfault"]) / r["kernel_pgmajfault"]
        assert err <= MAJORS_BOUND, (name, r["kernel_pgmajfault"], r["memsim_pgmajfault"])

    q = memsim("calibrate", str(cfg_path), "--from", str(out), "-o", str(again))
    assert q.returncode == 0, q.stderr[-3000:]
    redo = pd.read_csv(again / "comparison.csv")
    first = pd.read_csv(out / "comparison.csv")
    kernel_cols = [c for c in first.columns if c.startswith("kernel_")]
    assert kernel_cols
    pd.testing.assert_frame_equal(
        redo[["scenario", *kernel_cols]], first[["scenario", *kernel_cols]]
    )
    assert json.loads((again / "manifest.json").read_text())["from_dir"] == str(out)

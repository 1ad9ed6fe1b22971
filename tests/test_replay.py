"""Trace replay: the general engine equals the textbook kernels; mrc agrees with replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import fastpath
from sim.cli import main
from sim.replay import FAST, mrc, replay

traces = st.lists(st.integers(0, 30), min_size=1, max_size=300).map(
    lambda xs: np.array(xs, dtype=np.int64)
)


@settings(max_examples=25)
@given(traces, st.integers(1, 35), st.sampled_from(sorted(FAST)))
def test_general_engine_equals_textbook_kernel(pages: np.ndarray, frames: int, policy: str) -> None:
    """The simulated mechanism (policy, rmap, notifiers, sptes) counts what the textbook says."""
    writes = np.zeros(len(pages), dtype=np.bool_)
    general = replay(pages, writes, frames=frames, policy=policy, engine="general")
    fast = replay(pages, writes, frames=frames, policy=policy, engine="fast")
    for key in ("faults", "evictions", "accesses", "distinct_pages"):
        assert general[key] == fast[key], (key, general, fast)
    assert fast["evictions"] == max(0, fast["faults"] - frames)


def test_replay_json_keys_and_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pages = (rng.zipf(1.3, 5000) % 400).astype(np.int64)
    np.save(tmp_path / "t.npy", pages)
    r = CliRunner().invoke(
        main, ["replay", str(tmp_path / "t.npy"), "--frames", "50", "--policy", "lru", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) >= {
        "policy",
        "frames",
        "accesses",
        "distinct_pages",
        "faults",
        "evictions",
        "replay_s",
    }
    assert out["faults"] == fastpath.lru(pages, 50).faults
    assert out["accesses"] == 5000
    assert out["distinct_pages"] == len(np.unique(pages))


def test_mrc_agrees_with_replay_at_every_size_it_reports() -> None:
    rng = np.random.default_rng(5)
    pages = (rng.zipf(1.2, 4000) % 600).astype(np.int64)
    writes = np.zeros(len(pages), dtype=np.bool_)
    table = mrc(pages, writes, policies=["lru", "opt", "fifo", "clock"], sizes=[5, 40, 200])
    for row in table.itertuples():
        if row.policy == "lru" and row.frames not in (1, 5, 40, 200, 333):
            continue
        r = replay(pages, writes, frames=int(row.frames), policy=row.policy)
        assert r["faults"] == row.faults, row
    lru = table[table.policy == "lru"]
    assert list(lru.frames) == list(range(1, len(np.unique(pages)) + 1))  # every size


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--policy", "nope", "--frames", "4"], "--policy 'nope'"),
        (["--policy", "two_list", "--frames", "4", "--engine", "fast"], "no compiled replay"),
        (["--policy", "lru", "--frames", "0"], "--frames"),
    ],
)
def test_bad_replay_flags_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    np.save(tmp_path / "t.npy", np.arange(10, dtype=np.int64))
    r = CliRunner().invoke(main, ["replay", str(tmp_path / "t.npy"), *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output


def test_garbage_lackey_line_fails_with_its_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lackey"
    bad.write_text("==1== header\n L 04222cac,8\n S 04222cb0,4\nthis is garbage\n")
    r = CliRunner().invoke(main, ["replay", str(bad), "--frames", "4", "--policy", "lru"])
    assert r.exit_code == 2, r.output
    assert "bad.lackey:4" in r.output


def test_mrc_command_writes_table_and_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "t.npy", (rng.zipf(1.3, 3000) % 300).astype(np.int64))
    out = tmp_path / "mrc"
    r = CliRunner().invoke(
        main,
        [
            "mrc",
            str(tmp_path / "t.npy"),
            "--out",
            str(out),
            "--policies",
            "opt,fifo",
            "--sizes",
            "10,50",
        ],
    )
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {
        "mrc.parquet",
        "mrc.png",
        "mrc.json",
        "manifest.json",
    }
    assert json.loads((out / "manifest.json").read_text())["memsim"]["kind"] == "mrc"


def test_replay_with_overrides_uses_the_mechanism(tmp_path: Path) -> None:
    """Without aging notifiers CLOCK sees no guest accesses: it degenerates towards FIFO."""
    rng = np.random.default_rng(2)
    pages = (rng.zipf(1.3, 6000) % 500).astype(np.int64)
    writes = np.zeros(len(pages), dtype=np.bool_)
    on = replay(pages, writes, frames=60, policy="clock", engine="general")
    off = replay(
        pages,
        writes,
        frames=60,
        policy="clock",
        engine="general",
        overrides=["kvm.mmu_notifiers=false"],
    )
    fifo = fastpath.fifo(pages, 60).faults
    assert on["faults"] < off["faults"]
    assert off["faults"] == fifo  # only the fault-in young bit is left: FIFO with one pass


@settings(max_examples=15)
@given(traces, st.integers(1, 35), st.sampled_from(["clock", "two_list", "mglru"]))
def test_ept_ad_off_changes_costs_not_decisions(
    pages: np.ndarray, frames: int, policy: str
) -> None:
    """Access tracking tells the host exactly what the A bits would: same misses."""
    writes = np.zeros(len(pages), dtype=np.bool_)
    ad = replay(pages, writes, frames=frames, policy=policy, engine="general")
    at = replay(
        pages,
        writes,
        frames=frames,
        policy=policy,
        engine="general",
        overrides=["kvm.ept_ad_bits=false"],
    )
    assert ad["faults"] == at["faults"]

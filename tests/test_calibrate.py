"""Calibration guest and VMM: Python predicts, bit for bit, what the guest replays."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from sim.calibrate import streams, vmm
from sim.calibrate.streams import MixConfig, MixPart, StreamSpec
from sim.guest.traces import read_trace
from sim.guest.workloads import (
    HotColdConfig,
    PhaseConfig,
    PhasesConfig,
    ScanConfig,
    UniformConfig,
    ZipfConfig,
)

MEM_MIB = 16
PAGES = streams.data_pages(MEM_MIB)
HAVE_CC = vmm.compiler() is not None
HAVE_KVM = vmm.kvm_usable()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
needs_kvm = pytest.mark.skipif(not (HAVE_CC and HAVE_KVM), reason="no C compiler or /dev/kvm")

SHAPES = {
    "uniform": UniformConfig(),
    "zipf": ZipfConfig(alpha=0.9),
    "hotcold": HotColdConfig(hot_fraction=0.1, hot_access_fraction=0.9),
    "scan": ScanConfig(),
    "phases": PhasesConfig(
        phases=[
            PhaseConfig(duration_s=0.02, workload=UniformConfig(), working_set_mib=4),
            PhaseConfig(duration_s=0.03, workload=ZipfConfig(), offset_mib=6, working_set_mib=6),
        ]
    ),
    # a scan a little larger than 8 MiB, mixed with a 1 MiB hot set beyond it
    "scan+hot": MixConfig(
        parts=[
            MixPart(workload=ScanConfig(), pages=2100, weight=0.7),
            MixPart(workload=UniformConfig(), offset_pages=2200, pages=256, weight=0.3),
        ]
    ),
}


def spec_for(name: str, accesses: int = 100_000, seed: int = 7) -> StreamSpec:
    return StreamSpec(
        workload=SHAPES[name], accesses=accesses, pages=PAGES, write_ratio=0.3, seed=seed
    )


def test_data_pages_leave_the_first_2_mib_to_the_guest() -> None:
    assert streams.data_pages(16) == (14 << 20) >> 12
    assert streams.data_pages(2) == 0


def test_encode_sets_the_write_bit() -> None:
    enc = streams.encode(np.array([0, 5, 7]), np.array([False, True, False]))
    assert enc.dtype == np.dtype("<u4")
    assert enc.tolist() == [0, 5 | 1 << 31, 7]


def test_expected_by_hand() -> None:
    # i: 1 W p3, 2 R p3 (sees 1), 3 R p4 (0), 4 W p3, 5 W p4, 6 R p3 (sees 4)
    pages = np.array([3, 3, 4, 3, 4, 3])
    writes = np.array([True, False, False, True, True, False])
    e = streams.expected(pages, writes)
    assert (e.accesses, e.read_sum) == (6, 1 + 0 + 4)
    assert e.checksum == 4 * (2 * 3 + 1) + 5 * (2 * 4 + 1)


def test_expected_agrees_with_a_literal_replay() -> None:
    rng = np.random.default_rng(3)
    pages, writes = rng.integers(0, 50, 2000), rng.random(2000) < 0.4
    word: dict[int, int] = {}
    read_sum = 0
    for i, (p, w) in enumerate(zip(pages.tolist(), writes.tolist(), strict=True), start=1):
        if w:
            word[p] = i
        else:
            read_sum += word.get(p, 0)
    checksum = sum(v * (2 * p + 1) for p, v in word.items()) % 2**64
    assert streams.expected(pages, writes) == streams.Expected(2000, read_sum, checksum)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_streams_are_reproducible_and_in_range(name: str) -> None:
    g1, w1 = streams.generate(spec_for(name, accesses=70_000))
    g2, w2 = streams.generate(spec_for(name, accesses=70_000))
    assert np.array_equal(g1, g2)
    assert np.array_equal(w1, w2)
    assert g1.size == 70_000
    assert g1.min() >= 0
    assert g1.max() < PAGES
    assert 0.25 < w1.mean() < 0.35
    g3, _ = streams.generate(spec_for(name, accesses=70_000, seed=8))
    assert name == "scan" or not np.array_equal(g1, g3)


def test_mix_part_must_fit() -> None:
    with pytest.raises(ValueError, match="beyond pages"):
        StreamSpec(
            workload=MixConfig(parts=[MixPart(workload=ScanConfig(), pages=10, weight=1.0)]),
            accesses=10,
            pages=5,
        )


def test_write_trace_replays_the_same_reuse(tmp_path) -> None:
    spec = spec_for("hotcold", accesses=5000)
    path = streams.write_trace(spec, tmp_path / "s.parquet")
    tr = read_trace(path)
    g, w = streams.generate(spec)
    assert np.array_equal(tr.pages, g)
    assert np.array_equal(tr.writes, w)


GOOD = (
    '{"mode": "kvm", "accesses": 3, "read_sum": 1, "checksum": 9, "wall_ns": 10, "loop_ns": 6,'
    ' "feed_ns": 1, "minflt": 4, "majflt": 0, "exits": 3, "chunk_ns": [6],'
    ' "kvm_vcpu_stats": {"exits": 3}, "kvm_vm_stats": null}'
)


def test_parse_result() -> None:
    r = vmm.parse_result(GOOD)
    assert (r.mode, r.accesses, r.checksum, r.chunk_ns) == ("kvm", 3, 9, [6])
    assert r.ns_per_access == 2.0
    assert r.kvm_vcpu_stats == {"exits": 3}
    assert r.kvm_vm_stats is None


def test_parse_result_phases() -> None:
    phases = (
        ', "phases": [{"accesses": 2, "wall_ns": 6, "loop_ns": 4, "minflt": 4, "majflt": 0,'
        ' "vmstat_delta": {"pgfault": 5}, "memcg_stat_delta": null},'
        ' {"accesses": 1, "wall_ns": 3, "loop_ns": 2, "minflt": 0, "majflt": 0}]}'
    )
    r = vmm.parse_result(GOOD.removesuffix("}") + phases)
    assert r.phases == [
        vmm.PhaseResult(2, 6, 4, 4, 0, {"pgfault": 5}, None),
        vmm.PhaseResult(1, 3, 2, 0, 0),
    ]
    assert vmm.parse_result(GOOD).phases == []


@pytest.mark.parametrize(
    "text",
    ["", "{", '{"mode": "kvm"}', "[1]"]
    + [GOOD.removesuffix("}") + f', "phases": {p}}}' for p in ("5", "[1]", '[{"accesses": 1}]')],
)
def test_parse_result_errors_are_one_line(text: str) -> None:
    with pytest.raises(vmm.CalibrateError) as info:
        vmm.parse_result(text)
    assert "\n" not in str(info.value)


def test_no_compiler_is_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEMSIM_CACHE", str(tmp_path))
    monkeypatch.setattr(vmm, "compiler", lambda: None)
    with pytest.raises(vmm.CalibrateError, match="no C compiler"):
        vmm.build()


def test_stream_too_big_for_the_guest() -> None:
    spec = StreamSpec(workload=UniformConfig(), accesses=10, pages=PAGES + 1)
    with pytest.raises(vmm.CalibrateError, match="raise mem_mib"):
        vmm.run(spec, mem_mib=MEM_MIB, plain=True)


@needs_cc
def test_vmm_rejects_a_page_beyond_memory() -> None:
    bad = streams.encode(np.array([1, PAGES]), np.array([False, True])).tobytes()
    done = subprocess.run(
        [str(vmm.build()), "--plain", "--mem-mib", str(MEM_MIB)],
        input=bad,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().count("\n") == 1
    assert "data pages" in done.stderr.decode()


@needs_cc
@pytest.mark.parametrize("name", ["uniform", "scan+hot"])
def test_plain_process_reproduces_python(name: str) -> None:
    spec = spec_for(name)
    r = vmm.run(spec, mem_mib=MEM_MIB, plain=True, chunk=10_000)
    want = streams.expected(*streams.generate(spec))
    assert (r.accesses, r.read_sum, r.checksum) == (want.accesses, want.read_sum, want.checksum)
    assert r.mode == "plain"
    assert r.exits == 0
    if r.vmstat_delta is not None:  # the first touches were counted (and more, system-wide)
        assert r.vmstat_delta.get("pgfault", 0) >= r.minflt > 0
    assert r.kvm_vcpu_stats is None


@needs_kvm
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_guest_reproduces_python(name: str) -> None:
    spec = spec_for(name)
    r = vmm.run(spec, mem_mib=MEM_MIB, chunk=30_000, chunk_times=True)
    want = streams.expected(*streams.generate(spec))
    assert (r.accesses, r.read_sum, r.checksum) == (want.accesses, want.read_sum, want.checksum)
    assert r.mode == "kvm"
    assert len(r.chunk_ns) == 4
    assert r.kvm_vcpu_stats is None or r.kvm_vcpu_stats["exits"] >= r.exits
    # one report per chunk, one to ask for the first and one to say it is done
    assert r.exits == 4 + 2


@needs_kvm
def test_plain_and_guest_agree() -> None:
    spec = spec_for("zipf", seed=11)
    guest = vmm.run(spec, mem_mib=MEM_MIB)
    plain = vmm.run(spec, mem_mib=MEM_MIB, plain=True)
    assert (guest.read_sum, guest.checksum) == (plain.read_sum, plain.checksum)
    assert guest.accesses == plain.accesses == spec.accesses


@needs_cc
def test_run_takes_chunks_as_well_as_a_spec() -> None:
    pages, writes = np.array([0, 9, 0, 9]), np.array([True, True, False, False])
    r = vmm.run([(pages[:3], writes[:3]), (pages[3:], writes[3:])], mem_mib=4, plain=True)
    want = streams.expected(pages, writes)
    assert (r.accesses, r.read_sum, r.checksum) == (4, 1 + 2, want.checksum)


def test_calibrate_observes_the_simulator_from_outside() -> None:
    """The calibration side knows memsim's workloads and traces, never its mechanism."""
    import ast
    from pathlib import Path

    for path in (Path(streams.__file__).parent).glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        inside = {m for m in mods if m.startswith(("sim.host", "sim.kvm", "sim.reclaim"))}
        assert not inside, f"{path.name} imports {inside}"
        assert "simpy" not in mods


@needs_cc
def test_vmm_errors_reach_the_caller_as_one_line() -> None:
    spec = StreamSpec(workload=UniformConfig(), accesses=200_000, pages=1)
    with pytest.raises(vmm.CalibrateError, match=r"^--mem-mib must be between 4 and \d+"):
        vmm.run(spec, mem_mib=3, plain=True)


@needs_kvm
def test_populate_leaves_the_stream_unchanged() -> None:
    spec = spec_for("hotcold")
    r = vmm.run(spec, mem_mib=MEM_MIB, populate=True)
    want = streams.expected(*streams.generate(spec))
    assert (r.read_sum, r.checksum) == (want.read_sum, want.checksum)
    assert r.minflt < PAGES // 4  # the host faulted the data pages in before the loop


def first_touch_then_reread(pages: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Write every page once, then read each again: only the first pass faults pages in."""
    every = np.arange(pages)
    return [(every, np.ones(pages, dtype=bool)), (every, np.zeros(pages, dtype=bool))]


def check_phases(r: vmm.RunResult, sizes: list[int], faulting: list[bool]) -> None:
    """The phases split the run as asked; the first-touch ones took the page faults."""
    assert [p.accesses for p in r.phases] == sizes
    assert sum(p.accesses for p in r.phases) == r.accesses
    assert sum(p.loop_ns for p in r.phases) == r.loop_ns
    for p, faults in zip(r.phases, faulting, strict=True):
        if faults:  # a write to each new page: one host fault each (plain or through KVM)
            assert p.minflt >= p.accesses
            if p.vmstat_delta is not None:  # system-wide, so at least ours
                assert p.vmstat_delta.get("pgfault", 0) >= p.minflt
        else:
            assert p.minflt < p.accesses // 20


@needs_cc
def test_one_phase_is_the_whole_run() -> None:
    r = vmm.run(first_touch_then_reread(1000), mem_mib=MEM_MIB, plain=True)
    (p,) = r.phases
    assert (p.accesses, p.wall_ns, p.loop_ns) == (r.accesses, r.wall_ns, r.loop_ns)
    assert (p.minflt, p.majflt) == (r.minflt, r.majflt)
    assert (p.vmstat_delta, p.memcg_stat_delta) == (r.vmstat_delta, r.memcg_stat_delta)


@needs_cc
def test_plain_phases_split_first_touch_from_rereads() -> None:
    r = vmm.run(first_touch_then_reread(3000), mem_mib=MEM_MIB, plain=True, phase_at=[3000])
    check_phases(r, [3000, 3000], [True, False])


@needs_kvm
def test_guest_phases_split_first_touch_from_rereads() -> None:
    r = vmm.run(first_touch_then_reread(3000), mem_mib=MEM_MIB, phase_at=[3000])
    check_phases(r, [3000, 3000], [True, False])


@needs_cc
@pytest.mark.parametrize("plain", [True, False])
def test_a_boundary_inside_a_chunk_splits_it(plain: bool) -> None:
    if not (plain or HAVE_KVM):
        pytest.skip("no /dev/kvm")
    stream = first_touch_then_reread(3000)
    r = vmm.run(
        stream, mem_mib=MEM_MIB, plain=plain, chunk=1000, chunk_times=True, phase_at=[1500, 3000]
    )
    want = streams.expected(*(np.concatenate(x) for x in zip(*stream, strict=True)))
    assert (r.accesses, r.read_sum, r.checksum) == (want.accesses, want.read_sum, want.checksum)
    check_phases(r, [1500, 1500, 3000], [True, True, False])
    assert len(r.chunk_ns) == 7  # 1000 500 | 1000 500 | 1000 1000 1000


@pytest.mark.parametrize(
    ("phase_at", "match"),
    [
        ([0], "positive"),
        ([-5, 10], "positive"),
        ([10, 10], "strictly increasing"),
        ([20, 10], "strictly increasing"),
        (range(1, 17), "at most 15"),
        ([10, 200_001], "beyond the stream"),
    ],
)
def test_bad_phase_lists_are_one_line(phase_at: list[int], match: str) -> None:
    with pytest.raises(vmm.CalibrateError, match=match) as info:
        vmm.run(
            spec_for("uniform", accesses=200_000), mem_mib=MEM_MIB, plain=True, phase_at=phase_at
        )
    assert "\n" not in str(info.value)


@needs_cc
def test_vmm_rejects_a_boundary_the_stream_never_reaches() -> None:
    with pytest.raises(vmm.CalibrateError, match=r"^the stream ended after 4 accesses, before"):
        vmm.run(first_touch_then_reread(2), mem_mib=4, plain=True, phase_at=[3, 5])

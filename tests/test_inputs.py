"""Bounded input: every value that validates is one the simulator can run with, config files
are read with bounds (regular files, size, YAML aliases, nesting, duplicate keys), and an
error line never echoes an absurd value in full."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sim.cli import main
from sim.errors import ConfigError, clip, shown, shown_path
from sim.inputs import MAX_CONFIG_BYTES, read_yaml_file
from tests.conftest import TINY


def _write(tmp_path: Path, raw: Any, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return p


def _one_line_exit_2(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert "Traceback" not in r.output
    return lines[0]


# -- every number that validates can run ---------------------------------------------------

UNRUNNABLE = [
    ("engine.sample_interval_ms=.inf", "engine.sample_interval_ms: Input should be a finite"),
    ("engine.sample_interval_ms=1e-300", "must be at least 0.01 ms"),
    ("duration_s=1e-300", "duration_s: must be at least 1e-06 s"),
    ("duration_s=.nan", "duration_s: Input should be a finite number"),
    ("swap.read_latency_us=.inf", "swap.read_latency_us: Input should be a finite"),
    ("swap.write_latency_us=1.0e300", "swap.write_latency_us: must be at most 1e+07 us"),
    ("swap.read_bandwidth_mib_per_s=1.0e-300", "must be at least 1 MiB/s"),
    ("costs.vmexit_ns=100000000000000000000000", "vmexit_ns: must be at most 1,000,000,000 ns"),
    ("vms.0.memory_mib=2147483648", "vms[0].memory_mib: must be at most 67,108,864 MiB"),
    ("vms.0.working_set_mib=2147483648", "vms[0].working_set_mib: must be at most"),
    ("host.min_free_kbytes=99999999999999999999999", "host.min_free_kbytes: must be at most"),
    ("reclaim={policy: mglru, min_ttl_ms: 100000000000000000000}", "does not fit in 64 bits"),
    (
        "vms=[{name: a, count: 4096, memory_mib: 1}, {name: b, memory_mib: 1}]",
        "vms: 4,097 VMs in all; at most 4,096",
    ),
    ("vms=[{name: a, count: 4096, memory_mib: 1, vcpus: 5}]", "vCPUs in all; at most 16,384"),
    ("vms.0.vcpus=256", None),
    ("engine.sample_interval_ms=0.01", None),
    ("duration_s=4000 engine.sample_interval_ms=0.1", "40,000,000 timeline samples; at most"),
    (
        "vms.0.workload={type: phases, phases: [{duration_s: .inf}]}",
        "phases[0].duration_s: Input should be a finite",
    ),
]


@pytest.mark.parametrize(("setting", "needle"), UNRUNNABLE, ids=[u[0][:40] for u in UNRUNNABLE])
def test_values_the_engine_cannot_run_are_refused(
    tmp_path: Path, setting: str, needle: str | None
) -> None:
    cfg = _write(tmp_path, TINY)
    args = ["validate", str(cfg)]
    for item in setting.split(" ") if setting.startswith("duration_s") else [setting]:
        args += ["--set", item]
    r = CliRunner().invoke(main, args)
    if needle is None:  # the largest accepted value
        assert r.exit_code == 0, r.output
        return
    line = _one_line_exit_2(*args)
    assert needle in line


def test_largest_accepted_values_run(tmp_path: Path) -> None:
    """Every bound is one the engine copes with: a run at the extreme ends finishes."""
    from sim.config import parse_scenario
    from sim.engine import run_scenario

    raw = {
        **TINY,
        "duration_s": 1e-6,
        "swap": {
            "size_mib": 1 << 30,
            "read_latency_us": 1e7,
            "write_latency_us": 1e7,
            "latency_cv": 10.0,
            "read_bandwidth_mib_per_s": 1.0,
        },
        "costs": {k: 10**9 for k in ("vmexit_ns", "first_touch_ns", "reclaim_page_ns")},
        "engine": {"batch_accesses": 1 << 20, "sample_interval_ms": 0.01},
    }
    run_scenario(parse_scenario(raw), None)


# -- config files ---------------------------------------------------------------------------


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    text = yaml.safe_dump(TINY, sort_keys=False) + "seed: 3\n"
    line = _one_line_exit_2("validate", str(_write(tmp_path, text)))
    assert "duplicate key 'seed' (first on line 2)" in line
    assert f"line {text.count(chr(10))}:" in line
    nested = "a:\n  b: 1\n  b: 2\n"
    with pytest.raises(ConfigError, match="line 3: duplicate key 'b'"):
        read_yaml_file(_write(tmp_path, nested, "n.yaml"))


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n"
    assert read_yaml_file(_write(tmp_path, text))["c"] == {"x": 3, "y": 2}


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (_bomb(12), "expands to more than 200,000 values"),
        ("a: &x [1, *x]\n", "line 1: an anchor refers to itself"),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 64 levels deep"),
        ("a: " + "9" * 5000 + "\n", "invalid YAML value"),
        ("a: [1, 2\nb: 3\n", "invalid YAML"),
    ],
    ids=["billion-laughs", "recursive", "deep", "huge-int", "syntax"],
)
def test_hostile_yaml_is_one_short_line(tmp_path: Path, text: str, needle: str) -> None:
    line = _one_line_exit_2("validate", str(_write(tmp_path, text)))
    assert needle in line
    assert len(line) < 400


def test_small_alias_use_is_fine(tmp_path: Path) -> None:
    assert read_yaml_file(_write(tmp_path, _bomb(4)))["a3"][0][0][0] == ["x"] * 10


def test_non_regular_and_oversized_config_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert "is a FIFO" in _one_line_exit_2("validate", str(fifo))
    assert "is a device" in _one_line_exit_2("validate", "/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# x\n" * (MAX_CONFIG_BYTES // 4 + 1))
    assert "larger than 4 MiB" in _one_line_exit_2("validate", str(big))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00garbage\n")
    assert "not UTF-8 text (byte 0xff at offset 6)" in _one_line_exit_2("validate", str(binary))
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"\0" * 100)
    assert "invalid YAML" in _one_line_exit_2("validate", str(nul))


# -- echoed values are cut short -------------------------------------------------------------


def test_echoed_values_are_cut(tmp_path: Path) -> None:
    cfg = _write(tmp_path, TINY)
    huge = "x" * 100_000
    for setting in (f"name={huge}", f"kvm.{huge}=1", f"vms.{huge}=1", f"{huge}"):
        line = _one_line_exit_2("validate", str(cfg), "--set", setting)
        assert len(line) < 600, line[:200]
        assert "..." in line
    assert clip("a\nb" * 100, 10) == "a\\nba\\n..."
    assert shown("ab") == "'ab'"
    assert len(shown("y" * 1000)) == 80
    long_path = "/d" * 500 + "/file.yaml"
    assert shown_path(long_path).endswith("/file.yaml")
    assert len(shown_path(long_path)) <= 160

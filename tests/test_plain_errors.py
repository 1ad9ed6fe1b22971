"""Everything the CLI prints is literal text (no Rich markup, no emoji codes), and every user
error is one line on stderr with exit code 2: click's usage errors, YAML in ``--set``, unusable
output paths, undecodable or too deeply nested configs. A bug is not a user error."""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sim.cli import main
from sim.results import is_temp_name
from tests.conftest import TINY


def _cfg(tmp_path: Path, **changes: Any) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({**TINY, "duration_s": 0.01, **changes}))
    return p


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), prog_name="memsim")


def _one_line(r: Any, needle: str, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.output
    return lines[0]


# --------------------------------------------------------------------------------------------
# literal text


def test_line_numbers_are_not_emoji(tmp_path: Path) -> None:
    trace = tmp_path / "t.lackey"
    trace.write_text(" L 1000,4\n" * 99 + "garbage\n")
    r = _invoke("replay", str(trace), "--frames", "4", "--policy", "lru")
    _one_line(r, "t.lackey:100: unrecognised line 'garbage'")


def test_a_key_with_markup_is_printed_as_written(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "[/]": 1, "[bold]x:smile:": 2}))
    line = _one_line(_invoke("validate", str(cfg)), "unknown key")
    assert "[/]" in line or "[bold]x:smile:" in line


def test_an_out_path_with_markup_is_written_and_printed_as_given(tmp_path: Path) -> None:
    out = tmp_path / "res[/]x:100:"
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout == f"results: {out}\n"
    assert (out / "summary.json").exists()


def test_tables_print_labels_and_names_literally(tmp_path: Path) -> None:
    label = "[bold red]x[/] :100: [/]"
    sweep = tmp_path / "sw.yaml"
    spec = {"base": {**TINY, "duration_s": 0.01}, "variants": [{"label": label}]}
    sweep.write_text(yaml.safe_dump(spec))
    r = _invoke("sweep", str(sweep), "--workers", "1", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert label in r.stdout
    trace = tmp_path / "t[red]:100:.npy"
    np.save(trace, np.arange(50, dtype=np.int64) % 7)
    r = _invoke("replay", str(trace), "--frames", "4", "--policy", "lru")
    assert r.exit_code == 0, r.output
    assert "replay t[red]:100:.npy" in r.stdout


# --------------------------------------------------------------------------------------------
# click's errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run"], "Missing argument 'CONFIG' (see memsim run --help)"),
        (["run", "{cfg}", "--seed", "-1"], "Invalid value for '--seed'"),
        (["run", "{cfg}", "--bogus"], "No such option '--bogus'"),
        (["sweep", "{cfg}", "--workers", "x"], "'x' is not a valid integer"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["run", "{dir}"], "is a directory"),
        (["run", "{cfg}", "--out", "{cfg}"], "is a file"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    cfg = _cfg(tmp_path)
    r = _invoke(*(a.format(cfg=cfg, dir=tmp_path) for a in args))
    _one_line(r, needle)


def test_help_and_version_still_work() -> None:
    for args in (["--help"], ["run", "--help"], ["--version"], []):
        r = _invoke(*args)
        assert r.exit_code == 0, r.output
        assert r.stdout


# --------------------------------------------------------------------------------------------
# bad input


def test_yaml_syntax_error_in_set_is_one_line(tmp_path: Path) -> None:
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--set", "kvm.ept_ad_bits=[unclosed")
    _one_line(r, "--set kvm.ept_ad_bits: cannot parse value '[unclosed'")


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("host.rmap=off", "host.rmap: Input should be 'anon_vma' or 'none' (got False); YAML"),
        ("reclaim.policy=no", "reclaim.policy: unknown value 'False'; expected one of"),
    ],
)
def test_a_yaml_boolean_where_a_word_is_expected_says_to_quote_it(
    tmp_path: Path, setting: str, needle: str
) -> None:
    """YAML 1.1 reads off/no/yes/on as booleans: the error names the key and says to quote."""
    line = _one_line(_invoke("validate", str(_cfg(tmp_path)), "--set", setting), needle)
    assert line.endswith("quote the value"), line


def test_a_boolean_where_a_boolean_is_expected_is_accepted(tmp_path: Path) -> None:
    r = _invoke("validate", str(_cfg(tmp_path)), "--set", "kvm.ept_ad_bits=off")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "content",
    [b"name: \xff\xfe caf\xe9\n", bytes(range(256)) * 8, "name: é\n".encode("utf-16")],
    ids=["latin-1", "binary", "utf-16"],
)
@pytest.mark.parametrize("cmd", ["run", "validate", "sweep", "plan"])
def test_configs_that_are_not_utf8_are_one_line(tmp_path: Path, content: bytes, cmd: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(content)
    _one_line(_invoke(cmd, str(cfg)), "bad.yaml: not UTF-8 text")


def test_a_sweep_whose_base_is_binary_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_bytes(bytes(range(256)))
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: base.yaml\n")
    _one_line(_invoke("sweep", str(sweep)), "not UTF-8 text")


def test_deeply_nested_values_are_one_line(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    deep = tmp_path / "deep.yaml"
    deep.write_text(cfg.read_text() + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    _one_line(_invoke("validate", str(deep)), "nested more than")
    _one_line(_invoke("validate", str(cfg), "--set", "x=" + "[" * 5000), "nested more than")


# --------------------------------------------------------------------------------------------
# unusable output paths


def test_out_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for out in ("afile/sub", "afile/a/b"):
        r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(tmp_path / out))
        _one_line(r, f"cannot write results here: {tmp_path / 'afile'} is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x"


def test_out_with_a_name_too_long_is_one_line(tmp_path: Path) -> None:
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(tmp_path / ("n" * 300)))
    _one_line(r, "name is 300 bytes")
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(tmp_path / ("n" * 300) / "x"))
    _one_line(r, "file name too long")
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]


def _fail_writes(monkeypatch: Any, code: int, only: str) -> None:
    """Make writing files named ``only`` (under any directory) fail with ``code``."""
    real = pathlib.Path.write_text

    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name == only:
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_unwritable_out_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: Any, code: int, needle: str
) -> None:
    cfg = _cfg(tmp_path)
    _fail_writes(monkeypatch, code, "summary.json")
    r = _invoke("run", str(cfg), "-q", "--out", str(tmp_path / "res"))
    _one_line(r, f"res: cannot write results here: {needle}; choose another --out")
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]


def test_a_full_disk_while_writing_tables_is_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    """pyarrow reports a full disk with an errno but no file name."""
    from sim.record import Recorder

    def close(self: Recorder) -> dict[str, int]:
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28]")

    monkeypatch.setattr(Recorder, "close", close)
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(tmp_path / "res"))
    _one_line(r, "no space left on the device")
    assert not [p for p in os.listdir(tmp_path) if is_temp_name(p) or p == "res"]


def test_an_unreadable_input_beside_the_output_is_not_called_an_output_error(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """An OS error about some other file is not blamed on --out."""
    import sim.engine

    def build_world(*_: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "trace.npy"))

    monkeypatch.setattr(sim.engine, "build_world", build_world)
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(tmp_path / "res"))
    assert r.exit_code == 1
    assert isinstance(r.exception, PermissionError)


def test_a_bug_is_not_a_user_error(tmp_path: Path, monkeypatch: Any) -> None:
    import sim.engine

    def build_world(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sim.engine, "build_world", build_world)
    r = _invoke("run", str(_cfg(tmp_path)), "-q", "--out", str(tmp_path / "res"))
    assert r.exit_code == 1
    assert isinstance(r.exception, RuntimeError)
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]

"""``--out`` never destroys anything: a result replaces only an earlier memsim result of its
kind, and a refused target is left byte for byte as it was; killed processes' temporaries are
removed by the next run, and nothing else is."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sim.cli import main
from sim.engine import run_scenario
from sim.results import TEMP_RE, temp_name
from tests.conftest import TINY, tiny


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a link's target, or "dir" (links are not
    followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _user_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "important.txt").write_text("the only copy\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return path


def _inputs(tmp_path: Path) -> dict[str, Path]:
    """A config, a trace, a sweep and a plan file, and a finished run to report on."""
    cfg = tmp_path / "in" / "cfg.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({**TINY, "duration_s": 0.01}))
    trace = tmp_path / "in" / "t.npy"
    np.save(trace, (np.random.default_rng(1).zipf(1.3, 2000) % 200).astype(np.int64))
    sweep = tmp_path / "in" / "sw.yaml"
    sweep.write_text(yaml.safe_dump({"base": "cfg.yaml", "seeds": [1]}))
    plan = tmp_path / "in" / "plan.yaml"
    base = {k: v for k, v in TINY.items() if k != "vms"}
    plan.write_text(
        yaml.safe_dump(
            {
                "base": {**base, "vms": [], "duration_s": 0.01},
                "profile": {"name": "vm", "memory_mib": 4},
                "search": {"variable": "vms", "low": 1, "high": 2},
                "slo": {"metric": "stall_mean_p99_vms", "max": 0.5},
                "seeds": [1],
            }
        )
    )
    run = tmp_path / "in" / "run"
    run_scenario(tiny(duration_s=0.01), run, command=[])
    return {"cfg": cfg, "trace": trace, "sweep": sweep, "plan": plan, "run": run}


def _commands(inp: dict[str, Path], out: str) -> dict[str, list[str]]:
    return {
        "run": ["run", str(inp["cfg"]), "--out", out],
        "mrc": ["mrc", str(inp["trace"]), "--policies", "fifo", "--out", out],
        "report": ["report", str(inp["run"]), "--out", out],
        "sweep": ["sweep", str(inp["sweep"]), "--workers", "1", "--out", out],
        "plan": ["plan", str(inp["plan"]), "--workers", "1", "--out", out],
    }


COMMANDS = ["run", "mrc", "report", "sweep", "plan"]


def _refused(r: Any, needle: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_onto_a_users_directory_is_refused_and_left_alone(tmp_path: Path, cmd: str) -> None:
    inp = _inputs(tmp_path)
    keep = _user_dir(tmp_path / "keep")
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(main, _commands(inp, str(keep))[cmd])
    _refused(r, "keep: exists and is not a memsim")
    assert "important.txt" in r.stderr
    assert "choose another --out" in r.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("where", [".", "..", "cwd", "ancestor"])
def test_out_onto_the_current_directory_or_a_parent_is_refused(
    tmp_path: Path, monkeypatch: Any, cmd: str, where: str
) -> None:
    inp = _inputs(tmp_path)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    out = {".": ".", "..": "..", "cwd": str(work), "ancestor": str(tmp_path / "a")}[where]
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(main, _commands(inp, out)[cmd])
    _refused(r, "is the current directory or one of its parents")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_that_is_a_symlink_is_refused_and_its_target_left_alone(
    tmp_path: Path, cmd: str
) -> None:
    inp = _inputs(tmp_path)
    keep = _user_dir(tmp_path / "keep")
    (tmp_path / "link").symlink_to(keep)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = _snapshot(tmp_path)
    for link in ("link", "dangling"):
        r = CliRunner().invoke(main, _commands(inp, str(tmp_path / link))[cmd])
        _refused(r, f"{link}: is a symbolic link")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("cmd", COMMANDS)
def test_an_unusable_out_is_one_line(tmp_path: Path, cmd: str) -> None:
    inp = _inputs(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(main, _commands(inp, str(tmp_path / "afile" / "sub"))[cmd])
    _refused(r, "afile/sub: cannot write results here: ")
    assert "afile is a file, not a directory" in r.stderr
    assert _snapshot(tmp_path) == before


def test_a_result_replaces_only_an_earlier_result_of_its_kind(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    mrc_dir = tmp_path / "m"
    r = CliRunner().invoke(main, _commands(inp, str(mrc_dir))["mrc"])
    assert r.exit_code == 0, r.output
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(main, _commands(inp, str(mrc_dir))["run"])
    _refused(r, "is a memsim mrc directory, not a run result")
    r = CliRunner().invoke(main, _commands(inp, str(inp["run"]))["sweep"])
    _refused(r, "is a memsim run directory, not a sweep directory")
    assert _snapshot(tmp_path) == before
    r = CliRunner().invoke(main, _commands(inp, str(mrc_dir))["mrc"])  # same kind: replaced
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path)) == ["in", "m"]  # no temporaries left beside it


def test_a_result_holding_a_file_memsim_did_not_write_is_not_replaced(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    (inp["run"] / "my_notes.md").write_text("analysis I wrote")
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(main, _commands(inp, str(inp["run"]))["run"])
    _refused(r, "but also holds my_notes.md, which memsim did not write")
    assert _snapshot(tmp_path) == before


def test_a_run_with_its_report_inside_is_replaced_whole(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    r = CliRunner().invoke(main, ["report", str(inp["run"])])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, _commands(inp, str(inp["run"]))["run"])
    assert r.exit_code == 0, r.output
    assert not (inp["run"] / "report").exists()
    manifest = json.loads((inp["run"] / "manifest.json").read_text())
    assert manifest["memsim"] == {"kind": "run", "format": 1}
    assert set(manifest["files"]) == set(os.listdir(inp["run"]))


@pytest.mark.parametrize("cmd", COMMANDS)
def test_an_empty_directory_may_be_used(tmp_path: Path, cmd: str) -> None:
    inp = _inputs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, _commands(inp, str(empty))[cmd])
    assert r.exit_code == 0, r.output
    kind = json.loads((empty / "manifest.json").read_text())["memsim"]["kind"]
    assert kind == cmd


def test_a_sweep_directory_from_before_manifests_is_resumed(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    out = tmp_path / "old"
    (out / "runs").mkdir(parents=True)
    (out / ".lock").write_text("")
    r = CliRunner().invoke(main, _commands(inp, str(out))["sweep"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["memsim"]["kind"] == "sweep"


def test_a_sweep_never_deletes_foreign_files_in_its_directory(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    out = tmp_path / "sw"
    assert CliRunner().invoke(main, _commands(inp, str(out))["sweep"]).exit_code == 0
    (out / "runs" / "notes.txt").write_text("mine")
    foreign = out / "runs" / ".x.tmp-999999999"  # an old-style or someone else's temp name
    foreign.mkdir()
    r = CliRunner().invoke(main, _commands(inp, str(out))["sweep"])
    assert r.exit_code == 0, r.output
    assert (out / "runs" / "notes.txt").read_text() == "mine"
    assert foreign.is_dir()


@pytest.mark.parametrize(
    "name", ["../escaped", "/abs/x", "", ".", "..", ".hidden", "a/b", "x" * 201]
)
@pytest.mark.parametrize("what", ["sweep", "plan"])
def test_sweep_and_plan_names_cannot_leave_results(
    tmp_path: Path, monkeypatch: Any, name: str, what: str
) -> None:
    inp = _inputs(tmp_path)
    path = inp[what]
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "name": name}))
    monkeypatch.chdir(tmp_path / "in")
    before = _snapshot(tmp_path)
    for args in ([what, str(path), "--workers", "1"], ["validate", str(path)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "name" in r.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["..tmp-x", ".x.tmp-1", ".", "..", ".hidden", "a/b", "x" * 201])
def test_scenario_names_that_are_not_plain_directory_names_are_refused(
    tmp_path: Path, name: str
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "name": name}))
    r = CliRunner().invoke(main, ["run", str(cfg), "-q", "--out", str(tmp_path / "res")])
    assert r.exit_code == 2
    assert "name" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == ["cfg.yaml"]


def test_out_named_like_a_temporary_is_refused(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    out = tmp_path / temp_name("res")
    r = CliRunner().invoke(main, _commands(inp, str(out))["run"])
    _refused(r, "shape of a memsim temporary")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# what killed processes leave


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _temp(parent: Path, name: str, pid: int, host: str | None = None) -> Path:
    t = temp_name(name).rsplit("-", 1)[0] + f"-{pid}"
    if host is not None:
        t = t.replace(TEMP_RE.fullmatch(t)["host"], host)  # type: ignore[index]
    (parent / t).mkdir()
    (parent / t / "faults.parquet").write_bytes(b"half written")
    return parent / t


def test_the_next_run_removes_temporaries_of_dead_processes_only(tmp_path: Path) -> None:
    dead = _temp(tmp_path, "res", _dead_pid())
    dead_other = _temp(tmp_path, "other-run", _dead_pid())
    dead_file = tmp_path / (temp_name("runs.parquet").rsplit("-", 1)[0] + f"-{_dead_pid()}")
    dead_file.write_bytes(b"x")
    live = _temp(tmp_path, "busy", os.getppid())  # a live process: maybe still writing
    remote = _temp(tmp_path, "res", _dead_pid(), host="00000000")  # another host's: unknowable
    legacy = tmp_path / f".res.tmp-{_dead_pid()}"  # not memsim's pattern: not ours to judge
    legacy.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / (temp_name("linked").rsplit("-", 1)[0] + f"-{_dead_pid()}")
    link.symlink_to(target)
    (target / "keep.txt").write_text("x")
    run_scenario(tiny(duration_s=0.01), tmp_path / "res", command=[])
    assert not [p for p in (dead, dead_other, dead_file) if p.exists()]
    assert all(p.is_dir() for p in (live, remote, legacy))
    assert link.is_symlink()
    assert (target / "keep.txt").read_text() == "x"
    assert (tmp_path / "res" / "summary.json").exists()


def test_a_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    import sim.engine

    def boom(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sim.engine, "build_world", boom)
    with pytest.raises(RuntimeError):
        run_scenario(tiny(duration_s=0.01), tmp_path / "res")
    assert os.listdir(tmp_path) == []

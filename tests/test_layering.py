"""Dependencies point one way (DESIGN.md): the host never imports KVM or the guest; data
structures and policies never import SimPy; the simulator never imports plotting libraries;
analysis reads result files through the results-schema module only; one module publishes and
deletes result directories."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parent.parent / "sim"


def _imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
    return mods


def _files(*parts: str) -> list[Path]:
    return sorted((SIM.joinpath(*parts)).glob("*.py"))


@pytest.mark.parametrize("path", _files("host"), ids=lambda p: p.name)
def test_host_never_imports_kvm_or_guest(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith(("sim.kvm", "sim.guest"))}
    assert not bad, f"{path.name} imports {bad}: KVM plugs in through the notifier ops"


PURE = [
    "host/memory.py",
    "host/rmap.py",
    "host/mmu_notifier.py",
    "host/swap.py",
    "host/vmscan.py",
    "host/mm.py",
    "host/oom.py",
    "kvm/mmu.py",
    "kvm/spte.py",
    "kvm/notifier.py",
    "kvm/shortcut.py",
    "guest/workloads.py",
    *[f"reclaim/{p.name}" for p in _files("reclaim")],
]


@pytest.mark.parametrize("rel", PURE)
def test_data_structures_and_policies_do_not_import_simpy(rel: str) -> None:
    assert "simpy" not in _imports(SIM / rel)


@pytest.mark.parametrize("path", sorted(SIM.rglob("*.py")), ids=lambda p: p.name)
def test_simulator_never_imports_plotting(path: Path) -> None:
    assert not {m for m in _imports(path) if m.split(".")[0] in {"seaborn", "matplotlib"}}


@pytest.mark.parametrize("path", _files("reclaim"), ids=lambda p: p.name)
def test_policies_never_see_kvm(path: Path) -> None:
    assert not {m for m in _imports(path) if m.startswith("sim.kvm")}


@pytest.mark.parametrize(
    "path", sorted((SIM.parent / "analysis").glob("*.py")), ids=lambda p: p.name
)
def test_analysis_reads_result_files_not_simulator_internals(path: Path) -> None:
    assert not {m for m in _imports(path) if m.split(".")[0] == "sim"} - {"sim.results"}


def test_the_results_module_needs_nothing_of_the_simulator() -> None:
    """``analysis`` imports ``sim.results``, so it must stay a schema module: no engine, no
    numpy, no SimPy behind it."""
    mods = _imports(SIM / "results.py") | _imports(SIM / "lifecycle.py")
    assert {m for m in mods if m.split(".")[0] == "sim"} <= {"sim", "sim.errors", "sim.lifecycle"}
    assert not {m for m in mods if m.split(".")[0] in {"numpy", "pandas", "simpy", "pyarrow"}}


DELETES = ("rmtree", "os.rename", "os.replace")


@pytest.mark.parametrize(
    "path",
    [p for p in [*sorted(SIM.rglob("*.py")), *sorted((SIM.parent / "analysis").glob("*.py"))]],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_only_the_results_module_renames_or_deletes_results(path: Path) -> None:
    """The atomic publish and the cleanup of what killed processes leave have one home, so
    the rules about what may be replaced or deleted hold everywhere."""
    if path == SIM / "results.py":
        return
    text = path.read_text()
    assert not [d for d in DELETES if d in text], path

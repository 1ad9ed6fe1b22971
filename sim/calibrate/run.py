"""``memsim calibrate``: measure the kernel, predict it with memsim, fit costs, report.

Steps
    1. Preflight (root, ``/dev/kvm``, a C compiler, cgroup v1 memory, no other swap), unless
       ``--from`` reuses the kernel measurements of an earlier result directory.
    2. Real runs (:func:`sim.calibrate.harness.run_kernel_all`): one session that makes the
       swapfile, then per scenario the sysctls and per repetition a fresh memory cgroup; the
       session undoes all of it on every exit path.
    3. memsim on the same streams under every configured policy, with default costs.
    4. The cost fit on the ``fit`` scenarios, written as ``profile.yaml``, and memsim again
       (the held policy) with that profile included, for the time comparison.
    5. The result directory, published atomically (:mod:`sim.calibrate.report`).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.calibrate import fit, harness, host, report, vmm
from sim.calibrate.config import CalibrationConfig
from sim.calibrate.harness import HostFacts, Phase, Run
from sim.calibrate.vmm import CalibrateError
from sim.errors import UserError
from sim.results import check_target, staged, write_atomic, write_manifest


def preflight(h: host.Host | None = None) -> None:
    """Refuse early, in one line, where the kernel side cannot run."""
    h = h or host.Host()
    if not h.is_root():
        raise CalibrateError("memsim calibrate must run as root (swapon, cgroups, sysctls)")
    if not vmm.kvm_usable():
        raise CalibrateError(f"{vmm.KVM_DEVICE} is missing or not usable: no KVM on this host")
    if vmm.compiler() is None:
        raise CalibrateError("no C compiler (cc, gcc or clang) to build the calibration VMM")
    if not (h.cgroup_root / "memory.limit_in_bytes").exists():
        raise CalibrateError(
            f"no cgroup v1 memory controller at {h.cgroup_root}: the harness needs "
            "memory.limit_in_bytes and memory.memsw.limit_in_bytes"
        )
    if swaps := h.active_swaps():
        raise CalibrateError(f"swap is already active ({swaps[0]}): swapoff it first")


def load_kernel(directory: Path) -> tuple[list[Run], HostFacts]:
    """The kernel measurements of an earlier calibration result."""
    try:
        raw = json.loads((directory / "kernel.json").read_text())
        facts = HostFacts.from_json(json.loads((directory / "host.json").read_text()))
        runs = [Run(**{**r, "phases": [Phase(**p) for p in r["phases"]]}) for r in raw]
        return runs, facts
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CalibrateError(
            f"--from {directory}: not a calibration result ({exc.__class__.__name__}: {exc})"
        ) from None


def keep_kernel(
    out: Path, cfg: CalibrationConfig, kernel: list[Run], facts: HostFacts, started: float
) -> None:
    """Publish the kernel's measurements in ``out`` at once, as a result of their own, so that
    a failure on memsim's side loses none of the real runs: ``--from OUT`` redoes the rest.
    The full result replaces it."""
    with staged(out, "calibrate") as stage:
        report.write_kernel(stage.tmp, cfg, kernel, facts)
        _manifest(
            stage.tmp,
            started,
            stage="kernel measurements only (memsim calibrate --from this directory)",
        )


def _manifest(directory: Path, started: float, **fields: Any) -> None:
    """A calibration result's manifest (written last): when, how long, which kernel."""
    write_manifest(
        directory,
        "calibrate",
        started=started,
        wall_s=time.time() - started,
        kernel=platform.release(),
        **fields,
    )


def fit_rows(cfg: CalibrationConfig, kernel: list[Run]) -> tuple[list[dict[str, Any]], float]:
    """The fit scenarios' median phases (fill and run), and their median scanned/reclaimed."""
    out: list[dict[str, Any]] = []
    ratios: list[float] = []
    for sc in cfg.scenarios:
        if sc.use != "fit":
            continue
        med = harness.median_run([r for r in kernel if r.scenario == sc.name])
        for name in harness.PHASES:
            if name in med:
                out.append(med[name])
                if med[name]["pgsteal"]:
                    ratios.append(med[name]["pgscan"] / med[name]["pgsteal"])
    return out, statistics.median(ratios) if ratios else 1.0


def calibrate(
    cfg: CalibrationConfig,
    out: Path,
    say: Callable[[str], None],
    from_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the whole calibration into ``out``; returns the verdict."""
    started = time.time()
    if from_dir is not None:
        kernel, facts = load_kernel(from_dir)
        missing = {sc.name for sc in cfg.scenarios} - {r.scenario for r in kernel}
        if missing:
            raise CalibrateError(f"--from {from_dir}: no kernel runs of {sorted(missing)[0]}")
    else:
        check_target(out, "calibrate")  # a refused --out: before minutes of real runs
        preflight()
        kernel, facts = harness.run_kernel_all(cfg, host.session, say)
        keep_kernel(out, cfg, kernel, facts, started)
    try:
        return _predict(cfg, out, say, kernel, facts, started, from_dir)
    except UserError as exc:
        if from_dir is not None:
            raise
        msg = f"{exc} (the real runs are kept in {out}: redo the rest with --from {out})"
        raise CalibrateError(msg) from None


def _predict(
    cfg: CalibrationConfig,
    out: Path,
    say: Callable[[str], None],
    kernel: list[Run],
    facts: HostFacts,
    started: float,
    from_dir: Path | None,
) -> dict[str, Any]:
    """memsim on every scenario, the fit, memsim with the profile, the result directory."""
    with (
        staged(out, "calibrate") as stage,
        tempfile.TemporaryDirectory(prefix="memsim-calibrate-") as tmp,
    ):
        work = Path(tmp)
        say("memsim, default costs:")
        sims = harness.run_sim_all(cfg, facts, work, say)
        phases, ratio = fit_rows(cfg, kernel)
        if not phases:
            raise CalibrateError("every fit scenario was OOM-killed: nothing to fit costs on")
        f = fit.fit(phases)
        if f.rows <= len(fit.FEATURES):
            say(
                f"warning: the cost fit has {f.rows} phases for {len(fit.FEATURES)} costs "
                "(underdetermined); mark more scenarios use: fit"
            )
        about = {
            "fit_scenarios": [s.name for s in cfg.scenarios if s.use == "fit"],
            "check_scenarios": [s.name for s in cfg.scenarios if s.use == "check"],
            "pgscan_per_pgsteal": round(ratio, 3),
            "fit_phases": f.rows,
            "host": platform.node(),
            "kernel": platform.release(),
        }
        prof = fit.profile(f, ratio, about)
        prof_path = work / "profile.yaml"
        write_atomic(prof_path, report.profile_text(prof))
        say(f"fitted: {', '.join(f'{k} {v:,.1f}' for k, v in f.costs.items())} (R^2 {f.r2:.3f})")
        say("memsim, fitted profile:")
        timed = harness.run_sim_all(
            cfg, facts, work, say, profile=prof_path, policies=[cfg.policies[0]]
        )
        verdict = report.write(stage.tmp, cfg, kernel, sims, timed, prof, facts)
        _manifest(stage.tmp, started, from_dir=str(from_dir) if from_dir else None, verdict=verdict)
    return verdict

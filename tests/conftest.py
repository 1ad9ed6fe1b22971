"""Shared fixtures: tiny scenarios and hypothesis profiles."""

from __future__ import annotations

import copy
import os
import signal
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sim.config import Scenario, parse_scenario

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A shell starts a background job (``pytest &``, ``.ci/run &`` in a script) with SIGINT ignored,
# and memsim rightly leaves an ignored signal ignored, as every program run with ``&`` or
# ``nohup`` should. The tests of Ctrl-C model a foreground run: Python's own SIGINT handler is
# put back here (it is restored to the default in the runs the tests start, which then install
# theirs), so those tests do not depend on how the suite itself was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 7,
    "duration_s": 0.05,
    "host": {"memory_mib": 8},
    "swap": {"size_mib": 64, "latency_cv": 0.0},
    "vms": [
        {
            "name": "vm",
            "count": 2,
            "memory_mib": 8,
            "vcpus": 2,
            "access_rate_per_s": 2_000_000,
            "workload": {"type": "zipf", "alpha": 0.9},
        }
    ],
    "engine": {"batch_accesses": 128, "sample_interval_ms": 1.0},
}


def tiny(**changes: Any) -> Scenario:
    """A small overcommitted scenario (8 MiB host, two 8 MiB guests) with changes applied.

    ``changes`` are dotted paths with ``__`` for dots, e.g. ``kvm__mmu_notifiers=False``.
    """
    raw = copy.deepcopy(TINY)
    for key, value in changes.items():
        parts = key.split("__")
        cur = raw
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur.setdefault(p, {})
        if isinstance(cur, list):
            cur[int(parts[-1])] = value
        else:
            cur[parts[-1]] = value
    return parse_scenario(raw, "tiny")


def run_checked(w: Any, every_ns: int = 1_000_000) -> int:
    """Run a world to its horizon, checking every invariant every ``every_ns`` of simulated
    time (watermark worlds) and at the end; returns how many checks ran."""
    checks = [0]
    if hasattr(w, "env"):

        def checker() -> Any:
            while True:
                yield w.env.timeout(every_ns)
                w.check()
                checks[0] += 1

        w.start()
        w.env.process(checker())
    w.run()
    w.check()
    return checks[0] + 1


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--update-golden``: rewrite tests/golden/*.json from this run (see tests/test_golden.py)."""
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite the golden numbers in tests/golden/ instead of comparing with them.",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether this run rewrites the golden files."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """A fresh copy of the tiny scenario's raw dict."""
    return copy.deepcopy(TINY)


def drive(gen: Any) -> Any:
    """Run a policy generator (a reclaim step that yields to let time pass) to its end; its
    return value."""
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value

"""A seeded fuzzer of memsim's inputs: configs, sweep and plan files, traces, CLI flags, ``--out``
targets, trace paths, and ``--set``/``--seeds`` on sweeps and plans.

Cases are generated from a seed by mutating the committed configs (keys deleted, duplicated or
misspelt, values swapped for other types, extreme numbers, huge or hostile strings, nested
lists, text-level damage such as alias bombs, NULs and non-UTF-8 bytes), by corrupting trace
files and by combining CLI flags. Each runs the CLI in-process (``click.testing.CliRunner``),
a few as real subprocesses. The invariants checked on every invocation:

- ``traceback``: the command ends by ``sys.exit`` (no uncaught exception, no traceback text);
- ``exit_code``: the exit code is 0 or 2 (1 only where documented: a plan whose runs failed);
- ``multi_line``: on exit 2, stderr is exactly one line;
- ``outside``: no file outside the case's directory is created or changed (the repository is
  snapshotted around every case, and every case runs from its own directory);
- ``validated_but_failed``: a scenario, sweep or plan that ``validate`` accepts runs (with its
  simulated time cut short) to exit code 0, every sweep row ``ok``;
- ``user_files``: ``--out`` onto a directory holding a user's file leaves that file as it was;
- ``scaled_invalid``: a file ``memsim scale`` wrote from a validated scenario or plan validates.

``python -m tests.fuzz [--seed N] [--before]`` prints the cases tried and failed per family;
``--before`` drops the options the code under test does not have (to measure older code) and
bounds each case's time and memory. ``tests/test_fuzz.py`` runs it in the default suite.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from click.testing import CliRunner

from tests.conftest import TINY as CONFTEST_TINY

REPO = Path(__file__).resolve().parent.parent
SEED = 20261202
MAX_MEMORY = "512M"  # every command that can allocate gets it: fuzz cases stay small
RUN_SECONDS = 0.0002  # simulated time of the runs that check "validated, so it runs"


TINY: dict[str, Any] = {**copy.deepcopy(CONFTEST_TINY), "duration_s": 0.002}

EXTREMES: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    0,
    1,
    0.5,
    1e300,
    -1e300,
    1e-300,
    2**31,
    2**63,
    2**64,
    10**23,
    4096,
    4097,
    67108864,
]
STRINGS: list[str] = [
    "",
    "x" * 20_000,
    "üñí€😀",
    "[/]",
    ":100:",
    "[bold red]x",
    "a\nb",
    "..",
    "../x",
    "/dev/zero",
    "~",
    "%s%n",
    "\t",
    "null",
    "yes",
    "0x10",
    "1e3",
    "two_list",
    "trace",
]
NESTED: list[Any] = [[], {}, [[[[[1]]]]], {"a": {"b": [1, {"c": None}]}}, [1, "a", None, True]]
GUESTS: list[Any] = [
    {},
    {"footprint_mib": 300},
    {"footprint_mib": 300, "reclaim": {"policy": "mglru"}},
    {"footprint_mib": 64, "swap": {"size_mib": 0}},
    {"footprint_mib": 300, "swap": {"size_mib": 8, "page_cluster": 3}},
    {"reclaim": {"policy": "lru"}},
    {"reclaim": {"policy": "two_list", "trigger": "demand"}},
    {"swap": {"device": "zram"}},
    {"footprint_mib": 0},
    {"footprint_mib": 2**40},
    {"min_free_kbytes": -1},
    {"footprnt_mib": 64},
    {"footprint_mib": 200, "job": {"run_s": 0.05, "idle_s": 0.01}},
    {"footprint_mib": 100, "file_mib": 200},
    {"footprint_mib": 300, "file_mib": 32, "disk": "host_swap"},
    {"disk": "nfs"},
    {"footprint_mib": 64, "shuffle": True},
    {"file_mib": -1},
    {"job": {"run_s": 0}},
    {"job": {"idle_s": 1}},
    {"footprint_mib": 300, "file_mib": 32, "disk_cache": "writeback"},
    {"footprint_mib": 300, "disk_cache": "writethrough", "disk": "host_swap"},
    {"footprint_mib": 300, "disk_cache": "writeback", "swap": {"size_mib": 8, "page_cluster": 3}},
    {"disk_cache": "unsafe"},
    {"footprint_mib": 300, "file_mib": 32, "read_ahead_kb": 0},
    {"footprint_mib": 300, "file_mib": 32, "read_ahead_kb": 4096},
    {"read_ahead_kb": -4},
    {"disk_cache": None},
    None,
    "x",
]
BALLOONS: list[Any] = [
    {"enabled": True},
    {"enabled": True, "free_page_reporting": {"enabled": True}},
    {"enabled": True, "free_page_reporting": {"enabled": True, "order": 2, "delay_ms": 50}},
    {"enabled": True, "initial_target_mib": 4, "free_page_reporting": {"enabled": True}},
    {"enabled": True, "free_page_reporting": {"enabled": True, "order": 0, "delay_ms": 1}},
    {"enabled": False, "free_page_reporting": {"enabled": True}},
    {"enabled": True, "free_page_reporting": {"enabled": True, "order": 11}},
    {"enabled": True, "free_page_reporting": {"enabled": True, "delay_ms": 0}},
    {"enabled": True, "free_page_reporting": {"enabled": True, "costs": {"block_ns": -1}}},
    {"enabled": True, "free_page_reporting": {"enabld": True}},
    {"enabled": True, "free_page_reporting": None},
    {"enabled": True, "free_page_reporting": "x"},
    {
        "enabled": True,
        "free_page_hint": {"enabled": True, "migrations_s": [0.01], "precopy_s": 0.02},
    },
    {"enabled": True, "free_page_hint": {"enabled": True, "migrations_s": [0.0, 0.01]}},
    {"enabled": False, "free_page_hint": {"enabled": True}},
    {"enabled": True, "free_page_hint": {"enabled": True, "migrations_s": [-1.0]}},
    {"enabled": True, "free_page_hint": {"enabled": True, "precopy_s": 0}},
]
TLBS: list[Any] = [
    {},
    {"entries": 64, "ways": 4},
    {"entries": 1, "ways": 1, "context_switch_us": 1e-3},
    {"entries": 10, "ways": 4},
    {"entries": 0},
    {"entries": 1536, "ways": 12, "context_switch_us": -1},
    {"ways": 7},
    {"entris": 64},
    None,
    "x",
]
MEMCGS: list[Any] = [
    {"max_mib": 1},
    {"max_mib": 0, "swap_max_mib": 0},
    {"high_mib": 0},
    {"low_mib": 67108864, "min_mib": 67108864},
    {"max_mib": 4, "high_mib": 2, "low_mib": 8, "min_mib": 1, "swap_max_mib": 1},
    {"max_mib": -1},
    {"swap_max_mib": 2**63},
    {"maxmib": 1},
    {},
    {"max_mib": 4, "vmm_overhead_kib": 1024},
    {"max_mib": 1, "vmm_overhead_kib": 1024},
    {"vmm_overhead_kib": 2**40, "swap_max_mib": 0},
    {"max_mib": 0, "vmm_overhead_kib": 0},
    {"max_mib": 4, "zswap_writeback": False},
    {"zswap_writeback": "no"},
]
MEMCG_STATS: list[Any] = ["lazy", "lazy", "exact", "LAZY", "", 1, None]
ROTATIONAL: list[Any] = [True, True, False, "yes", 1, None, "hdd"]
COMPRESSED: list[Any] = [
    {},
    {"device": "zram"},
    {"zswap": {"enabled": True, "max_pool_percent": 1}},
    {"zswap": {"enabled": True, "max_pool_percent": 100, "accept_threshold_percent": 0}},
    {"zswap": {"enabled": True, "store_incompressible": False}},
]
KEYS = ["colour", "memroy_mib", "vms.0", "[/]", ":100:", "", "x" * 300, "ü"]
FILES: list[Any] = [  # host_files sections; "@vm" is replaced by the last VM's name
    {"size_mib": 1},
    {"size_mib": 1, "memcg": "@vm"},
    [{"size_mib": 1, "memcg": "@vm"}, {"size_mib": 2, "write_ratio": 0.5}],
    [{"size_mib": 1, "memcg": "nope"}],
    [{"size_mib": 1, "memcg": 3}],
    [{"size_mib": 1}, {"size_mib": 0}],
    [],
    [None],
    {"size_mib": 1, "memcg": None},
]


# --------------------------------------------------------------------------------------------
# running one command


@dataclass
class Outcome:
    """What one CLI invocation did."""

    args: list[str]
    code: int
    stdout: str
    stderr: str
    error: str | None  # the traceback of an uncaught exception


@dataclass
class Violation:
    """One broken invariant."""

    family: str
    case: str
    kind: str
    tag: str
    detail: str


class Harness:
    """Runs cases and collects violations (``before``: adapt to older code and bound it)."""

    def __init__(self, root: Path, *, before: bool = False) -> None:
        from sim.cli import main

        self.main, self.root, self.before = main, root, before
        self.violations: list[Violation] = []
        self.tried: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.family = self.case = ""
        self.accepted: Counter[str] = Counter()  # cases whose input was valid and then ran

    # -- invoking ------------------------------------------------------------------------------
    def supports(self, command: str, option: str) -> bool:
        cmd = self.main.commands.get(command)
        return cmd is not None and any(option in p.opts for p in cmd.params)

    def invoke(self, args: list[str], *, memory: bool = True) -> Outcome:
        """Run ``memsim ARGS`` in-process (with ``--max-memory`` where the command has it)."""
        args = [str(a) for a in args]
        wants = memory and args and "--max-memory" not in args
        if wants and self.supports(args[0], "--max-memory"):
            args = [*args, "--max-memory", MAX_MEMORY]
        if self.before:
            args = self._drop_unsupported(args)
        try:
            r = CliRunner().invoke(self.main, args, catch_exceptions=True)
        except _Timeout:  # the rest of the case would run without a time limit: end it
            self.flag("hang", "", Outcome(args, -1, "", "", None), "no answer in the time")
            raise
        finally:
            _reset_memory_limit()  # --max-memory is per process: do not leak it to later cases
        error = None
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            error = "".join(traceback.format_exception(*r.exc_info))  # type: ignore[misc]
        return Outcome(args, r.exit_code, r.stdout, r.stderr, error)

    def _drop_unsupported(self, args: list[str]) -> list[str]:
        """Older code lacks --max-memory: drop it (the case's memory is bounded instead)."""
        out, i = [], 0
        while i < len(args):
            if args[i] == "--max-memory" and not self.supports(args[0], "--max-memory"):
                i += 2
                continue
            out.append(args[i])
            i += 1
        return out

    # -- checking ------------------------------------------------------------------------------
    def check(self, o: Outcome, *, tag: str = "", documented_1: bool = False) -> bool:
        """Record the violations of one outcome; True if it had none."""
        before = len(self.violations)
        text = o.stdout + o.stderr
        if o.error is not None:
            why = "markup" if "MarkupError" in o.error or "rich" in o.error.lower() else tag
            self.flag("traceback", why, o, o.error.strip().splitlines()[-1][:300])
        elif "Traceback (most recent call last)" in text:
            self.flag("traceback", tag, o, "a traceback was printed")
        elif o.code not in (0, 2) and not (o.code == 1 and documented_1):
            self.flag("exit_code", tag, o, f"exit code {o.code}: {o.stderr.strip()[:200]}")
        if o.code == 2 and o.error is None:
            lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
            if len(lines) != 1:
                why = tag
                if o.stderr.lstrip().startswith("Usage:"):
                    why = "click_usage"
                elif len(lines) > 1 and lines[-1].startswith("error:"):
                    why = "progress"  # a progress line printed before a late user error
                self.flag("multi_line", why, o, f"{len(lines)} lines: {o.stderr[:200]!r}")
        return len(self.violations) == before

    def flag(self, kind: str, tag: str, o: Outcome | None, detail: str) -> None:
        args = " ".join(a[:60] for a in o.args) if o is not None else ""
        self.violations.append(Violation(self.family, self.case, kind, tag, f"{args}: {detail}"))

    def run_case(self, family: str, name: str, fn: Callable[[Path], None]) -> None:
        """Run one case in its own directory (also the current directory), checking that
        nothing outside it changed."""
        self.family, self.case = family, name
        self.tried[family] += 1
        before = len(self.violations)
        where = self.root / family / name
        where.mkdir(parents=True)
        old_cwd = os.getcwd()
        snap = _snapshot(REPO)
        os.chdir(where)
        try:
            with _time_limit(20 if self.before else 0):
                fn(where)
        except _Timeout:
            if len(self.violations) == before:
                self.flag("hang", "", None, "the case did not finish")
        finally:
            os.chdir(old_cwd)
        changed = _changes(snap, _snapshot(REPO))
        if changed:
            self.flag("outside", "", None, f"changed outside the case: {changed[:3]}")
        mine = self.violations[before:]
        if mine:
            self.failed[family] += 1


def _reset_memory_limit() -> None:
    try:
        from sim.budget import set_memory_limit
    except ImportError:  # older code has no memory limit
        return
    set_memory_limit(None)


class _Timeout(BaseException):
    """A case ran out of time (only with ``--before``)."""


class _time_limit:  # noqa: N801
    """SIGALRM after ``seconds`` (0: none); used only to measure older code, which hangs."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        if self.seconds:
            signal.signal(signal.SIGALRM, self._raise)
            signal.alarm(self.seconds)

    def __exit__(self, *exc: object) -> None:
        if self.seconds:
            signal.alarm(0)

    @staticmethod
    def _raise(*_: object) -> None:
        raise _Timeout


_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of the repository outside caches."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP and not d.endswith(".egg-info")]
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def _changes(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# --------------------------------------------------------------------------------------------
# mutation


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*at, i))


def _get(node: Any, at: tuple[Any, ...]) -> Any:
    for part in at:
        node = node[part]
    return node


def _set(node: Any, at: tuple[Any, ...], value: Any) -> None:
    _get(node, at[:-1])[at[-1]] = value


KSMS: list[Any] = [
    {},
    {"pages_to_scan": 1, "sleep_ms": 0.1, "use_zero_pages": True},
    {"pages_to_scan": 1 << 20, "max_page_sharing": 2},
    {"max_page_sharing": 1},
    {"sleep_ms": 0},
    {"pages_to_scan": "x"},
]
BACKINGS: list[Any] = ["hugetlbfs", "hugetlbfs", "anonymous", "HUGETLBFS", "", 1, None]
RMAPS: list[Any] = ["none", "none", "anon_vma", "off", None, True]
THPS: list[Any] = [
    {},
    {"enabled": "madvise", "swap": False},
    {"enabled": "never"},
    {"enabled": "sometimes"},
    {"khugepaged": {"enabled": True}},
    {"khugepaged": {"max_ptes_none": 512, "pages_to_scan": 0}},
    {"swap": "maybe"},
    None,
]
SHADOW_RMAPS: list[Any] = [False, True, "no", 0, None]
CONTENTS: list[Any] = [
    {"zero_share": 0.3, "image_share": 0.5, "image_mib": 1},
    {"zero_share": 1.0},
    {"zero_share": 0.7, "image_share": 0.7},
    {"image_share": 1.0, "image": "bad name"},
    {"mergeable": False},
    None,
]


def mutate(rng: random.Random, raw: Any, traces: list[str]) -> Any:
    """One to three structural mutations of a config mapping."""
    raw = copy.deepcopy(raw)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(raw) if p]
        if not paths:
            break
        at = rng.choice(paths)
        parent = _get(raw, at[:-1])
        op = rng.choice(
            [
                "delete",
                "extreme",
                "extreme",
                "string",
                "nested",
                "swap",
                "unknown",
                "typo",
                "scale",
                "trace",
                "memcg",
                "files",
                "prefault",
                "memcg_stats",
                "rotational",
                "guest_tlb",
                "async_pf",
                "guest",
                "balloon",
                "ksm",
                "rmap",
                "thp",
                "hugetlb",
            ]
        )
        if op == "delete":
            del parent[at[-1]]
        elif op == "extreme":
            _set(raw, at, rng.choice(EXTREMES))
        elif op == "string":
            _set(raw, at, rng.choice(STRINGS))
        elif op == "nested":
            _set(raw, at, copy.deepcopy(rng.choice(NESTED)))
        elif op == "swap":
            old = _get(raw, at)
            others = [True, None, "x", 3, 2.5, [old], {"v": old}]
            _set(raw, at, rng.choice(others))
        elif op == "unknown" and isinstance(parent, dict):
            parent[rng.choice(KEYS)] = rng.choice([1, "x", None, [1]])
        elif op == "typo" and isinstance(parent, dict) and isinstance(at[-1], str):
            k = at[-1]
            parent[k[:-1] + k[-1:].upper() + "_"] = parent.pop(k)
        elif op == "scale":
            old = _get(raw, at)
            if isinstance(old, int | float) and not isinstance(old, bool):
                _set(raw, at, old * rng.choice([0, -1, 1000, 10**6, 2**40]))
        elif op == "trace":
            vms = raw.get("vms") if isinstance(raw, dict) else None
            if isinstance(vms, list) and vms and isinstance(vms[0], dict):
                vms[0]["workload"] = {"type": "trace", "path": rng.choice(traces)}
                if rng.random() < 0.5:  # played once: the vCPUs halt and the run may end early
                    vms[0]["workload"]["repeat"] = rng.choice([False, True, "no", 0])
        elif op == "memcg":
            vms = raw.get("vms") if isinstance(raw, dict) else None
            if isinstance(vms, list) and vms and isinstance(vms[-1], dict):
                vms[-1]["memcg"] = copy.deepcopy(rng.choice(MEMCGS))
        elif op == "files" and isinstance(raw, dict):
            vms = raw.get("vms")
            last = vms[-1] if isinstance(vms, list) and vms and isinstance(vms[-1], dict) else {}
            name = last.get("name") if last.get("count", 1) == 1 else f"{last.get('name')}0"
            text = yaml.safe_dump(rng.choice(FILES)).replace("'@vm'", json.dumps(str(name)))
            raw["host_files"] = yaml.safe_load(text)
            raw["reclaim"] = {"policy": rng.choice(["two_list", "mglru"])}
            if last and rng.random() < 0.7:
                last["memcg"] = {}
        elif op == "prefault" and isinstance(raw, dict):
            vms = raw.get("vms")
            if isinstance(vms, list) and vms and isinstance(vms[-1], dict):
                vms[-1]["prefault"] = True  # with a memcg, zram or zswap: the fill's new paths
                swap = raw.get("swap")
                if isinstance(swap, dict):
                    swap.update(copy.deepcopy(rng.choice(COMPRESSED)))
        elif op == "guest_tlb" and isinstance(raw, dict):
            vms = raw.get("vms")
            if isinstance(vms, list) and vms and isinstance(vms[0], dict):
                vms[0]["guest_tlb"] = copy.deepcopy(rng.choice(TLBS))
        elif op == "guest" and isinstance(raw, dict):
            vms = raw.get("vms")
            if isinstance(vms, list) and vms and isinstance(vms[0], dict):
                vms[0]["guest"] = copy.deepcopy(rng.choice(GUESTS))
                if rng.random() < 0.3:  # the TLB caches the guest process's translations
                    vms[0]["guest_tlb"] = copy.deepcopy(rng.choice(TLBS))
        elif op == "balloon" and isinstance(raw, dict):
            vms = raw.get("vms")
            if isinstance(vms, list) and vms and isinstance(vms[0], dict):
                vms[0].setdefault("guest", {})  # a balloon needs a guest kernel
                vms[0]["balloon"] = copy.deepcopy(rng.choice(BALLOONS))
        elif op == "ksm" and isinstance(raw, dict):
            host, vms = raw.get("host"), raw.get("vms")
            if isinstance(host, dict):  # ksmd, and content for it to merge (or not allowed)
                host["ksm"] = copy.deepcopy(rng.choice(KSMS))
                if isinstance(vms, list) and vms and isinstance(vms[0], dict):
                    vms[0]["content"] = copy.deepcopy(rng.choice(CONTENTS))
        elif op == "thp" and isinstance(raw, dict):
            host = raw.get("host")
            if isinstance(host, dict):  # THP-backed guest RAM (or a refused combination)
                shorthand = rng.random() < 0.3  # page_size_kib: 2048, alone or with thp (refused)
                if shorthand:
                    host["page_size_kib"] = 2048
                if not shorthand or rng.random() < 0.2:
                    host["thp"] = copy.deepcopy(rng.choice(THPS))
                if rng.random() < 0.5:
                    raw["reclaim"] = {"policy": "two_list"}
        elif op == "rmap" and isinstance(raw, dict):
            host, kvm = raw.get("host"), raw.setdefault("kvm", {})
            if isinstance(host, dict):  # no rmap: every walk scans page tables
                host["rmap"] = rng.choice(RMAPS)
            if isinstance(kvm, dict) and rng.random() < 0.5:  # shadow paging without KVM's rmap
                kvm["mmu"] = rng.choice(["shadow", "tdp"])
                kvm["shadow_rmap"] = rng.choice(SHADOW_RMAPS)
            costs = raw.setdefault("costs", {})
            if isinstance(costs, dict) and rng.random() < 0.3:
                costs["pte_scan_ns"] = rng.choice([0, 1, 50, -1, "x", 10**10])
        elif op == "hugetlb" and isinstance(raw, dict):
            vms = raw.get("vms")
            if isinstance(vms, list) and vms and isinstance(vms[-1], dict):  # the pool's guest
                vms[-1]["memory_backing"] = rng.choice(BACKINGS)
                if rng.random() < 0.4:
                    vms[-1]["hugepage_size_kib"] = rng.choice([2048, 1048576, 4, 0, "x", None])
        elif op == "async_pf" and isinstance(raw, dict):
            vms = raw.get("vms")
            if isinstance(vms, list) and vms and isinstance(vms[-1], dict):
                vms[-1]["async_pf"] = rng.choice([0.5, 1.0, 1e-9, -0.1, 2, "x", None, True])
        elif op == "memcg_stats" and isinstance(raw, dict):
            host, vms = raw.get("host"), raw.get("vms")
            if isinstance(host, dict):  # lazy statistics: flushed, and a limit to reach
                host["memcg_stats"] = rng.choice(MEMCG_STATS)
                host["memcg_stats_flush_ms"] = rng.choice([1, 1.5, 2000, 0, -1, "x", None])
                if isinstance(vms, list) and vms and isinstance(vms[-1], dict):
                    vms[-1]["memcg"] = copy.deepcopy(rng.choice(MEMCGS))
        elif op == "rotational" and isinstance(raw, dict):
            swap = raw.setdefault("swap", {})
            if isinstance(swap, dict):  # cluster readahead by slot; zram refuses it
                swap["rotational"] = rng.choice(ROTATIONAL)
                swap["page_cluster"] = rng.choice([0, 1, 3, 3, 31, -1])
                swap.update(copy.deepcopy(rng.choice(COMPRESSED)))
    return raw


def numeric_fields() -> list[tuple[tuple[Any, ...], bool, float, float]]:
    """Every number of a scenario with the range its model accepts: (path, is int, low,
    high), found by walking the config models (sections, the first VM, each workload type and
    reclaim policy), so the fuzzer can put values right at the edges validation allows."""
    import typing

    from pydantic import BaseModel

    from sim.config import Scenario, _resolve
    from sim.guest import workloads
    from sim.reclaim import config_class, policy_names

    out: list[tuple[tuple[Any, ...], bool, float, float]] = []

    def walk(model: type[BaseModel], at: tuple[Any, ...]) -> None:
        for name, f in model.model_fields.items():
            key = f.alias or name
            ann = f.annotation
            args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
            kind = args[0]
            if not isinstance(kind, type):  # a tagged union: one model alone or in a list
                kind = _resolve(kind, None)
            if isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not model:
                walk(kind, (*at, key))
            elif kind in (int, float) and not (isinstance(ann, type) and ann is bool):
                lo, hi = -(2.0**63), 2.0**63 - 1
                for m in f.metadata:
                    lo = max(lo, float(getattr(m, "ge", getattr(m, "gt", lo))))
                    hi = min(hi, float(getattr(m, "le", getattr(m, "lt", hi))))
                out.append(((*at, key), kind is int, lo, hi))

    walk(Scenario, ())
    from sim.config import VmConfig

    walk(VmConfig, ("vms", 0))
    for cls in (workloads.ZipfConfig, workloads.HotColdConfig):
        walk(cls, ("vms", 0, "workload"))
    for name in policy_names():
        walk(config_class(name), ("reclaim",))
    return out


def edge(rng: random.Random, raw: Any, fields: list[Any]) -> Any:
    """Put one to three numbers at (or just inside) the edges of what validation accepts."""
    raw = copy.deepcopy(raw)
    scen = raw["base"] if isinstance(raw.get("base"), dict) else raw
    for _ in range(rng.randint(1, 3)):
        at, is_int, lo, hi = rng.choice(fields)
        if at and at[0] == "reclaim":
            policy = rng.choice(["two_list", "mglru", "clock", "fifo", "lru", "random"])
            scen["reclaim"] = {"policy": policy}
        if at and at[0] == "vms" and at[2:3] == ("workload",):
            scen["vms"][0]["workload"] = {"type": "zipf" if "alpha" in at else "hotcold"}
        tiny = 1 if is_int else max(abs(lo) * 1e-9, 1e-12)
        pick = rng.choice([lo, hi, lo + tiny, hi - tiny, (lo + hi) / 2])
        pick = max(lo, min(hi, pick))
        if is_int:
            pick = int(pick)
        cur: Any = scen
        for part in at[:-1]:
            if isinstance(part, int):
                cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
            elif isinstance(cur, dict):
                cur = cur.setdefault(part, {})
            if cur is None:
                break
        if isinstance(cur, dict):
            cur[at[-1]] = pick
    return raw


def dump(raw: Any) -> str:
    return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False, width=1000)


def damage_text(rng: random.Random, text: str) -> bytes:
    """Text-level damage YAML parsing must survive."""
    lines = text.splitlines(keepends=True) or ["\n"]
    op = rng.choice(
        ["dup", "truncate", "nul", "latin1", "bomb", "deep", "tab", "bom", "crlf", "garbage"]
    )
    if op == "dup":
        i = rng.randrange(len(lines))
        lines.insert(i + 1, lines[i])
        return "".join(lines).encode()
    if op == "truncate":
        return text.encode()[: rng.randrange(max(1, len(text)))]
    if op == "nul":
        b = bytearray(text.encode())
        b.insert(rng.randrange(len(b) + 1), 0)
        return bytes(b)
    if op == "latin1":
        return text.encode() + "\nname: caf\xe9\n".encode("latin-1")
    if op == "bomb":
        bomb = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
        for i in range(1, 9):
            bomb.append(f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]")
        return (text + "\n".join(bomb) + "\n").encode()
    if op == "deep":
        return (text + "deep: " + "[" * 2000 + "]" * 2000 + "\n").encode()
    if op == "tab":
        return text.replace("  ", "\t", 1).encode()
    if op == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if op == "crlf":
        return text.replace("\n", "\r\n").encode()
    return bytes(rng.randrange(256) for _ in range(200))


# --------------------------------------------------------------------------------------------
# corpora


def _abs(raw: Any, base: Path) -> Any:
    """A committed config with its relative file references made absolute (fuzz cases are
    written elsewhere)."""
    raw = copy.deepcopy(raw)
    if isinstance(raw.get("base"), str):
        raw["base"] = str((base / raw["base"]).resolve())
    scen = raw.get("base") if isinstance(raw.get("base"), dict) else raw
    for vm in scen.get("vms") or []:
        wl = vm.get("workload") or {}
        if wl.get("type") == "trace" and not os.path.isabs(wl["path"]):
            wl["path"] = str((base / wl["path"]).resolve())
    return raw


def _load(*rels: str) -> list[Any]:
    """Committed configs (those that exist: older code lacks some)."""
    return [
        _abs(yaml.safe_load((REPO / r).read_text()), (REPO / r).parent)
        for r in rels
        if (REPO / r).exists()
    ]


def scenarios() -> list[dict[str, Any]]:
    return [
        TINY,
        *_load("configs/quickstart.yaml", "configs/notifiers.yaml", "configs/memcg_pagecache.yaml"),
    ]


def sweeps() -> list[dict[str, Any]]:
    tiny_sweep = {
        "base": TINY,
        "grid": {"reclaim.policy": ["fifo", "clock"]},
        "seeds": [1],
    }
    more = _load(
        "configs/policies.yaml", "configs/sweep_overcommit.yaml", "docs/examples/sweep.yaml"
    )
    return [tiny_sweep, *more]


def plans() -> list[dict[str, Any]]:
    tiny_plan = {
        "name": "tp",
        "base": {**TINY, "vms": []},
        "profile": {"name": "vm", "memory_mib": 3, "workload": {"type": "uniform"}},
        "search": {"variable": "vms", "low": 1, "high": 3},
        "slo": {"metric": "major_faults_per_s", "max": 1},
        "seeds": [1],
    }
    return [
        tiny_plan,
        *_load(
            "configs/plan_consolidation.yaml",
            "configs/plan_memcg_limit.yaml",
            "configs/plan_ksm.yaml",
            "docs/examples/plan.yaml",
        ),
    ]


def make_traces(d: Path) -> dict[str, str]:
    """Good and corrupted trace files (and non-files) under ``d``: name -> path."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}

    def put(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        out[name] = str(d / name)

    def npy(arr: Any, **header: Any) -> bytes:
        buf = io.BytesIO()
        if header:
            np.lib.format.write_array_header_1_0(buf, header)
            return buf.getvalue() + np.asarray(arr).tobytes()
        np.save(buf, arr, allow_pickle=True)
        return buf.getvalue()

    sqlite = (REPO / "traces" / "sqlite3.lackey.gz").read_bytes()
    put("good.lackey.gz", sqlite)
    put("good.npy", npy(np.arange(200, dtype=np.int64) % 50))
    put("good.csv", b"page,write\n1,true\n2,false\n3,1\n")
    put("truncated.lackey.gz", sqlite[: len(sqlite) // 3])
    put("nul.lackey", b"\0" * 50_000)
    put("nul.lackey.gz", gzip.compress(b"\0" * (4 << 20)))
    put("binary.lackey", bytes(random.Random(1).randrange(256) for _ in range(5000)))
    put("empty.lackey", b"")
    put("empty.npy", b"")
    put("longline.lackey", b" L " + b"f" * 100_000 + b",8\n")
    put("badsize.lackey", b" L 1000,0\n L 2000,1000\n")
    put(
        "huge-shape.npy",
        npy(np.zeros(4, np.int64), descr="<i8", fortran_order=False, shape=(2**40,)),
    )
    put(
        "huge-shape.npy.gz",
        gzip.compress(npy(np.zeros(4, np.int64), descr="<i8", fortran_order=False, shape=(2**40,))),
    )
    put("float.npy", npy(np.arange(10, dtype=np.float64)))
    put("2d.npy", npy(np.zeros((3, 3), dtype=np.int64)))
    put("object.npy", npy(np.array([1, "x"], dtype=object)))
    put("negative.npy", npy(np.array([1, -5], dtype=np.int64)))
    put("toobig.npy", npy(np.arange(100_000, dtype=np.int64)))
    put("noheader.csv", b"1\n2\n3\n")
    put("negative.csv", b"page\n-1\n")
    put("garbage.parquet", b"PAR1" + b"\0" * 100)
    put("notparquet.parquet", b"hello")
    put("vcpu.csv", b"page,vcpu\n1,0\n2,7\n")
    fifo = d / "fifo.lackey"
    os.mkfifo(fifo)
    out["fifo.lackey"] = str(fifo)
    (d / "dir.npy").mkdir()
    out["dir.npy"] = str(d / "dir.npy")
    (d / "zero.lackey").symlink_to("/dev/zero")
    out["zero.lackey"] = str(d / "zero.lackey")
    (d / "loop.npy").symlink_to(d / "loop.npy")
    out["loop.npy"] = str(d / "loop.npy")
    out["missing.npy"] = str(d / "missing.npy")
    return out


# --------------------------------------------------------------------------------------------
# families


MAX_RUN_ACCESSES = 400_000  # a "validated, so it runs" check simulates at most about this


def _num(v: Any, default: float) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and v == v
    return float(v) if ok else default


def _rate(vms: Any, scale: float = 1.0) -> float:
    """Accesses per simulated second of a raw VM list (defaults where values are odd)."""
    total = 0.0
    for vm in vms if isinstance(vms, list) else []:
        if isinstance(vm, dict):
            total += (
                _num(vm.get("count"), 1)
                * _num(vm.get("vcpus"), 1)
                * _num(vm.get("access_rate_per_s"), 1e6)
            )
    return total * scale


def _clamped(raw: Any, rate: float | None = None) -> Any | None:
    """The same scenario with its simulated time cut so that it makes at most about
    ``MAX_RUN_ACCESSES`` accesses (and at most ``RUN_SECONDS``); None if even the shortest
    allowed run would make many more (its run is then skipped)."""
    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        return raw
    rate = _rate(raw.get("vms")) if rate is None else rate
    if rate * 1e-6 > 10 * MAX_RUN_ACCESSES:
        return None
    d = _num(raw.get("duration_s"), RUN_SECONDS)
    if "duration_s" in raw and d == raw["duration_s"]:
        raw["duration_s"] = short = max(
            1e-6, min(d, RUN_SECONDS, MAX_RUN_ACCESSES / max(rate, 1.0))
        )
        warm = raw.get("warmup_s")  # the warm-up and the windows are cut with the run
        if _num(warm, 0.0) > 0:
            raw["warmup_s"] = min(float(warm), short / 2)
        metrics = raw.get("metrics")
        if isinstance(metrics, dict):
            window = _num(metrics.get("window_ms"), 100.0)
            metrics["window_ms"] = max(0.01, min(window, short * 1000 / 4))
    return raw


def _scale_then_validate(h: Harness, d: Path, path: Path) -> None:
    """``memsim scale`` of a validated file: a one-line refusal, or a file validate accepts."""
    if "scale" not in h.main.commands:
        return
    out = d / "scaled.yaml"
    o = h.invoke(["scale", path, "--factor", "2", "-o", out])
    if h.check(o, tag="scale") and o.code == 0:
        v = h.invoke(["validate", out])
        if h.check(v, tag="scale") and v.code != 0:
            h.flag("scaled_invalid", "scale", v, v.stderr.strip()[:300])


def _validate_then_run(h: Harness, d: Path, raw: Any, text: bytes | None = None) -> None:
    """validate a scenario; if accepted, its short run must succeed, and it scales down (or
    is refused in one line) to a file validate accepts."""
    cfg = d / "cfg.yaml"
    cfg.write_bytes(text if text is not None else dump(raw).encode())
    o = h.invoke(["validate", cfg])
    h.check(o)
    if o.code != 0 or text is not None:
        return
    _scale_then_validate(h, d, cfg)
    shorter = _clamped(raw)
    if shorter is None:
        return
    short = d / "short.yaml"
    short.write_text(dump(shorter))
    r = h.invoke(["run", short, "-q", "--out", d / "out"])
    h.accepted[h.family] += 1
    if h.check(r) and r.code != 0:
        h.flag("validated_but_failed", "", r, r.stderr.strip()[:300])


def family_configs(h: Harness, rng: random.Random, n: int, traces: list[str]) -> None:
    corpus = scenarios()
    fields = numeric_fields()
    for i in range(n):
        if rng.random() < 0.4:  # valid-looking: numbers at the edges of their ranges
            raw, text = edge(rng, rng.choice(corpus), fields), None
        else:
            raw = mutate(rng, rng.choice(corpus), traces)
            text = damage_text(rng, dump(raw)) if rng.random() < 0.15 else None
        h.run_case(
            "configs", f"c{i}", lambda d, raw=raw, text=text: _validate_then_run(h, d, raw, text)
        )


def _points(o: Outcome) -> int | None:
    """Runs a validated sweep or plan expands to, from validate's ok line."""
    import re

    m = re.search(r"(\d+) point\(s\)", o.stdout)
    if m:
        return int(m.group(1))
    m = re.search(r"(\d+) candidate\(s\) x (\d+) seed", o.stdout)
    return int(m.group(1)) * int(m.group(2)) if m else None


def _sweep_case(h: Harness, d: Path, spec: Any, text: bytes | None, kind: str) -> None:
    path = d / f"{kind}.yaml"
    path.write_bytes(text if text is not None else dump(spec).encode())
    o = h.invoke(["validate", path])
    h.check(o)
    n = _points(o)
    if kind == "plan" and o.code == 0 and text is None:
        _scale_then_validate(h, d, path)
    if o.code != 0 or n is None or n > 4 or text is not None:
        return
    if not isinstance(spec.get("base"), dict):
        return  # a base file's simulated time cannot be cut here
    short = _shorten_spec(spec)
    if short is None:
        return
    path = d / f"short-{kind}.yaml"
    path.write_text(dump(short))
    args = [kind, path, "--workers", "1", "--out", d / "out"]
    if kind == "plan" and h.supports("plan", "--seeds"):
        args += ["--seeds", "1"]
    r = h.invoke(args)
    h.accepted[h.family] += 1
    if not h.check(r, documented_1=kind == "plan"):
        return
    if r.code != 0:
        h.flag("validated_but_failed", "", r, r.stderr.strip()[:300])
    elif kind == "sweep":
        import pandas as pd

        status = pd.read_parquet(d / "out" / "runs.parquet").status
        if (status == "failed").any():
            h.flag("validated_but_failed", "", r, "a validated sweep point failed")


def _shorten_spec(spec: Any) -> Any | None:
    """A sweep or plan with its base's simulated time cut (and a plan's warm-up with it)."""
    spec = copy.deepcopy(spec)
    base = spec.get("base")
    if not isinstance(base, dict):
        return spec
    vms = base.get("vms")
    if isinstance(spec.get("profile"), dict):
        search = spec.get("search") or {}
        high = _num(search.get("high"), 1)
        if search.get("variable") != "vms":  # the VM count is search.vms, not the range
            high = _num(search.get("vms"), 1)
        vms = [{**spec["profile"], "count": min(high, 1e6)}]
    short = _clamped(base, _rate(vms))
    if short is None:
        return None
    spec["base"] = short
    if "warmup_s" in spec and isinstance(short.get("duration_s"), float):
        warm = _num(spec["warmup_s"], 0.0)
        spec["warmup_s"] = min(warm, short["duration_s"] / 2) if warm > 0 else spec["warmup_s"]
    return spec


def family_sweeps(h: Harness, rng: random.Random, n: int, traces: list[str]) -> None:
    corpus = [c for c in map(_shorten_spec, sweeps()) if c is not None]
    fields = numeric_fields()
    for i in range(n):
        if rng.random() < 0.4:
            spec = edge(rng, corpus[0], fields)  # the small sweep, its base at the edges
        else:
            spec = mutate(rng, rng.choice(corpus), traces)
        text = damage_text(rng, dump(spec)) if rng.random() < 0.1 else None
        h.run_case("sweeps", f"s{i}", lambda d, s=spec, t=text: _sweep_case(h, d, s, t, "sweep"))


def family_plans(h: Harness, rng: random.Random, n: int, traces: list[str]) -> None:
    corpus = [c for c in map(_shorten_spec, plans()) if c is not None]
    fields = [f for f in numeric_fields() if f[0][0] != "vms"]  # a plan's vms are its own
    for i in range(n):
        if rng.random() < 0.4:
            spec = edge(rng, corpus[0], fields)
        else:
            spec = mutate(rng, rng.choice(corpus), traces)
        text = damage_text(rng, dump(spec)) if rng.random() < 0.1 else None
        h.run_case("plans", f"p{i}", lambda d, s=spec, t=text: _sweep_case(h, d, s, t, "plan"))


def family_traces(h: Harness, rng: random.Random, traces: dict[str, str]) -> None:
    for name, path in sorted(traces.items()):
        for mib in (1, 16):

            def case(d: Path, path: str = path, mib: int = mib) -> None:
                vm = {
                    "name": "t",
                    "memory_mib": mib,
                    "vcpus": 2,
                    "workload": {"type": "trace", "path": path},
                }
                _validate_then_run(h, d, {**TINY, "vms": [vm]})
                if mib == 1:
                    policy = rng.choice(["lru", "fifo", "two_list", "clock", "mglru"])
                    engine = rng.choice(["auto", "general"])
                    h.check(
                        h.invoke(
                            [
                                "replay",
                                path,
                                "--frames",
                                "32",
                                "--policy",
                                policy,
                                "--engine",
                                engine,
                            ]
                        )
                    )

            h.run_case("traces", f"{name}-{mib}", case)


def _flag_values(d: Path) -> dict[str, list[Any]]:
    return {
        "--seed": [-1, 0, 3, 2**64, "x"],
        "--set": [
            "kvm.mmu_notifiers=false",
            "kvm.mmu=shadow",
            "kvm.mmu=legacy_tdp",
            "kvm.mmu=ept",
            "kvm.tdp_mmu=false",
            "vms.0.count=3",
            "host.memory_mib=.nan",
            "x",
            "=",
            "a..b=1",
            "vms.9.name=x",
            "kvm.[/]=1",
            "reclaim.policy=fifo",
            "duration_s=1e-4",
            "seed=5",
            "name=:100:",
            "vms.0.workload={type: scan}",
        ],
        "--out": [d / "o1", d / "o[/]x", d / "file.txt" / "sub", d / ("n" * 300), d / "o1"],
        "--workers": [0, 1, -1, "x"],
        "--dask": ["nonsense"],
        "--frames": [0, 1, 64, 10**20, "x"],
        "--policy": ["lru", "two_list", "magic", "opt", "[/]"],
        "--format": ["auto", "lackey", "csv", "npy", "parquet", "vtune"],
        "--page-size": [0, 3, 512, 4096, 2**40],
        "--engine": ["auto", "fast", "general", "turbo"],
        "--sizes": ["1,2", "0", "x", "-5", "10,100"],
        "--policies": ["lru", "lru,opt", "fifo,clock", "magic", ""],
        "--seeds": ["1-3", "x", "5-1", "1,1", "2", "1-99999999999"],
        "--max-memory": ["1G", "x", "0", "1k", "512M"],
        "--factor": [0, 1, 2, 3, 4, -1, "x", 2**40],
        "-o": [d / "scaled.yaml", d / "cfg.yaml", d, d / "missing" / "x.yaml", d / "file.txt"],
    }


COMMANDS: dict[str, list[str]] = {
    "run": ["--seed", "--set", "--out", "-q", "--max-memory"],
    "validate": ["--set", "--seeds", "--max-memory"],
    "replay": [
        "--frames",
        "--policy",
        "--format",
        "--page-size",
        "--instructions",
        "--engine",
        "--set",
        "--json",
        "--max-memory",
    ],
    "mrc": [
        "--format",
        "--page-size",
        "--instructions",
        "--policies",
        "--sizes",
        "--engine",
        "--out",
        "--json",
    ],
    "sweep": ["--workers", "--dask", "--out", "--set", "--seeds", "--max-memory"],
    "plan": ["--workers", "--dask", "--out", "--set", "--seeds", "--max-memory"],
    "report": ["--out"],
    "scale": ["--factor", "-o", "--force"],
}


def family_cli(h: Harness, rng: random.Random, n: int, traces: dict[str, str]) -> None:
    for i in range(n):

        def case(d: Path) -> None:
            (d / "file.txt").write_text("user data\n")
            cfg = d / "cfg.yaml"
            cfg.write_text(dump(TINY))
            sweep = d / "sweep.yaml"
            sweep.write_text(dump({"base": TINY, "seeds": [1]}))
            plan = d / "plan.yaml"
            plan.write_text(dump(plans()[0]))
            command = rng.choice(sorted(COMMANDS))
            target = {
                "run": [cfg, d / "missing.yaml", d, "/dev/null"],
                "validate": [cfg, sweep, plan, d / "missing.yaml", "/dev/null"],
                "replay": [traces["good.npy"], traces["good.lackey.gz"], traces["nul.lackey"]],
                "mrc": [traces["good.npy"], traces["good.csv"], traces["empty.npy"]],
                "sweep": [sweep, cfg],
                "plan": [plan, sweep],
                "report": [d, d / "missing"],
                "scale": [cfg, plan, sweep, d / "missing.yaml", "/dev/null"],
            }[command]
            args: list[Any] = [command, rng.choice(target)]
            values = _flag_values(d)
            flags = COMMANDS[command]
            for flag in rng.sample(flags, min(len(flags), rng.randint(0, 3))):
                if flag in ("-q", "--json", "--instructions", "--force"):
                    args.append(flag)
                else:
                    args += [flag, rng.choice(values[flag])]
            if command == "scale" and "--factor" not in args:
                args += ["--factor", rng.choice(values["--factor"])]
            if command == "scale" and d / "file.txt" in args and "--force" in args:
                args.remove("--force")  # --force replaces the file it is told to: not a user's
            if command == "replay" and "--frames" not in args:
                args += ["--frames", "16"]
            if command == "replay" and "--policy" not in args:
                args += ["--policy", "fifo"]
            if command in ("sweep", "plan") and "--workers" not in args:
                args += ["--workers", "1"]
            if command == "mrc" and "--sizes" not in args and "--policies" not in args:
                args += ["--policies", "lru,fifo", "--sizes", "4,8"]
            bad_workers = command in ("sweep", "plan") and any(
                str(a) in ("0", "-1", "x") for a in args[args.index("--workers") + 1 :][:1]
            )
            if command in ("sweep", "plan") and not bad_workers:
                args += ["--set", "duration_s=0.0002"] if "--set" not in args else []
            tag = "out" if "--out" in args else ""
            o = h.invoke(args)
            h.check(o, tag=tag, documented_1=command == "plan")
            h.accepted["cli"] += o.code == 0 and command in ("run", "sweep", "plan", "replay")
            if (d / "file.txt").read_text() != "user data\n":
                h.flag("user_files", "out", o, "a user's file was changed")

        h.run_case("cli", f"f{i}", case)


def family_out(h: Harness, rng: random.Random) -> None:
    """--out onto directories that hold a user's files, '.', a symlink, odd names."""
    targets = ["keep", ".", "link", "res[/]x", "file.txt/sub", "n" * 300, "new/deeper/dir"]
    for i, name in enumerate(targets):

        def case(d: Path, name: str = name) -> None:
            keep = d / "keep"
            keep.mkdir()
            (keep / "important.txt").write_text("important\n")
            (d / "file.txt").write_text("user data\n")
            (d / "link").symlink_to(keep)
            cfg = d / "cfg.yaml"
            cfg.write_text(dump({**TINY, "duration_s": RUN_SECONDS}))
            o = h.invoke(["run", cfg, "-q", "--out", name])
            h.check(o, tag="out")
            if (keep / "important.txt").exists() is False or (
                d / "file.txt"
            ).read_text() != "user data\n":
                h.flag("user_files", "out", o, "a user's file was deleted or changed")

        h.run_case("out", f"o{i}", case)


def family_paths(h: Harness, rng: random.Random, n: int) -> None:
    """Trace paths relative to the file naming them, and --set/--seeds on sweeps and plans."""
    for i in range(n):

        def case(d: Path) -> None:
            conf, other = d / "conf", d / "other"
            conf.mkdir()
            other.mkdir()
            np.save(conf / "t.npy", np.arange(64, dtype=np.int64))
            vm = {"name": "t", "memory_mib": 1, "workload": {"type": "trace", "path": "t.npy"}}
            base = {**TINY, "duration_s": RUN_SECONDS, "vms": [vm]}
            (conf / "base.yaml").write_text(dump(base))
            where = rng.choice(["conf", "other", "."])
            os.chdir(d / where)
            kind = rng.choice(["scenario", "sweep", "plan"])
            if kind == "scenario":
                path = conf / "base.yaml"
            elif kind == "sweep":
                path = other / "s.yaml"
                spec: dict[str, Any] = {"base": "../conf/base.yaml", "seeds": [1]}
                if rng.random() < 0.5:
                    spec["grid"] = {"reclaim.policy": ["fifo", "clock"]}
                path.write_text(dump(spec))
            else:
                path = conf / "p.yaml"
                plan = {**plans()[0], "base": "base.yaml", "profile": vm}
                plan["search"] = {"variable": "vms", "low": 1, "high": 2}
                path.write_text(dump(plan))
            args: list[Any] = ["validate", path]
            for _ in range(rng.randint(0, 2)):
                args += [
                    "--set",
                    rng.choice(
                        [
                            "reclaim.policy=clock",
                            "vms.0.workload.path=t.npy",
                            "vms.0.workload.path=../conf/t.npy",
                            "seed=3",
                            "kvm.ept_ad_bits=false",
                            "kvm.mmu=shadow",
                            "vms.0.memory_mib=2",
                            "name=x",
                            "host.memory_mib=16",
                        ]
                    ),
                ]
            if kind != "scenario" and rng.random() < 0.5:
                args += ["--seeds", rng.choice(["1-2", "3", "x", "1,1"])]
            o = h.invoke(args)
            h.check(o)
            given = [a for a in args if isinstance(a, str) and a.startswith("vms.0.workload")]
            expect_ok = (
                not given
                or (where == "conf" and given[-1].endswith("=t.npy"))
                or (where != "." and given[-1].endswith("../conf/t.npy"))
            )
            if o.code == 0 and not expect_ok:
                h.flag("paths", "", o, "a --set trace path resolved against the wrong place")
            if kind == "scenario" and o.code == 0:
                run = ["run", path, "-q", "--out", d / "out", *args[2:]]
                r = h.invoke(run)
                h.accepted["paths"] += 1
                if h.check(r) and r.code != 0:
                    h.flag("validated_but_failed", "", r, r.stderr.strip()[:300])
                elif r.code == 0:
                    written = yaml.safe_load((d / "out" / "config.yaml").read_text())
                    recorded = written["vms"][0]["workload"]["path"]
                    if recorded != str(conf / "t.npy"):
                        h.flag("paths", "", r, f"config.yaml records {recorded}")

        h.run_case("paths", f"r{i}", case)


def family_subprocess(h: Harness, traces: dict[str, str]) -> None:
    """A few real processes, end to end: stderr, exit codes, no traceback."""
    bomb = damage_text(random.Random(0), "a: 1\n")
    cases: list[tuple[str, Callable[[Path], list[str]]]] = [
        ("validate-fifo-trace", lambda d: ["validate", _trace_cfg(d, traces["fifo.lackey"])]),
        (
            "run-tiny",
            lambda d: [
                "run",
                _write(d, dump({**TINY, "duration_s": RUN_SECONDS})),
                "-q",
                "--out",
                str(d / "out"),
            ],
        ),
        (
            "replay-zero",
            lambda d: ["replay", traces["zero.lackey"], "--frames", "8", "--policy", "lru"],
        ),
        ("validate-bomb", lambda d: ["validate", _write(d, bomb.decode("latin-1"))]),
        ("validate-dup", lambda d: ["validate", _write(d, dump(TINY) + "seed: 3\n")]),
    ]
    for name, make in cases:

        def case(d: Path, make: Callable[[Path], list[str]] = make) -> None:
            args = make(d)
            if args[0] != "run" and h.supports(args[0], "--max-memory"):
                args += ["--max-memory", MAX_MEMORY]
            env = {**os.environ, "PYTHONPATH": str(_code_root())}
            try:
                p = subprocess.run(
                    [sys.executable, "-m", "sim", *args],
                    capture_output=True,
                    text=True,
                    cwd=d,
                    env=env,
                    timeout=120,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                h.flag("hang", "", None, f"{args}: no answer in 120 s")
                return
            h.check(Outcome(args, p.returncode, p.stdout, p.stderr, None))

        h.run_case("subprocess", name, case)


def _code_root() -> Path:
    import sim

    return Path(sim.__file__).resolve().parent.parent


def _write(d: Path, text: str) -> str:
    p = d / "cfg.yaml"
    p.write_text(text)
    return str(p)


def _trace_cfg(d: Path, trace: str) -> str:
    vm = {"name": "t", "memory_mib": 1, "workload": {"type": "trace", "path": trace}}
    return _write(d, dump({**TINY, "vms": [vm]}))


# --------------------------------------------------------------------------------------------
# the whole fuzz

SIZES = {"configs": 150, "sweeps": 50, "plans": 40, "cli": 80, "paths": 24}


FAMILIES = ("configs", "sweeps", "plans", "traces", "cli", "out", "paths", "subprocess")


def fuzz(
    root: Path,
    *,
    seed: int = SEED,
    before: bool = False,
    scale: float = 1.0,
    only: str | None = None,
) -> Harness:
    """Run every family under ``root`` (or the one named by ``only``); returns the harness with
    counts and violations. Each family draws from its own generator, seeded in a fixed order,
    so a family runs the same cases alone as in a whole run."""
    h = Harness(root, before=before)
    rng = random.Random(seed)
    seeds = {name: rng.random() for name in FAMILIES if name != "subprocess"}
    traces = make_traces(root / "traces")
    trace_list = sorted(traces.values())

    def size(name: str) -> int:
        return max(1, math.ceil(SIZES[name] * scale))

    def want(name: str) -> random.Random | None:
        if only is not None and only != name:
            return None
        return random.Random(seeds[name])

    if r := want("configs"):
        family_configs(h, r, size("configs"), trace_list)
    if r := want("sweeps"):
        family_sweeps(h, r, size("sweeps"), trace_list)
    if r := want("plans"):
        family_plans(h, r, size("plans"), trace_list)
    if r := want("traces"):
        family_traces(h, r, traces)
    if r := want("cli"):
        family_cli(h, r, size("cli"), traces)
    if r := want("out"):
        family_out(h, r)
    if r := want("paths"):
        family_paths(h, r, size("paths"))
    if only in (None, "subprocess"):
        family_subprocess(h, traces)
    return h


def report(h: Harness) -> str:
    """Cases tried and failed per family, then the violations."""
    lines = [f"{'family':<12} {'cases':>6} {'ran':>5} {'failed':>7}"]
    for fam in h.tried:
        lines.append(f"{fam:<12} {h.tried[fam]:>6} {h.accepted[fam]:>5} {h.failed[fam]:>7}")
    total = sum(h.tried.values())
    lines.append(f"{'total':<12} {total:>6} {sum(h.failed.values()):>13}")
    kinds = Counter((v.family, v.kind, v.tag) for v in h.violations)
    for (fam, kind, tag), n in sorted(kinds.items()):
        lines.append(f"  {fam}: {kind}{f' [{tag}]' if tag else ''} x{n}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """``python -m tests.fuzz [--seed N] [--before] [--verbose] [--scale X]``."""
    import tempfile

    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else SEED
    scale = float(argv[argv.index("--scale") + 1]) if "--scale" in argv else 1.0
    before = "--before" in argv
    if before:  # older code allocates what it is told to: bound it
        limit = 8 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with tempfile.TemporaryDirectory(prefix="memsim-fuzz-") as tmp:
        h = fuzz(Path(tmp), seed=seed, before=before, scale=scale)
        print(report(h))
        if "--verbose" in argv:
            for v in h.violations:
                print(json.dumps(v.__dict__)[:600])
        for d in Path(tmp).glob("*/*/fifo*"):
            d.unlink()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])

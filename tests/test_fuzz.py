"""The fuzzer of ``tests/fuzz.py`` in the default suite: about 400 seeded cases of mutated
configs, sweep and plan files, corrupted traces, CLI flag combinations, ``--out`` targets and
trace paths, each checked for no traceback, exit code 0 or 2, a one-line error, no file
touched outside its directory, and "what validate accepts, runs".
"""

from __future__ import annotations

from pathlib import Path

from tests.fuzz import fuzz, report


def test_fuzz(tmp_path: Path) -> None:
    h = fuzz(tmp_path)
    text = report(h)
    print(text)
    assert sum(h.tried.values()) >= 400
    assert set(h.tried) >= {"configs", "sweeps", "plans", "traces", "cli", "out", "paths"}
    shown = "\n".join(f"{v.family}/{v.case} {v.kind}: {v.detail[:300]}" for v in h.violations[:10])
    assert not h.violations, f"{text}\n{shown}"

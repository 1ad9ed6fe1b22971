"""The fuzzer of ``tests/fuzz.py`` in the default suite, a test per family: about 400 seeded
cases of mutated configs, sweep and plan files, corrupted traces, CLI flag combinations,
``--out`` targets and trace paths, each checked for no traceback, exit code 0 or 2, a
one-line error, no file touched outside its directory, and "what validate accepts, runs".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import FAMILIES, SIZES, fuzz, report


@pytest.mark.parametrize("family", FAMILIES)
def test_fuzz(tmp_path: Path, family: str) -> None:
    """One family per test, so the families run side by side on the suite's workers; each runs
    the cases it runs in a whole fuzz run."""
    h = fuzz(tmp_path, only=family)
    text = report(h)
    print(text)
    assert set(h.tried) == {family}
    assert h.tried[family] >= SIZES.get(family, 1)
    shown = "\n".join(f"{v.family}/{v.case} {v.kind}: {v.detail[:300]}" for v in h.violations[:10])
    assert not h.violations, f"{text}\n{shown}"

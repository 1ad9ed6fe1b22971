"""The fuzzer of ``tests/fuzz.py`` in the default suite: about 400 seeded cases of mutated
configs, sweep and plan files, corrupted traces, CLI flag combinations, ``--out`` targets and
trace paths, each checked for no traceback, exit code 0 or 2, a one-line error, no file
touched outside its directory, and "what validate accepts, runs".

Violations tagged in ``fuzz.DEFERRED_TAGS`` are reported but not failed on: they belong to
the output-safety work (Rich markup, click usage errors, --out safety) and are enabled by
removing their tag once that work is merged.
"""

from __future__ import annotations

from pathlib import Path

from tests.fuzz import DEFERRED_TAGS, fuzz, report


def test_fuzz(tmp_path: Path) -> None:
    h = fuzz(tmp_path)
    text = report(h)
    print(text)
    assert sum(h.tried.values()) >= 400
    assert set(h.tried) >= {"configs", "sweeps", "plans", "traces", "cli", "out", "paths"}
    enforced = [v for v in h.violations if v.tag not in DEFERRED_TAGS]
    shown = "\n".join(f"{v.family}/{v.case} {v.kind}: {v.detail[:300]}" for v in enforced[:10])
    assert not enforced, f"{text}\n{shown}"

"""The README's config reference is the one the code generates (no drift)."""

from __future__ import annotations

from pathlib import Path

from sim.docs import update_readme

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_reference_is_up_to_date() -> None:
    text = README.read_text()
    assert update_readme(text) == text, "run: python -m sim.docs --write README.md"


def test_readme_starts_with_the_two_commands() -> None:
    blocks = README.read_text().split("```sh\n")[1:3]
    run, test = (b.split("\n```")[0] for b in blocks)
    for needle in ("python3 -m venv", "requirements.txt", "configs/quickstart.yaml"):
        assert needle in run
    for needle in ("python3 -m venv", "requirements-dev.txt", "pytest"):
        assert needle in test


def test_every_column_written_is_in_the_output_tables() -> None:
    """Each column of each parquet table appears, in backticks, in the README's output files
    section (the evictions table, or the faults and timeline lists), the timeline's optional
    memcg and page-cache columns included."""
    from sim.record import TABLES, TIMELINE_FULL_SCHEMA

    text = README.read_text()
    section = text.split("## Output files", 1)[1].split("\n## ", 1)[0]
    for table, schema in {**TABLES, "timeline": TIMELINE_FULL_SCHEMA}.items():
        part = section.split(f"**{table}.parquet**", 1)[1].split("\n**", 1)[0]
        missing = [c for c in schema.names if f"`{c}`" not in part]
        assert not missing, f"{table}.parquet columns not in the README: {missing}"


def test_missing_values_are_nulls_not_nan(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sim.engine import run_scenario
    from tests.conftest import tiny

    run_scenario(tiny(duration_s=0.05), tmp_path / "r")
    ev = pq.read_table(tmp_path / "r" / "evictions.parquet")
    assert ev.schema.field("next_access_ns").type == pa.int64()
    nxt = ev.column("next_access_ns")
    assert 0 < nxt.null_count < len(nxt)  # some pages came back, some did not
    assert nxt.is_valid().to_pylist() == ev.column("refault").to_pylist()
    for name in ev.column_names:
        col = ev.column(name)
        if pa.types.is_floating(col.type):
            assert not pa.compute.any(pa.compute.is_nan(col)).as_py(), name


def _yaml_blocks(text: str) -> list[str]:
    return [b.split("\n```")[0] + "\n" for b in text.split("```yaml\n")[1:]]


def test_every_yaml_snippet_is_a_committed_file_that_validates() -> None:
    """The README shows files, not prose YAML: each block equals a file under configs/ or
    docs/examples/, and memsim validate accepts that file."""
    from click.testing import CliRunner

    from sim.cli import main

    root = README.parent
    files = {p: p.read_text() for d in ("configs", "docs/examples") for p in (root / d).glob("*")}
    blocks = _yaml_blocks(README.read_text())
    assert len(blocks) >= 2
    for block in blocks:
        same = [p for p, text in files.items() if text == block]
        assert same, f"a README yaml block is no committed file:\n{block[:200]}"
        r = CliRunner().invoke(main, ["validate", str(same[0])])
        assert r.exit_code == 0, (same[0], r.output)
        assert f"`{same[0].relative_to(root)}`" in README.read_text()  # the README names it


def test_every_config_has_its_row_in_the_configs_table() -> None:
    """Each file under configs/ is named in the README's Configs table, so a config added
    without a line saying what it is for fails here."""
    text = README.read_text()
    table = text.split("\n## Configs\n", 1)[1].split("\n## ", 1)[0]
    root = README.parent
    missing = [
        p.name
        for p in sorted((root / "configs").glob("*.yaml"))
        if f"| `configs/{p.name}` |" not in table
    ]
    assert not missing, f"configs without a row in the README's Configs table: {missing}"

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

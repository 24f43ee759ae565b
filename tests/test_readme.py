"""The README tells the truth about the settings and the commands CI runs."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text()
    missing = [f"PROSPECT_{n.upper()}" for n in Settings.model_fields if f"`PROSPECT_{n.upper()}`" not in readme]
    assert missing == []


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()

"""Every CLI error is one or two lines that say what to do; a traceback only with --debug; exit codes 0/1/2/130."""

from __future__ import annotations

import pytest
import typer

from core import cli_run
from core.cli import app
from core.settings import get_settings


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """The environment of a new user in the wrong folder: no data folder, no database."""
    monkeypatch.setenv("PROSPECT_DATA_DIR", str(tmp_path / "missing"))
    monkeypatch.delenv("PROSPECT_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "missing"
    get_settings.cache_clear()


def _run(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ended:
        app(args=list(args))
    captured = capsys.readouterr()
    return ended.value.code, captured.out + captured.err


@pytest.mark.parametrize("args", [("models", "list"), ("keys", "list"), ("keys", "create", "--name", "x"),
                                  ("keys", "revoke", "1")])
def test_missing_database_is_two_lines_not_a_traceback(nowhere, capsys, args):
    code, out = _run(capsys, *args)
    assert code == 2
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 2, out
    assert f"no database at {nowhere / 'prospect.db'}" in out.replace("\n", "")
    assert "PROSPECT_DATA_DIR" in out
    assert not (nowhere / "prospect.db").exists()  # nothing created by looking


def test_unmigrated_database_says_run_migrate(nowhere, capsys):
    nowhere.mkdir()
    (nowhere / "prospect.db").touch()
    code, out = _run(capsys, "keys", "list")
    assert code == 2 and "not migrated" in out and "prospect migrate" in out and "Traceback" not in out


def test_debug_shows_the_traceback(nowhere):
    with pytest.raises(cli_run.CliError):
        app(args=["models", "list", "--debug"])


def test_bad_setting_is_named(monkeypatch, capsys):
    monkeypatch.setenv("PROSPECT_PORT", "eighty")
    get_settings.cache_clear()
    try:
        code, out = _run(capsys, "keys", "list")
    finally:
        get_settings.cache_clear()
    assert code == 2 and "PROSPECT_PORT" in out and "Traceback" not in out


def test_exit_codes(capsys):
    probe = cli_run.ProspectTyper()

    @probe.command()
    def go(what: str) -> None:
        if what == "fail":
            raise typer.Exit(1)
        if what == "ctrl-c":
            raise KeyboardInterrupt
        if what == "bug":
            raise RuntimeError("boom\nsecond line")

    assert _run_probe(probe, capsys, "ok")[0] == 0
    assert _run_probe(probe, capsys, "fail")[0] == 1
    assert _run_probe(probe, capsys, "ctrl-c")[0] == 130
    assert _run_probe(probe, capsys, "--nope")[0] == 2
    code, out = _run_probe(probe, capsys, "bug")
    assert code == 1 and "RuntimeError: boom" in out and "second line" not in out and "--debug" in out


def _run_probe(probe, capsys, *args):
    with pytest.raises(SystemExit) as ended:
        probe(args=list(args))
    captured = capsys.readouterr()
    return ended.value.code, captured.out + captured.err

"""`prospect adapters try NAME VERSION "prompt"`: one answer without and with the adapter, side by side.

An operator's command on the server, like ``models``: it reads the version and its base model from the
database and the files from the data folder (or a copy from the S3 artifact store), and loads torch (only this command does).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core import adapters
from core.artifact_store import get_store
from core.base_models import local_folder, verify_base_model
from core.cli_resources import _fail, adapters_app
from core.cli_run import database_engine
from core.db import session_scope
from core.errors import DomainError
from core.models import BaseModelRecord
from core.settings import get_settings


@adapters_app.command("try")
def adapters_try(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    prompt: Annotated[str, typer.Argument(help="A user message; the base model's chat template wraps it.")],
    max_new_tokens: Annotated[int, typer.Option(help="Length of each answer, in tokens.")] = 64,
) -> None:
    """Answer PROMPT with the base model and with the adapter (greedy, CPU), side by side."""
    from alignment.generate import compare

    settings = get_settings()
    try:
        with session_scope(database_engine(settings)) as session:
            row = adapters.resolve_version(session, adapter_name=name, version_or_alias=version)
            base = session.get(BaseModelRecord, row.base_model_id)
            number, key, base_name = row.version, row.path, base.name
            # A store-registered base has no folder here: this host's verified copy, fetched when missing.
            base_dir = local_folder(settings, base)
            verify_base_model(base, base_dir)
    except DomainError as exc:
        _fail(exc.message)
    Console(stderr=True).print(f"loading {base_name} and {name} v{number} …")
    store = get_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.local_root / key if store.local_root is not None else Path(tmp)
        if store.local_root is None:  # an S3 store: a local copy of the version's files
            store.get_tree(key, folder)
        answers = compare(base_dir, folder, prompt, max_new_tokens=max_new_tokens)
    table = Table(f"{base_name} (base)", f"{name} v{number}", show_lines=True)
    table.add_row(answers["base"], answers["adapter"])
    Console().print(table)

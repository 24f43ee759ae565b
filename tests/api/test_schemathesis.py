"""Schemathesis with all its checks (what `st run <url>/openapi.json --checks all` runs: examples,
coverage, fuzzing and stateful phases) over every operation, in-process on a migrated SQLite database with
an admin key, finds nothing: the OpenAPI schema says what the API does.

A 422 is accepted for a schema-valid request only on the operations api.docs.SERVER_RULES lists, whose
422 description in the schema names the rule (it spans fields or depends on the server's state)."""

from __future__ import annotations

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from api.docs import SERVER_RULES
from api.main import create_app
from core.db import session_scope
from core.keys import create_key

SEED = 1
MAX_EXAMPLES = 10
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis's default for valid data


def _config(key: str) -> SchemathesisConfig:
    # No run cache (.schemathesis/): the same seed then draws the same requests on every machine.
    config = SchemathesisConfig.from_dict({"cache": {"enabled": False}, "operations": [
        {"include-method": method, "include-path": path,
         "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}}}
        for method, path in SERVER_RULES
    ]})
    config.update(seed=SEED, max_failures=None)
    project = config.projects.override
    project.update(headers={"Authorization": f"Bearer {key}"})
    project.checks.update(included_check_names=["all"])
    # The API takes UTF-8 text: a lone surrogate (\ud800) cannot be encoded and is refused as invalid JSON.
    project.generation.update(max_examples=MAX_EXAMPLES, codec="utf-8")
    return config


def run_schemathesis(app, key: str) -> tuple[set[str], list[str]]:
    """(operations tested, failures as 'operation: check: title' with the curl to reproduce)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(key))
    tested, failures = set(), []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status != Status.SKIP:
            tested.add(event.recorder.label)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.append(f"{event.recorder.label}: {check.name}: {failure.title}\n"
                                        f"{check.failure_info.code_sample[:2000]}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"error: {event.info.format()[:2000] if hasattr(event, 'info') else event}")
    return tested, failures


def test_schemathesis_all_checks_find_nothing(settings):
    app = create_app(settings)
    with session_scope(app.state.engine) as s:
        key = create_key(s, name="schemathesis", scopes="admin")[1]
    tested, failures = run_schemathesis(app, key)
    operations = {label for label in tested if label.startswith(("GET ", "POST ", "PUT ", "DELETE ", "PATCH "))}
    assert len(operations) >= 30, sorted(tested)
    assert not failures, "\n\n".join(dict.fromkeys(failures))


def test_server_rules_are_in_the_schema(settings):
    schema = create_app(settings).openapi()
    for (method, path), rule in SERVER_RULES.items():
        assert rule in schema["paths"][path][method.lower()]["responses"]["422"]["description"]

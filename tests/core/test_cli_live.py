"""`prospect rollouts start|status|stop` and `prospect adapters feedback` through the REST API."""

from __future__ import annotations

import json

from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.cli import app
from core.db import session_factory, session_scope
from tests.artifacts import make_model_dir, make_staged
from tests.core.test_cli_resources import cli  # noqa: F401 - the fixture: a CLI backed by a TestClient


def test_rollouts_and_feedback_commands(cli, settings, tmp_path):  # noqa: F811 - pytest injects the fixture
    runner, client = cli
    engine = client.app.state.engine
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
    for n in (1, 2):
        publish_adapter_version(session_factory(engine), settings=settings, adapter_name="bot",
                                staged_dir=make_staged(tmp_path / f"s{n}", payload=b"w%d" % n), job_id=None,
                                base_model=base, snapshot=None, hyperparameters={}, class_counts={},
                                class_weights={}, eval_metrics={})
    assert runner.invoke(app, ["adapters", "promote", "bot", "champion", "1"]).exit_code == 0
    events = [{"event_id": f"e{i}", "prompt": "p", "response": f"r{i}", "label": "up" if i % 4 else "down",
               "model": f"bot-v{1 + i % 2}"} for i in range(40)] + [
        {"event_id": "x", "prompt": "p", "response": "x", "label": "up", "adapter": "bot", "adapter_version": 7}]
    assert client.post("/v1/feedback/batch", json={"events": events}).json()["created"] == 41

    shown = runner.invoke(app, ["adapters", "feedback", "bot"])
    assert shown.exit_code == 0, shown.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in shown.stdout.splitlines() if line.startswith("│")}
    # v1 got the even events (i % 4 == 0 are down: 10 of 20), v2 the odd ones (all up).
    assert rows["v1"][:4] == ["10", "10", "20", "50.0%"] and rows["v1"][4].startswith("[29.9%")
    assert rows["v2"][:4] == ["20", "0", "20", "100.0%"]
    assert rows["v7 (unknown)"][:3] == ["1", "0", "1"]

    started = runner.invoke(app, ["rollouts", "start", "bot", "2", "--traffic", "0.5", "--min-votes", "50"])
    assert started.exit_code == 0, started.output
    rollout = json.loads(started.stdout)
    assert (rollout["status"], rollout["baseline_version"], rollout["traffic"]) == ("running", 1, 0.5)
    again = runner.invoke(app, ["rollouts", "start", "bot", "2"])
    assert again.exit_code == 2 and "already has a running rollout" in again.output
    status = runner.invoke(app, ["rollouts", "status", "bot"])
    assert status.exit_code == 0 and rollout["id"] in status.stdout and "running" in status.stdout
    assert [r["id"] for r in json.loads(runner.invoke(app, ["rollouts", "status", "bot", "--json"]).stdout)] == [
        rollout["id"]]
    assert json.loads(runner.invoke(app, ["adapters", "feedback", "bot", "--json"]).stdout)["versions"]
    one = json.loads(runner.invoke(app, ["rollouts", "status", "bot", rollout["id"]]).stdout)
    assert one["id"] == rollout["id"] and one["evaluations"] == []
    stopped = runner.invoke(app, ["rollouts", "stop", "bot", rollout["id"]])
    assert stopped.exit_code == 0 and json.loads(stopped.stdout)["status"] == "stopped"
    assert runner.invoke(app, ["rollouts", "stop", "bot", rollout["id"]]).exit_code == 2

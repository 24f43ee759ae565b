"""Live feedback per version, routing and canary rollouts over HTTP, on SQLite and Postgres."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import rollouts
from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.models import AdapterAlias, AdapterVersion, Rollout, RolloutEvaluation, TrainingPolicy, utcnow
from core.policies import create_policy
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged


def publish(settings, engine, tmp_path, base, n: int) -> None:
    publish_adapter_version(session_factory(engine), settings=settings, adapter_name="bot",
                            staged_dir=make_staged(tmp_path / f"s{n}", payload=b"weights %d" % n), job_id=f"job{n}",
                            base_model=base, snapshot=None, hyperparameters={}, class_counts={}, class_weights={},
                            eval_metrics={})


@pytest.fixture
def api(settings, tmp_path):
    """Adapter ``bot`` with versions 1 and 2 (base model ``base``); champion -> 1."""
    client, h = make_api(settings)
    engine = client.app.state.engine
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
    for n in (1, 2):
        publish(settings, engine, tmp_path, base, n)
    r = client.put("/v1/adapters/bot/aliases/champion", json={"version": 1}, headers=h["train"])
    assert r.status_code == 200
    client.base = base
    return client, h


def votes(client, h, *, tag: str, up: int, down: int, adapter: str | None = "bot", version: int | None = None,
          model: str | None = None) -> None:
    """``up`` + ``down`` votes, each by its own user on its own response, attributed as given."""
    events = []
    for i in range(up + down):
        e = {"event_id": f"{tag}-{i}", "prompt": "hi", "response": f"{tag} {i}", "label": "up" if i < up else "down",
             "user_id": f"{tag}-u{i}"}
        if adapter is not None:
            e |= {"adapter": adapter, "adapter_version": version}
        if model is not None:
            e["model"] = model
        events.append(e)
    for start in range(0, len(events), 1000):
        r = client.post("/v1/feedback/batch", json={"events": events[start:start + 1000]}, headers=h["ingest"])
        assert r.status_code == 200 and r.json()["created"] == len(events[start:start + 1000]), r.text


def start(client, h, **body):
    return client.post("/v1/adapters/bot/rollouts", json={"candidate": 2, **body}, headers=h["train"])


def test_adapter_feedback_per_version_with_wilson_intervals(api):
    client, h = api
    votes(client, h, tag="a", up=8, down=2, version=1)
    votes(client, h, tag="b", up=0, down=5, version=2)
    votes(client, h, tag="c", up=3, down=0, version=9)  # a version this database does not know
    votes(client, h, tag="d", up=1, down=1, adapter=None, model="base")  # the base model, no adapter
    votes(client, h, tag="e", up=4, down=0, adapter=None, model="other")  # neither
    client.delete("/v1/feedback/a-0", headers=h["ingest"])  # a retraction stops counting
    r = client.get("/v1/adapters/bot/feedback", headers=h["read"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known"] is True and body["interval_method"] == "wilson-95"
    got = {v["version"]: v for v in body["versions"]}
    assert sorted(got) == [1, 2, 9]
    assert (got[1]["up"], got[1]["down"], got[1]["total"], got[1]["known"]) == (7, 2, 9, True)
    assert got[1]["rate"] == pytest.approx(7 / 9)
    # Wilson 95% for 7/9, computed by hand: centre (p + z^2/2n)/(1 + z^2/n), half-width z*sqrt(...)/(1 + z^2/n).
    z, n, p = 1.959963984540054, 9, 7 / 9
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    assert got[1]["interval"] == pytest.approx([centre - half, centre + half])
    assert got[2]["rate"] == 0 and got[2]["interval"][0] == 0 and got[2]["interval"][1] == pytest.approx(0.4345, 1e-3)
    assert (got[9]["known"], got[9]["served_name"]) == (False, "bot-v9")
    assert {k: body["base"][k] for k in ("model", "up", "down", "total")} == {"model": "base", "up": 1, "down": 1,
                                                                           "total": 2}
    future = (utcnow() + timedelta(days=1)).isoformat()
    r = client.get("/v1/adapters/bot/feedback", params={"since": future}, headers=h["read"])
    assert r.json()["versions"] == [] and r.json()["base"]["total"] == 0
    unknown = client.get("/v1/adapters/nobody/feedback", headers=h["read"]).json()
    assert (unknown["known"], unknown["versions"], unknown["base"]) == (False, [], None)


def test_route_without_rollout_answers_champion_then_latest(api, settings):
    client, h = api
    r = client.get("/v1/adapters/bot/route", params={"unit": "u1"}, headers=h["read"])
    assert r.json() == {"version": 1, "served_name": "bot-v1", "rollout_id": None, "arm": None, "alias": "champion"}
    with session_scope(client.app.state.engine) as s:
        s.delete(s.get(AdapterAlias, ("bot", "champion")))
    r = client.get("/v1/adapters/bot/route", params={"unit": "u1"}, headers=h["read"])
    assert (r.json()["version"], r.json()["alias"]) == (2, "latest")
    assert client.get("/v1/adapters/nope/route", params={"unit": "u"}, headers=h["read"]).status_code == 404
    assert client.get("/v1/adapters/bot/route", headers=h["read"]).status_code == 422


def test_routing_share_and_stability_over_2000_units(api):
    client, h = api
    r = start(client, h, traffic=0.5)
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    arms = {}
    for i in range(2000):
        got = client.get("/v1/adapters/bot/route", params={"unit": f"user-{i}"}, headers=h["read"]).json()
        assert got["rollout_id"] == rollout_id
        assert got["version"] == (2 if got["arm"] == "candidate" else 1)
        assert got["served_name"] == f"bot-v{got['version']}"
        arms[f"user-{i}"] = got["arm"]
    share = sum(a == "candidate" for a in arms.values()) / 2000
    # Binomial(2000, 0.5): sd = 0.0112; 4 sd is a band a correct router leaves once in ~16,000 runs.
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 2000), share
    for i in range(0, 2000, 97):  # repeat calls give the same arm
        got = client.get("/v1/adapters/bot/route", params={"unit": f"user-{i}"}, headers=h["read"]).json()
        assert got["arm"] == arms[f"user-{i}"]
    # A 10% rollout gets about 10% (the router is a pure function: no HTTP needed for the count).
    share10 = sum(rollouts.bucket("other", f"u{i}") < 0.1 for i in range(20000)) / 20000
    assert abs(share10 - 0.1) < 4 * math.sqrt(0.09 / 20000)


def test_start_validates_and_allows_one_running(api):
    client, h = api
    assert start(client, h, candidate=1).status_code == 422  # the champion itself
    assert start(client, h, candidate=7).status_code == 404
    assert start(client, h, baseline="staging").status_code == 404
    assert start(client, h, traffic=1.5).status_code == 422
    for huge in ({"candidate": 2**31}, {"baseline": 2**63}, {"baseline": "b\x00"}):  # 422, not the driver's 500
        assert start(client, h, **huge).status_code == 422, huge
    r = start(client, h)
    assert r.status_code == 201
    body = r.json()
    assert (body["status"], body["baseline_version"], body["baseline"], body["traffic"]) == ("running", 1,
                                                                                           "champion", 0.1)
    again = start(client, h)
    assert again.status_code == 409 and body["id"] in again.text
    listed = client.get("/v1/adapters/bot/rollouts", headers=h["read"]).json()
    assert [x["id"] for x in listed] == [body["id"]]
    assert client.get("/v1/adapters/bot/rollouts/nope", headers=h["read"]).status_code == 404
    assert start(client, h).status_code == 409
    assert client.post(f"/v1/adapters/bot/rollouts/{body['id']}/stop", headers=h["read"]).status_code == 403
    r = client.post(f"/v1/adapters/bot/rollouts/{body['id']}/stop", headers=h["train"])
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    assert client.post(f"/v1/adapters/bot/rollouts/{body['id']}/stop", headers=h["train"]).status_code == 409
    assert start(client, h).status_code == 201  # none running any more


def _history(client, h, name: str) -> list[dict]:
    return client.get(f"/v1/adapters/bot/aliases/{name}/history", headers=h["read"]).json()


def test_clearly_better_candidate_is_promoted_and_the_champion_moves(api):
    client, h = api
    votes(client, h, tag="before", up=0, down=300, version=2)  # before the rollout: does not count
    rollout_id = start(client, h, traffic=0.5, min_votes=100).json()["id"]
    votes(client, h, tag="c-few", up=60, down=10, version=2)
    r = client.post(f"/v1/adapters/bot/rollouts/{rollout_id}/evaluate", headers=h["train"])
    assert r.json()["status"] == "running" and "100 votes per arm" in r.json()["reason"]
    votes(client, h, tag="c", up=60, down=30, version=2)  # 120 up / 40 down
    votes(client, h, tag="b", up=80, down=80, version=1)
    votes(client, h, tag="x", up=0, down=50, version=3)  # another version: not an arm
    r = client.post(f"/v1/adapters/bot/rollouts/{rollout_id}/evaluate", headers=h["train"])
    body = r.json()
    assert body["status"] == "promoted", body
    assert (body["candidate"]["up"], body["candidate"]["down"], body["baseline_arm"]["up"],
            body["baseline_arm"]["down"]) == (120, 40, 80, 80)
    p = rollouts.prob_greater(121, 41, 81, 81)
    assert body["p_candidate_better"] == pytest.approx(p) and p > 0.999
    assert [e["outcome"] for e in body["evaluations"]] == ["running", "promoted"]
    assert body["evaluations"][0]["candidate"]["total"] == 70
    aliases = client.get("/v1/adapters", headers=h["read"]).json()[0]["aliases"]
    assert aliases["champion"] == 2
    last = _history(client, h, "champion")[-1]
    assert (last["from_version"], last["to_version"], last["moved_by"]) == (1, 2, f"rollout {rollout_id}")
    # Decided: later evaluations change nothing, routing falls back to the (new) champion.
    again = client.post(f"/v1/adapters/bot/rollouts/{rollout_id}/evaluate", headers=h["train"]).json()
    assert again["status"] == "promoted" and len(again["evaluations"]) == 2
    assert client.get("/v1/adapters/bot/route", params={"unit": "u"}, headers=h["read"]).json()["version"] == 2


def test_clearly_worse_candidate_is_rolled_back_and_the_champion_stays(api):
    client, h = api
    rollout_id = start(client, h, traffic=0.5, min_votes=100).json()["id"]
    votes(client, h, tag="c", up=40, down=110, version=2)
    votes(client, h, tag="b", up=100, down=50, version=1)
    body = client.post(f"/v1/adapters/bot/rollouts/{rollout_id}/evaluate", headers=h["train"]).json()
    assert body["status"] == "rolled_back" and body["p_candidate_worse"] > 0.999, body
    assert client.get("/v1/adapters", headers=h["read"]).json()[0]["aliases"]["champion"] == 1
    assert [m["to_version"] for m in _history(client, h, "champion")] == [1]


def test_undecided_rollout_expires_and_hand_moved_champion_is_not_overwritten(api):
    client, h = api
    engine = client.app.state.engine
    rollout_id = start(client, h, traffic=0.5, min_votes=10, max_days=2).json()["id"]
    votes(client, h, tag="c", up=10, down=10, version=2)
    votes(client, h, tag="b", up=10, down=10, version=1)
    with session_scope(engine) as s:
        r = rollouts.evaluate(s, rollout=s.get(Rollout, rollout_id), now=utcnow() + timedelta(days=1))
        assert r.status == "running"
        r = rollouts.evaluate(s, rollout=r, now=utcnow() + timedelta(days=2, minutes=1))
        assert r.status == "expired" and "2 days" in r.reason
    # A champion moved by hand mid-rollout: the promote's compare-and-swap fails, the rollout stops.
    rollout_id = start(client, h, traffic=0.5, min_votes=10).json()["id"]
    publish(client.app.state.settings, engine, client.app.state.settings.data_path, client.base, 3)
    assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 3}, headers=h["train"]).status_code == 200
    votes(client, h, tag="c2", up=60, down=0, version=2)
    votes(client, h, tag="b2", up=0, down=60, version=1)
    body = client.post(f"/v1/adapters/bot/rollouts/{rollout_id}/evaluate", headers=h["train"]).json()
    assert body["status"] == "stopped" and "not promoted" in body["reason"], body
    assert client.get("/v1/adapters", headers=h["read"]).json()[0]["aliases"]["champion"] == 3


def test_beat_evaluates_every_running_rollout(api):
    client, h = api
    engine = client.app.state.engine
    rollout_id = start(client, h, traffic=0.5, min_votes=50).json()["id"]
    votes(client, h, tag="c", up=50, down=0, version=2)
    votes(client, h, tag="b", up=0, down=50, version=1)
    assert rollouts.evaluate_running(engine) == {rollout_id: "promoted"}
    assert rollouts.evaluate_running(engine) == {}
    with session_scope(engine) as s:
        assert [e.outcome for e in s.scalars(select(RolloutEvaluation))] == ["promoted"]


def test_policy_rollout_option_and_hook(api, settings, tmp_path):
    client, h = api
    engine = client.app.state.engine
    r = client.post("/v1/policies", headers=h["train"], json={"adapter": "bot", "base_model": "base",
                                                              "rollout": {"traffic": 0.5, "min_votes": 10}})
    assert r.status_code == 201, r.text
    assert r.json()["rollout"] == {"baseline": "champion", "traffic": 0.5, "min_votes": 10, "probability": 0.95,
                                   "max_days": 14.0}
    bad = client.post("/v1/policies", headers=h["train"], json={"adapter": "bot2", "base_model": "base",
                                                                "rollout": {"traffic": 2}})
    assert bad.status_code == 422 and "traffic" in bad.text
    publish(settings, engine, tmp_path, client.base, 3)
    with session_scope(engine) as s:
        policy = s.scalar(select(TrainingPolicy))
        v2, v3 = (s.scalar(select(AdapterVersion).where(AdapterVersion.version == n)) for n in (2, 3))
        first = rollouts.on_version_published(s, v2, policy)
        assert (first.candidate_version, first.baseline_version, first.policy_id) == (2, 1, policy.id)
        second = rollouts.on_version_published(s, v3, policy)  # supersedes the older candidate's rollout
        assert (second.candidate_version, second.status) == (3, "running")
        assert s.get(Rollout, first.id).status == "stopped" and "superseded" in s.get(Rollout, first.id).reason
        assert rollouts.on_version_published(s, v3, None) is None
    with session_scope(engine) as s:
        assert create_policy(s, adapter_name="plain", base_model_name="base").rollout is None

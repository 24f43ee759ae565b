"""The live loop on versions published by real jobs (tiny model, 3 steps, force_publish), not staged folders.

A real Celery worker trains, publishes and delivers the outbox; a webhook receiver and a fake vLLM
are real HTTP servers on 127.0.0.1. Feedback attributed to the two versions decides the rollout.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter

import pytest
from sqlalchemy import select

from core.db import session_scope
from core.models import Delivery, ServingTarget
from tests.api.test_serving_targets import SECRET, Receiver
from tests.worker import test_e2e as e2e
from tests.worker.jobkit import TINY_CONFIG, feedback_events, post_feedback, wait_for

make_stack, tiny_dir = e2e.make_stack, e2e.tiny_dir  # the fixtures
SERVED_AS = "tiny-served"  # what the vLLM host calls the base model


def votes(stack, version: int, up: int, down: int, tag: str) -> None:
    events = [{"event_id": f"{tag}{i}", "prompt": "p", "response": f"{tag}{i}", "label": "up" if i < up else "down",
               "user_id": f"{tag}-u{i}", "adapter": "bot", "adapter_version": version} for i in range(up + down)]
    post_feedback(stack.client, stack.keys["ingest"], events)


@pytest.mark.slow
def test_job_published_versions_roll_out_promote_and_reach_the_serving_targets(make_stack, tiny_dir):
    stack = make_stack("embedded", tiny_dir)
    client, keys = stack.client, stack.keys
    vllm_calls: list[tuple[str, dict]] = []
    hook = Receiver()
    fake_vllm = Receiver(answer=lambda path, body: (vllm_calls.append((path, body)), (200, "Success"))[1])
    try:
        for body in ({"name": "hook", "kind": "webhook", "url": hook.url, "secret": SECRET},
                     {"name": "vllm", "kind": "vllm", "url": fake_vllm.url, "adapter_root": "/srv/loras"}):
            r = client.post("/v1/serving-targets", headers=keys["admin"], json={"adapter": "bot", **body})
            assert r.status_code == 201, r.text
        post_feedback(client, keys["ingest"], feedback_events())
        stack.worker("live", queues="training,default")
        for n, options in ((1, {}), (2, {"base_model_name_or_path": SERVED_AS})):
            job = stack.start_job("bot", config={**TINY_CONFIG, "max_steps": 3}, options=options,
                                  force_publish=True)
            done = stack.wait_status(job["id"], "succeeded", "failed")
            assert done["status"] == "succeeded" and done["adapter_version"]["version"] == n, done["error"]

        # Real PEFT output passes vLLM's loader checks; the job option names the served base model.
        manifests = {n: client.get(f"/v1/adapters/bot/versions/{n}/files/manifest.json", headers=keys["train"]).json()
                     for n in (1, 2)}
        for n in (1, 2):
            verdict = manifests[n]["serving_compat"]["vllm"]
            assert (verdict["ok"], verdict["reasons"], verdict["max_lora_rank"]) == (True, [], 8), verdict
        assert any("filesystem resolver" in note for note in manifests[1]["serving_compat"]["vllm"]["notes"])
        assert manifests[2]["serving_compat"]["vllm"]["notes"] == []
        config = client.get("/v1/adapters/bot/versions/2/files/adapter_config.json", headers=keys["train"]).json()
        assert config["base_model_name_or_path"] == SERVED_AS and config["r"] == 4

        assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 1},
                          headers=keys["train"]).status_code == 200
        r = client.post("/v1/adapters/bot/rollouts", headers=keys["train"],
                        json={"candidate": 2, "traffic": 0.5, "min_votes": 40})
        assert r.status_code == 201, r.text
        rollout = r.json()
        arms = {u: client.get("/v1/adapters/bot/route", params={"unit": f"u{u}"}, headers=keys["train"]).json()
                for u in range(2000)}
        share = sum(a["arm"] == "candidate" for a in arms.values()) / 2000
        assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 2000), share
        assert all(a["served_name"] == f"bot-v{a['version']}" for a in arms.values())
        for u in range(0, 2000, 101):
            assert client.get("/v1/adapters/bot/route", params={"unit": f"u{u}"},
                              headers=keys["train"]).json() == arms[u]

        votes(stack, 2, 38, 2, "cand")  # 95% up
        votes(stack, 1, 20, 20, "base")  # 50% up
        decided = client.post(f"/v1/adapters/bot/rollouts/{rollout['id']}/evaluate", headers=keys["train"]).json()
        assert decided["status"] == "promoted", decided
        aliases = client.get("/v1/adapters", headers=keys["train"]).json()[0]["aliases"]
        assert aliases["champion"] == 2
        # Back the other way: v1 as the candidate, clearly worse than the champion now: rolled back, no move.
        again = client.post("/v1/adapters/bot/rollouts", headers=keys["train"],
                            json={"candidate": 1, "traffic": 0.5, "min_votes": 40}).json()
        assert again["baseline_version"] == 2, again
        votes(stack, 1, 4, 36, "worse")
        votes(stack, 2, 30, 10, "champ")
        decided = client.post(f"/v1/adapters/bot/rollouts/{again['id']}/evaluate", headers=keys["train"]).json()
        assert decided["status"] == "rolled_back", decided
        assert client.get("/v1/adapters", headers=keys["train"]).json()[0]["aliases"]["champion"] == 2

        def all_delivered():
            with session_scope(stack.engine) as s:
                return all(d.status == "delivered" for d in s.scalars(select(Delivery)))

        wait_for(all_delivered, timeout=120, what="every delivery", on_timeout=stack.logs)
        with session_scope(stack.engine) as s:
            hook_order = list(s.scalars(select(Delivery.id).join(ServingTarget, ServingTarget.id == Delivery.target_id)
                                        .where(ServingTarget.name == "hook").order_by(Delivery.seq)))
    finally:
        hook.close()
        fake_vllm.close()

    ok = [r for r in hook.requests if r["status"] == 200]
    assert [r["key"] for r in ok] == hook_order  # every event once, in outbox order
    assert Counter(r["body"]["event"] for r in ok) == {"version.published": 2, "alias.moved": 4,
                                                       "rollout.started": 2, "rollout.decided": 2}
    for r in hook.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), r["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r["signature"], expected)
    published = {r["body"]["version"]: r["body"] for r in ok if r["body"]["event"] == "version.published"}
    tarball = client.get("/v1/adapters/bot/versions/2/download", headers=keys["train"]).content
    assert published[2]["sha256"] == hashlib.sha256(tarball).hexdigest()
    assert [r["body"]["rollout"]["status"] for r in ok if r["body"]["event"] == "rollout.decided"] == [
        "promoted", "rolled_back"]
    # vLLM was told to load what routing answered, from <adapter_root>/bot/v<n>, and holds the champion at the end.
    loads = {b["lora_name"]: b["lora_path"] for p, b in vllm_calls if p == "/v1/load_lora_adapter"}
    assert loads.get("bot-v2") == "/srv/loras/bot/v2" and set(loads) <= {"bot-v1", "bot-v2"}
    target = client.get("/v1/serving-targets", headers=keys["admin"]).json()
    assert {t["name"]: t["loaded"] for t in target}["vllm"] == [2]

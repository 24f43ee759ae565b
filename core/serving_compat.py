"""Can vLLM load this adapter as it is? Checked at publish, kept in the manifest, enforced for vLLM targets.

The rules are vLLM's own LoRA loader's (``vllm/lora/peft_helper.py``
``PEFTHelper.validate_legal`` and ``vllm/lora/lora_model.py``
``LoRAModel.from_local_checkpoint``):

- ``r``, ``lora_alpha`` and ``target_modules`` must be in ``adapter_config.json``;
- ``modules_to_save`` must be empty ("vLLM only supports modules_to_save being None");
- no DoRA (``use_dora``: "vLLM does not yet support DoRA");
- ``bias`` must be ``"none"``;
- ``r`` must be at most the server's ``--max-lora-rank``, whose allowed values are
  ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]`` (``vllm/config/lora.py``;
  the default is 16). Any rank up to 512 loads on a server started with a large enough value
  (smaller ranks are zero-padded); the manifest records the smallest one that serves it;
- every LoRA module must be one vLLM's model class accepts: for the Llama family the
  projections behind ``packed_modules_mapping`` (``qkv_proj`` = q/k/v, ``gate_up_proj`` =
  gate/up) plus ``o_proj`` and ``down_proj``. Architectures not in :data:`LORA_MODULES` are
  not checked (a note says so).

``base_model_name_or_path`` is not needed by ``POST /v1/load_lora_adapter`` (what a ``vllm``
serving target calls) but vLLM's filesystem resolver loads an adapter only when it equals the
served model's name exactly (``vllm/plugins/lora_resolvers/filesystem_resolver.py``): when the
job did not set it, a note says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import Conflict
from core.models import AdapterVersion, ServingTarget

# vllm/config/lora.py: MaxLoRARanks.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
_LLAMA = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
                    "down_proj"})
# Linear modules vLLM's model class takes LoRA on, by the architecture name in config.json.
LORA_MODULES: dict[str, frozenset[str]] = {
    **{arch: _LLAMA for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                 "GemmaForCausalLM", "Gemma2ForCausalLM")},
    "Phi3ForCausalLM": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
}


def min_max_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that serves ``rank`` (None: none does)."""
    return next((m for m in VLLM_MAX_LORA_RANKS if rank <= m), None)


def check_vllm(config: Any, *, architecture: str | None, base_model_name_or_path: str | None) -> dict[str, Any]:
    """``{"ok", "reasons", "notes", "max_lora_rank"}`` for one ``adapter_config.json`` (already parsed)."""
    reasons: list[str] = []
    notes: list[str] = []
    if not isinstance(config, dict):
        return {"ok": False, "reasons": ["adapter_config.json is not a JSON object"], "notes": [],
                "max_lora_rank": None}
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        reasons.append(f"peft_type is {config.get('peft_type')!r}: vLLM loads LoRA adapters only")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) in (None, [], "")]
    if missing:
        reasons.append(f"adapter_config.json lacks {', '.join(missing)}, which vLLM requires")
    rank = config.get("r")
    needed = None
    if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1:
        needed = min_max_lora_rank(rank)
        if needed is None:
            reasons.append(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")
        elif needed > VLLM_DEFAULT_MAX_LORA_RANK:
            notes.append(f"rank {rank} needs vLLM started with --max-lora-rank {needed} (its default is "
                         f"{VLLM_DEFAULT_MAX_LORA_RANK})")
    elif rank is not None:
        reasons.append(f"rank {rank!r} is not a positive integer")
    if config.get("modules_to_save"):
        reasons.append(f"modules_to_save is {config['modules_to_save']!r}: vLLM only loads adapters without it")
    if config.get("use_dora"):
        reasons.append("use_dora is set: vLLM does not load DoRA adapters")
    if config.get("bias", "none") != "none":
        reasons.append(f"bias is {config.get('bias')!r}: vLLM loads adapters with bias 'none' only")
    reasons += _module_reasons(config.get("target_modules"), architecture, notes)
    if not base_model_name_or_path:
        notes.append("base_model_name_or_path is Prospect's base model name: vLLM's filesystem resolver will not "
                     "match it (set the job option base_model_name_or_path to the served model id); "
                     "POST /v1/load_lora_adapter does not need it")
    return {"ok": not reasons, "reasons": reasons, "notes": notes, "max_lora_rank": needed}


def _module_reasons(targets: Any, architecture: str | None, notes: list[str]) -> list[str]:
    if isinstance(targets, str):  # PEFT allows a regex; vLLM matches the saved tensor names instead
        notes.append("target_modules is a pattern: the modules were not checked against vLLM's list")
        return []
    if not isinstance(targets, list) or not targets:
        return []
    allowed = LORA_MODULES.get(architecture or "")
    if allowed is None:
        notes.append(f"architecture {architecture!r} is not in Prospect's vLLM table: target modules not checked")
        return []
    bad = sorted({str(t).rsplit(".", 1)[-1] for t in targets} - allowed)
    if bad:
        return [(f"target modules {', '.join(bad)} are not LoRA modules vLLM's {architecture} accepts "
                 f"({', '.join(sorted(allowed))})")]
    return []


def check_folder(folder: Path, *, architecture: str | None, base_model_name_or_path: str | None) -> dict[str, Any]:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return {"ok": False, "reasons": [f"adapter_config.json unreadable: {exc}"], "notes": [], "max_lora_rank": None}
    return check_vllm(config, architecture=architecture, base_model_name_or_path=base_model_name_or_path)


def vllm_verdict(manifest: dict) -> dict[str, Any] | None:
    """The publish-time verdict kept in a version's manifest (None for versions published before the check)."""
    return ((manifest or {}).get("serving_compat") or {}).get("vllm")


def reasons_for(verdict: dict[str, Any], *, max_lora_rank: int | None) -> list[str]:
    """Why a server started with ``--max-lora-rank max_lora_rank`` would refuse the version (empty: it loads it)."""
    reasons = list(verdict["reasons"])
    needed = verdict.get("max_lora_rank")
    if max_lora_rank is not None and needed is not None and needed > max_lora_rank:
        reasons.append(f"its rank needs --max-lora-rank {needed} and the server has {max_lora_rank} (vLLM answers "
                       f"'LoRA rank ... is greater than max_lora_rank'); restart it with {needed} and set the "
                       "target's max_lora_rank, or train with a lower lora_r")
    return reasons


def refuse_reason(adapter_name: str, version: int, reasons: list[str]) -> str:
    return (f"adapter {adapter_name!r} v{version} cannot be loaded by vLLM: {'; '.join(reasons)}. "
            "Publish a version trained without these settings")


def require_servable(session: Session, version: AdapterVersion) -> None:
    """409 when a live ``vllm`` target of the adapter would be told to load a version its vLLM refuses."""
    verdict = vllm_verdict(version.manifest)
    if verdict is None:
        return
    targets = session.scalars(select(ServingTarget).where(
        ServingTarget.adapter_name == version.adapter_name, ServingTarget.kind == "vllm",
        ServingTarget.deleted_at.is_(None)).order_by(ServingTarget.name))
    for target in targets:
        reasons = reasons_for(verdict, max_lora_rank=target.max_lora_rank)
        if reasons:
            raise Conflict(f"{refuse_reason(version.adapter_name, version.version, reasons)} "
                           f"(vLLM serving target {target.name!r})",
                           details={"serving_compat": verdict, "target": target.name})

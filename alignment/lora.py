"""LoRA on a frozen base: the policy is base + adapter, the reference is the
same network with the adapter disabled (one copy of the weights)."""

from __future__ import annotations

from alignment.config import ConfigError, KTOConfig

# Attention projections by architecture family, most common first.
ATTENTION_PROJECTIONS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, Gemma, SmolLM
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # OPT, BART-style
    ("q_proj", "k_proj", "v_proj", "dense"),  # Phi
    ("qkv_proj", "o_proj"),  # Phi-3
    ("query_key_value", "dense"),  # GPT-NeoX, Falcon, Bloom
    ("Wqkv", "out_proj"),  # MPT
    ("c_attn",),  # GPT-2
)


def default_target_modules(model) -> tuple[str, ...]:
    """The attention projections of ``model``'s architecture, by module name."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if type(module).__name__ in ("Linear", "Conv1D")}
    for group in ATTENTION_PROJECTIONS:
        if all(n in names for n in group):
            return group
    raise ConfigError(
        f"cannot tell this architecture's attention projections; set lora_target_modules "
        f"(linear layers found: {', '.join(sorted(names)) or 'none'})"
    )


def attach_lora(model, config: KTOConfig):
    """A PeftModel with a fresh trainable LoRA adapter on ``model``.

    ``model`` is changed in place (PEFT injects the LoRA layers); its own
    weights are frozen and never updated. A model that already is a
    PeftModel is returned as it is, its active adapter being trained further.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    targets = config.lora_target_modules or default_target_modules(model)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(targets), bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)

"""One answer from the base model and one from the base with an adapter, for `prospect adapters try`.

The prompt is rendered exactly as training rendered it (``alignment.data.render_prompt``: the base
model's chat template), greedy decoding, on the CPU unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path


def compare(base_dir: str | Path, adapter_dir: str | Path, prompt: str, *, max_new_tokens: int = 64,
            device: str = "cpu") -> dict[str, str]:
    """{"base": ..., "adapter": ...}: the same prompt answered without and with the adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.data import adds_bos, render_prompt
    from alignment.lora import quiet_peft

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    with quiet_peft():
        model = PeftModel.from_pretrained(base, str(adapter_dir)).to(device).eval()
    # The token ids training saw for this prompt (alignment.data.tokenize_rows): template, one BOS.
    ids = tokenizer(render_prompt(prompt, tokenizer), add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    input_ids = torch.tensor([ids], device=device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def answer() -> str:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    with model.disable_adapter():
        without = answer()
    return {"base": without, "adapter": answer()}

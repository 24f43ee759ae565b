"""tests/tiny.py is shared with other suites: it must load with the Auto classes
and write the same bytes every time."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.tiny import build_tiny_model_dir


def test_tiny_model_dir_is_deterministic_and_loadable(tmp_path):
    a, b = build_tiny_model_dir(tmp_path / "a"), build_tiny_model_dir(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(a)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.vocab_size == len(tokenizer)
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<s><|user|>Hi</s><|assistant|>"
    ids = tokenizer("Any text, even unseen: é!", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Any text, even unseen: é!"  # byte-level: nothing is unknown

"""A tiny random Llama-style model and a locally trained tokenizer, for tests.

Importable without pytest: ``from tests.tiny import build_tiny_model_dir``.
Nothing touches the network; the same call writes the same files (the
tokenizer is trained deterministically and the weights come from a fixed seed).

The tokenizer is byte-level BPE (every string round-trips), adds a BOS by
default like Llama's, and its chat template writes the BOS as well, so code
that must not double it is exercised.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Please summarise this text in one sentence.",
    "I am sorry, I cannot help with that request.",
    "Sure! Here is a short answer to your question.",
    "Two plus two equals four. Three times three is nine.",
    "Write a haiku about the sea and the moon.",
    "Thanks for the feedback, I will try again.",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tiny_tokenizer():
    """A PreTrainedTokenizerFast: byte-level BPE, ~300 tokens, pad/bos/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:], chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(tokenizer, *, seed: int = 0, hidden_size: int = 48, layers: int = 2):
    """A LlamaForCausalLM with random weights from ``seed`` (global RNG left as it was)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        # Larger than Llama's 0.02 so that the random model's log-probs differ between tokens.
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def build_tiny_model_dir(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer to ``path`` (loadable with ``Auto*.from_pretrained(path)``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_rows(n: int = 16) -> list[dict]:
    """Feedback rows in TRL's KTO format, both classes, some as chat messages."""
    questions = ["What is two plus two?", "Capital of France?", "Write a haiku.", "Summarise this text."]
    good = ["Two plus two equals four.", "The capital of France is Paris.", "Sea and moon.", "Short answer."]
    bad = ["I cannot help with that.", "The quick brown fox.", "Sorry, no.", "Three times three is nine."]
    rows = []
    for i in range(n):
        q = questions[i % len(questions)]
        desirable = i % 2 == 0
        completion = (good if desirable else bad)[(i // 2) % len(good)]
        prompt = [{"role": "user", "content": q}] if i % 3 == 0 else q
        rows.append({"prompt": prompt, "completion": completion, "label": desirable})
    return rows

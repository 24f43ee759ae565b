"""Rows -> tokens: chat template, single BOS, EOS, masking, truncation, KL pairs."""

import pytest

from alignment.data import RowError, collate, kl_partner, plan_batches, tokenize_rows, truncate


def full_ids(example):
    return list(example.prefix + example.prompt + example.completion)


def test_chat_template_single_bos_and_eos(tiny_tokenizer):
    (example,) = tokenize_rows([{"prompt": "What is two plus two?", "completion": "Four.", "label": True}],
                               tiny_tokenizer)
    ids = full_ids(example)
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    # The tiny tokenizer adds a BOS and its template writes one too: exactly one survives.
    assert ids[0] == bos and ids.count(bos) == 1
    assert example.completion[-1] == eos
    assert tiny_tokenizer.decode(ids) == "<s><|user|>What is two plus two?</s><|assistant|>Four.</s>"
    assert tiny_tokenizer.decode(list(example.completion)) == "Four.</s>"


def test_text_prompt_equals_single_user_message(tiny_tokenizer):
    a, b = tokenize_rows([
        {"prompt": "Capital of France?", "completion": "Paris.", "label": True},
        {"messages": [{"role": "user", "content": "Capital of France?"}],
         "completion": [{"role": "assistant", "content": "Paris."}], "label": False},
    ], tiny_tokenizer)
    assert (a.prefix, a.prompt, a.completion) == (b.prefix, b.prompt, b.completion)
    assert (a.label, b.label) == (True, False)


@pytest.mark.parametrize("row, fragment", [
    ({"completion": "x", "label": True}, "row 0: needs 'prompt'"),
    ({"prompt": "q", "label": True}, "row 0: 'completion'"),
    ({"prompt": "q", "completion": "x", "label": "up"}, "row 0: 'label' must be true"),
    ({"prompt": [{"role": "user"}], "completion": "x", "label": True}, "'role' and 'content'"),
    ("not a row", "row 0: expected an object"),
])
def test_malformed_rows_name_the_row_and_field(tiny_tokenizer, row, fragment):
    with pytest.raises(RowError, match=fragment):
        tokenize_rows([row], tiny_tokenizer)


def test_truncation_keeps_prompt_end_completion_start_and_bos():
    prompt, completion = list(range(100, 160)), list(range(200, 260))
    p, c = truncate([1], prompt, completion, max_length=41, prompt_budget=20)
    assert len(p) + len(c) == 41
    assert p == [1] + prompt[-20:]
    assert c == completion[:20]
    # A short completion leaves the prompt the rest of the room.
    p, c = truncate([1], prompt, completion[:5], max_length=41, prompt_budget=20)
    assert p == [1] + prompt[-35:] and c == completion[:5]
    # Nothing to cut: unchanged.
    assert truncate([], [5, 6], [7], max_length=10, prompt_budget=5) == ([5, 6], [7])


def test_completion_mask_marks_exactly_the_completion(tiny_tokenizer):
    examples = tokenize_rows([
        {"prompt": "Hi", "completion": "Sure! Here is a short answer.", "label": True},
        {"prompt": "Please summarise this text in one sentence, and be brief.",
         "completion": "Sure! Here is a short answer.", "label": False},
    ], tiny_tokenizer)
    batch = collate(examples, [0, 1], max_length=128, prompt_budget=64, pad_id=tiny_tokenizer.pad_token_id)
    m = batch.matched
    for row, e in enumerate(examples):
        start = len(e.prefix) + len(e.prompt)
        positions = m.completion_mask[row].nonzero().flatten().tolist()
        assert positions == list(range(start, start + len(e.completion)))
        # Different prompts, same completion tokens at the masked positions.
        assert m.input_ids[row][m.completion_mask[row]].tolist() == list(e.completion)
    assert batch.num_tokens == sum(e.num_tokens for e in examples)
    assert m.attention_mask.sum().item() == batch.num_tokens


@pytest.mark.parametrize("pairing, offset", [("next", 1), ("previous", -1)])
def test_kl_pairs_are_own_prompt_with_neighbours_completion(tiny_tokenizer, rows, pairing, offset):
    examples = tokenize_rows(rows[:4], tiny_tokenizer)
    batch = collate(examples, [0, 1, 2, 3], max_length=128, prompt_budget=64, pad_id=0, pairing=pairing)
    for i in range(4):
        j = (i + offset) % 4
        assert kl_partner(i, 4, pairing) == j
        n = int(batch.kl.attention_mask[i].sum())
        expected = list(examples[i].prefix + examples[i].prompt + examples[j].completion)
        assert batch.kl.input_ids[i, :n].tolist() == expected
        assert batch.kl.input_ids[i][batch.kl.completion_mask[i]].tolist() == list(examples[j].completion)


def test_plan_covers_every_example_once_and_never_leaves_a_lonely_example():
    lengths = [(i * 37) % 101 + 1 for i in range(33)]
    for grouped in (True, False):
        batches = plan_batches(lengths, 8, seed=3, group_by_length=grouped)
        assert sorted(i for b in batches for i in b) == list(range(33))
        assert min(len(b) for b in batches) >= 2
    assert plan_batches(lengths, 8, seed=3, group_by_length=True) == plan_batches(
        lengths, 8, seed=3, group_by_length=True)


def test_length_grouping_reduces_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(256)]

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    grouped = padding(plan_batches(lengths, 8, seed=0, group_by_length=True))
    mixed = padding(plan_batches(lengths, 8, seed=0, group_by_length=False))
    assert grouped < mixed / 4

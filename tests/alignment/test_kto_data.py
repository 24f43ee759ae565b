"""Rows -> tokens: chat template, single BOS, EOS, masking, truncation, KL pairs."""

import random

import pytest

from alignment.data import (
    RowError,
    class_quotas,
    collate,
    kl_partner,
    kl_partners,
    plan_batches,
    tokenize_rows,
    truncate,
)


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


def paired_import_rows(n_prompts: int) -> list[dict]:
    """What a paired import makes: each prompt twice, a chosen (up) and a rejected (down) response."""
    rows = []
    for p in range(n_prompts):
        question = f"Question {p}: what is {p} plus {p}?"
        rows.append({"prompt": question, "completion": f"It is {2 * p}.", "label": True})
        rows.append({"prompt": question, "completion": f"It is {2 * p + 1}.", "label": False})
    return rows


@pytest.mark.parametrize("pairing", ["next", "previous"])
def test_kl_partner_never_shares_the_prompt_of_paired_imports(tiny_tokenizer, pairing):
    examples = tokenize_rows(paired_import_rows(4), tiny_tokenizer)
    # Both responses of a prompt side by side, as length grouping tends to put them.
    batch = collate(examples, list(range(8)), max_length=128, prompt_budget=64, pad_id=0, pairing=pairing)
    partners = batch.kl_partners
    assert sorted(partners) == list(range(8))  # still a permutation: each completion used once
    for i, j in enumerate(partners):
        assert examples[i].prompt != examples[j].prompt, (i, j)
        n = int(batch.kl.attention_mask[i].sum())
        # The KL sequence is i's prompt with the completion of a row of another prompt.
        assert batch.kl.input_ids[i, :n].tolist() == list(examples[i].prefix + examples[i].prompt
                                                          + examples[j].completion)
        assert examples[j].completion != examples[i ^ 1].completion and j != i


def test_kl_partners_avoid_shared_prompts_in_every_mix():
    rng = random.Random(0)
    for _ in range(3000):
        m = rng.randint(2, 12)
        prompts = [rng.randint(0, rng.randint(0, 4)) for _ in range(m)]
        for pairing in ("next", "previous"):
            partners = kl_partners(prompts, pairing)
            largest = max(prompts.count(p) for p in set(prompts))
            if len(set(prompts)) == 1:
                assert partners == [kl_partner(i, m, pairing) for i in range(m)]
                continue
            assert all(prompts[j] != prompts[i] for i, j in enumerate(partners)), (prompts, pairing, partners)
            if largest <= m // 2:
                assert sorted(partners) == list(range(m)), (prompts, partners)
            if len(set(prompts)) == m or all(prompts[i] != prompts[(i + 1) % m] for i in range(m)):
                # Nothing to avoid: the plain neighbour (the bench's parity with TRL relies on it).
                assert partners == [kl_partner(i, m, pairing) for i in range(m)]


def test_many_rows_of_one_prompt_still_get_partners_of_other_prompts(tiny_tokenizer):
    rows = [{"prompt": "Same question?", "completion": f"Answer {i}.", "label": i % 2 == 0} for i in range(6)]
    rows += [{"prompt": "Other question?", "completion": "Yes.", "label": True},
             {"prompt": "Third one?", "completion": "No.", "label": False}]
    examples = tokenize_rows(rows, tiny_tokenizer)
    batch = collate(examples, list(range(8)), max_length=128, prompt_budget=64, pad_id=0)
    assert all(examples[j].prompt != examples[i].prompt for i, j in enumerate(batch.kl_partners))
    # One prompt only: nothing else to pair with, the neighbour it is.
    batch = collate(examples, [0, 1, 2], max_length=128, prompt_budget=64, pad_id=0)
    assert batch.kl_partners == [1, 2, 0]


def test_class_quotas_give_every_batch_both_classes_where_counts_allow():
    rng = random.Random(1)
    for _ in range(3000):
        sizes = [rng.randint(2, 9) for _ in range(rng.randint(1, 12))]
        n = sum(sizes)
        k = rng.randint(0, n)
        quotas = class_quotas(sizes, k)
        assert sum(quotas) == k and all(0 <= q <= s for q, s in zip(quotas, sizes, strict=True))
        with_true = sum(q > 0 for q in quotas)
        with_false = sum(q < s for q, s in zip(quotas, sizes, strict=True))
        assert with_true == min(k, len(sizes)), (sizes, k, quotas)
        assert with_false == min(n - k, len(sizes)), (sizes, k, quotas)


@pytest.mark.parametrize("grouped", [True, False])
def test_stratified_microbatches_hold_both_classes(grouped):
    rng = random.Random(2)
    lengths = [rng.randint(20, 300) for _ in range(800)]
    labels = [i % 8 == 3 for i in range(800)]  # 1:7, 100 minority rows, 100 batches of 8
    batches = plan_batches(lengths, 8, seed=0, group_by_length=grouped, labels=labels)
    assert sorted(i for b in batches for i in b) == list(range(800))
    assert all(sum(labels[i] for i in b) == 1 for b in batches)
    assert batches == plan_batches(lengths, 8, seed=0, group_by_length=grouped, labels=labels)
    assert batches != plan_batches(lengths, 8, seed=1, group_by_length=grouped, labels=labels)
    # Without stratification (the old plan) most batches lack the minority or hold several.
    plain = plan_batches(lengths, 8, seed=0, group_by_length=grouped)
    assert sum(sum(labels[i] for i in b) != 1 for b in plain) > 40

    # 1:100: the 10 minority rows land in 10 different batches instead of clumping.
    labels = [i % 101 == 0 for i in range(1010)]
    batches = plan_batches((lengths * 2)[:1010], 8, seed=0, group_by_length=grouped, labels=labels)
    assert sorted(sum(labels[i] for i in b) for b in batches)[-11:] == [0] + [1] * 10


def test_stratified_length_grouping_still_reduces_padding():
    rng = random.Random(3)
    lengths = [rng.randint(20, 300) for _ in range(1024)]
    labels = [rng.random() < 0.2 for _ in lengths]

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    grouped = padding(plan_batches(lengths, 8, seed=0, group_by_length=True, labels=labels))
    mixed = padding(plan_batches(lengths, 8, seed=0, group_by_length=False, labels=labels))
    plain_grouped = padding(plan_batches(lengths, 8, seed=0, group_by_length=True))
    assert grouped < mixed / 3
    assert plain_grouped <= grouped < 3 * plain_grouped

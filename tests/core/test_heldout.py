"""core.heldout: the held-out split is by prompt, stratified by class, and a prompt never changes side."""

from __future__ import annotations

from core.db import session_scope
from core.heldout import PromptCounts, assign_heldout, class_targets, prompt_key


def _rows(n_prompts: int, *, up_every: int, start: int = 0, per_prompt: int = 1) -> list[dict]:
    """One label per prompt: prompt i is desirable when i % up_every == 0 (1:up_every-1 ratio)."""
    return [{"prompt": f"q{i}", "completion": f"a{j}", "label": i % up_every == 0}
            for i in range(start, start + n_prompts) for j in range(per_prompt)]


def _split(engine, rows, fraction=0.2, floor=10) -> tuple[list[dict], list[dict]]:
    with session_scope(engine) as s:
        held = assign_heldout(s, PromptCounts.of(rows), heldout_fraction=fraction, min_per_class=floor)
    heldout = [r for r in rows if prompt_key(r["prompt"]) in held]
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    return train, heldout


def _n(rows, label) -> int:
    return sum(1 for r in rows if r["label"] is label)


def test_a_rare_class_gets_its_share_of_heldout_rows(engine):
    rows = _rows(3000, up_every=100)  # 30 thumbs-up, 2970 thumbs-down
    train, heldout = _split(engine, rows)
    # 20% of 30 is 6 < the floor of 10: the minority gives 10 rows to the gate, 20 to training.
    assert _n(heldout, True) == 10 and _n(train, True) == 20
    assert abs(_n(heldout, False) - 0.2 * 2970) <= 2
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}


def test_each_class_is_held_out_at_the_fraction(engine):
    for ratio, seedless in ((10, "70/30"), (3, "30/70")):
        rows = _rows(1000, up_every=ratio, start=ratio * 10_000)
        _, heldout = _split(engine, rows, fraction=0.25)
        for label in (True, False):
            assert abs(_n(heldout, label) - 0.25 * _n(rows, label)) <= 1, (seedless, label)


def test_a_prompt_keeps_its_side_in_later_snapshots(engine):
    first = _rows(200, up_every=2, per_prompt=2)
    _, held_first = _split(engine, first)
    # A week later: more feedback, on old and new prompts, and a different class mix.
    later = _rows(200, up_every=2, per_prompt=3) + _rows(400, up_every=5, start=200)
    _, held_later = _split(engine, later, fraction=0.3)
    old_prompts = {r["prompt"] for r in first}
    assert {r["prompt"] for r in held_later} & old_prompts == {r["prompt"] for r in held_first}
    # New prompts still bring the held-out share of each class toward the target.
    for label in (True, False):
        assert _n(held_later, label) >= 0.2 * _n(later, label)


def test_a_concurrent_assignment_wins_once(engine):
    rows = _rows(100, up_every=2)
    _, first = _split(engine, rows, fraction=0.2)
    # Another job saw the same prompts with other options: the stored sides are what it gets.
    _, second = _split(engine, rows, fraction=0.6)
    assert first == second


def test_class_targets():
    assert class_targets([100, 5], heldout_fraction=0.2, min_per_class=10) == [20.0, 2.5]
    assert class_targets([40, 1000], heldout_fraction=0.2, min_per_class=10) == [10.0, 200.0]

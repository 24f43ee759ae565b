"""worker.gate: the bootstrap gate on synthetic held-out rows (no model), including the attacks that
fooled the point-comparison gate: a collapsed adapter on a held-out set with a different class ratio
than training, and an adapter that only fits noise."""

from __future__ import annotations

import random

import pytest

from alignment.weights import class_weights
from worker.gate import HeldoutRow, bootstrap, decide


def _rows(n_up: int, n_down: int, *, adapter, seed: int = 0) -> list[HeldoutRow]:
    """One row per prompt; ``adapter(label, rng) -> (reward, loss factor)``; held-out class weights."""
    w = class_weights(n_up, n_down)
    rng = random.Random(seed)
    rows = []
    for i, label in enumerate([True] * n_up + [False] * n_down):
        lam = w.desirable if label else w.undesirable
        reward, factor = adapter(label, rng)
        rows.append(HeldoutRow(f"p{i}", label, lam * factor, lam / 2, reward))
    return rows


def _collapsed(label, rng):
    # Every completion made far less likely: r << 0, z0 clamped at 0 -> desirable loss lambda, undesirable 0.
    return -40.0 + rng.gauss(0, 1), 1.0 if label else 0.0


def _learned(label, rng):
    r = rng.gauss(1.0 if label else -1.0, 0.8)
    return r, 1 / (1 + 2.718281828 ** (r if label else -r))  # 1 - sigmoid(+-r)


def _noise(label, rng):
    r = rng.gauss(0.0, 1.0)  # rewards unrelated to the label
    return r, 1 / (1 + 2.718281828 ** (r if label else -r))


GATE = {"min_loss_improvement": 0.01, "min_reward_margin": 0.0}


@pytest.mark.parametrize("n_up,n_down", [(9, 11), (11, 9), (30, 70), (70, 30), (10, 100)])
def test_a_collapsed_adapter_is_refused_whatever_the_heldout_ratio(n_up, n_down):
    """The old gate weighed held-out rows with the *training* weights: training 1:1, held-out 9 up /
    11 down gave the collapsed adapter 0.45 against the reference's 0.50, a pass."""
    figures = bootstrap(_rows(n_up, n_down, adapter=_collapsed), seed=1)
    reasons = decide(figures, **GATE)
    assert reasons, figures
    assert any("significantly worse than the reference on desirable" in r for r in reasons)
    assert figures["loss_improvement_desirable"]["interval"][1] < 0


@pytest.mark.parametrize("seed", range(5))
def test_an_adapter_that_fits_noise_is_refused(seed):
    figures = bootstrap(_rows(20, 20, adapter=_noise, seed=seed), seed=seed)
    assert decide(figures, **GATE), figures
    lo, hi = figures["reward_margin"]["interval"]
    assert lo < 0 < hi or lo < figures["reward_margin"]["estimate"] < hi


@pytest.mark.parametrize("n_up,n_down", [(10, 10), (12, 40), (40, 12)])
def test_a_real_improvement_passes_with_its_intervals(n_up, n_down):
    figures = bootstrap(_rows(n_up, n_down, adapter=_learned), seed=3)
    assert decide(figures, **GATE) == []
    imp = figures["loss_improvement"]
    assert imp["interval"][0] < imp["estimate"] < imp["interval"][1]
    assert figures["reward_margin"]["interval"][0] > 0
    assert (figures["n_prompts"], figures["n_resamples"], figures["confidence"]) == (n_up + n_down, 2000, 0.95)


def test_the_bootstrap_is_seeded_and_resamples_whole_prompts():
    rows = _rows(15, 15, adapter=_learned)
    assert bootstrap(rows, seed=7) == bootstrap(list(rows), seed=7)
    assert bootstrap(rows, seed=7)["reward_margin"] != bootstrap(rows, seed=8)["reward_margin"]
    # Ten copies of each row under one prompt key are one cluster: the interval does not shrink,
    # as it would if the copies were independent evidence.
    clustered = [HeldoutRow(r.prompt_key, r.label, r.adapter_loss, r.reference_loss, r.reward)
                 for r in rows for _ in range(10)]
    def width(f):
        return f["reward_margin"]["interval"][1] - f["reward_margin"]["interval"][0]

    assert width(bootstrap(clustered, seed=7)) == pytest.approx(width(bootstrap(rows, seed=7)), rel=0.25)


def test_a_diverged_adapter_with_nan_is_refused_with_a_reason():
    rows = _rows(10, 10, adapter=lambda label, rng: (float("nan"), float("nan")))
    figures = bootstrap(rows, seed=0)
    reasons = decide(figures, **GATE)
    assert figures["loss_improvement"] == {"estimate": None, "interval": [None, None]}
    assert len(reasons) == 2 and "none (diverged)" in reasons[0]


def test_thresholds_apply_to_the_lower_end():
    figures = bootstrap(_rows(20, 20, adapter=_learned), seed=3)
    lo = figures["reward_margin"]["interval"][0]
    assert decide(figures, min_loss_improvement=0.0, min_reward_margin=lo - 1e-6) == []
    refused = decide(figures, min_loss_improvement=0.0, min_reward_margin=lo + 1e-6)
    assert len(refused) == 1 and "reward margin: 95% interval lower end" in refused[0]


def test_a_refusal_says_why_and_what_the_options_are():
    from worker.gate import refusal_message

    reason = "held-out reward margin: 95% interval lower end -0.0123 (estimate 0.0100) is not above it"
    message = refusal_message([reason], snapshot_id="snap1")
    assert message.startswith("the gate refused to publish: held-out reward margin")
    assert "collect more feedback" in message and "gate_min_loss_improvement" in message
    assert "--force-publish" in message and "--snapshot snap1" in message

"""kto_loss against hand-computed values (DESIGN.md, "The loss")."""

import math

import pytest
import torch

from alignment.loss import kto_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_reward_equal_to_kl_gives_half_the_class_weight():
    # r = [1, 1]; z0 = mean([3 - 1, 1 - 1]) = 1 = r, so each loss is lambda * (1 - 1/2).
    out = kto_loss(t(1, 2), t(0, 1), t(3, 1), t(1, 1), torch.tensor([True, False]), beta=0.1,
                   desirable_weight=2.0, undesirable_weight=3.0)
    assert out.losses.tolist() == pytest.approx([1.0, 1.5])
    assert out.loss.item() == pytest.approx(1.25)
    assert out.kl.item() == pytest.approx(1.0)


def test_matches_formula_on_mixed_batch():
    policy, ref = t(-10.0, -3.5, -7.25, -1.0), t(-12.0, -3.0, -7.0, -4.0)
    kl_policy, kl_ref = t(-20.0, -9.0, -11.0, -6.0), t(-21.0, -9.5, -10.0, -6.2)
    labels = torch.tensor([True, False, True, False])
    beta, wd, wu = 0.5, 1.3, 0.8
    z0 = max(0.0, sum(a - b for a, b in zip(kl_policy.tolist(), kl_ref.tolist())) / 4)
    expected = []
    for p, r, label in zip(policy.tolist(), ref.tolist(), labels.tolist()):
        ratio = p - r
        expected.append(wd * (1 - sigmoid(beta * (ratio - z0))) if label else wu * (1 - sigmoid(beta * (z0 - ratio))))
    out = kto_loss(policy, ref, kl_policy, kl_ref, labels, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert out.loss.item() == pytest.approx(sum(expected) / 4, abs=1e-12)
    assert out.kl.item() == pytest.approx(z0)
    assert out.rewards.tolist() == pytest.approx([beta * (p - r) for p, r in zip(policy.tolist(), ref.tolist())])


def test_large_rewards_saturate():
    labels = torch.tensor([True, True, False, False])
    # rewards +200, -200, +200, -200 with beta 1 and z0 = 0
    out = kto_loss(t(200, -200, 200, -200), t(0, 0, 0, 0), t(0, 0), t(0, 0), labels, beta=1.0,
                   desirable_weight=2.0, undesirable_weight=3.0)
    assert out.losses.tolist() == pytest.approx([0.0, 2.0, 3.0, 0.0], abs=1e-12)
    assert torch.isfinite(out.loss)


def test_negative_kl_is_clamped_to_zero():
    labels = torch.tensor([True, False])
    clamped = kto_loss(t(1, 1), t(0, 0), t(-5, -3), t(0, 0), labels, beta=0.1)
    no_kl = kto_loss(t(1, 1), t(0, 0), None, None, labels, beta=0.1)
    assert clamped.kl.item() == 0.0
    assert clamped.kl_estimate.item() == -4.0  # what progress shows: the estimate before the clamp
    assert no_kl.kl_estimate.item() == 0.0
    assert torch.equal(clamped.losses, no_kl.losses)
    assert clamped.losses.tolist() == pytest.approx([1 - sigmoid(0.1), 1 - sigmoid(-0.1)])


@pytest.mark.parametrize("label", [True, False])
def test_single_class_batch_has_no_nan(label):
    labels = torch.full((3,), label)
    out = kto_loss(t(-1, -2, -3), t(-1.5, -2, -2), t(-4, -4, -4), t(-4, -4, -5), labels, beta=0.1)
    assert torch.isfinite(out.loss) and torch.isfinite(out.losses).all()


def test_no_gradient_reaches_kl_policy_logps():
    policy = t(-3.0, -4.0, -2.0).requires_grad_()
    kl_policy = t(-5.0, -6.0, -1.0).requires_grad_()
    out = kto_loss(policy, t(-3.5, -3.0, -2.5), kl_policy, t(-6.0, -5.0, -2.0),
                   torch.tensor([True, False, True]), beta=0.1)
    g_policy, g_kl = torch.autograd.grad(out.loss, [policy, kl_policy], allow_unused=True)
    assert g_kl is None or torch.count_nonzero(g_kl) == 0
    assert torch.count_nonzero(g_policy) == 3
    assert not out.rewards.requires_grad and not out.kl.requires_grad


def test_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError, match="labels must be a bool"):
        kto_loss(t(1, 2), t(1, 2), t(1, 2), t(1, 2), torch.tensor([1, 0]), beta=0.1)
    with pytest.raises(ValueError, match="reference_logps"):
        kto_loss(t(1, 2), t(1, 2, 3), t(1, 2), t(1, 2), torch.tensor([True, False]), beta=0.1)
    with pytest.raises(ValueError, match="or neither"):
        kto_loss(t(1, 2), t(1, 2), t(1, 2), None, torch.tensor([True, False]), beta=0.1)

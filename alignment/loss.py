"""The KTO loss (Ethayarajh et al., ICML 2024), exactly as in DESIGN.md.

A pure function of per-example summed log-probs; nothing here knows about
models or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KTOLossOutput:
    loss: torch.Tensor  # scalar, mean of `losses`; carries the gradient
    losses: torch.Tensor  # (B,) weighted per-example losses
    kl: torch.Tensor  # scalar z0 >= 0, detached
    # The unclamped estimate mean(kl_policy - kl_reference), detached: near the reference it is often
    # slightly negative, which z0 (clamped at 0) hides; progress shows this one.
    kl_estimate: torch.Tensor
    rewards: torch.Tensor  # (B,) beta * (policy - reference), detached


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    kl_policy_logps: torch.Tensor | None,
    kl_reference_logps: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_estimate: torch.Tensor | None = None,
) -> KTOLossOutput:
    """KTO loss of a microbatch of B examples.

    Args:
        policy_logps: (B,) sum of log pi_theta(y_i|x_i) over completion tokens.
        reference_logps: (B,) the same under pi_ref.
        kl_policy_logps: (B,) sum of log pi_theta(y_j|x_i) for the mismatched
            pairs (j = the KL partner of i). No gradient flows through it. None
            (with ``kl_reference_logps`` None) means z0 = 0: the paper's
            variant when pi_ref is an SFT model of the same data.
        kl_reference_logps: (B,) the same under pi_ref.
        labels: (B,) bool, True = desirable.
        beta: the KTO temperature.
        desirable_weight, undesirable_weight: lambda_D and lambda_U.
        kl_estimate: mean(kl_policy - kl_reference) over a batch larger than this one (the global
            microbatch of N processes, ``alignment.distributed``); None: over this batch.

    Returns:
        loss = mean_i loss_i, with
        r_i = policy_i - reference_i, z0 = max(0, mean(kl_policy - kl_reference)),
        loss_i = lambda_D (1 - sigmoid(beta (r_i - z0))) if desirable,
        loss_i = lambda_U (1 - sigmoid(beta (z0 - r_i))) if undesirable.
        A batch holding one class only is fine (no per-class means here).
    """
    if policy_logps.ndim != 1:
        raise ValueError(f"policy_logps must have shape (B,), got {tuple(policy_logps.shape)}")
    shape = policy_logps.shape
    for name, t in (("reference_logps", reference_logps), ("labels", labels)):
        if t.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if (kl_policy_logps is None) != (kl_reference_logps is None):
        raise ValueError("pass both kl_policy_logps and kl_reference_logps, or neither (z0 = 0)")
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be a bool tensor (True = desirable), got {labels.dtype}")

    if kl_policy_logps is None:
        z0 = estimate = torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
    else:
        for name, t in (("kl_policy_logps", kl_policy_logps), ("kl_reference_logps", kl_reference_logps)):
            if t.ndim != 1 or t.numel() == 0:
                raise ValueError(f"{name} must have shape (M,) with M >= 1, got {tuple(t.shape)}")
        # Detached: z0 is a baseline, not something the policy may move.
        estimate = (kl_policy_logps.detach() - kl_reference_logps.detach()).mean() if kl_estimate is None \
            else kl_estimate.detach().to(policy_logps.dtype)
        z0 = estimate.clamp(min=0)

    ratio = policy_logps - reference_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    losses = torch.where(labels, desirable, undesirable)
    return KTOLossOutput(
        loss=losses.mean(),
        losses=losses,
        kl=z0,
        kl_estimate=estimate,
        rewards=(beta * ratio).detach(),
    )

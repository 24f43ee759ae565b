"""The publish gate: is the adapter better than the reference on held-out feedback, beyond noise?

Inputs are per held-out row: its prompt, its class, the adapter's KTO loss
and reward (``alignment.evaluate.evaluate_kto(..., return_examples=True)``),
all under class weights taken from the held-out rows themselves. The
reference is the policy with r = 0 on every row, so z0 = 0 and its loss on a
row is lambda/2.

Statistics: a paired cluster bootstrap over held-out prompts (rows of one
prompt are resampled together, adapter and reference on the same resample),
``n_resamples`` multinomial resamples from a seeded generator, 95%
percentile intervals. The adapter passes when

- the lower end of the interval of the loss improvement (reference loss -
  adapter loss, all rows) exceeds ``gate_min_loss_improvement``;
- the lower end of the interval of the reward margin (mean reward of
  desirable rows - mean reward of undesirable rows) exceeds
  ``gate_min_reward_margin``;
- no class is significantly worse: the upper end of each class's
  loss-improvement interval is >= 0. A collapsed adapter (every completion
  made unlikely) improves the undesirable rows and ruins the desirable ones;
  it fails here whatever the held-out class ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METHOD = "paired cluster bootstrap over held-out prompts, percentile intervals"
CONFIDENCE = 0.95
N_RESAMPLES = 2000
_CELLS_PER_CHUNK = 2_000_000  # resamples x prompts held in memory at once


@dataclass(frozen=True)
class HeldoutRow:
    prompt_key: str
    label: bool
    adapter_loss: float
    reference_loss: float
    reward: float


def _interval(samples: np.ndarray) -> list[float | None]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def bootstrap(rows: Sequence[HeldoutRow], *, seed: int, n_resamples: int = N_RESAMPLES) -> dict:
    """Point estimates and intervals of the gate's statistics (see the module docstring)."""
    keys = sorted({r.prompt_key for r in rows})
    index = {k: i for i, k in enumerate(keys)}
    n_prompts = len(keys)
    # Per-prompt sums: every statistic is a ratio of such sums, so a resample is a matrix product.
    sums = {name: np.zeros(n_prompts) for name in ("diff", "n", "diff_d", "n_d", "diff_u", "n_u", "r_d", "r_u")}
    finite = all(math.isfinite(r.adapter_loss) and math.isfinite(r.reward) for r in rows)
    for r in rows:
        i, cls = index[r.prompt_key], "d" if r.label else "u"
        diff = r.reference_loss - r.adapter_loss
        sums["diff"][i] += diff
        sums["n"][i] += 1
        sums[f"diff_{cls}"][i] += diff
        sums[f"n_{cls}"][i] += 1
        sums[f"r_{cls}"][i] += r.reward

    def stats(w: np.ndarray) -> dict[str, np.ndarray]:
        s = {name: w @ v for name, v in sums.items()}
        return {
            "loss_improvement": _ratio(s["diff"], s["n"]),
            "loss_improvement_desirable": _ratio(s["diff_d"], s["n_d"]),
            "loss_improvement_undesirable": _ratio(s["diff_u"], s["n_u"]),
            "reward_margin": _ratio(s["r_d"], s["n_d"]) - _ratio(s["r_u"], s["n_u"]),
        }

    point = {k: float(v[0]) for k, v in stats(np.ones((1, n_prompts))).items()}
    result = {"method": METHOD, "confidence": CONFIDENCE, "n_resamples": n_resamples, "seed": seed,
              "n_prompts": n_prompts}
    if not finite:  # a diverged adapter (NaN/inf log-probs): nothing to resample
        return {**result, **{k: {"estimate": None, "interval": [None, None]} for k in point}}
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(1, n_prompts))
    draws: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for start in range(0, n_resamples, chunk):
        w = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=min(chunk, n_resamples - start))
        for k, v in stats(w.astype(np.float64)).items():
            draws[k].append(v)
    for k, estimate in point.items():
        result[k] = {"estimate": estimate, "interval": _interval(np.concatenate(draws[k]))}
    return result


def decide(figures: dict, *, min_loss_improvement: float, min_reward_margin: float) -> list[str]:
    """The reasons to refuse (empty: publish)."""
    reasons = []
    lo = figures["loss_improvement"]["interval"][0]
    if lo is None or not lo > min_loss_improvement:
        reasons.append(f"held-out loss improvement over the reference: 95% interval lower end {_fmt(lo)} "
                       f"(estimate {_fmt(figures['loss_improvement']['estimate'])}) is not above "
                       f"gate_min_loss_improvement {min_loss_improvement:g}")
    lo = figures["reward_margin"]["interval"][0]
    if lo is None or not lo > min_reward_margin:
        reasons.append(f"held-out reward margin: 95% interval lower end {_fmt(lo)} "
                       f"(estimate {_fmt(figures['reward_margin']['estimate'])}) is not above "
                       f"gate_min_reward_margin {min_reward_margin:g}")
    for cls in ("desirable", "undesirable"):
        hi = figures[f"loss_improvement_{cls}"]["interval"][1]
        if hi is not None and hi < 0:
            reasons.append(f"the adapter is significantly worse than the reference on {cls} held-out rows "
                           f"(loss improvement interval upper end {_fmt(hi)} < 0)")
    return reasons


REFUSED_OPTIONS = (
    "options: collect more feedback (new prompts) and train again; lower the thresholds for this job "
    "(--options '{\"gate_min_loss_improvement\": 0, \"gate_min_reward_margin\": 0}'); or train again with "
    "--force-publish (the manifest records that the gate was skipped) and --snapshot SNAPSHOT_ID for the same rows"
)


def refusal_message(reasons: list[str], *, snapshot_id: str | None = None) -> str:
    """The job's error when the gate refuses: why, then what the user can do."""
    options = REFUSED_OPTIONS.replace("SNAPSHOT_ID", snapshot_id) if snapshot_id else REFUSED_OPTIONS
    return "the gate refused to publish: " + "; ".join(reasons) + ". " + options


def _fmt(value: float | None) -> str:
    return "none (diverged)" if value is None else f"{value:.4f}"

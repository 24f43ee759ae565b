"""A job's snapshot split into training and held-out rows (by prompt, stratified, kept), and the held-out
figures the gate starts from: whether there are enough rows, the reference's own figures, the rows it resamples."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from core.heldout import PromptCounts, assign_heldout, prompt_key
from core.job_options import JobOptions
from core.models import Snapshot
from core.settings import Settings
from core.snapshots import iter_snapshot_rows
from worker.gate import HeldoutRow


@dataclass
class Split:
    """The held-out rows (kept: the gate scores them) and the training rows' counts; the training
    rows themselves are streamed from the snapshot file when training tokenises them."""

    heldout: list[dict]
    heldout_keys: list[str]  # the prompt key of each held-out row (the gate resamples by prompt)
    train_counts: dict[str, int]
    _rows: Callable[[], Iterator[dict]]
    _held: set[str]

    def counts(self, which: str) -> dict[str, int]:
        if which == "train":
            return dict(self.train_counts)
        n_d = sum(1 for r in self.heldout if r["label"])
        return {"desirable": n_d, "undesirable": len(self.heldout) - n_d}

    def train_rows(self) -> Iterator[dict]:
        return (row for row in self._rows() if prompt_key(row["prompt"]) not in self._held)


def split_snapshot(session_scope_fn, settings: Settings, snapshot: Snapshot, options: JobOptions) -> Split:
    """Train and held-out rows of a snapshot (``core.heldout``: by prompt, stratified, kept).

    The file is streamed: once for the per-prompt class counts that the split
    needs, once for the held-out rows, and once more when training reads its rows.
    """
    counts = PromptCounts.of(iter_snapshot_rows(settings, snapshot))
    with session_scope_fn() as s:
        held = assign_heldout(s, counts, heldout_fraction=options.heldout_fraction,
                              min_per_class=options.gate_min_heldout_per_class)
    n_u, n_d = counts.totals(k for k in counts.by_key if k not in held)
    split = Split([], [], {"desirable": n_d, "undesirable": n_u}, lambda: iter_snapshot_rows(settings, snapshot), held)
    for row in iter_snapshot_rows(settings, snapshot):
        key = prompt_key(row["prompt"])
        if key in held:
            split.heldout.append(row)
            split.heldout_keys.append(key)
    return split


def heldout_shortfall(split: Split, options: JobOptions) -> str | None:
    """Why the held-out rows cannot support a gate decision, with how much more feedback it takes."""
    have = split.counts("heldout")
    need = options.gate_min_heldout_per_class
    short = {cls: need - n for cls, n in have.items() if n < need}
    if not short:
        return None
    more = ", ".join(
        f"about {math.ceil(n / options.heldout_fraction)} more thumbs-{'up' if cls == 'desirable' else 'down'}"
        for cls, n in short.items()
    )
    return (f"the held-out rows hold {have['desirable']} thumbs-up and {have['undesirable']} thumbs-down; the gate "
            f"needs at least {need} of each (gate_min_heldout_per_class): collect {more} on new prompts "
            f"({options.heldout_fraction:g} of new prompts are held out), or set force_publish")


def reference_figures(heldout: list[dict], desirable: float, undesirable: float) -> dict:
    """Held-out figures of the reference itself: it is the policy with r = 0 on every row, so
    z0 = 0 and each row's loss is lambda/2; rewards and margin are 0 and no row counts as right."""
    n_d = sum(1 for r in heldout if r["label"])
    n_u = len(heldout) - n_d
    return {
        "n": len(heldout),
        "loss": (desirable * n_d + undesirable * n_u) / (2 * len(heldout)),
        "kl": 0.0,
        "reward_desirable": 0.0 if n_d else None,
        "reward_undesirable": 0.0 if n_u else None,
        "reward_margin": 0.0 if n_d and n_u else None,
        "accuracy": 0.0,
    }


def gate_rows(split: Split, examples: dict, weights) -> list[HeldoutRow]:
    lam = {True: weights.desirable, False: weights.undesirable}
    return [HeldoutRow(key, label, loss, lam[label] / 2, reward) for key, label, loss, reward
            in zip(split.heldout_keys, examples["label"], examples["loss"], examples["reward"], strict=True)]

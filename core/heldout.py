"""The train / held-out split of a snapshot: whole prompts, stratified by class, decided once.

- **By prompt**: all rows of a prompt go to one side, so the gate never scores
  an adapter on a prompt it was trained on.
- **Kept**: a prompt's side is stored in ``prompt_splits`` the first time a job
  sees it and never changes, so a later snapshot (with more feedback) never
  trains on a prompt an earlier job's gate was judged on.
- **Stratified**: new prompts are visited in the order of their key (a
  sha256, so effectively random but reproducible) and held out while the
  held-out share of a class they carry is below its target,
  ``heldout_fraction`` of that class's rows (at least ``min_per_class`` rows,
  while that is no more than half the class). A 1:100 minority thus gets its
  share of held-out rows instead of whatever a hash happens to give it.

Two jobs that assign the same new prompt at once both insert with
"on conflict do nothing" and read back the stored side: the first one wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.feedback import prompt_key  # the key votes store: a split side is about the same prompt
from core.models import PromptSplit, utcnow

_CHUNK = 500
MAX_FLOOR_SHARE = 0.5  # the per-class floor never takes more than half a class for the gate


@dataclass
class PromptCounts:
    """Rows per class of each prompt of a snapshot (the only state kept while the file streams)."""

    by_key: dict[str, list[int]]  # key -> [n_undesirable, n_desirable]

    @classmethod
    def of(cls, rows: Iterable[dict]) -> PromptCounts:
        by_key: dict[str, list[int]] = {}
        for row in rows:
            by_key.setdefault(prompt_key(row["prompt"]), [0, 0])[bool(row["label"])] += 1
        return cls(by_key)

    def totals(self, keys: Iterable[str] | None = None) -> list[int]:
        total = [0, 0]
        for key in self.by_key if keys is None else keys:
            total[0] += self.by_key[key][0]
            total[1] += self.by_key[key][1]
        return total


def _stored(session: Session, keys: list[str]) -> dict[str, bool]:
    sides = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        query = select(PromptSplit.prompt_key, PromptSplit.heldout).where(PromptSplit.prompt_key.in_(chunk))
        sides.update((key, heldout) for key, heldout in session.execute(query))
    return sides


def _insert_new(session: Session, sides: dict[str, bool]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utcnow()
    items = sorted(sides.items())
    for i in range(0, len(items), _CHUNK):
        values = [{"prompt_key": k, "heldout": h, "created_at": now} for k, h in items[i:i + _CHUNK]]
        session.execute(insert(PromptSplit).values(values).on_conflict_do_nothing(index_elements=["prompt_key"]))


def class_targets(totals: list[int], *, heldout_fraction: float, min_per_class: int) -> list[float]:
    """Held-out rows wanted per class: the fraction, raised to the floor while the class can spare it."""
    return [max(heldout_fraction * n, min(min_per_class, MAX_FLOOR_SHARE * n)) for n in totals]


def assign_heldout(session: Session, counts: PromptCounts, *, heldout_fraction: float,
                   min_per_class: int) -> set[str]:
    """The held-out prompt keys of a snapshot; new prompts get a side, stored for good.

    Flushes; the caller commits (a short transaction: only keys are read and written).
    """
    keys = sorted(counts.by_key)
    stored = _stored(session, keys)
    targets = class_targets(counts.totals(), heldout_fraction=heldout_fraction, min_per_class=min_per_class)
    held = counts.totals(k for k in keys if stored.get(k))
    new: dict[str, bool] = {}
    for key in keys:
        if key in stored:
            continue
        n = counts.by_key[key]
        side = any(n[c] and held[c] < targets[c] for c in (0, 1))
        if side:
            held[0] += n[0]
            held[1] += n[1]
        new[key] = side
    if new:
        _insert_new(session, new)
        session.flush()
        stored.update(_stored(session, sorted(new)))  # a concurrent job may have stored a side first
    return {k for k in keys if stored[k]}

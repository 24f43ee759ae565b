"""Live feedback per adapter version: counts, 95% Wilson intervals, and P(one version beats another).

Counted votes (after re-votes and retractions) are joined to the event they
point at, whose ``adapter``/``adapter_version`` say which version served the
response. Rates get a Wilson score interval: it stays inside [0, 1] and keeps
close to its nominal 95% coverage at small counts, where the normal
approximation does not. Rollouts compare two versions with Beta(1, 1) priors:
P(p_candidate > p_baseline) is computed exactly (Evan Miller's closed form
for two Beta variables with integer parameters), no sampling involved.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.attribution import served_name
from core.models import AdapterVersion, FeedbackEvent, Vote

Z95 = 1.959963984540054
INTERVAL_METHOD = "wilson-95"
# Above this many terms the exact sum gets slow; the normal approximation is excellent there.
EXACT_MAX_TERMS = 200_000


def wilson_interval(up: int, total: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of up/total; None without votes."""
    if total <= 0:
        return None
    p = up / total
    denom = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return [max(0.0, center - half), min(1.0, center + half)]


def figures(up: int, down: int) -> dict[str, Any]:
    total = up + down
    return {"up": up, "down": down, "total": total, "rate": up / total if total else None,
            "interval": wilson_interval(up, total)}


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _p_greater_sum(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X > Y), X ~ Beta(a1, b1), Y ~ Beta(a2, b2), integer a1 (a1 terms)."""
    const = _lbeta(a2, b2)
    total = 0.0
    for i in range(a1):
        total += math.exp(_lbeta(a2 + i, b1 + b2) - math.log(b1 + i) - _lbeta(1 + i, b1) - const)
    return total


def prob_greater(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X > Y) for independent X ~ Beta(a1, b1), Y ~ Beta(a2, b2), integer parameters >= 1.

    Exact; the closed form sums one term per unit of its first parameter, so
    it is applied to whichever of four equivalent forms has the fewest terms
    (P(X > Y) = 1 - P(Y > X) = P(1-Y > 1-X), and 1-X ~ Beta(b1, a1)).
    """
    forms = [
        (a1, lambda: _p_greater_sum(a1, b1, a2, b2)),
        (a2, lambda: 1.0 - _p_greater_sum(a2, b2, a1, b1)),
        (b2, lambda: _p_greater_sum(b2, a2, b1, a1)),
        (b1, lambda: 1.0 - _p_greater_sum(b1, a1, b2, a2)),
    ]
    terms, compute = min(forms, key=lambda f: f[0])
    if terms > EXACT_MAX_TERMS:
        return _normal_approx(a1, b1, a2, b2)
    return min(1.0, max(0.0, compute()))


def _normal_approx(a1: int, b1: int, a2: int, b2: int) -> float:
    def moments(a: int, b: int) -> tuple[float, float]:
        n = a + b
        return a / n, a * b / (n * n * (n + 1))

    m1, v1 = moments(a1, b1)
    m2, v2 = moments(a2, b2)
    return 0.5 * math.erfc(-(m1 - m2) / math.sqrt(2 * (v1 + v2)))


def counts_by_version(
    session: Session,
    *,
    adapter_name: str,
    versions: list[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    received_since: datetime | None = None,
) -> dict[int, dict[str, int]]:
    """{version: {"up", "down"}} of the counted votes attributed to ``adapter_name``.

    ``since``/``until`` bound the vote's created_at (as /v1/feedback/stats);
    ``received_since`` bounds when the event reached Prospect (a rollout counts
    only what arrived after it started, whatever time the client claims).
    """
    stmt = (select(FeedbackEvent.adapter_version, Vote.label, func.count())
            .join(FeedbackEvent, FeedbackEvent.id == Vote.event_pk)
            .where(FeedbackEvent.adapter == adapter_name)
            .group_by(FeedbackEvent.adapter_version, Vote.label))
    if versions is not None:
        stmt = stmt.where(FeedbackEvent.adapter_version.in_(versions))
    if since is not None:
        stmt = stmt.where(Vote.created_at >= since)
    if until is not None:
        stmt = stmt.where(Vote.created_at < until)
    if received_since is not None:
        stmt = stmt.where(FeedbackEvent.received_at >= received_since)
    out: dict[int, dict[str, int]] = {}
    for version, label, n in session.execute(stmt):
        out.setdefault(version, {"up": 0, "down": 0})["up" if label else "down"] += n
    return out


def _base_counts(session: Session, *, model: str, since: datetime | None, until: datetime | None) -> dict[str, int]:
    stmt = (select(Vote.label, func.count()).join(FeedbackEvent, FeedbackEvent.id == Vote.event_pk)
            .where(FeedbackEvent.adapter.is_(None), Vote.model == model).group_by(Vote.label))
    if since is not None:
        stmt = stmt.where(Vote.created_at >= since)
    if until is not None:
        stmt = stmt.where(Vote.created_at < until)
    counts = {"up": 0, "down": 0}
    for label, n in session.execute(stmt):
        counts["up" if label else "down"] += n
    return counts


def adapter_feedback(session: Session, *, adapter_name: str, since: datetime | None = None,
                     until: datetime | None = None) -> dict[str, Any]:
    """Per version with feedback: up, down, total, rate, 95% interval and whether Prospect knows the
    version; ``base``: the same for feedback on the adapter's base model without an adapter."""
    published = {v.version: v for v in session.scalars(
        select(AdapterVersion).where(AdapterVersion.adapter_name == adapter_name))}
    counts = counts_by_version(session, adapter_name=adapter_name, since=since, until=until)
    versions = [{"version": v, "served_name": served_name(adapter_name, v), "known": v in published,
                 **figures(c["up"], c["down"])} for v, c in sorted(counts.items())]
    base = None
    if published:
        base_name = published[max(published)].manifest["base_model"]["name"]
        base = {"model": base_name, **figures(**_base_counts(session, model=base_name, since=since, until=until))}
    return {"adapter": adapter_name, "known": bool(published), "interval_method": INTERVAL_METHOD,
            "since": since, "until": until, "versions": versions, "base": base}

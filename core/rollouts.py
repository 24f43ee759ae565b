"""Canary rollouts decided by live feedback.

A rollout sends ``traffic`` of the units (users or conversations) to a
candidate version and the rest to the baseline (the ``champion`` alias by
default, resolved to a version when it starts). Routing is a pure function of
(rollout id, unit): the first 8 bytes of sha256("<rollout id>:<unit>") as a
fraction of 2**64, below ``traffic`` -> candidate. The same unit always gets
the same arm and the shares converge on ``traffic``.

Deciding: only counted votes attributed to the two arms' versions that
reached Prospect after the rollout started count. With Beta(1, 1) priors the
posteriors are Beta(1 + up, 1 + down); P(candidate rate > baseline rate) is
exact (core.live_stats.prob_greater). Once both arms have ``min_votes``:
P >= ``probability`` -> ``promoted`` (``champion`` moves to the candidate as
a compare-and-swap against the baseline version, ``moved_by`` naming the
rollout); 1 - P >= ``probability`` -> ``rolled_back`` (no alias moves).
``max_days`` without a decision -> ``expired``. A champion moved by hand during
the rollout makes the promote's compare-and-swap fail: the rollout ends
``stopped`` with that reason rather than overwrite a human's choice. Every
evaluation's figures are kept (``rollout_evaluations``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import adapter_aliases, adapters, outbox, serving_compat
from core.attribution import served_name
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.live_stats import counts_by_version, figures, prob_greater
from core.models import AdapterAlias, AdapterVersion, Rollout, RolloutEvaluation, TrainingPolicy, utcnow

log = logging.getLogger(__name__)

CHAMPION = "champion"


@dataclass(frozen=True)
class RolloutSpec:
    """How a rollout runs; what ``POST .../rollouts`` and a policy's ``rollout`` option accept."""

    baseline: str = CHAMPION
    traffic: float = 0.1
    min_votes: int = 200
    probability: float = 0.95
    max_days: float = 14.0

    def __post_init__(self) -> None:
        def bad(field: str, reason: str) -> InvalidInput:
            return InvalidInput(f"{field}: {reason}", details=[{"field": field, "message": reason}])

        if not isinstance(self.baseline, str) or not self.baseline or "\x00" in self.baseline:
            raise bad("baseline", "must be an alias (e.g. 'champion') or a version number")
        if self.baseline.isdigit() and not 1 <= int(self.baseline) < 2**31:
            raise bad("baseline", "is not a valid version number")
        if not isinstance(self.traffic, int | float) or isinstance(self.traffic, bool) or not 0 < self.traffic < 1:
            raise bad("traffic", "must be a share of units strictly between 0 and 1, e.g. 0.1")
        if isinstance(self.min_votes, bool) or not isinstance(self.min_votes, int) or self.min_votes < 1:
            raise bad("min_votes", "must be an integer >= 1 (votes each arm needs before a decision)")
        if not isinstance(self.probability, int | float) or not 0.5 < self.probability < 1:
            raise bad("probability", "must be strictly between 0.5 and 1, e.g. 0.95")
        if not isinstance(self.max_days, int | float) or isinstance(self.max_days, bool) or not self.max_days > 0:
            raise bad("max_days", "must be a number of days > 0")

    @classmethod
    def from_dict(cls, raw: Any) -> RolloutSpec:
        if not isinstance(raw, dict):
            raise InvalidInput("rollout: must be an object like {\"traffic\": 0.1, \"min_votes\": 200}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"rollout: unknown field(s) {', '.join(sorted(unknown))}; "
                               f"allowed: {', '.join(cls.__dataclass_fields__)}")
        return cls(**{k: (str(v) if k == "baseline" and isinstance(v, int) else v) for k, v in raw.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- starting, reading, stopping --------------------------------------------------------------------------


def running_rollout(session: Session, *, adapter_name: str, lock: bool = False) -> Rollout | None:
    stmt = select(Rollout).where(Rollout.adapter_name == adapter_name, Rollout.status == "running")
    return session.scalar(stmt.with_for_update() if lock else stmt)


def start_rollout(
    session: Session,
    *,
    adapter_name: str,
    candidate: int,
    spec: RolloutSpec,
    started_by: str | None,
    policy_id: str | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Start a rollout of ``candidate`` against ``spec.baseline``; flushes, the caller commits.

    409 when the adapter already has a running rollout; 404 for an unknown
    version or alias; 422 when candidate and baseline are the same version.
    """
    if isinstance(candidate, bool) or not isinstance(candidate, int) or not 1 <= candidate < 2**31:
        raise InvalidInput("candidate: must be a version number >= 1")
    cand = adapters.resolve_version(session, adapter_name=adapter_name, version_or_alias=candidate)
    serving_compat.require_servable(session, cand)
    try:
        base = adapters.resolve_version(session, adapter_name=adapter_name, version_or_alias=spec.baseline)
    except NotFound as exc:
        hint = " (promote a first version by hand: PUT .../aliases/champion)" if spec.baseline == CHAMPION else ""
        raise NotFound(f"baseline: {exc.message}{hint}") from exc
    if cand.version == base.version:
        raise InvalidInput(f"candidate: v{cand.version} is the baseline ({spec.baseline!r}) itself; "
                           "a rollout compares two different versions")
    current = running_rollout(session, adapter_name=adapter_name)
    if current is not None:
        raise Conflict(f"adapter {adapter_name!r} already has a running rollout ({current.id}, "
                       f"v{current.candidate_version}); stop it first", details={"rollout_id": current.id})
    now = now or utcnow()
    rollout = Rollout(
        adapter_name=adapter_name, candidate_version=cand.version, baseline_version=base.version,
        baseline_ref=spec.baseline, traffic=float(spec.traffic), min_votes=spec.min_votes,
        probability=float(spec.probability), max_days=float(spec.max_days), status="running",
        started_by=started_by, policy_id=policy_id, started_at=now,
    )
    try:
        with session.begin_nested():
            session.add(rollout)
    except IntegrityError as exc:  # a concurrent start won the partial unique index
        raise Conflict(f"adapter {adapter_name!r} already has a running rollout; stop it first") from exc
    outbox.emit(session, event="rollout.started", adapter_name=adapter_name, version=cand.version,
                rollout=rollout, now=now)
    log.info("rollout %s: %s v%d against v%d at %.0f%% of units", rollout.id, adapter_name, cand.version,
             base.version, 100 * rollout.traffic)
    return rollout


def get_rollout(session: Session, *, adapter_name: str, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or rollout.adapter_name != adapter_name:
        raise NotFound(f"adapter {adapter_name!r} has no rollout {rollout_id!r}")
    return rollout


def list_rollouts(session: Session, *, adapter_name: str) -> list[Rollout]:
    return list(session.scalars(select(Rollout).where(Rollout.adapter_name == adapter_name)
                                .order_by(Rollout.started_at.desc(), Rollout.id)))


def evaluations(session: Session, *, rollout_id: str) -> list[RolloutEvaluation]:
    return list(session.scalars(select(RolloutEvaluation).where(RolloutEvaluation.rollout_id == rollout_id)
                                .order_by(RolloutEvaluation.id)))


def _end(session: Session, rollout: Rollout, *, status: str, reason: str, now: datetime) -> None:
    rollout.status, rollout.reason, rollout.ended_at = status, reason, now
    session.flush()
    outbox.emit(session, event="rollout.decided", adapter_name=rollout.adapter_name,
                version=rollout.candidate_version, rollout=rollout, now=now)
    log.info("rollout %s (%s v%d): %s: %s", rollout.id, rollout.adapter_name, rollout.candidate_version, status,
             reason)


def stop_rollout(session: Session, *, adapter_name: str, rollout_id: str, stopped_by: str | None,
                 now: datetime | None = None) -> Rollout:
    """End a running rollout without a decision (no alias moves); flushes, the caller commits."""
    rollout = get_rollout(session, adapter_name=adapter_name, rollout_id=rollout_id)
    session.refresh(rollout, with_for_update=True)
    if rollout.status != "running":
        raise Conflict(f"rollout {rollout_id} already ended: {rollout.status}")
    _end(session, rollout, status="stopped", reason=f"stopped by {stopped_by or 'hand'}", now=now or utcnow())
    return rollout


# --- deciding ---------------------------------------------------------------------------------------------


def current_figures(session: Session, rollout: Rollout) -> dict[str, Any]:
    """Per arm up/down/rate/interval since the rollout started, and P(candidate better/worse)."""
    counts = counts_by_version(session, adapter_name=rollout.adapter_name,
                               versions=[rollout.candidate_version, rollout.baseline_version],
                               received_since=rollout.started_at)
    arms = {}
    for arm, version in (("candidate", rollout.candidate_version), ("baseline", rollout.baseline_version)):
        c = counts.get(version, {"up": 0, "down": 0})
        arms[arm] = {"version": version, "served_name": served_name(rollout.adapter_name, version),
                     **figures(c["up"], c["down"])}
    c, b = arms["candidate"], arms["baseline"]
    p_better = prob_greater(1 + c["up"], 1 + c["down"], 1 + b["up"], 1 + b["down"])
    return {**arms, "p_candidate_better": p_better, "p_candidate_worse": 1.0 - p_better,
            "enough_votes": c["total"] >= rollout.min_votes and b["total"] >= rollout.min_votes}


def _decide(rollout: Rollout, f: dict[str, Any], now: datetime) -> tuple[str, str]:
    p, need = f["p_candidate_better"], rollout.probability
    if f["enough_votes"] and p >= need:
        return "promoted", f"P(candidate better) = {p:.4f} >= {need}"
    if f["enough_votes"] and 1.0 - p >= need:
        return "rolled_back", f"P(candidate worse) = {1.0 - p:.4f} >= {need}"
    if now >= rollout.started_at + timedelta(days=rollout.max_days):
        return "expired", f"no decision within {rollout.max_days:g} days (P(candidate better) = {p:.4f})"
    if not f["enough_votes"]:
        have = min(f["candidate"]["total"], f["baseline"]["total"])
        return "running", f"waiting for {rollout.min_votes} votes per arm (the smaller arm has {have})"
    return "running", f"P(candidate better) = {p:.4f}: neither it nor its complement reaches {need}"


def _promote(session: Session, rollout: Rollout) -> str | None:
    """Move ``champion`` to the candidate, compare-and-swap against the baseline; returns why not, or None."""
    current = session.get(AdapterAlias, (rollout.adapter_name, CHAMPION))
    # No champion yet (the baseline was a version or another alias): the promote creates it.
    expected = None if current is None and rollout.baseline_ref != CHAMPION else rollout.baseline_version
    try:
        with session.begin_nested():
            adapter_aliases.move_alias(session, adapter_name=rollout.adapter_name, alias=CHAMPION,
                                version=rollout.candidate_version, expected_version=expected,
                                moved_by=f"rollout {rollout.id}")
    except Conflict as exc:
        return f"not promoted: {exc.message}"
    return None


def evaluate(session: Session, *, rollout: Rollout, now: datetime | None = None) -> Rollout:
    """Evaluate a running rollout now: record the figures and decide; flushes, the caller commits."""
    now = now or utcnow()
    session.refresh(rollout, with_for_update=True)
    if rollout.status != "running":
        return rollout
    f = current_figures(session, rollout)
    outcome, reason = _decide(rollout, f, now)
    if outcome == "promoted":
        refused = _promote(session, rollout)
        if refused is not None:
            outcome, reason = "stopped", f"{reason}, but {refused}"
    rollout.figures, rollout.evaluated_at = f, now
    session.add(RolloutEvaluation(rollout_id=rollout.id, evaluated_at=now, figures=f, outcome=outcome,
                                  reason=reason))
    if outcome == "running":
        rollout.reason = reason
        session.flush()
    else:
        _end(session, rollout, status=outcome, reason=reason, now=now)
    return rollout


def evaluate_running(engine: Engine, *, now: datetime | None = None) -> dict[str, str]:
    """Evaluate every running rollout, one transaction each; returns {rollout id: status}."""
    with session_scope(engine) as s:
        ids = list(s.scalars(select(Rollout.id).where(Rollout.status == "running").order_by(Rollout.started_at)))
    out = {}
    for rollout_id in ids:
        try:
            with session_scope(engine) as s:
                out[rollout_id] = evaluate(s, rollout=s.get(Rollout, rollout_id), now=now).status
        except Exception:  # one broken rollout must not stop the others
            log.exception("rollout %s: evaluation failed", rollout_id)
    return out


# --- routing ----------------------------------------------------------------------------------------------


def bucket(rollout_id: str, unit: str) -> float:
    """A unit's fixed place in [0, 1) for one rollout."""
    digest = hashlib.sha256(f"{rollout_id}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(session: Session, *, adapter_name: str, unit: str) -> dict[str, Any]:
    """Which version serves ``unit``: an arm of the running rollout, else ``champion``, else ``latest``."""
    if not unit:
        raise InvalidInput("unit: give the user or conversation id to route")
    rollout = running_rollout(session, adapter_name=adapter_name)
    if rollout is not None:
        arm = "candidate" if bucket(rollout.id, unit) < rollout.traffic else "baseline"
        version = rollout.candidate_version if arm == "candidate" else rollout.baseline_version
        return {"version": version, "served_name": served_name(adapter_name, version), "rollout_id": rollout.id,
                "arm": arm, "alias": None}
    for alias in (CHAMPION, adapter_aliases.LATEST):
        row = session.get(AdapterAlias, (adapter_name, alias))
        if row is not None:
            return {"version": row.version, "served_name": served_name(adapter_name, row.version),
                    "rollout_id": None, "arm": None, "alias": alias}
    raise NotFound(f"no adapter named {adapter_name!r}; see GET /v1/adapters")


# --- the training-policy hook -----------------------------------------------------------------------------


def on_version_published(session: Session, version: AdapterVersion, policy: TrainingPolicy | None) -> Rollout | None:
    """Start the rollout a policy asks for (``policy.rollout``) for a version it just published.

    Call it after the publish committed, with the job's policy (None: no-op);
    flushes, the caller commits. Without a champion there is nothing to compare
    to: it logs and starts nothing. A rollout still running for an older
    candidate is stopped as superseded: the newest version is the one to test.
    """
    if policy is None or not policy.rollout:
        return None
    spec = RolloutSpec.from_dict(policy.rollout)
    name = version.adapter_name
    if spec.baseline == CHAMPION and session.get(AdapterAlias, (name, CHAMPION)) is None:
        log.info("policy %s: %s v%d published; no champion to roll out against", policy.id, name, version.version)
        return None
    current = running_rollout(session, adapter_name=name, lock=True)
    if current is not None:
        _end(session, current, status="stopped", reason=f"superseded by v{version.version} (policy {policy.id})",
             now=utcnow())
    return start_rollout(session, adapter_name=name, candidate=version.version, spec=spec,
                         started_by=f"policy {policy.id}", policy_id=policy.id)

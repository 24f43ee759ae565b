"""The live loop under /v1/adapters/{name}: feedback per version, routing, and canary rollouts.

Reads need the read scope; starting, stopping and evaluating rollouts the
train scope. After a commit that wrote outbox rows the router asks a worker
to deliver them now; beat's outbox sweep delivers them anyway if that fails.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy.orm import Session

from api.deps import ReadKey, SessionDep, SettingsDep, TrainKey
from api.queue import commit_and_kick
from api.schemas import IsoDateTime
from api.schemas.live import AdapterFeedbackOut, RolloutIn, RolloutOut, RouteOut
from core import live_stats, rollouts
from core.keys import Principal
from core.models import Rollout

router = APIRouter(prefix="/v1/adapters", tags=["live loop"])

# Postgres refuses NUL in text: such a name or id is a 422 here, not a 500 from the driver.
Name = Annotated[str, Path(max_length=200, pattern=r"^[^\x00]+$", description="The adapter's name.")]
RolloutId = Annotated[str, Path(max_length=32, pattern=r"^[^\x00]+$")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    404: {"description": "No such adapter, version, alias or rollout."},
    409: {"description": "A rollout is already running, or this one already ended."},
    422: {"description": "Invalid input; the message says how to fix it."},
}


def _by(principal: Principal) -> str:
    return f"key {principal.key_id} ({principal.name})"


def rollout_out(session: Session, r: Rollout, *, history: bool = False) -> dict[str, Any]:
    f = rollouts.current_figures(session, r) if r.status == "running" or not r.figures else r.figures
    out = {
        "id": r.id, "adapter": r.adapter_name, "status": r.status, "candidate_version": r.candidate_version,
        "baseline_version": r.baseline_version, "baseline": r.baseline_ref, "traffic": r.traffic,
        "min_votes": r.min_votes, "probability": r.probability, "max_days": r.max_days,
        "candidate": f["candidate"], "baseline_arm": f["baseline"], "p_candidate_better": f["p_candidate_better"],
        "p_candidate_worse": f["p_candidate_worse"], "enough_votes": f["enough_votes"], "reason": r.reason,
        "started_by": r.started_by, "policy_id": r.policy_id, "started_at": r.started_at,
        "evaluated_at": r.evaluated_at, "ended_at": r.ended_at,
    }
    if history:
        out["evaluations"] = [{"evaluated_at": e.evaluated_at, "outcome": e.outcome, "reason": e.reason,
                               **e.figures} for e in rollouts.evaluations(session, rollout_id=r.id)]
    return out


@router.get("/{name}/feedback", response_model=AdapterFeedbackOut, summary="Live feedback per version",
            responses=ERRORS)
def adapter_feedback(
    name: Name, session: SessionDep, _: ReadKey,
    since: Annotated[IsoDateTime | None, Query(description="Inclusive lower bound on the vote's created_at.")] = None,
    until: Annotated[IsoDateTime | None, Query(description="Exclusive upper bound on the vote's created_at.")] = None,
) -> dict:
    """Counted votes attributed to each version (and to the base model without an adapter), with 95%
    Wilson intervals. Versions this database does not know are listed with ``known: false``."""
    return live_stats.adapter_feedback(session, adapter_name=name, since=since, until=until)


@router.get("/{name}/route", response_model=RouteOut, summary="Which version serves a unit", responses=ERRORS)
def route(name: Name, session: SessionDep, _: ReadKey,
          unit: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[^\x00]+$",
                                     description="User or conversation id.")]) -> dict:
    """The running rollout's arm for ``unit`` (always the same for the same unit), else ``champion``, else
    ``latest``. Ask the serving stack for ``served_name``; send feedback with adapter and adapter_version."""
    return rollouts.route(session, adapter_name=name, unit=unit)


@router.post("/{name}/rollouts", status_code=201, response_model=RolloutOut, summary="Start a rollout",
             responses=ERRORS)
def start_rollout(name: Name, body: RolloutIn, session: SessionDep, settings: SettingsDep,
                  principal: TrainKey) -> dict:
    spec = rollouts.RolloutSpec(baseline=str(body.baseline), traffic=body.traffic, min_votes=body.min_votes,
                                probability=body.probability, max_days=body.max_days)
    r = rollouts.start_rollout(session, adapter_name=name, candidate=body.candidate, spec=spec,
                               started_by=_by(principal))
    commit_and_kick(session, settings)
    return rollout_out(session, r)


@router.get("/{name}/rollouts", response_model=list[RolloutOut], summary="Rollouts, newest first",
            responses=ERRORS)
def list_rollouts(name: Name, session: SessionDep, _: ReadKey) -> list[dict]:
    return [rollout_out(session, r) for r in rollouts.list_rollouts(session, adapter_name=name)]


@router.get("/{name}/rollouts/{rollout_id}", response_model=RolloutOut, summary="One rollout with its history",
            responses=ERRORS)
def get_rollout(name: Name, rollout_id: RolloutId, session: SessionDep, _: ReadKey) -> dict:
    r = rollouts.get_rollout(session, adapter_name=name, rollout_id=rollout_id)
    return rollout_out(session, r, history=True)


@router.post("/{name}/rollouts/{rollout_id}/stop", response_model=RolloutOut, summary="Stop without a decision",
             responses=ERRORS)
def stop_rollout(name: Name, rollout_id: RolloutId, session: SessionDep, settings: SettingsDep,
                 principal: TrainKey) -> dict:
    r = rollouts.stop_rollout(session, adapter_name=name, rollout_id=rollout_id, stopped_by=_by(principal))
    commit_and_kick(session, settings)
    return rollout_out(session, r)


@router.post("/{name}/rollouts/{rollout_id}/evaluate", response_model=RolloutOut, summary="Evaluate now",
             responses=ERRORS)
def evaluate_rollout(name: Name, rollout_id: RolloutId, session: SessionDep, settings: SettingsDep,
                     _: TrainKey) -> dict:
    """What beat does every PROSPECT_ROLLOUT_INTERVAL_S: record the figures, decide if the data allow."""
    r = rollouts.evaluate(session, rollout=rollouts.get_rollout(session, adapter_name=name, rollout_id=rollout_id))
    commit_and_kick(session, settings)
    return rollout_out(session, r, history=True)

"""Request and response models of the live loop: per-version feedback, routing and rollouts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Figures(BaseModel):
    up: int
    down: int
    total: int
    rate: float | None = Field(description="up / total; null without votes.")
    interval: list[float] | None = Field(description="95% Wilson score interval of the rate; null without votes.")


class VersionFeedback(Figures):
    version: int
    served_name: str
    known: bool = Field(description="Whether this database has the version (feedback may name others).")


class BaseFeedback(Figures):
    model: str


class AdapterFeedbackOut(BaseModel):
    adapter: str
    known: bool = Field(description="Whether this database has any version of the adapter.")
    interval_method: str
    since: datetime | None
    until: datetime | None
    versions: list[VersionFeedback]
    base: BaseFeedback | None = Field(description="Feedback on the base model without an adapter.")


class RouteOut(BaseModel):
    version: int
    served_name: str = Field(description="'<adapter>-v<version>': the model name to ask the serving stack for.")
    rollout_id: str | None
    arm: Literal["candidate", "baseline"] | None
    alias: str | None = Field(None, description="Without a rollout: the alias that answered.")


# A baseline given as text: an alias, or a version number 1 .. 2**31-1 (as a string).
BASELINE_PATTERN = r"^([a-z][a-z0-9._-]{0,99}|[1-9][0-9]{0,8})$"


class RolloutOptions(BaseModel):
    """How a rollout runs (core.rollouts.RolloutSpec); a policy's ``rollout`` takes these."""

    model_config = ConfigDict(extra="forbid")

    baseline: Annotated[int, Field(ge=1, lt=2**31)] | Annotated[str, Field(pattern=BASELINE_PATTERN)] = Field(
        "champion", description="An alias (starting with a letter) or a version number (>= 1).")
    traffic: float = Field(0.1, gt=0, lt=1, description="Share of units routed to the candidate.")
    min_votes: int = Field(200, ge=1, lt=2**31, description="Votes each arm needs before a decision.")
    probability: float = Field(0.95, gt=0.5, lt=1, description="Posterior probability a decision needs.")
    max_days: float = Field(14.0, gt=0, le=36500, description="Days without a decision before it expires.")

    def given(self) -> dict[str, Any]:
        """The fields given, as core.rollouts.RolloutSpec takes them (the baseline as text)."""
        out = self.model_dump(exclude_unset=True, exclude={"candidate"})
        if "baseline" in out:
            out["baseline"] = str(out["baseline"])
        return out


class RolloutIn(RolloutOptions):
    candidate: int = Field(ge=1, lt=2**31, description="The version to try.")


class ArmOut(Figures):
    version: int
    served_name: str


class RolloutOut(BaseModel):
    id: str
    adapter: str
    status: Literal["running", "promoted", "rolled_back", "stopped", "expired"]
    candidate_version: int
    baseline_version: int
    baseline: str = Field(description="The baseline as given (alias or version).")
    traffic: float
    min_votes: int
    probability: float
    max_days: float
    candidate: ArmOut
    baseline_arm: ArmOut
    p_candidate_better: float
    p_candidate_worse: float
    enough_votes: bool
    reason: str | None = Field(description="Why it ended, or what it waits for.")
    started_by: str | None
    policy_id: str | None
    started_at: datetime
    evaluated_at: datetime | None
    ended_at: datetime | None
    evaluations: list[dict[str, Any]] | None = Field(
        None, description="Every evaluation's figures, oldest first (GET of one rollout only).")

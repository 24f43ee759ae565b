"""Query parameters of POST /v1/feedback/import for the source importers (core.importers)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.importers import Options
from core.settings import Settings

Source = Literal["openwebui", "librechat", "langfuse", "langsmith", "chatgpt", "kto", "paired", "events"]


def _names(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (raw or "").split(",") if n.strip())
    return names or default


class ImportParams(BaseModel):
    source: Source | None = Field(None, description=(
        "The export's source; absent: TRL KTO or paired rows, detected per row (the original behaviour)."))
    dry_run: bool = Field(False, description="Answer the report without writing anything.")
    score_name: str | None = Field(None, max_length=2000, description=(
        "Langfuse: comma-separated score names that are thumbs (default: user-feedback, user_feedback, "
        "feedback, thumbs)."))
    feedback_key: str | None = Field(None, max_length=2000, description=(
        "LangSmith: comma-separated feedback keys that are thumbs (default: user_score, user-score, "
        "user_feedback, user-feedback, feedback, thumbs)."))
    numeric_threshold: float = Field(0.0, allow_inf_nan=False, description=(
        "Langfuse NUMERIC scores: up when value > threshold, else down."))
    categorical_up: str | None = Field(None, max_length=2000, description=(
        "Comma-separated categorical values that mean thumbs up (Langfuse CATEGORICAL, LangSmith value)."))
    categorical_down: str | None = Field(None, max_length=2000, description=(
        "Comma-separated categorical values that mean thumbs down."))

    def options(self, settings: Settings, model: str | None) -> Options:
        d = Options()
        return Options(
            model=model,
            score_names=_names(self.score_name, d.score_names),
            feedback_keys=_names(self.feedback_key, d.feedback_keys),
            numeric_threshold=self.numeric_threshold,
            categorical_up=_names(self.categorical_up, d.categorical_up),
            categorical_down=_names(self.categorical_down, d.categorical_down),
            max_metadata_bytes=settings.max_metadata_bytes,
            max_metadata_depth=settings.max_metadata_depth,
        )

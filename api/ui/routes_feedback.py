"""Feedback: votes per day, the thumbs-up rate over time with its interval, per model and adapter version,
and the most recent events."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from api.ui import session as ui_session
from api.ui.charts import COLORS, Series, line_chart, stacked_bars
from api.ui.render import UiRoute, page
from core import adapters, feedback_query, feedback_series, live_stats
from core.errors import InvalidInput

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
SignedIn = Annotated[ui_session.Session, Depends(ui_session.signed_in)]
RANGES = {"7d": 7, "30d": 30, "90d": 90, "365d": 365, "all": None}


def _date(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field}: {value!r} is not a date (YYYY-MM-DD)") from None


def _window(range_: str, since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """[since, until) in UTC from explicit dates (until inclusive as a day) or a range ending today."""
    if range_ not in RANGES:
        raise InvalidInput(f"range: use one of {', '.join(RANGES)}")
    start, end = _date(since, "since"), _date(until, "until")
    if start and end and end < start:
        raise InvalidInput("until: must not be before since")
    today = datetime.now(UTC).date()
    if start is None and RANGES[range_] is not None and end is None:
        start = today - timedelta(days=RANGES[range_] - 1)
    as_dt = (lambda d: datetime(d.year, d.month, d.day, tzinfo=UTC))
    return (as_dt(start) if start else None), (as_dt(end + timedelta(days=1)) if end else None)


def _days(rows: list[dict], since: datetime | None, until: datetime | None) -> list[dict]:
    """Every day of the window (days without votes as zeros), so the bars keep their time scale."""
    if not rows and since is None:
        return []
    first = since.date() if since else rows[0]["day"]
    last = (until - timedelta(days=1)).date() if until else max([datetime.now(UTC).date(), *(r["day"] for r in rows)])
    by_day = {r["day"]: r for r in rows}
    n = (last - first).days + 1
    return [by_day.get(first + timedelta(days=i), {"day": first + timedelta(days=i), "up": 0, "down": 0,
                                                    "total": 0, "rate": None, "interval": None})
            for i in range(max(0, n))]


def _charts(days: list[dict]) -> dict:
    if not any(d["total"] for d in days):
        return {}
    labels = [d["day"].strftime("%m-%d") for d in days]
    bars = stacked_bars(labels, [("thumbs-down", [d["down"] for d in days], COLORS["down"]),
                                 ("thumbs-up", [d["up"] for d in days], COLORS["up"])],
                        name="votes-per-day", title="Counted votes per day (UTC)", x_label="day",
                        y_label="votes")
    voted = [(i, d) for i, d in enumerate(days) if d["total"]]
    every = max(1, len(days) // 8)
    rate = line_chart(
        [Series("thumbs-up rate", [(i, d["rate"]) for i, d in voted], COLORS["a"],
                band=[(i, *d["interval"]) for i, d in voted])],
        name="up-rate", title="Thumbs-up rate per day, with its 95% Wilson interval", x_label="day",
        y_label="thumbs-up rate (%)", y_min=0, y_max=1, y_format=lambda v: f"{100 * v:.0f}",
        x_range=(-0.5, len(days) - 0.5),  # the bars' scale: one slot per day
        xticks=[(i, labels[i]) for i in range(0, len(days), every)])
    return {"votes": bars, "rate": rate}


@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(request: Request, session: SignedIn, range: Annotated[str, Query(alias="range")] = "30d",
                  since: str | None = None, until: str | None = None,
                  model: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    engine = request.app.state.engine
    model = model or None
    start, end = _window(range, since, until)
    rows = feedback_series.votes_per_day(engine, since=start, until=end, model=model)
    stats = feedback_query.feedback_stats(engine, since=start, until=end, model=model)
    models = [m["model"] for m in feedback_query.feedback_stats(engine)["by_model"] if m["model"] is not None]
    with request.app.state.session_factory() as db:
        per_adapter = [live_stats.adapter_feedback(db, adapter_name=a["name"], since=start, until=end)
                       for a in adapters.list_adapters(db)]
    return page(request, "feedback.html", stats=stats, totals=live_stats.figures(stats["up"], stats["down"]),
                by_model=[{**m, **live_stats.figures(m["up"], m["down"])} for m in stats["by_model"]],
                per_adapter=[a for a in per_adapter if a["versions"]], charts=_charts(_days(rows, start, end)),
                events=feedback_series.recent_events(engine, limit=50, since=start, until=end, model=model),
                models=models, filters={"range": range, "since": since or "", "until": until or "",
                                        "model": model or ""}, ranges=list(RANGES))


@router.get("/feedback/events/{event_id}", response_class=HTMLResponse)
def event_page(request: Request, event_id: str, session: SignedIn) -> Response:
    return page(request, "event.html", event=feedback_query.get_event(request.app.state.engine, event_id=event_id))

"""Jobs: the list (refreshing while one is active) and one job's curves, inputs, gate and cancel button."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from api.ui import session as ui_session
from api.ui.charts import COLORS, Series, line_chart
from api.ui.render import UiRoute, error_page, page, see_other
from core import jobs
from core.models import JOB_STATUSES, AdapterVersion, BaseModelRecord

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
SignedIn = Annotated[ui_session.Session, Depends(ui_session.signed_in)]
REFRESH_S = 5
# name, title, y label, [(metrics key, legend, color)]
CHARTS = (
    ("loss", "Training loss", "KTO loss", [("loss", "loss", COLORS["a"])]),
    ("kl", "KL estimate (z0)", "KL (nats)", [("kl", "KL", COLORS["b"])]),
    ("rewards", "Rewards", "mean reward (β·log-ratio)", [("reward_desirable", "desirable", COLORS["up"]),
                                                       ("reward_undesirable", "undesirable", COLORS["down"])]),
    ("learning-rate", "Learning rate", "learning rate", [("learning_rate", "learning rate", COLORS["a"])]),
)


def _charts(rows) -> list:
    out = []
    for name, title, y_label, keys in CHARTS:
        series = [Series(legend, [(m.step, m.metrics[key]) for m in rows if m.metrics.get(key) is not None], color)
                  for key, legend, color in keys]
        if any(s.points for s in series):
            out.append(line_chart(series, name=name, title=title, x_label="optimiser step", y_label=y_label,
                                  fmt_x=lambda v: f"{v:g}"))
    return out


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SignedIn, status: str | None = None,
              adapter: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    with request.app.state.session_factory() as db:
        rows = jobs.list_jobs(db, status=status or None, adapter_name=adapter or None, limit=100)
    active = any(j.status in jobs.ACTIVE for j in rows)
    return page(request, "jobs.html", jobs=rows, statuses=JOB_STATUSES, status=status or "",
                adapter=adapter or "", refresh=REFRESH_S if active else None)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        job = jobs.get_job(db, job_id=job_id)
        base = db.get(BaseModelRecord, job.base_model_id)
        version = db.get(AdapterVersion, job.adapter_version_id) if job.adapter_version_id else None
        rows = jobs.list_metrics(db, job_id=job_id)
    evals = job.eval_metrics or {}
    return page(request, "job.html", job=job, base=base, version=version,
                charts=_charts(rows), n_steps=len(rows), gate=evals.get("gate"), evals=evals,
                refresh=REFRESH_S if job.status in jobs.ACTIVE else None)


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
async def cancel(request: Request, job_id: str, session: SignedIn) -> Response:
    await ui_session.form(request, session)
    if not session.can("train"):
        return error_page(request, 403, "cancelling a job needs a key with the 'train' scope")
    with request.app.state.session_factory() as db:
        jobs.request_cancel(db, job_id=job_id)  # Conflict (finished already) -> a 409 page that says so
        db.commit()
    return see_other(f"/ui/jobs/{job_id}")

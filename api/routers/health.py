"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from api.deps import current_principal
from api.queue import check_broker
from core.base_models import bundled_model_state
from core.errors import DomainError

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


async def _authenticated(request: Request) -> bool:
    try:
        await current_principal(request)
    except (DomainError, DBAPIError):  # with the database down only a cached key authenticates
        return False
    return True


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """The database and the broker are reachable; 503 otherwise, with the reasons for a caller with a key.
    ``base_models`` shows whether the bundled model is ready or still being prepared."""
    checks = await run_in_threadpool(_checks, request)
    ready = all(v == "ok" for v in checks.values())
    models = await run_in_threadpool(_bundled, request) if checks.get("database") == "ok" else {}
    if not ready:
        log.warning("not ready: %s", checks)
        if not await _authenticated(request):  # the reasons name hosts and users: keys only
            checks = {k: ("ok" if v == "ok" else "unreachable") for k, v in checks.items()}
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks, "base_models": models},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "5"},
    )


def _bundled(request: Request) -> dict[str, str]:
    """The bundled model's state (ready, or preparing while the worker converts it): informative, it
    does not make the API unready."""
    try:
        with request.app.state.read_session_factory() as session:
            return bundled_model_state(session, request.app.state.settings)
    except DBAPIError:
        return {}


def _checks(request: Request) -> dict[str, str]:
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        with request.app.state.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason goes to the client
        checks["database"] = f"unreachable: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    try:
        check_broker(settings)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - as above
        checks["broker"] = f"unreachable: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    return checks

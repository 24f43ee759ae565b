"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.queue import check_broker

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """The database and the broker are reachable; 503 with the reason otherwise."""
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
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        log.warning("not ready: %s", checks)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "5"},
    )

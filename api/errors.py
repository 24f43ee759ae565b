"""The one place that maps domain errors (and database outages) to HTTP."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from core.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    Unavailable: 503,
}

DB_RETRY_AFTER_S = 5


def status_for(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400


def error_body(message: str, details=None) -> dict:
    body = {"detail": message}
    if details is not None:
        body["errors"] = details
    return body


async def domain_error(_: Request | None, exc: DomainError) -> JSONResponse:
    status = status_for(exc)
    headers = {}
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc.message, jsonable_encoder(exc.details)), status_code=status, headers=headers)


def _is_connectivity_error(exc: DBAPIError) -> bool:
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return True
    return "connection" in str(exc.orig).lower()


async def database_error(_: Request | None, exc: DBAPIError) -> JSONResponse:
    if _is_connectivity_error(exc):
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse(
            error_body("the database is unavailable; nothing was written, retry later"),
            status_code=503,
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )
    log.exception("database error")
    return JSONResponse(error_body("internal database error"), status_code=500)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        errors.append({"field": loc, "message": err.get("msg", "invalid"), "type": err.get("type")})
    summary = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors[:5])
    return JSONResponse(error_body(f"invalid request: {summary}", errors), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

"""The one place that maps domain errors (and database outages) to HTTP."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from api.schemas import PATTERN_RULES
from core.base_models import NAME_RE, NAME_RULE
from core.errors import (
    Conflict,
    DomainError,
    Forbidden,
    IncompleteRequest,
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
    IncompleteRequest: 400,
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


# SQLite primary result codes that mean "the database cannot serve now", not "this request is wrong".
SQLITE_UNAVAILABLE = {5: "busy", 6: "locked", 7: "out of memory", 8: "read-only", 10: "I/O error", 13: "disk full",
                      14: "cannot open", 15: "lock protocol"}
# ... and those that mean the request's values cannot be stored or compared.
SQLITE_BAD_VALUE = {18: "value too big", 20: "datatype mismatch", 25: "parameter out of range"}
# Postgres SQLSTATE classes and codes that mean unavailable: connection, resources, shutdown, lock or
# serialization failures, statement timeout. Class 22 (data exception) is the request's fault.
PG_UNAVAILABLE_CLASSES = ("08", "53", "58")
PG_UNAVAILABLE_CODES = {"57P01", "57P02", "57P03", "57014", "40001", "40P01", "55P03"}


def classify_database_error(exc: DBAPIError) -> tuple[int, str]:
    """(HTTP status, what to tell the client) from the driver's error code, never from the class name alone."""
    orig = exc.orig
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if exc.connection_invalidated:
        return 503, "unavailable"
    if sqlite_code is not None:
        primary = sqlite_code & 0xFF
        if primary in SQLITE_UNAVAILABLE:
            return 503, SQLITE_UNAVAILABLE[primary]
        if primary in SQLITE_BAD_VALUE:
            return 422, SQLITE_BAD_VALUE[primary]
        if primary == 1 and "json" in str(orig).lower():  # bad JSON path / malformed JSON: from the request
            return 422, "invalid JSON path or value"
        return 500, "error"
    if sqlstate:
        if sqlstate[:2] in PG_UNAVAILABLE_CLASSES or sqlstate in PG_UNAVAILABLE_CODES:
            return 503, f"unavailable (SQLSTATE {sqlstate})"
        if sqlstate.startswith("22"):
            return 422, f"invalid value (SQLSTATE {sqlstate})"
        if sqlstate.startswith("23"):
            return 409, f"conflict (SQLSTATE {sqlstate})"
        return 500, f"error (SQLSTATE {sqlstate})"
    # No code: a driver that could not reach the server at all (psycopg's connection failures).
    return (503, "unavailable") if isinstance(exc, OperationalError) else (500, "error")


async def database_error(_: Request | None, exc: DBAPIError) -> JSONResponse:
    status, reason = classify_database_error(exc)
    if status == 503:
        log.warning("database unavailable (%s): %s", reason, exc.orig)
        return JSONResponse(
            error_body("the database is unavailable; nothing was written, retry later"),
            status_code=503,
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )
    if status == 422:
        log.info("database refused a value of the request: %s", reason)
        return JSONResponse(error_body(f"the database refused a value of the request: {reason}"), status_code=422)
    if status == 409:
        return JSONResponse(error_body(f"the request conflicts with stored data: {reason}"), status_code=409)
    log.exception("database error")
    return JSONResponse(error_body("internal database error"), status_code=500)


async def store_error(_: Request | None, exc: Exception) -> JSONResponse:
    """The artifact store is the server's own: unreachable, failing or refusing its keys is a 503, not a 500."""
    from core.artifact_store import store_unavailable

    if not store_unavailable(exc):
        log.error("artifact store error", exc_info=exc)
        return JSONResponse(error_body("internal artifact store error"), status_code=500)
    log.warning("artifact store unavailable: %s", exc)
    return JSONResponse(error_body(f"the artifact store is unavailable ({type(exc).__name__}); retry later"),
                        status_code=503, headers={"Retry-After": str(DB_RETRY_AFTER_S)})


async def number_out_of_range(_: Request | None, exc: OverflowError) -> JSONResponse:
    # sqlite3 raises a bare OverflowError for an integer past 64 bits, before any SQL runs.
    log.info("number out of range: %s", exc)
    return JSONResponse(error_body("a number in the request is out of range"), status_code=422)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # its loc is ("body", <character offset>), not a field
            at = err.get("loc", ("body", 0))[-1]
            errors.append({"field": "body", "type": "json_invalid",
                           "message": f"not valid JSON (at character {at}); send a JSON object"})
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        message = err.get("msg", "invalid")
        if err.get("type") == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_RE.pattern:
            what = {"adapter": "adapter ", "base_model": "base model "}.get(str(err["loc"][-1]), "")
            message = f"invalid {what}name {err.get('input')!r}: use {NAME_RULE}"
        elif err.get("type") == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") in PATTERN_RULES:
            message = PATTERN_RULES[err["ctx"]["pattern"]]
        errors.append({"field": loc, "message": message, "type": err.get("type")})
    summary = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors[:5])
    return JSONResponse(error_body(f"invalid request: {summary}", errors), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(OverflowError, number_out_of_range)
    app.add_exception_handler(BotoCoreError, store_error)
    app.add_exception_handler(ClientError, store_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

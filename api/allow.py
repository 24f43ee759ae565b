"""405 answers list in Allow every method the OpenAPI schema documents for the path (Starlette lists
only those of the first route that matched the path)."""

from __future__ import annotations

import re
from functools import cache

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from api.errors import error_body

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@cache
def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$")


def _documented(request: Request) -> set[str]:
    """The methods of the most specific documented path: /v1/feedback/batch, not /v1/feedback/{event_id}."""
    matching = [(path.count("{"), operations) for path, operations in request.app.openapi().get("paths", {}).items()
                if _template(path).match(request.url.path)]
    if not matching:
        return set()
    fewest = min(n for n, _ in matching)
    return {m.upper() for n, operations in matching if n == fewest for m in operations if m in HTTP_METHODS}


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        documented = _documented(request)
        if documented:
            headers["Allow"] = ", ".join(sorted(documented))
        return JSONResponse(error_body(f"method {request.method} not allowed here; allowed: {headers.get('Allow')}"),
                            status_code=405, headers=headers)
    return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=headers)


def install_allow(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)

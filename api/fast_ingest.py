"""``POST /v1/feedback`` without the framework's per-request machinery.

A chat backend posts one event per thumb, so this route is the hot path. Through FastAPI it
paid routing over every route, dependency solving, telemetry hooks and several middleware
layers, more CPU per request than the database statement. ``App`` sends exactly this method and
path to the same stack the framework would have built for it, minus the framework: the metrics
and guard middleware (NUL check, body limit, authentication, security headers), the same scope
and rate-limit check, the same handler (``api.routers.feedback.post_feedback``) and the same
error mapping (``api.errors``). The framework route stays registered for the OpenAPI schema.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.deps import authorize
from api.errors import database_error, domain_error, error_body, number_out_of_range
from api.guard import BodyTooLarge, GuardMiddleware
from api.metrics import MetricsMiddleware
from api.routers import feedback as feedback_routes
from core.errors import DomainError

log = logging.getLogger(__name__)

PATH = "/v1/feedback"


class App(FastAPI):
    """FastAPI, with ``POST /v1/feedback`` sent to its fast path once ``install_fast_ingest`` ran."""

    fast_ingest = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.fast_ingest is not None and scope["type"] == "http" and scope["path"] == PATH
                and scope["method"] == "POST" and not scope.get("root_path") and not self.root_path):
            scope["app"] = self
            await self.fast_ingest(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route():
    for route in feedback_routes.router.routes:
        if getattr(route, "path", None) == PATH and "POST" in getattr(route, "methods", ()):
            return route
    raise RuntimeError(f"no POST {PATH} route to take the fast path for")


def install_fast_ingest(app: App) -> None:
    """The metrics label is the framework route's template, as for any other route."""
    route = _route()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route
        request = Request(scope, receive)
        try:
            principal = await authorize(request, "ingest")
            response: Response = await feedback_routes.post_feedback(request, principal)
        except DomainError as exc:
            response = await domain_error(request, exc)
        except DBAPIError as exc:
            response = await database_error(request, exc)
        except OverflowError as exc:
            response = await number_out_of_range(request, exc)
        except BodyTooLarge:
            raise  # the guard answers 413
        except Exception:
            log.exception("unhandled error in POST %s", PATH)
            response = JSONResponse(error_body("internal server error"), status_code=500)
        await response(scope, receive, send)

    guard = GuardMiddleware(endpoint, max_body_bytes=app.state.settings.max_body_bytes,
                            authenticator=app.state.authenticator)
    app.fast_ingest = MetricsMiddleware(guard)

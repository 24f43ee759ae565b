"""HTTP metrics (an ASGI middleware, by route template) and ``GET /metrics``.

The route label is the matched template (``/v1/jobs/{job_id}``), never the
raw path, so ids do not multiply the series; unmatched paths share one label.
"""

from __future__ import annotations

import time
from ipaddress import ip_address

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import require_scope
from core import metrics

UNMATCHED = "<unmatched>"
router = APIRouter(tags=["health"])


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or _mount(scope) or UNMATCHED
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
            metrics.HTTP_SECONDS.labels(route=route, method=method).observe(time.perf_counter() - started)


def _mount(scope: Scope) -> str | None:
    # A Mount (static files) sets no route; its root path is the template.
    root = scope.get("root_path") or ""
    return f"{root}/{{path}}" if root else None


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {}, 403: {}})
async def get_metrics(request: Request) -> Response:
    """Text format; access per PROSPECT_METRICS_ACCESS (default: no key from loopback, a read key otherwise)."""
    access = request.app.state.settings.metrics_access
    if access == "read" or (access == "local-or-read" and not _is_loopback(request)):
        await require_scope("read")(request)
    body = await run_in_threadpool(metrics.render, request.app.state.engine)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

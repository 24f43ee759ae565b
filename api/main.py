"""The FastAPI application factory: `uvicorn --factory api.main:create_app`."""

from __future__ import annotations

import logging

from api.allow import install_allow
from api.auth import Authenticator
from api.docs import install_docs
from api.errors import install_error_handlers
from api.fast_ingest import App, install_fast_ingest
from api.guard import GuardMiddleware
from api.metrics import MetricsMiddleware
from api.metrics import router as metrics_router
from api.ratelimit import build_rate_limiter
from api.routers import (
    adapters,
    base_models,
    feedback,
    health,
    jobs,
    live,
    policies,
    serving_targets,
    snapshots,
    users,
)
from api.ui import install_ui
from core.db import get_engine, read_only, session_factory
from core.logging import configure_logging
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> App:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    settings.ensure_dirs()
    app = App(
        title="Prospect",
        version="0.1.0",
        description="Thumbs-up/down feedback in, KTO-aligned LoRA adapters out.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings)
    app.state.session_factory = session_factory(app.state.engine)
    app.state.read_engine = read_only(app.state.engine)
    app.state.read_session_factory = session_factory(app.state.read_engine)
    app.state.authenticator = Authenticator(settings, app.state.read_session_factory, app.state.session_factory)
    app.state.rate_limiter = build_rate_limiter(settings)
    install_error_handlers(app)
    install_allow(app)
    # Nothing reads a body before the guard bounds and authenticates it (the metrics layer added
    # below wraps it, timing every request, and reads no body).
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes,
                       authenticator=app.state.authenticator)
    app.include_router(health.router)
    app.include_router(feedback.router)
    app.include_router(jobs.router)
    app.include_router(base_models.router)
    app.include_router(snapshots.router)
    app.include_router(adapters.router)
    app.include_router(policies.router)
    app.include_router(live.router)
    app.include_router(serving_targets.router)
    app.include_router(users.router)
    app.include_router(metrics_router)
    install_ui(app)
    install_docs(app)
    app.add_middleware(MetricsMiddleware)
    install_fast_ingest(app)
    return app

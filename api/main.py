"""The FastAPI application factory: `uvicorn --factory api.main:create_app`."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api.deps import AuthCache
from api.errors import install_error_handlers
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
)
from api.ui import install_ui
from core.db import get_engine, session_factory
from core.logging import configure_logging
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    settings.ensure_dirs()
    app = FastAPI(
        title="Prospect",
        version="0.1.0",
        description="Thumbs-up/down feedback in, KTO-aligned LoRA adapters out.",
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings)
    app.state.session_factory = session_factory(app.state.engine)
    app.state.auth_cache = AuthCache()
    app.state.rate_limiter = build_rate_limiter(settings)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(feedback.router)
    app.include_router(jobs.router)
    app.include_router(base_models.router)
    app.include_router(snapshots.router)
    app.include_router(adapters.router)
    app.include_router(policies.router)
    app.include_router(live.router)
    app.include_router(serving_targets.router)
    app.include_router(metrics_router)
    install_ui(app)
    app.add_middleware(MetricsMiddleware)
    return app

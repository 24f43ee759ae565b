"""The dashboard: server-rendered pages under /ui (Jinja2 templates, SVG charts, no JavaScript build)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.ui import routes_adapters, routes_auth, routes_catalog, routes_feedback, routes_jobs


def install_ui(app: FastAPI) -> None:
    for module in (routes_auth, routes_feedback, routes_jobs, routes_adapters, routes_catalog):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=Path(__file__).parent / "static"), name="ui-static")

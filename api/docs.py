"""/docs and /redoc served from the installed fastapi-offline package (no CDN: they work offline), and the
bearer scheme in the OpenAPI schema, so Swagger UI's "Authorize" sends the API key on every /v1 call."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
SCHEME = "bearerAuth"
BEARER = {"type": "http", "scheme": "bearer", "description": "An API key (pk_...); scopes ingest, read, train, admin."}


# What any /v1 operation may answer besides its own codes (the guard, the rate limiter, the database, the
# body parser), so generated clients know every status they can get. Each comes with ERROR_BODY.
COMMON_ERRORS = {
    "401": "Missing or invalid API key.",
    "403": "The key lacks the scope.",
    "422": "Invalid input: `detail` says what is wrong, `errors` names the fields.",
    "429": "Over the per-key rate limit, or too many failed authentications; see Retry-After.",
    "503": "The database (or broker) is unavailable now; nothing was written; see Retry-After.",
}
WITH_BODY = {"400": "The body could not be read (e.g. not UTF-8).", "413": "The body is over the size limit."}
WITH_PATH_PARAMS = {"404": "No such resource."}
# Rules JSON Schema cannot state (they span fields, or depend on what the server holds): a request valid by
# the schema may still get a 422 that names the rule. Appended to each operation's 422 description; the
# schemathesis test (tests/api/test_schemathesis.py) accepts a 422 on exactly these operations.
SERVER_RULES = {
    ("POST", "/v1/base-models"): "source must be a model folder on the server (config.json and top-level "
    "*.safetensors) under the models folder or PROSPECT_BASE_MODEL_DIRS.",
    ("POST", "/v1/feedback"): "exactly one of prompt and messages; messages end with a user turn; adapter and "
    "adapter_version together (or model as '<adapter>-v<n>'); created_at at most 5 minutes ahead; metadata "
    "within the server's depth and size limits, without NUL; event_id not batch, stats, export or import.",
    ("POST", "/v1/feedback/import"): "adapter and adapter_version together; the body is rows or an export "
    "of the named source (per-row problems are reported in errors, not refused).",
    ("POST", "/v1/jobs"): "config values within KTOConfig's ranges and this server's job limits; snapshot_id "
    "or snapshot_filters, not both; snapshot_filters.since earlier than until.",
    ("POST", "/v1/policies"): "config values within KTOConfig's ranges and this server's job limits; "
    "snapshot_filters.since earlier than until.",
    ("POST", "/v1/snapshots"): "filters.since earlier than filters.until.",
    ("PUT", "/v1/adapters/{name}/aliases/{alias}"): "the alias is not 'latest' (it moves only on publish).",
}
ERROR_BODY = {"application/json": {"schema": {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "string"}, "errors": {}},
}}}


def _document_common_errors(operation: dict, *, has_path_params: bool, rules: str | None) -> None:
    responses = operation.setdefault("responses", {})
    if rules:
        invalid = responses.setdefault("422", {"description": COMMON_ERRORS["422"]})
        invalid["description"] = f"{invalid['description']} Besides the schema: {rules}"
    extra = {**COMMON_ERRORS, **(WITH_BODY if "requestBody" in operation else {}),
             **(WITH_PATH_PARAMS if has_path_params else {})}
    for status, description in extra.items():
        responses.setdefault(status, {"description": description})
    for status, response in responses.items():
        if status.startswith(("4", "5")) and status != "422":
            response.setdefault("content", ERROR_BODY)


def install_docs(app: FastAPI) -> None:
    """Call on an app created with docs_url=None and redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API docs",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {SCHEME: BEARER}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):  # the guard authenticates exactly these
                    for method, operation in operations.items():
                        operation["security"] = [{SCHEME: []}]
                        _document_common_errors(operation, has_path_params="{" in path,
                                                rules=SERVER_RULES.get((method.upper(), path)))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

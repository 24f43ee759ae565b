"""/docs works offline and can send the API key: assets from the installed package, a bearer scheme."""

from __future__ import annotations

import re

from tests.api_client import make_api


def test_openapi_declares_the_bearer_scheme_on_every_v1_operation(settings):
    client, _ = make_api(settings)
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An API key (pk_...); scopes ingest, read, train, admin."}
    v1 = [(path, op) for path, ops in schema["paths"].items() if path.startswith("/v1/") for op in ops.values()]
    assert len(v1) > 20 and all(op["security"] == [{"bearerAuth": []}] for _, op in v1)
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_docs_pages_load_their_assets_from_this_server(settings):
    client, headers = make_api(settings)
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html) + re.findall(r"url:\s*'([^']+)'", html)
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "cdn" not in html.lower() and "https://" not in html.replace("https://fastapi.tiangolo.com", "")
        for url in urls:
            if url.startswith("/docs-assets/"):
                resp = client.get(url)
                assert resp.status_code == 200 and len(resp.content) > 1000, url
    assert "persistAuthorization" in client.get("/docs").text
    # Swagger UI's "Try it out" sends exactly this header, which the API accepts.
    assert client.get("/v1/adapters", headers=headers["read"]).status_code == 200

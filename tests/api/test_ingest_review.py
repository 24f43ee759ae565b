"""POST /v1/feedback under attack: metrics labels for curl's form type, overload backpressure."""

from __future__ import annotations

import json

from core import metrics
from tests.api_client import make_api

EV = {"prompt": "2+2?", "response": "4", "label": "up"}


def _count(route: str, status: str) -> float:
    return metrics.HTTP_REQUESTS.labels(route=route, method="POST", status=status)._value.get()


def test_form_typed_post_is_labelled_with_its_route(settings):
    """curl -d sends application/x-www-form-urlencoded; the guard rewrites the type into a copy of the
    scope, so the route the endpoint set never reached the metrics layer (``<unmatched>``)."""
    client, h = make_api(settings)
    for fast in (True, False):
        if not fast:
            client.app.fast_ingest = None
        before = _count("/v1/feedback", "201")
        r = client.post("/v1/feedback", content=json.dumps({**EV, "event_id": f"form-{fast}"}),
                        headers={**h["ingest"], "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 201
        assert _count("/v1/feedback", "201") == before + 1, f"fast={fast}"

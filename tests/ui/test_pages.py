"""The dashboard over HTTP (no browser): sessions, CSRF, scopes, the compare-and-swap form, pages and charts."""

from __future__ import annotations

import re
import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from api.ui import session as ui_session
from core.db import session_scope
from core.keys import create_key, revoke_key
from core.models import AdapterAlias
from tests.api_client import make_api
from tests.ui.uikit import STEPS, csrf_of, seed, sign_in


@pytest.fixture
def ui(settings, tmp_path):
    client, h = make_api(settings)
    ids = seed(settings, client.app.state.engine, tmp_path)
    return client, h, ids


def read_train_key(client) -> dict:
    with session_scope(client.app.state.engine) as s:
        return {"Authorization": "Bearer " + create_key(s, name="ml engineer", scopes="read,train")[1]}


def champion(client) -> int:
    with session_scope(client.app.state.engine) as s:
        return s.get(AdapterAlias, ("chat", "champion")).version


def test_pages_need_a_session_and_the_cookie_is_hardened(ui):
    client, h, _ = ui
    r = client.get("/ui/jobs?status=failed", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstatus%3Dfailed"
    token = csrf_of(client.get("/ui/login").text)
    key = h["read"]["Authorization"].removeprefix("Bearer ")
    r = client.post("/ui/login", data={"csrf": token, "key": key, "next": "/ui/jobs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/jobs"
    cookie = r.headers["set-cookie"].lower()
    for attr in ("httponly", "samesite=lax", "path=/ui", f"max-age={8 * 3600}"):
        assert attr in cookie
    assert key.lower() not in cookie  # the key itself never goes to the browser
    assert client.get("/ui/jobs").status_code == 200


def test_sign_in_refusals(ui):
    client, h, _ = ui
    page = client.get("/ui/login").text
    r = client.post("/ui/login", data={"csrf": "forged", "key": "x"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/ui/login", data={"csrf": csrf_of(page), "key": "pk_wrong"})
    assert r.status_code == 401 and "invalid or revoked API key" in r.text
    ingest = h["ingest"]["Authorization"].removeprefix("Bearer ")
    r = client.post("/ui/login", data={"csrf": csrf_of(page), "key": ingest})
    assert r.status_code == 403 and "lacks the &#39;read&#39; scope" in r.text
    assert client.get("/ui/feedback", follow_redirects=False).status_code == 303
    # A session cookie for the ingest key (as if signed with the secret) still shows nothing.
    forged = URLSafeTimedSerializer(ui_session._secret(client.app.state.settings),
                                    salt=ui_session.SALT).dumps({"c": "t", "k": 1})
    client.cookies.clear()
    client.cookies.set(ui_session.COOKIE, forged)
    assert client.get("/ui/feedback", follow_redirects=False).status_code == 303


def test_next_never_leaves_the_dashboard(ui):
    client, h, _ = ui
    key = h["read"]["Authorization"].removeprefix("Bearer ")
    for target in ("https://evil.example/", "//evil.example/ui/", "/v1/jobs", "/ui\\..\\x"):
        token = csrf_of(client.get("/ui/login").text)  # each sign-in starts a session with a new token
        r = client.post("/ui/login", data={"csrf": token, "key": key, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/ui/feedback"


def test_tampered_expired_and_revoked_sessions_sign_out(ui, settings):
    client, h, _ = ui
    sign_in(client, h["read"])
    cookie = client.cookies.get(ui_session.COOKIE)
    client.cookies.clear()
    client.cookies.set(ui_session.COOKIE, cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"))
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303

    class Old(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - settings.ui_session_max_age_s - 5

    read_key_id = 2  # make_api creates ingest, read, train, admin in that order
    old = URLSafeTimedSerializer(ui_session._secret(settings), salt=ui_session.SALT,
                                 signer=Old).dumps({"c": "t", "k": read_key_id})
    client.cookies.set(ui_session.COOKIE, old)
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303

    client.cookies.clear()
    sign_in(client, h["read"])
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 200
    with session_scope(client.app.state.engine) as s:
        revoke_key(s, key_id=read_key_id)
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_read_key_gets_no_train_buttons_and_its_posts_are_refused(ui):
    client, h, ids = ui
    sign_in(client, h["read"])
    page = client.get("/ui/adapters/chat").text
    assert "Move champion" not in page and "needs a key with the <code>train</code> scope" in page
    token = csrf_of(page)  # the sign-out form's token
    r = client.post("/ui/adapters/chat/aliases", data={"csrf": token, "alias": "champion", "version": "2",
                                                        "expected_version": "1"})
    assert r.status_code == 403 and champion(client) == 1
    r = client.post(f"/ui/jobs/{ids['job_id']}/cancel", data={"csrf": token})
    assert r.status_code == 403


def test_promote_is_a_compare_and_swap_and_needs_the_csrf_token(ui):
    client, h, _ = ui
    sign_in(client, read_train_key(client))
    page = client.get("/ui/adapters/chat").text
    token = csrf_of(page)
    assert 'name="expected_version" value="1"' in page
    r = client.post("/ui/adapters/chat/aliases", data={"csrf": "stale", "alias": "champion", "version": "2",
                                                        "expected_version": "1"})
    assert r.status_code == 403 and champion(client) == 1
    # Someone else moves champion after the page was rendered: the stale form is refused with the reason.
    r = client.put("/v1/adapters/chat/aliases/champion", headers=h["train"], json={"version": 2})
    assert r.status_code == 200
    r = client.post("/ui/adapters/chat/aliases", data={"csrf": token, "alias": "champion", "version": "1",
                                                        "expected_version": "1"})
    assert r.status_code == 409
    assert "Not moved (409 Conflict)" in r.text and "points to <b>v2</b> now" in r.text
    assert champion(client) == 2
    r = client.post("/ui/adapters/chat/aliases", data={"csrf": token, "alias": "champion", "version": "1",
                                                        "expected_version": "2"}, follow_redirects=False)
    assert r.status_code == 303 and champion(client) == 1
    page = client.get(r.headers["location"]).text
    assert "Moved <b>champion</b> to v1" in page and "via the dashboard" in page


def test_feedback_page_charts_counts_and_filters(ui):
    client, h, _ = ui
    events = [{"prompt": f"q{i}", "response": "r", "label": "up" if i < 3 else "down", "model": "chat-v1"}
              for i in range(4)] + [{"prompt": "other", "response": "r", "label": "up", "model": "base"}]
    assert client.post("/v1/feedback/batch", headers=h["ingest"], json={"events": events}).status_code == 200
    sign_in(client, h["read"])
    page = client.get("/ui/feedback").text
    assert '<strong>5</strong> counted votes: 4 up, 1 down' in page
    assert 'data-chart="votes-per-day"' in page and 'data-chart="up-rate"' in page
    assert re.search(r'data-series="thumbs-up" data-points="1"', page)
    assert "chat-v1" in page and "75.0%" in page  # 3 of 4 on chat-v1, with its interval
    filtered = client.get("/ui/feedback?model=base").text
    assert "<strong>1</strong> counted votes: 1 up, 0 down" in filtered
    r = client.get("/ui/feedback?since=yesterday")
    assert r.status_code == 422 and "is not a date" in r.text
    old = client.get("/ui/feedback?since=2001-01-01&until=2001-01-31").text
    assert "No feedback in this range yet" in old and "v1/feedback" in old


def test_job_page_draws_every_step_and_the_gate(ui):
    client, h, ids = ui
    sign_in(client, h["read"])
    page = client.get(f"/ui/jobs/{ids['job_id']}").text
    for chart in ("loss", "kl", "rewards", "learning-rate"):
        assert f'data-chart="{chart}"' in page
    assert page.count(f'data-points="{STEPS}"') == 5  # loss, kl, 2 rewards, learning rate
    assert "passed: published" in page and "[0.042, 0.12]" in page and "4/3" in page
    assert "Cancel job" not in page  # finished
    jobs = client.get("/ui/jobs").text
    assert ids["job_id"][:8] in jobs and 'http-equiv="refresh"' not in jobs


def test_download_and_manifest_match_the_api(ui):
    client, h, _ = ui
    sign_in(client, h["read"])
    ui_bytes = client.get("/ui/adapters/chat/versions/2/download").content
    api_bytes = client.get("/v1/adapters/chat/versions/2/download", headers=h["read"]).content
    assert ui_bytes == api_bytes and len(ui_bytes) > 100
    assert client.get("/ui/adapters/chat/versions/2/manifest.json").json()["version"] == 2
    assert client.get("/ui/adapters/chat/versions/9/download").status_code == 404


def test_empty_states_say_what_to_do(settings):
    client, h = make_api(settings)
    sign_in(client, h["read"])
    assert "POST /v1/feedback" in client.get("/ui/feedback").text
    assert "prospect jobs start" in client.get("/ui/jobs").text
    assert "No adapter published yet" in client.get("/ui/adapters").text
    assert "v1/policies" in client.get("/ui/policies").text
    assert "prospect models add" in client.get("/ui/base-models").text
    r = client.get("/ui/jobs/nope")
    assert r.status_code == 404 and "no job with id" in r.text


def test_sign_out_needs_csrf_and_ends_the_session(ui):
    client, h, _ = ui
    sign_in(client, h["read"])
    assert client.post("/ui/logout", data={"csrf": "x"}).status_code == 403
    token = csrf_of(client.get("/ui/jobs").text)
    r = client.post("/ui/logout", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303

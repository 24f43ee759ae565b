"""The dashboard in a real browser (headless Debian Chromium through Playwright), as a person uses it.

Screenshots of every page land in the test's temporary folder (``screens/``).
Skipped with the reason when Playwright or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from core.db import session_scope
from core.keys import create_key
from tests.ui.uikit import STEPS, seed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(settings, tmp_path):
    """The API on 127.0.0.1 in a thread, with seeded data; yields (base url, keys, ids)."""
    from api.main import create_app

    app = create_app(settings)
    engine = app.state.engine
    ids = seed(settings, engine, tmp_path)
    keys = {}
    with session_scope(engine) as s:
        for name, scopes in (("ingest", "ingest"), ("reader", "read"), ("engineer", "read,train")):
            keys[name] = create_key(s, name=name, scopes=scopes)[1]
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", keys, ids
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def sign_in(page, base: str, key: str) -> None:
    page.goto(f"{base}/ui/jobs")
    assert "/ui/login" in page.url  # sent to sign in first, then back
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui/jobs")


def test_a_person_uses_the_dashboard(server, browser, tmp_path):
    base, keys, ids = server
    screens = tmp_path / "screens"
    screens.mkdir()
    events = [{"prompt": f"Question {i}?", "response": f"Answer {i}.", "label": "up" if i % 3 else "down",
               "model": "chat-v1", "adapter": "chat", "adapter_version": 1} for i in range(9)]
    r = httpx.post(f"{base}/v1/feedback/batch", headers={"Authorization": f"Bearer {keys['ingest']}"},
                   json={"events": events})
    assert r.status_code == 200 and r.json()["created"] == 9

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, base, keys["engineer"])
    page.screenshot(path=screens / "jobs.png", full_page=True)

    # Feedback: the chart of the votes just posted (6 up, 3 down today).
    page.click("nav >> text=Feedback")
    chart = page.locator('svg[data-chart="votes-per-day"]')
    assert chart.is_visible()
    assert chart.locator('g[data-series="thumbs-up"] rect').count() == 1
    assert "6 thumbs-up" in chart.locator('g[data-series="thumbs-up"] rect title').text_content()
    assert page.locator('svg[data-chart="up-rate"] polygon.band').count() == 1
    assert "9 counted votes: 6 up, 3 down" in page.locator(".summary").inner_text()
    page.screenshot(path=screens / "feedback.png", full_page=True)
    page.click("table.events a >> nth=0")
    assert page.locator("h1").inner_text().startswith("Event")
    page.screenshot(path=screens / "event.png", full_page=True)

    # A finished job and its loss curve.
    page.goto(f"{base}/ui/jobs")
    page.click(f"a >> text={ids['job_id'][:8]}")
    loss = page.locator('svg[data-chart="loss"] path.line')
    assert loss.is_visible() and loss.get_attribute("data-points") == str(STEPS)
    assert page.locator(".gate.pass").is_visible()
    page.screenshot(path=screens / "job.png", full_page=True)

    # Promote v2 to champion; the alias history shows the move.
    page.click("nav >> text=Adapters")
    page.screenshot(path=screens / "adapters.png", full_page=True)
    page.click("table >> text=chat")
    history = page.locator('.alias-box[data-alias="champion"] table.history tbody tr')
    assert history.count() == 1
    page.select_option("form.promote select[name=version]", "2")
    page.click("form.promote button[type=submit]")
    assert "Moved champion to v2" in page.locator(".ok").inner_text()
    assert history.count() == 2
    assert "v1 → v2" in history.nth(0).inner_text() and "via the dashboard" in history.nth(0).inner_text()
    page.screenshot(path=screens / "adapter.png", full_page=True)

    # A stale form (champion moved by someone else meanwhile) gets the 409 explained.
    r = httpx.put(f"{base}/v1/adapters/chat/aliases/champion", json={"version": 1},
                  headers={"Authorization": f"Bearer {keys['engineer']}"})
    assert r.status_code == 200
    page.select_option("form.promote select[name=version]", "1")
    page.click("form.promote button[type=submit]")
    assert "Not moved (409 Conflict)" in page.locator("#conflict").inner_text()
    page.screenshot(path=screens / "adapter-409.png", full_page=True)

    for path, name in (("/ui/policies", "policies"), ("/ui/base-models", "base-models"),
                       ("/ui/base-models/tiny-base", "base-model")):
        page.goto(base + path)
        page.screenshot(path=screens / f"{name}.png", full_page=True)

    # Sign out: the pages send the browser to sign in again.
    page.click("header button >> text=Sign out")
    page.wait_for_url(f"{base}/ui/login")
    page.goto(f"{base}/ui/adapters")
    assert "/ui/login" in page.url
    page.screenshot(path=screens / "login.png", full_page=True)
    assert len(list(screens.glob("*.png"))) == 11


def test_a_read_key_is_refused_the_train_buttons(server, browser, tmp_path):
    base, keys, _ = server
    page = browser.new_page()
    sign_in(page, base, keys["reader"])
    page.goto(f"{base}/ui/adapters/chat")
    assert page.locator("form.promote").count() == 0
    assert "needs a key with the train scope" in page.locator("p.hint").first.inner_text()
    page.screenshot(path=tmp_path / "adapter-read-key.png", full_page=True)
    # Even a hand-made form post is refused by the server.
    csrf = page.locator("header input[name=csrf]").get_attribute("value")
    response = page.request.post(f"{base}/ui/adapters/chat/aliases",
                                 form={"csrf": csrf, "alias": "champion", "version": "2", "expected_version": "1"})
    assert response.status == 403
    page.goto(f"{base}/ui/adapters/chat")
    assert page.locator('.alias-box[data-alias="champion"] h3').inner_text() == "champion → v1"

"""The Streamlit page: AppTest for the logic, and a real headless Chromium (Playwright) end to end."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.catalogs import draw
from tests.conftest import make_settings
from tests.images import encode
from tests.service import service_env, start_service

APP = str(Path(__file__).parent.parent / "ui" / "app.py")


@pytest.fixture(scope="module")
def ui_env(model_repository, catalog, mongo_uri, tmp_path_factory):
    """An ingested catalog, the service running on it, and the environment that points the page at it."""
    from pipeline.stack import open_stack

    root = tmp_path_factory.mktemp("ui")
    settings = make_settings(model_repository, "edge", root, mongo_uri)
    settings.encoder.precision = None

    async def ingest():
        async with open_stack(settings) as stack:
            report = await stack.ingest.ingest(catalog)
            assert report.added == 24

    asyncio.run(ingest())
    env = service_env(model_repository, root / "qdrant", mongo_uri, settings.mongo.database)
    service = start_service(env, root / "service.log")  # the page is a client of the service, nothing else
    with service.client() as http:
        key = http.post("/v1/keys", json={"name": "page", "scope": "search"}).json()["key"]
        writer = http.post("/v1/keys", json={"name": "admin-page", "scope": "write"}).json()["key"]
    yield {"PIPELINE__API__URL": service.url, "PIPELINE__API__KEY": key, "UI_TEST_WRITE_KEY": writer}
    service.stop()


@pytest.fixture(scope="module")
def app_env(ui_env):
    """Environment for in-process AppTest runs; the app's cached client lives until the process ends."""
    saved = {k: os.environ.get(k) for k in ui_env}
    os.environ.update(ui_env)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _cards(at) -> list[str]:
    return [b.key.removeprefix("more-") for b in at.button if (b.key or "").startswith("more-")]


def _captions(at) -> str:
    return " | ".join(c.value for c in at.caption)


def test_empty_page_invites_a_query_and_shows_system_status(app_env):
    at = _app()
    assert "Type a few words" in at.info[0].value
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert (
        "in-process (onnxruntime)" in sidebar
        and "INT8" in sidebar
        and "up], 24 products" in sidebar
        and "up], 36 vectors" in sidebar
    )
    assert at.selectbox(key="category").options == ["Any", "mug", "poster", "shirt"]
    assert "| **v1** | active |" in sidebar  # the model versions panel: the active one in bold


def test_text_query_shows_cards_with_latency(app_env):
    at = _app()
    at.text_input(key="query").input("red mug").run()
    assert not at.exception and not at.error
    assert len(_cards(at)) == 12
    assert "12 products for your words" in _captions(at) and " ms · embedding computed" in _captions(at)
    at.text_input(key="query").input("red mug ").run()  # same query again: served from the cache
    assert "embedding from cache" in _captions(at) and "model v1" in _captions(at)
    # a click on a result is recorded against its answer (a search key may do that), for training and CTR
    import httpx

    first = _cards(at)[0]
    at.button(key=f"more-{first}").click().run()
    assert not at.exception and not at.session_state["event_note"]
    url, key = os.environ["PIPELINE__API__URL"], os.environ["PIPELINE__API__KEY"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        live = httpx.get(f"{url}/v1/models", headers={"X-API-Key": key}).json()["live"].get("v1", {})
        if live.get("clicks", 0) >= 1:
            break
        time.sleep(0.2)
    assert live["clicks"] >= 1 and live["queries"] >= 2, live


def test_filters_come_from_the_catalog_and_apply(app_env):
    at = _app()
    at.selectbox(key="category").select("mug").run()
    at.selectbox(key="color").select("red").run()
    at.text_input(key="query").input("something").run()
    names = [m.value for m in at.main.markdown if m.value.startswith("**")]
    assert names and all("red mug" in n for n in names)
    assert len(_cards(at)) == 2


def test_image_query_and_more_like_this(app_env):
    at = _app()
    at.file_uploader(key="photo").upload("query.jpg", encode(draw("blue", "shirt", 5), "JPEG"), "image/jpeg").run()
    assert not at.exception and "12 products for your photo" in _captions(at)
    first = _cards(at)[0]
    at.button(key=f"more-{first}").click().run()
    assert "products for your more like this" in _captions(at)
    assert first not in _cards(at) and len(_cards(at)) == 12


def test_bad_image_is_a_short_message_not_a_traceback(app_env):
    at = _app()
    at.file_uploader(key="photo").upload("broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg", "image/jpeg").run()
    assert not at.exception
    assert (
        len(at.error) == 1
        and "query image: not a readable image" in at.error[0].value
        and "Traceback" not in at.error[0].value
    )
    at.text_input(key="query").input("   ").run()
    assert not at.exception


# --- a real browser ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served_app(ui_env, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {**os.environ, **ui_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start: {log.read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


# Streamlit keeps old elements during a rerun and draws new ones progressively: wait for all twelve cards,
# each with a loaded image.
ALL_CARDS_WITH_IMAGES = """() => {
  const imgs = document.querySelectorAll("[class*='st-key-card-'] img");
  return imgs.length === 12 && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0);
}"""


def test_browser_end_to_end(served_app, tmp_path):
    chromium = shutil.which("chromium")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if chromium is None:
        pytest.skip("no chromium (scripts/system-deps.sh installs Debian's)")
    photo = tmp_path / "query.png"
    photo.write_bytes(encode(draw("green", "poster", 11), "PNG"))
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(served_app)
        box = page.get_by_label("Search with words")
        box.wait_for(timeout=60_000)
        box.fill("red mug")
        box.press("Enter")
        page.get_by_text("products for your words").wait_for(timeout=60_000)
        page.locator(".st-key-card-11").wait_for(timeout=60_000)  # cards render after the caption
        assert page.locator("[class*='st-key-card-']").count() == 12

        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
        page.get_by_text("products for your photo").wait_for(timeout=60_000)
        page.wait_for_function(ALL_CARDS_WITH_IMAGES, timeout=60_000)
        assert page.locator("[class*='st-key-card-'] img").count() == 12

        page.locator(".st-key-card-0").get_by_role("button", name="More like this").click()
        page.get_by_text("products for your more like this").wait_for(timeout=60_000)
        page.wait_for_function(ALL_CARDS_WITH_IMAGES, timeout=60_000)
        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("UI_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["UI_SCREENSHOT_DIR"]) / "ui.png")


def _page_against(url: str, monkeypatch, **env: str):
    """The page run fresh (no cached client or status) against ``url``."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PIPELINE__API__URL", url)
    monkeypatch.setenv("PIPELINE__API__KEY", "psk_none")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    st.cache_resource.clear()  # the client and the status are cached per process: start from none
    st.cache_data.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()
    assert not at.exception
    return at


def test_page_says_when_the_service_is_unreachable(monkeypatch):
    from pipeline.stores.mongod import free_port

    at = _page_against(f"http://127.0.0.1:{free_port()}", monkeypatch)
    assert "search service is not reachable" in at.error[0].value and "python -m pipeline serve" in at.error[0].value


def test_page_says_when_the_service_times_out(monkeypatch):
    """A service that accepts the connection but never answers: a message after the client's timeout."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # accepted by the kernel, never answered
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        at = _page_against(url, monkeypatch, PIPELINE__API__CLIENT_TIMEOUT_S="1")
    assert "ReadTimeout" in at.error[0].value and "not reachable" in at.error[0].value


def test_jobs_panel_shows_running_and_recent_jobs(app_env, ui_env, monkeypatch):
    import httpx
    import streamlit as st

    at = _app()  # the page's search key may not read jobs: the panel says what it needs
    assert "Jobs need a key with write scope" in _captions(at)
    writer = {"X-API-Key": ui_env["UI_TEST_WRITE_KEY"]}
    with httpx.Client(base_url=ui_env["PIPELINE__API__URL"], headers=writer) as http:
        job = http.post("/v1/jobs", json={"kind": "embed-all", "params": {}}).json()
        for _ in range(600):
            if http.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded":
                break
            time.sleep(0.1)
    monkeypatch.setenv("PIPELINE__API__KEY", ui_env["UI_TEST_WRITE_KEY"])
    st.cache_resource.clear()  # the client is cached with the key it was made with
    st.cache_data.clear()
    try:
        at = _app()
        assert "embed-all · succeeded · 24/24" in _captions(at)
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


def test_recommended_for_you_from_the_session_and_from_a_shoppers_events(app_env, ui_env, monkeypatch):
    import streamlit as st

    at = _app()
    at.text_input(key="query").input("red mug").run()
    first = _cards(at)[0]
    at.button(key=f"cart-{first}").click().run()
    assert not at.exception and "Recommended for you" in [h.value for h in at.subheader]
    assert "you added to your cart" in _captions(at)
    # A shopper named with the page's search key: the events cannot be stored, the page says so and goes on.
    at.text_input(key="buyer").input("shopper-1").run()
    at.button(key=f"cart-{_cards(at)[1]}").click().run()
    assert "Events are recorded with a key of write scope" in _captions(at)
    assert "Recommended for you" in [h.value for h in at.subheader]

    monkeypatch.setenv("PIPELINE__API__KEY", ui_env["UI_TEST_WRITE_KEY"])
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = _app()
        at.text_input(key="buyer").input("shopper-2").run()
        at.text_input(key="query").input("blue shirt").run()
        pick = _cards(at)[0]
        at.button(key=f"cart-{pick}").click().run()
        assert not at.exception and "Events are recorded" not in _captions(at)
        assert "Recommended for you" in [h.value for h in at.subheader]
        assert pick not in [b.key.removeprefix("rec-more-") for b in at.button if b.key.startswith("rec-more-")]
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()

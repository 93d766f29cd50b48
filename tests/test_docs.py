"""The docs pages (/docs: Swagger UI, /redoc: ReDoc) work with no internet access.

Their assets come from the ``fastapi-offline`` package and are served by the service
at /static/docs. The first tests read the HTML and fetch what it references; the
``browser`` tests render both pages in a headless Chromium that cannot resolve any
host name, and check from Chromium's network log that the pages asked for nothing
outside the service, and from its console that nothing was blocked or failed.

The pages' Content-Security-Policy forbids loading anything from elsewhere; the one
thing it blocks is ReDoc's "API docs by Redocly" logo, which ReDoc 2 always loads
from cdn.redoc.ly (and hides when it fails to load).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from servers import serve_in_thread

from service.main import create_app
from service.settings import Settings

PAGES = ["/docs", "/redoc"]
EXTERNAL = re.compile(r"""(?i)(?:\bhttps?:)?//[a-z0-9.-]+\.[a-z]{2,}|\bhttps?://""")
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]*)""")
ASSET_TYPES = {
    ".css": ("text/css",),
    ".js": ("text/javascript", "application/javascript"),
    ".png": ("image/png",),
    ".json": ("application/json",),
}
#: What the pages' Content-Security-Policy may block: ReDoc's sidebar logo.
ALLOWED_BLOCKED = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")
OPERATIONS = {
    "list_losses": "/v1/losses",
    "loss_categorical_crossentropy": "/v1/losses/categorical_crossentropy",
    "list_metrics": "/v1/metrics",
    "metric_f1_score": "/v1/metrics/f1_score",
    "evaluate": "/v1/evaluate",
    "health": "/healthz",
}


class _References(HTMLParser):
    """Every URL an HTML page makes the browser load."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and name in {"src", "href", "spec-url", "data", "poster"}:
                self.urls.append(value)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def _references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    urls = list(parser.urls)
    # Swagger UI's configuration script: `url: '/openapi.json'`.
    for script in parser.scripts:
        urls += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", script)
    return urls


def _is_same_origin(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc


@pytest.mark.parametrize("page", PAGES)
def test_page_is_html_with_no_external_url(client: Any, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert "<!DOCTYPE html>" in html
    assert not EXTERNAL.findall(html), f"{page} references outside URLs: {EXTERNAL.findall(html)}"
    assert "fonts.googleapis" not in html
    assert "cdn.jsdelivr" not in html
    for url in _references(html):
        assert _is_same_origin(url), f"{page} references {url}, not on this service"


@pytest.mark.parametrize("page", PAGES)
def test_page_may_load_nothing_from_elsewhere(client: Any, page: str) -> None:
    policy = client.get(page).headers["content-security-policy"]
    directives = {}
    for part in policy.split(";"):
        name, _, sources = part.strip().partition(" ")
        directives[name] = sources
    assert directives["default-src"] == "'self'"
    for name in ("script-src", "style-src", "img-src", "font-src", "connect-src"):
        sources = directives[name].split()
        assert "'self'" in sources, name
        assert all(s.startswith("'") or s in {"data:", "blob:"} for s in sources), name


@pytest.mark.parametrize("page", PAGES)
def test_every_asset_of_a_page_is_served(client: Any, page: str) -> None:
    urls = _references(client.get(page).text)
    assert "/openapi.json" in urls
    assert any(url.startswith("/static/docs/") and url.endswith(".js") for url in urls)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        suffix = Path(urlsplit(url).path).suffix
        media_type = response.headers["content-type"].split(";")[0].strip()
        assert media_type in ASSET_TYPES[suffix], f"{url}: {media_type}"
        assert response.content, url


def test_swagger_ui_css_loads_nothing_from_outside(client: Any) -> None:
    css = client.get("/static/docs/swagger-ui.css").text
    for url in CSS_URL.findall(css):
        assert url.startswith("data:") or _is_same_origin(url), url
    assert "@import" not in css


def test_missing_asset_is_a_problem_404(client: Any) -> None:
    response = client.get("/static/docs/nope.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_an_asset_takes_get_and_head_only_and_a_405_says_so(client: Any) -> None:
    response = client.post("/static/docs/swagger-ui.css")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["detail"].endswith("expected GET, HEAD.")


# --- a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; the test skips without one."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not installed: apt-get install chromium (done by .ci/run)")


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    """The app served by uvicorn on 127.0.0.1 at a free port, in a background thread."""
    with serve_in_thread(create_app(Settings())) as url:
        yield url


def _render(chromium: str, url: str, workdir: Path) -> tuple[str, list[tuple[str, str]], list[str]]:
    """The DOM of ``url`` after Chromium ran its scripts, the (initiator, url) of
    every request the page made, and the page's console messages."""
    net_log = workdir / "net-log.json"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # No internet: every host name but the service's fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={net_log}",
        # The page's console messages go to stderr.
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={workdir / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    try:
        run = subprocess.run(command, capture_output=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium did not render {url} within 90 s")
    stderr = run.stderr.decode(errors="replace")
    assert run.returncode == 0, f"Chromium failed ({run.returncode}) on {url}:\n{stderr[-3000:]}"
    console = CONSOLE.findall(stderr)
    return run.stdout.decode(errors="replace"), _page_requests(net_log), console


def _page_requests(net_log: Path) -> list[tuple[str, str]]:
    """The requests in a Chromium net log that a page made (Chromium's own, such as
    update checks, have no page initiator)."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = []
    for event in log["events"]:
        params = event.get("params") or {}
        initiator = params.get("initiator", "")
        if event["type"] == start and initiator.startswith("http"):
            requests.append((initiator, params["url"]))
    return requests


def _assert_only_from_the_service(requests: list[tuple[str, str]], origin: str) -> None:
    assert requests, "the net log shows no request made by the page"
    outside = [url for initiator, url in requests if not url.startswith(origin + "/")]
    assert not outside, f"the page requested URLs outside the service: {outside}"
    assert any(url == f"{origin}/openapi.json" for _, url in requests)


def _assert_console_is_clean(console: list[str]) -> None:
    """No uncaught error, nothing refused by the CSP but ReDoc's logo."""
    problems = [
        message
        for message in console
        if ("Content Security Policy" in message or "Uncaught" in message or "Failed" in message)
        and not any(url in message for url in ALLOWED_BLOCKED)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.browser
def test_swagger_ui_renders_offline_in_a_browser(
    chromium: str, live_server: str, tmp_path: Path
) -> None:
    dom, requests, console = _render(chromium, f"{live_server}/docs", tmp_path)
    assert 'id="swagger-ui"' in dom
    assert "Loss service" in dom
    assert dom.count('class="opblock ') >= len(OPERATIONS), dom[-2000:]
    for operation_id, path in OPERATIONS.items():
        assert f'data-path="{path}"' in dom, path
        assert f'-{operation_id}"' in dom, operation_id  # id="operations-<tag>-<id>"
    assert "errors-wrapper" not in dom, "Swagger UI reports errors in the spec"
    assert "Failed to load API definition" not in dom
    _assert_only_from_the_service(requests, live_server)
    _assert_console_is_clean(console)


@pytest.mark.browser
def test_redoc_renders_offline_in_a_browser(
    chromium: str, live_server: str, tmp_path: Path
) -> None:
    dom, requests, console = _render(chromium, f"{live_server}/redoc", tmp_path)
    assert re.search(r"<h1[^>]*>\s*Loss service", dom), dom[-2000:]
    for operation_id in OPERATIONS:
        assert f'id="operation/{operation_id}"' in dom, operation_id
    assert "/v1/losses/categorical_crossentropy" in dom
    assert "Something went wrong" not in dom
    _assert_only_from_the_service(requests, live_server)
    _assert_console_is_clean(console)

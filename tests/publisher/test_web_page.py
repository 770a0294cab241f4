"""The web page: served from the package, every asset present, nothing fetched from other hosts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import pytest

from services.publisher.app import STATIC_DIR, VENDOR_FILES
from tests.publisher import Env, running_publisher


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """A ready publisher over a bigdata stand-in and a MemoryBus."""
    async with running_publisher() as e:
        yield e


class _Assets(HTMLParser):
    """Collects every URL the page refers to (src/href)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


async def _page(env: Env) -> str:
    resp = await env.client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    return await resp.text()


async def test_page_is_served_with_map_legend_and_warning_list(env: Env) -> None:
    html = await _page(env)
    for marker in ('<div id="map"', 'class="legend"', 'id="warnings"', 'id="legend-levels"',
                   'id="search"', 'id="banner"', 'id="route-form"', 'id="lang"',
                   "/static/app.js", "/static/i18n.js", "/static/style.css",
                   "/static/vendor/leaflet/leaflet.js", "/static/vendor/leaflet/leaflet.css"):
        assert marker in html


async def test_every_referenced_asset_is_served(env: Env) -> None:
    parser = _Assets()
    parser.feed(await _page(env))
    local = [u for u in parser.urls if not u.startswith("data:")]
    assert "/static/app.js" in local and "/static/style.css" in local
    expected_types = {".js": "text/javascript", ".css": "text/css", ".json": "application/json"}
    for url in local:
        assert url.startswith("/"), f"{url} must be a path on this server"
        resp = await env.client.get(url)
        assert resp.status == 200, url
        suffix = url[url.rfind("."):]
        assert resp.content_type == expected_types[suffix], url
        assert await resp.read()


async def test_page_script_calls_only_publisher_endpoints(env: Env) -> None:
    script = await (await env.client.get("/static/app.js")).text()
    called = set(re.findall(r"[`\"'](/api/v1/[a-z]+)", script))
    assert called == {"/api/v1/region", "/api/v1/roads", "/api/v1/warnings", "/api/v1/levels",
                      "/api/v1/incidents", "/api/v1/index", "/api/v1/basemap", "/api/v1/stops",
                      "/api/v1/vehicles", "/api/v1/parking", "/api/v1/places",
                      "/api/v1/directions", "/api/v1/stream"}
    assert "/bigdata" not in script
    routes = {r.canonical for r in env.app.router.resources()}
    assert called <= routes  # each is a real route of the app


def test_no_static_file_refers_to_another_host() -> None:
    files = sorted(p for p in STATIC_DIR.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"index.html", "app.js", "i18n.js", "style.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text, re.IGNORECASE), path.name
        assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?//", text), path.name
        assert "@import" not in text, path.name


async def test_static_route_serves_only_page_assets(env: Env) -> None:
    for bad in ("/static/app.py", "/static/..%2Fapp.py", "/static/missing.js", "/static/.env"):
        resp = await env.client.get(bad)
        assert resp.status == 404, bad
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_vendored_leaflet_is_served_and_nothing_else_under_vendor(env: Env) -> None:
    assert (STATIC_DIR / "vendor" / "leaflet" / "LICENSE").is_file()
    for name in sorted(VENDOR_FILES):
        resp = await env.client.get(f"/static/vendor/{name}")
        assert resp.status == 200, name
        assert await resp.read() == (STATIC_DIR / "vendor" / name).read_bytes()
    script = (STATIC_DIR / "vendor" / "leaflet" / "leaflet.js").read_text(encoding="utf-8")
    # Only the SVG namespace and the project's own link in its banner: no URL it would load.
    assert set(re.findall(r"https?://[^\s\"')]+", script)) == {
        "http://www.w3.org/2000/svg", "https://leafletjs.com"}
    for bad in ("/static/vendor/leaflet/LICENSE", "/static/vendor/leaflet/leaflet.js.map",
                "/static/vendor/../app.py", "/static/vendor/leaflet/%2e%2e/app.js"):
        assert (await env.client.get(bad)).status == 404, bad

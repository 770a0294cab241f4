"""The departments' console: `/console/`, one page for the people on duty, served from the package,
and beside it `/console/reports`, the desk for citizens' reports and hotline tickets.

Everything the page loads comes from here (its script and style, vendored Leaflet 1.9.4 under
``static/vendor/leaflet``, BSD-2) and everything it asks goes to the department API beside it
(relative URLs, so it works at ``/console/`` under ``tti serve warning`` and at
``/warning/console/`` in ``tti run``). The policy header forbids any other origin and any inline
script, so a stray external URL fails loudly instead of leaking a request.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.warning.api.dept_map import add_map_routes
from shared.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Exactly the files the page needs: nothing else in the package folder is ever served.
STATIC_FILES: frozenset[str] = frozenset({
    "app.js", "style.css", "reports.js",
    "vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css",
    "vendor/leaflet/images/layers.png", "vendor/leaflet/images/layers-2x.png",
    "vendor/leaflet/images/marker-icon.png", "vendor/leaflet/images/marker-icon-2x.png",
    "vendor/leaflet/images/marker-shadow.png",
})
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".png": "image/png"}
_COMMON = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {
    **_COMMON,
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
}


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


async def _reports(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "reports.html", headers=PAGE_HEADERS)


async def _to_index(request: web.Request) -> web.StreamResponse:
    # Relative, so it lands right under whatever prefix the app is mounted at.
    raise web.HTTPFound("console/")


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["filename"]
    if name not in STATIC_FILES:
        raise NotFound(f"no console file {name!r}")
    path = STATIC_DIR / name
    return web.FileResponse(path, headers={**_COMMON, "Content-Type": _TYPES[path.suffix]})


def add_console_routes(app: web.Application) -> None:
    """Register ``/console/`` and ``/console/reports`` with their files, and the map data the
    console draws (``dept_map``)."""
    app.router.add_get("/console", _to_index)
    app.router.add_get("/console/", _index)
    app.router.add_get("/console/reports", _reports)
    app.router.add_get("/console/static/{filename:.+}", _static)
    add_map_routes(app)

"""The public CAP feed: an Atom index at ``/cap/alerts.atom`` of every public warning held, each
entry linking its OASIS CAP 1.2 document at ``/cap/{warning_id}.xml``.

Documents are rendered by the one renderer (:func:`shared.cap.render_cap`) with the public
sender, so a warning's version has the same identifier here as in the warning service's API.
Public means every kind but vehicle alarms (those are for departments). Warnings that ended
stay listed while the publisher holds them (24 h): their last message is the all-clear or the
cancellation a feed reader needs to see. Only the latest message of each warning is served here;
the warning service keeps the history (``/warning/v1/cap/{id}.xml?version=N``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from services.publisher.api import ANSWERS, cached_response
from shared.cap import (
    CAP_CONTENT_TYPE,
    PUBLIC_SENDER,
    PUBLIC_SENDER_NAME,
    PUBLIC_SENDER_NAME_EN,
    cap_identifier,
    render_cap,
)
from shared.errors import NotFound
from shared.events import Warning, WarningKind

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_TYPE = "application/atom+xml"


def is_public(warning: Warning) -> bool:
    """Whether a warning goes to the public feed (vehicle alarms do not)."""
    return warning.kind is not WarningKind.VEHICLE_ALARM


def _time(at: datetime) -> str:
    return at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def document_path(warning_id: str) -> str:
    """Where a warning's CAP document is served."""
    return f"/cap/{quote(warning_id, safe='')}.xml"


def render_document(warning: Warning) -> bytes:
    """The CAP 1.2 document of a warning's latest message."""
    return render_cap(warning, sender=PUBLIC_SENDER, sender_name=PUBLIC_SENDER_NAME,
                      sender_name_en=PUBLIC_SENDER_NAME_EN)


def render_atom(warnings: list[Warning], *, base_url: str, updated: datetime) -> bytes:
    """The Atom index of ``warnings`` (newest first), links absolute under ``base_url``."""
    ET.register_namespace("", ATOM_NS)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        if text is not None:
            el.text = text
        return el

    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    sub(feed, "id", f"tag:{PUBLIC_SENDER},2024:cap:alerts")
    sub(feed, "title", "湖北交通预警 CAP 1.2 Traffic warnings (Hubei)")
    sub(feed, "updated", _time(updated))
    sub(feed, "link", rel="self", type=ATOM_TYPE, href=f"{base_url}/cap/alerts.atom")
    author = sub(feed, "author")
    sub(author, "name", PUBLIC_SENDER_NAME)
    sub(feed, "generator", "TTI publisher")
    for w in warnings:
        entry = sub(feed, "entry")
        sub(entry, "id", f"tag:{PUBLIC_SENDER},2024:cap:{cap_identifier(w, prefix=PUBLIC_SENDER)}")
        title = w.headline + (f" / {w.headline_en}" if w.headline_en else "")
        sub(entry, "title", title)
        sub(entry, "published", _time(w.started_at))
        sub(entry, "updated", _time(w.updated_at))
        sub(entry, "link", rel="alternate", type=CAP_CONTENT_TYPE,
            href=base_url + document_path(w.warning_id))
        sub(entry, "category", term=w.kind.value)
        sub(entry, "category", term=w.status.value, scheme="urn:tti:warning-status")
        if w.description:
            sub(entry, "summary", w.description)
    ET.indent(feed)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(feed, encoding="utf-8") \
        + b"\n"


async def _atom(request: web.Request) -> web.Response:
    p = request.app[ANSWERS].p
    warnings = [w for w in p.warnings.list_warnings("all") if is_public(w)]
    updated = max((w.updated_at for w in warnings), default=None) or p.changed.get(
        "warnings") or p.clock.now()
    base = str(request.url.origin())
    return cached_response(request, render_atom(warnings, base_url=base, updated=updated),
                           content_type=ATOM_TYPE, last_modified=updated)


async def _document(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not name.endswith(".xml") or len(name) <= 4:
        raise NotFound("CAP documents are at /cap/{warning_id}.xml")
    warning = request.app[ANSWERS].p.warnings.find(name[:-4])
    if warning is None or not is_public(warning):
        raise NotFound(f"no public warning {name[:-4]!r}")
    response = cached_response(request, render_document(warning),
                               content_type=CAP_CONTENT_TYPE, last_modified=warning.updated_at)
    response.charset = "utf-8"
    return response


def add_cap_routes(app: web.Application) -> None:
    """Register the Atom index and the CAP documents."""
    app.router.add_get("/cap/alerts.atom", _atom)
    app.router.add_get("/cap/{name}", _document)

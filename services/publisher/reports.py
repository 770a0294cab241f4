"""Citizens' reports: ``POST /api/v1/reports`` → ``tti.citizen.report``, and their status.

A report says what (``kind`` of :data:`~shared.events.CITIZEN_REPORT_KINDS` and a ``text``),
where (``lon``/``lat``, or a ``segment_id``), when (``occurred_at``, optional) and may carry one
photo of at most 2 MiB, JPEG or PNG — judged by its bytes (magic number, then decoded by Pillow
when it is installed), never by the name or type the client claims. The photo is too large for
an event: it is kept on the bus's object store (``shared/bus/objects.py``: a JetStream object
store shared by every replica, 180 days) before the event, which references it by SHA-256, is
published; any replica serves it.

The warning service owns reports and their status (``status_of``); a report this replica took
reads as it knew it (``received``) until the warning service has it, or while it is away.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import Counter

from services.publisher.api import ANSWERS, cached_response, coords_of, json_body
from shared.codec import dumps
from shared.errors import BadRequest, NotFound, TransientError
from shared.events import (
    CITIZEN_REPORT,
    CITIZEN_REPORT_KINDS,
    REPORT_STATUSES,
    CitizenReport,
    ReportPhoto,
    report_id_for,
    report_number,
)

if TYPE_CHECKING:
    from services.publisher.state import Publisher

MAX_PHOTO_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 2000
MAX_FIELD_BYTES = 16 * 1024
MAX_PIXELS = 50_000_000  # a 2 MiB PNG can claim far more: refuse decompression bombs
BEIJING = timezone(timedelta(hours=8))
REPORT_CHANNELS = ("app", "web")
"""Channels that submit through this endpoint (WeChat and the hotlines have their own)."""

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"

REPORTS = Counter("tti_publisher_reports_total", "Citizen reports, by result", ["result"])


class PayloadTooLarge(BadRequest):
    """A request or photo over its size limit."""

    code = "too_large"
    http_status = 413


@dataclass(frozen=True, slots=True)
class Photo:
    """A checked photo: its bytes, type and size in pixels (when Pillow read it)."""

    data: bytes
    content_type: str
    width: int | None
    height: int | None

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes."""
        return hashlib.sha256(self.data).hexdigest()


def check_photo(data: bytes) -> Photo:
    """The photo if it is a real JPEG or PNG within the limits; :class:`BadRequest` if not."""
    if len(data) > MAX_PHOTO_BYTES:
        raise PayloadTooLarge(f"the photo is larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MiB",
                              code="photo_too_large")
    if data.startswith(_JPEG):
        content_type, expected = "image/jpeg", "JPEG"
    elif data.startswith(_PNG):
        content_type, expected = "image/png", "PNG"
    else:
        raise BadRequest("the photo must be a JPEG or PNG image", code="photo_type")
    try:
        from PIL import Image
    except ImportError:  # without Pillow the magic number is the whole check
        return Photo(data, content_type, None, None)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            if width * height > MAX_PIXELS:
                raise BadRequest(f"the photo has more than {MAX_PIXELS} pixels",
                                 code="photo_type")
            img.verify()
    except BadRequest:
        raise
    except Exception as exc:  # Pillow raises many kinds for a broken file
        raise BadRequest(f"the photo is not a readable image: {exc}", code="photo_type") from None
    if fmt != expected:
        raise BadRequest("the photo's content does not match its type", code="photo_type")
    return Photo(data, content_type, width, height)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A report this publisher accepted, its public number and what it answers about it."""

    number: str
    report: CitizenReport
    photo: Photo | None
    status: str = "received"


class ReportBoard:
    """Reports accepted here, by number; photos bounded in count and bytes (oldest go first)."""

    def __init__(self, *, max_reports: int = 50_000,
                 max_photo_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_reports = max_reports
        self.max_photo_bytes = max_photo_bytes
        self._by_number: OrderedDict[str, Submitted] = OrderedDict()
        self._by_id: dict[str, str] = {}
        self._photo_bytes = 0

    def find(self, number: str) -> Submitted | None:
        """A report by number, or None."""
        return self._by_number.get(number)

    def find_by_id(self, report_id: str) -> Submitted | None:
        """A report by its id (a resent report), or None."""
        number = self._by_id.get(report_id)
        return None if number is None else self._by_number.get(number)

    def add(self, item: Submitted) -> None:
        """Keep an accepted report; forget the oldest beyond the bounds."""
        self._by_number[item.number] = item
        self._by_id[item.report.report_id] = item.number
        if item.photo is not None:
            self._photo_bytes += len(item.photo.data)
        while len(self._by_number) > self.max_reports or self._photo_bytes > self.max_photo_bytes:
            _, old = self._by_number.popitem(last=False)
            self._by_id.pop(old.report.report_id, None)
            if old.photo is not None:
                self._photo_bytes -= len(old.photo.data)


def _text(raw: object, name: str, *, required: bool = False, most: int = 200) -> str | None:
    if raw is None or raw == "":
        if required:
            raise BadRequest(f"{name} is required", code="bad_field")
        return None
    if not isinstance(raw, str):
        raise BadRequest(f"{name} must be text", code="bad_field")
    value = raw.strip()
    if len(value) > most:
        raise BadRequest(f"{name} is longer than {most} characters", code="bad_field")
    return value or None


def _coordinate(raw: object, name: str, lo: float, hi: float) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number", code="bad_field") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}", code="bad_field")
    return value


def _occurred_at(raw: object, now: datetime) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadRequest("occurred_at must be an RFC 3339 time", code="bad_field")
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest("occurred_at must be an RFC 3339 time", code="bad_field") from None
    if at.tzinfo is None:
        raise BadRequest("occurred_at needs a time zone (Z or +08:00)", code="bad_field")
    if at > now + timedelta(minutes=5):
        raise BadRequest("occurred_at is in the future", code="bad_field")
    if at < now - timedelta(days=7):
        raise BadRequest("occurred_at is more than 7 days ago", code="bad_field")
    return at.astimezone(now.tzinfo)


async def read_form(request: web.Request) -> tuple[dict[str, Any], bytes | None]:
    """The report's fields and photo bytes from a JSON or multipart/form-data body."""
    if request.content_type == "application/json":
        if request.content_length is not None and request.content_length > MAX_FIELD_BYTES:
            raise PayloadTooLarge("a JSON report is limited to 16 KiB (send a photo as "
                                  "multipart/form-data)")
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not valid JSON", code="bad_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", code="bad_json")
        return body, None
    if request.content_type == "application/x-www-form-urlencoded":
        if request.content_length is not None and request.content_length > MAX_FIELD_BYTES:
            raise PayloadTooLarge("a form without a photo is limited to 16 KiB")
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}, None
    if request.content_type != "multipart/form-data":
        raise BadRequest("send the report as application/json, a form, or multipart/form-data",
                         code="bad_content_type")
    fields: dict[str, Any] = {}
    photo: bytes | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted", code="bad_field")
            if part.name == "photo":
                if photo is not None:
                    raise BadRequest("one photo per report", code="bad_field")
                photo = await _read_part(part, MAX_PHOTO_BYTES, "photo_too_large")
            elif part.name:
                if len(fields) >= 20:
                    raise BadRequest("too many fields", code="bad_field")
                raw = await _read_part(part, MAX_FIELD_BYTES, "too_large")
                fields[part.name] = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("form fields must be UTF-8 text", code="bad_field") from None
    except (ValueError, HttpProcessingError) as exc:  # a malformed multipart body
        raise BadRequest(f"malformed multipart body: {exc}", code="bad_multipart") from None
    return fields, photo


async def _read_part(part: BodyPartReader, limit: int, code: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{part.name} is larger than {limit} bytes", code=code)
        chunks.append(chunk)
    return b"".join(chunks)


def build_report(fields: dict[str, Any], photo: Photo | None, *, now: datetime,
                 point: tuple[float, float] | None, known_segment: bool | None
                 ) -> CitizenReport:
    """A CitizenReport from checked fields; :class:`BadRequest` naming the first bad one."""
    kind = _text(fields.get("kind"), "kind", required=True)
    if kind not in CITIZEN_REPORT_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(CITIZEN_REPORT_KINDS)}",
                         code="bad_field")
    channel = _text(fields.get("channel"), "channel") or "app"
    if channel not in REPORT_CHANNELS:
        raise BadRequest(f"channel must be one of {', '.join(REPORT_CHANNELS)}",
                         code="bad_field")
    text = _text(fields.get("text"), "text", most=MAX_TEXT_CHARS) or ""
    segment_id = _text(fields.get("segment_id"), "segment_id")
    if segment_id is not None and known_segment is False:
        raise BadRequest(f"unknown road segment {segment_id!r}", code="bad_field")
    if point is None and segment_id is None:
        raise BadRequest("say where: lon and lat, or segment_id", code="bad_field")
    if not text and photo is None and kind != "congestion":
        raise BadRequest("say what happened: text or a photo", code="bad_field")
    client_id = _text(fields.get("client_id"), "client_id", most=100)
    # The same client message resent is the same report (any replica, any day); else new.
    return CitizenReport(
        report_id=report_id_for(channel, client_id), channel=channel, kind=kind,
        reported_at=now, text=text,
        lon=None if point is None else point[0], lat=None if point is None else point[1],
        segment_id=segment_id, contact=_text(fields.get("contact"), "contact", most=100),
        occurred_at=_occurred_at(fields.get("occurred_at"), now))


def report_point(fields: dict[str, Any]) -> tuple[float, float] | None:
    """(lon, lat) as given (in the request's coordinate system), or None; both or neither."""
    lon = _coordinate(fields.get("lon"), "lon", -180, 180)
    lat = _coordinate(fields.get("lat"), "lat", -90, 90)
    if (lon is None) != (lat is None):
        raise BadRequest("give both lon and lat", code="bad_field")
    return None if lon is None or lat is None else (lon, lat)


def report_status(item: Submitted) -> dict[str, Any]:
    """What ``GET /api/v1/reports/{number}`` answers (no contact details)."""
    r = item.report
    zh, en = REPORT_STATUSES[item.status]
    return {"number": item.number, "status": item.status, "status_name": zh,
            "status_name_en": en, "status_at": r.reported_at, "final": False, "reply": None,
            "warning_id": None, "kind": r.kind, "channel": r.channel,
            "reported_at": r.reported_at, "occurred_at": r.occurred_at, "lon": r.lon,
            "lat": r.lat, "segment_id": r.segment_id, "text": r.text,
            "photo": None if r.photo is None else {
                "url": r.photo.url, "content_type": r.photo.content_type,
                "size_bytes": r.photo.size_bytes, "sha256": r.photo.sha256,
                "width": r.photo.width, "height": r.photo.height},
            "status_owner": "publisher"}


# -- HTTP -----------------------------------------------------------------------------------


async def post_report(request: web.Request) -> web.Response:
    """``POST /api/v1/reports``: check, keep, publish ``tti.citizen.report``; 201 + number."""
    publisher = request.app[ANSWERS].p
    try:
        fields, raw_photo = await read_form(request)
        photo = None if not raw_photo else check_photo(raw_photo)
        coords = coords_of({"coord": str(fields.get("coord") or request.query.get("coord")
                                         or "wgs84")})
        point = report_point(fields)
        segment_id = fields.get("segment_id")
        known = (None if not isinstance(segment_id, str) or not segment_id
                 or publisher.catalogue is None
                 else publisher.catalogue.find(segment_id.strip()) is not None)
        now = publisher.clock.now()
        report = build_report(fields, photo, now=now,
                              point=None if point is None else coords.inbound(point),
                              known_segment=known)
    except BadRequest as exc:
        REPORTS.labels(f"rejected_{exc.code}" if exc.code in _REJECT_CODES
                       else "rejected_other").inc()
        raise
    held = publisher.reports.find_by_id(report.report_id)
    if held is not None:
        REPORTS.labels("resent").inc()
        return json_body(report_status(held), status=200)
    number = report_number(report.report_id, now)
    if photo is not None:
        report = dataclasses.replace(report, photo=ReportPhoto(
            url=str(request.url.origin()) + f"/api/v1/reports/{number}/photo",
            content_type=photo.content_type, size_bytes=len(photo.data), sha256=photo.sha256,
            width=photo.width, height=photo.height))
    item = Submitted(number=number, report=report, photo=photo)
    if photo is not None:  # kept where every replica finds it before the event names it
        await publisher.photos.put(photo.sha256, photo.data)
    # Published before it is answered: a 201 means the report is on the bus.
    await publisher.bus.publish(CITIZEN_REPORT, report, event_id=f"report:{report.report_id}")
    publisher.reports.add(item)
    REPORTS.labels("accepted").inc()
    response = json_body(report_status(item), status=201)
    response.headers["Location"] = f"/api/v1/reports/{number}"
    return response


_REJECT_CODES = frozenset({"bad_field", "bad_json", "bad_content_type", "bad_multipart",
                           "photo_type", "photo_too_large", "too_large"})


async def status_of(publisher: Publisher, number: str) -> dict[str, Any] | None:
    """A report's (or hotline ticket's) status as its owner, the warning service, answers it.

    A report this publisher took that the warning service has not stored yet (the event is on
    its way), or any it took while the warning service cannot be reached, reads as this
    publisher last knew it (``received``, ``status_owner: "publisher"``); None for a number
    nobody knows. :class:`~shared.errors.TransientError` when the warning service is away and
    the report was taken elsewhere.
    """
    held = publisher.reports.find(number)
    try:
        return await publisher.warning.report(number)
    except NotFound:
        return None if held is None else report_status(held)
    except TransientError:
        if held is None:
            raise
        REPORTS.labels("status_from_memory").inc()
        return report_status(held)


async def get_report(request: web.Request) -> web.Response:
    """``GET /api/v1/reports/{number}``: the report's status (the warning service's)."""
    number = request.match_info["number"]
    if len(number) > 40:
        raise NotFound("no such report")
    status = await status_of(request.app[ANSWERS].p, number)
    if status is None:
        raise NotFound(f"no report {number!r}")
    changed = status.get("status_at") or status.get("reported_at")
    if isinstance(changed, str):
        try:
            changed = datetime.fromisoformat(changed.replace("Z", "+00:00"))
        except ValueError:
            changed = None
    return cached_response(request, dumps(status), content_type="application/json",
                           last_modified=changed if isinstance(changed, datetime) else None)


async def get_photo(request: web.Request) -> web.Response:
    """``GET /api/v1/reports/{number}/photo``: the photo as it was checked, from any replica."""
    publisher = request.app[ANSWERS].p
    number = request.match_info["number"]
    item = publisher.reports.find(number)
    changed: datetime | None = None
    if item is not None and item.photo is not None:
        data, content_type, sha = item.photo.data, item.photo.content_type, item.photo.sha256
        changed = item.report.reported_at
    else:  # taken by another replica, or before a restart: the shared store has it
        status = None if len(number) > 40 else await status_of(publisher, number)
        photo = (status or {}).get("photo")
        sha = str(photo.get("sha256")) if isinstance(photo, dict) else ""
        found = await publisher.photos.get(sha) if _HEX64.fullmatch(sha) else None
        if found is None or hashlib.sha256(found).hexdigest() != sha:
            raise NotFound("no such report photo")
        data, content_type = found, "image/png" if found.startswith(_PNG) else "image/jpeg"
    response = cached_response(request, data, content_type=content_type,
                               last_modified=changed, etag=f'"{sha[:32]}"')
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    return response


_HEX64 = re.compile(r"[0-9a-f]{64}")


def add_report_routes(app: web.Application) -> None:
    """Register the report endpoints."""
    app.router.add_post("/api/v1/reports", post_report)
    app.router.add_get("/api/v1/reports/{number}", get_report)
    app.router.add_get("/api/v1/reports/{number}/photo", get_photo)

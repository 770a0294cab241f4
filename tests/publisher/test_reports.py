"""Citizens' reports: fields checked, photos judged by their bytes, the event on the bus."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import FormData
from PIL import Image
from yarl import URL

from shared.codec import Envelope
from shared.events import CITIZEN_REPORT, CitizenReport
from tests.publisher import Env, running_publisher, wait_for


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running_publisher() as e:
        yield e


def image(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


async def collect(env: Env) -> list[CitizenReport]:
    got: list[CitizenReport] = []

    async def handler(e: Envelope[CitizenReport]) -> None:
        got.append(e.payload)

    await env.bus.subscribe(CITIZEN_REPORT, handler, durable="test-warning")
    return got


def form(photo: bytes | None = None, **fields: str) -> FormData:
    data = FormData()
    for k, v in {"kind": "accident", "text": "两车追尾", "lon": "114.405", "lat": "30.5",
                 **fields}.items():
        data.add_field(k, v)
    if photo is not None:
        data.add_field("photo", photo, filename="x.bin", content_type="application/octet-stream")
    return data


async def test_report_with_a_photo_goes_on_the_bus_and_has_a_status(env: Env) -> None:
    got = await collect(env)
    jpeg = image("JPEG")
    resp = await env.client.post("/api/v1/reports",
                                 data=form(jpeg, occurred_at="2000-01-01T00:00:00Z"))
    assert resp.status == 400  # more than 7 days ago
    resp = await env.client.post("/api/v1/reports", data=form(jpeg, client_id="m-1"))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    number = body["number"]
    assert body["status"] == "received" and resp.headers["Location"].endswith(number)
    await wait_for(lambda: len(got) == 1)
    report = got[0]
    assert report.kind == "accident" and report.text == "两车追尾" and report.channel == "app"
    assert (report.lon, report.lat) == (114.405, 30.5)
    assert report.photo is not None and report.photo.content_type == "image/jpeg"
    assert (report.photo.width, report.photo.height) == (64, 48)
    photo = await env.client.get(URL(report.photo.url).path)
    assert photo.status == 200 and await photo.read() == jpeg
    status = await env.client.get(f"/api/v1/reports/{number}")
    assert status.status == 200 and (await status.json())["kind"] == "accident"
    # Resent by the client with the same id: the same report, nothing new on the bus.
    again = await env.client.post("/api/v1/reports", data=form(jpeg, client_id="m-1"))
    assert again.status == 200 and (await again.json())["number"] == number
    await asyncio.sleep(0.1)
    assert len(got) == 1
    # No warning service here: a number this publisher never took cannot be answered for.
    unknown = await env.client.get("/api/v1/reports/20990101-XXXXXX")
    assert unknown.status == 503
    assert (await unknown.json())["error"]["code"] == "warning_unavailable"


async def test_png_and_json_reports(env: Env) -> None:
    got = await collect(env)
    resp = await env.client.post("/api/v1/reports", data=form(image("PNG"), kind="road_damage"))
    assert resp.status == 201
    resp = await env.client.post("/api/v1/reports", json={
        "kind": "congestion", "segment_id": "101:1:2", "channel": "web"})
    assert resp.status == 201, await resp.text()
    await wait_for(lambda: len(got) == 2)
    assert {r.kind for r in got} == {"road_damage", "congestion"}
    assert next(r for r in got if r.kind == "congestion").segment_id == "101:1:2"


@pytest.mark.parametrize(("fields", "photo", "status", "code"), [
    ({"kind": "volcano"}, None, 400, "bad_field"),
    ({"lon": "", "lat": ""}, None, 400, "bad_field"),              # nowhere
    ({"lat": "91"}, None, 400, "bad_field"),
    ({"segment_id": "999:1:2", "lon": "", "lat": ""}, None, 400, "bad_field"),
    ({}, b"GIF89a" + b"\0" * 100, 400, "photo_type"),              # neither JPEG nor PNG
    ({}, b"\xff\xd8\xff\xe0" + b"junk" * 100, 400, "photo_type"),  # JPEG magic, no image
    ({}, b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024), 413, "photo_too_large"),
])
async def test_bad_reports_are_refused_with_a_reason(env: Env, fields: dict[str, str],
                                                     photo: bytes | None, status: int,
                                                     code: str) -> None:
    got = await collect(env)
    resp = await env.client.post("/api/v1/reports", data=form(photo, **fields))
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    await asyncio.sleep(0.05)
    assert got == []
    assert (await env.client.get("/healthz")).status == 200


async def test_a_png_claiming_to_be_huge_is_refused(env: Env) -> None:
    resp = await env.client.post("/api/v1/reports", data=form(image("PNG", (8000, 7000))))
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "photo_type"

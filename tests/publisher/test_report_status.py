"""A citizen's report through the publisher to its owner, the warning service, and back:
the status a department sets is what the citizen reads at ``GET /api/v1/reports/{number}``."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import FormData
from PIL import Image

from services.publisher.reports import ReportBoard
from services.warning.workflow.store import WorkflowStore
from shared.db import database_from_url
from shared.demo import DemoRegion, generate_demo_region
from tests.publisher import wait_for
from tests.publisher.stack import Stack, import_demo, running_stack


def form_of(kind: str, text: str) -> FormData:
    form = FormData()
    for k, v in {"kind": kind, "text": text, "lon": "114.40", "lat": "30.50"}.items():
        form.add_field(k, v)
    return form


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def imported(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_demo(demo, tmp_path_factory.mktemp("db") / "geo.db")


@pytest.fixture
async def stack(demo: DemoRegion, imported: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(demo, imported, tmp_path) as s:
        yield s


async def test_the_status_a_department_sets_is_what_the_citizen_reads(stack: Stack) -> None:
    users = WorkflowStore(database_from_url(stack.warning_db))
    await users.open()
    token = await users.add_user("police-1", "police", stack.clock.now())
    await users.close()

    form = FormData()
    for k, v in {"kind": "road_damage", "text": "路面塌陷一米见方", "lon": "114.40",
                 "lat": "30.50", "contact": "13800138000"}.items():
        form.add_field(k, v)
    photo = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 90, 90)).save(photo, format="PNG")
    form.add_field("photo", photo.getvalue(), filename="hole.png")
    resp = await stack.client.post("/api/v1/reports", data=form)
    assert resp.status == 201, await resp.text()
    number = (await resp.json())["number"]

    async def owned() -> bool:
        r = await stack.client.get(f"/api/v1/reports/{number}")
        return r.status == 200 and (await r.json())["status_owner"] == "warning"

    await wait_for(owned, within_s=10)
    first = await stack.client.get(f"/api/v1/reports/{number}")
    body = await first.json()
    assert (body["status"], body["status_name"]) == ("received", "已受理")
    assert "contact" not in body, "a citizen's number is never shown back"
    tag = first.headers["ETag"]
    same = await stack.client.get(f"/api/v1/reports/{number}", headers={"If-None-Match": tag})
    assert same.status == 304

    resp = await stack.warning.post(
        f"/v1/dept/reports/{number}/status", headers={"Authorization": f"Bearer {token}"},
        data=orjson.dumps({"status": "confirmed", "reply": "养护单位已到场"}))
    assert resp.status == 200, await resp.text()
    after = await stack.client.get(f"/api/v1/reports/{number}", headers={"If-None-Match": tag})
    assert after.status == 200, "a new status is a new answer"
    body = await after.json()
    assert (body["status"], body["status_name_en"], body["reply"]) == (
        "confirmed", "confirmed", "养护单位已到场")

    # Another replica (or this one after a restart) serves the photo: it is on the bus's store.
    stack.publisher.reports = ReportBoard()
    served = await stack.client.get(f"/api/v1/reports/{number}/photo")
    assert served.status == 200 and await served.read() == photo.getvalue()
    assert served.headers["Content-Type"] == "image/png"
    assert body["photo"]["sha256"] == hashlib.sha256(photo.getvalue()).hexdigest()
    assert (await stack.client.get("/api/v1/reports/20260303-AAAAAA/photo")).status == 404

    # The warning service away: a report a replica took still reads as it knew it.
    resp = await stack.client.post("/api/v1/reports", data=form_of("accident", "两车刮擦"))
    number = (await resp.json())["number"]
    await stack.warning.close()
    away = await stack.client.get(f"/api/v1/reports/{number}")
    assert away.status == 200 and (await away.json())["status_owner"] == "publisher"
    unknown = await stack.client.get("/api/v1/reports/20260303-AAAAAA")
    assert unknown.status == 503

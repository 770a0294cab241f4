"""The profile endpoints of bigdata's HTTP API, on the real app (SQLite, demo region)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from services.bigdata.app import BIGDATA
from services.bigdata.profiles import BUCKETS_PER_WEEK
from services.bigdata.store import SpeedRecord
from tests.bigdata.test_bigdata_api import client, demo, get, imported_db  # noqa: F401

MONDAY = datetime(2024, 4, 1, tzinfo=UTC) - timedelta(hours=8)  # Monday 00:00 local


async def test_profile_endpoints(client: TestClient[Any, Any]) -> None:  # noqa: F811
    store = client.app[BIGDATA].store
    sid = (await store.list_segments())[0].segment_id
    recs = []
    for week in range(2):
        for minute in range(0, 120, 5):  # Monday 07:00-09:00 local: 20 km/h
            t = MONDAY + timedelta(weeks=week, hours=7, minutes=minute)
            recs.append(SpeedRecord(segment_id=sid, window_start=t, observed_at=t,
                                    speed_kmh=20.0, sample_count=2, source="probe",
                                    confidence=0.5))
    await store.insert_speeds(recs)
    assert await store.recompute_profiles(MONDAY, MONDAY + timedelta(weeks=2)) == 8

    body = await get(client, f"/v1/segments/{sid}/profile")
    assert body["segment_id"] == sid and body["time_zone"] == "Asia/Shanghai"
    assert body["bucket_minutes"] == 15 and body["bucket_count"] == BUCKETS_PER_WEEK
    assert [b["bucket"] for b in body["buckets"]] == list(range(28, 36))
    assert body["buckets"][0] == {"bucket": 28, "label": "Mon 07:00", "speed_kmh": 20.0,
                                  "sample_windows": 6}
    assert body["updated_at"] is not None
    assert body["free_flow"]["source"] == "default"
    assert body["free_flow"]["speed_kmh"] == body["free_flow"]["default_kmh"] > 0

    at = (MONDAY + timedelta(weeks=7, hours=7, minutes=20)).isoformat()
    body = await get(client, "/v1/profiles?at=" + at.replace("+", "%2B"))
    assert body["bucket"] == 29 and body["label"] == "Mon 07:15"
    assert body["valid_until"] == (MONDAY + timedelta(weeks=7, hours=7, minutes=30)).isoformat()
    assert body["count"] == 1
    assert body["profiles"][0]["segment_id"] == sid
    assert body["profiles"][0]["speed_kmh"] == 20.0
    body = await get(client, "/v1/profiles?at=" + (MONDAY + timedelta(hours=12)).isoformat()
                     .replace("+", "%2B"))
    assert body["count"] == 0 and body["profiles"] == []

    await get(client, "/v1/profiles?at=yesterday", 400)
    await get(client, "/v1/segments/9:9:9/profile", 404)

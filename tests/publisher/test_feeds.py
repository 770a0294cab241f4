"""Open feeds: GTFS-realtime read back with the official bindings; the CAP Atom index and its
documents validated against OASIS's CAP 1.2 schema."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xmlschema
from google.transit import gtfs_realtime_pb2 as rt
from yarl import URL

from shared.events import (
    ARRIVAL_PREDICTION,
    VEHICLE_POSITION,
    WARNING,
    ArrivalPrediction,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    Impact,
    VehiclePosition,
    Warning,
    WarningKind,
    WarningStatus,
)
from tests.publisher import Env, running_publisher, wait_for

SCHEMA = xmlschema.XMLSchema(Path(__file__).resolve().parents[1] / "data" / "CAP-v1.2.xsd")
ATOM = "{http://www.w3.org/2005/Atom}"
PHONE = "13800000077"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running_publisher() as e:
        yield e


def warning(wid: str, kind: WarningKind, *, routes: tuple[str, ...] = ()) -> Warning:
    now = datetime.now(UTC).replace(microsecond=0)
    return Warning(
        warning_id=wid, kind=kind, status=WarningStatus.RAISED, category=CapCategory.TRANSPORT,
        severity=CapSeverity.SEVERE, urgency=CapUrgency.IMMEDIATE,
        certainty=CapCertainty.OBSERVED, msg_type=CapMsgType.ALERT, started_at=now,
        updated_at=now, headline="珞喻路严重拥堵", headline_en="Severe congestion on Luoyu Road",
        description="车速低于10公里/小时", cause="severe_congestion", segment_ids=("101:1:2",),
        lon=114.405, lat=30.5, impact=Impact(bus_routes=routes, trips_sampled=10,
                                             trips_affected=2, max_delay_s=300.0,
                                             computed_at=now) if routes else None)


async def feed(env: Env, path: str) -> rt.FeedMessage:
    resp = await env.client.get(path)
    assert resp.status == 200 and resp.content_type == "application/x-protobuf"
    message = rt.FeedMessage()
    message.ParseFromString(await resp.read())
    assert message.header.gtfs_realtime_version == "2.0"
    return message


async def test_vehicle_positions_and_trip_updates(env: Env) -> None:
    now = datetime.now(UTC)
    await env.bus.publish(VEHICLE_POSITION, VehiclePosition(
        vehicle_id=PHONE, lon=114.41, lat=30.5, observed_at=now, speed_kmh=36.0,
        heading_deg=90.0, vehicle_class="bus", route_id="R1", trip_id="T1",
        occupancy="STANDING_ROOM_ONLY", occupancy_pct=96.0), key=PHONE)
    for seq, stop, ahead in ((3, "S3", 100), (4, "S4", 700)):
        await env.bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
            trip_id="T1", route_id="R1", stop_id=stop, stop_sequence=seq, vehicle_id=PHONE,
            predicted_arrival=now + timedelta(seconds=ahead), made_at=now,
            start_date="20240501", scheduled_arrival=now + timedelta(seconds=ahead - 60)),
            key=PHONE)
    await wait_for(lambda: env.publisher.buses.held == 2)
    vp = await feed(env, "/gtfs-rt/vehicle-positions")
    (entity,) = vp.entity
    v = entity.vehicle
    assert v.vehicle.id.startswith("bus-") and PHONE not in vp.SerializeToString().decode(
        "latin-1")
    assert v.trip.trip_id == "T1" and v.trip.route_id == "R1"
    assert v.position.speed == pytest.approx(10.0) and v.position.bearing == 90.0
    assert v.occupancy_status == rt.VehiclePosition.STANDING_ROOM_ONLY
    assert v.occupancy_percentage == 96
    tu = await feed(env, "/gtfs-rt/trip-updates")
    (entity,) = tu.entity
    updates = entity.trip_update.stop_time_update
    assert [u.stop_sequence for u in updates] == [3, 4]
    assert updates[0].arrival.time == round((now + timedelta(seconds=100)).timestamp())
    assert updates[0].arrival.delay == 60
    assert 0 < updates[0].arrival.uncertainty < updates[1].arrival.uncertainty
    assert entity.trip_update.trip.start_date == "20240501"
    resp = await env.client.get("/gtfs-rt/trip-updates?format=json")
    body = await resp.json()
    assert body["entity"][0]["trip_update"]["trip"]["trip_id"] == "T1"
    assert (await env.client.get("/gtfs-rt/alerts?format=xml")).status == 400


async def test_alerts_only_for_warnings_on_bus_routes(env: Env) -> None:
    await env.bus.publish(WARNING, warning("cong-1", WarningKind.CONGESTION, routes=("R1", "R2")))
    await env.bus.publish(WARNING, warning("cong-2", WarningKind.CONGESTION))
    await wait_for(lambda: len(env.publisher.warnings) == 2)
    alerts = await feed(env, "/gtfs-rt/alerts")
    (entity,) = alerts.entity
    assert entity.id == "cong-1"
    assert [e.route_id for e in entity.alert.informed_entity] == ["R1", "R2"]
    assert entity.alert.effect == rt.Alert.SIGNIFICANT_DELAYS
    texts = {t.language: t.text for t in entity.alert.header_text.translation}
    assert texts == {"zh-CN": "珞喻路严重拥堵", "en": "Severe congestion on Luoyu Road"}


async def test_cap_atom_index_links_valid_cap_documents(env: Env) -> None:
    await env.bus.publish(WARNING, warning("cong-1", WarningKind.CONGESTION))
    await env.bus.publish(WARNING, warning("alarm-1", WarningKind.VEHICLE_ALARM))
    await wait_for(lambda: len(env.publisher.warnings) == 2)
    resp = await env.client.get("/cap/alerts.atom")
    assert resp.status == 200 and resp.content_type == "application/atom+xml"
    root = ET.fromstring(await resp.read())
    entries = root.findall(f"{ATOM}entry")
    assert len(entries) == 1  # the vehicle alarm is for departments only
    link = entries[0].find(f"{ATOM}link")
    assert link is not None and link.get("type") == "application/cap+xml"
    doc = await env.client.get(URL(link.get("href") or "").path)
    assert doc.status == 200 and doc.content_type == "application/cap+xml"
    xml = await doc.read()
    SCHEMA.validate(xml)
    assert b"tti.hubei-transport" in xml and b"cong-1" in xml
    assert (await env.client.get("/cap/alarm-1.xml")).status == 404
    assert (await env.client.get("/cap/nope.xml")).status == 404

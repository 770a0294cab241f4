"""One OASIS CAP 1.2 renderer for every warning (the warning service's API, the public CAP feed).

:func:`render_cap` turns a :class:`~shared.events.Warning` into one ``<alert>`` document (UTF-8,
with an XML declaration), built with ElementTree so every text is escaped.

Message identity, chosen so that a renderer with no store of past messages still numbers and
links them alike on every replica:

- ``identifier`` is ``<prefix>.<warning_id>.<version>`` (the prefix defaults to ``sender``; the
  warning id is percent-encoded where CAP forbids a character). A version's detour and impact
  arrive as a second message of the same version, so a message carrying a detour or an impact
  adds ``.analysis``; an Ack or Error adds ``.ack`` / ``.error``. GB/T 35965.1's own form
  (``ZZZZZZDDDUUUXX_YYYYMMDDhhmmss_N``, see :func:`gb_identifier`) needs a per-unit sequence
  number ``N`` that only a stateful publisher can hand out, so it is offered for such a caller
  (``identifier=``) rather than used by default.
- ``sent`` is the message time, ``updated_at``, except for the Alert itself (version 1), whose
  ``sent`` is ``started_at``: every later message knows that time, so its ``references``
  (``sender,identifier,sent``) name the Alert exactly. Callers that keep the history of sent
  messages pass ``references`` themselves.
- ``msgType``: the warning's ``msg_type``, but Cancel for a cancelled warning and Update for the
  analysis message of version 1 (which follows the Alert rather than repeating it); Ack and
  Error (``msg_type=`` override) need ``references`` and carry no ``info``.

Times are written at +08:00 (Beijing time), whole seconds. Coordinates are WGS-84 with CAP's
latitude-first order; circle radii are in kilometres.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

from shared.events import Area, CapMsgType, Warning, WarningKind, WarningStatus

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
PUBLIC_SENDER = "tti.hubei-transport"
"""The ``sender`` of TTI's public messages: every channel that renders one uses it, so the same
warning version has the same identifier wherever it is fetched."""
PUBLIC_SENDER_NAME = "湖北省交通出行信息服务 TTI"
PUBLIC_SENDER_NAME_EN = "Hubei traffic and travel information (TTI)"
CAP_CONTENT_TYPE = "application/cap+xml"
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
"""The offset every CAP time is written with (GB/T 35965.1: Beijing time, +08:00)."""

_FORBIDDEN_IN_ID = re.compile(r"[\s,<&]")
_ENCODE_IN_ID = re.compile(r"[^!-~]|[,<&%]")
# XML 1.0 characters: anything else (NUL, most C0 controls, lone surrogates, U+FFFE/FFFF)
# cannot appear in a well-formed document, escaped or not.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_EVENT: dict[WarningKind, tuple[str, str]] = {
    WarningKind.CONGESTION: ("交通拥堵", "Traffic congestion"),
    WarningKind.INCIDENT: ("交通事件", "Traffic incident"),
    WarningKind.VEHICLE_ALARM: ("车辆报警", "Vehicle alarm"),
    WarningKind.CLOSURE: ("道路封闭", "Road closure"),
    WarningKind.WEATHER: ("恶劣天气", "Adverse weather"),
}
_CAUSE_EVENT: dict[str, tuple[str, str]] = {
    "severe_congestion": ("严重拥堵", "Severe congestion"),
    "accident": ("交通事故", "Traffic accident"),
    "stopped_vehicle": ("车辆停驶", "Stopped vehicle"),
    "wrong_way": ("车辆逆行", "Wrong-way driver"),
    "fire": ("车辆火情", "Vehicle fire"),
    "pedestrian": ("行人闯入", "Pedestrian on the road"),
    "debris": ("路面遗撒物", "Debris on the road"),
    "fog": ("团雾", "Fog"),
    "ice": ("路面结冰", "Ice on the road"),
    "water": ("路面积水", "Standing water"),
}
_INSTRUCTION: dict[WarningKind, tuple[str, str]] = {
    WarningKind.CONGESTION: ("前方道路拥堵，请减速慢行、保持车距，可选择其他道路绕行。",
                             "Congestion ahead: slow down, keep your distance and consider "
                             "another route."),
    WarningKind.INCIDENT: ("前方发生交通事件，请减速慢行、注意避让，听从现场指挥。",
                           "Incident ahead: slow down, keep clear and follow directions on "
                           "site."),
    WarningKind.VEHICLE_ALARM: ("相关部门正在核查处置，请留意周边车辆动态。",
                                "Departments are checking this alarm: watch the traffic "
                                "around you."),
    WarningKind.CLOSURE: ("道路封闭，请提前选择其他道路绕行。",
                          "Road closed: choose another route in advance."),
    WarningKind.WEATHER: ("恶劣天气影响通行，请降低车速、开启灯光、保持车距。",
                          "Adverse weather: slow down, switch on your lights and keep your "
                          "distance."),
}
_ALL_CLEAR = ("预警解除，道路已恢复通行。", "All clear: the road is passable again.")
_CANCELLED = ("此前发布的预警已取消。", "The earlier warning has been cancelled.")
_AVOID = frozenset({WarningKind.CONGESTION, WarningKind.INCIDENT, WarningKind.CLOSURE})


@dataclass(frozen=True, slots=True, kw_only=True)
class CapReference:
    """One earlier message named in ``references``: CAP's ``sender,identifier,sent``."""

    sender: str
    identifier: str
    sent: datetime

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{cap_time(self.sent)}"


def cap_time(at: datetime) -> str:
    """A CAP ``dateTime``: ``YYYY-MM-DDThh:mm:ss+08:00``, whole seconds (naive means UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(BEIJING).replace(microsecond=0).isoformat()


def gb_identifier(sender_code: str, sent: datetime, sequence: int = 0) -> str:
    """An identifier in GB/T 35965.1's form ``ZZZZZZDDDUUUXX_YYYYMMDDhhmmss_N`` (31 characters).

    ``sender_code`` is the 14-digit unit code (GB/T 2260 division, GB/T 4657 body, internal and
    extension codes); ``sent`` is written in Beijing time; ``sequence`` (0-9) tells apart
    messages of one unit in one second, and must come from the caller's own counter.
    """
    if not re.fullmatch(r"\d{14}", sender_code):
        raise ValueError(f"GB/T 35965.1 sender code must be 14 digits, not {sender_code!r}")
    if not 0 <= sequence <= 9:
        raise ValueError(f"GB/T 35965.1 sequence must be 0-9, not {sequence}")
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    return f"{sender_code}_{sent.astimezone(BEIJING):%Y%m%d%H%M%S}_{sequence}"


def cap_msg_type(warning: Warning) -> CapMsgType:
    """The msgType of the message that carries ``warning`` (see the module's notes)."""
    if warning.status is WarningStatus.CANCELLED:
        return CapMsgType.CANCEL
    if warning.msg_type is CapMsgType.ALERT and _analysed(warning):
        return CapMsgType.UPDATE
    return warning.msg_type


def cap_identifier(warning: Warning, *, prefix: str,
                   msg_type: CapMsgType | None = None) -> str:
    """The identifier of the message that carries ``warning`` (see the module's notes)."""
    _check_id_part("identifier prefix", prefix)
    kind = msg_type or cap_msg_type(warning)
    ident = f"{prefix}.{_id_part(warning.warning_id)}.{warning.version}"
    if _analysed(warning):
        ident += ".analysis"
    if kind is CapMsgType.ACK:
        ident += ".ack"
    elif kind is CapMsgType.ERROR:
        ident += ".error"
    return ident


def cap_sent(warning: Warning, *, msg_type: CapMsgType | None = None) -> datetime:
    """The ``sent`` time of the message that carries ``warning``: the Alert's is started_at."""
    kind = msg_type or cap_msg_type(warning)
    if kind is CapMsgType.ALERT and warning.version == 1:
        return warning.started_at
    return warning.updated_at


def message_reference(warning: Warning, *, sender: str,
                      identifier_prefix: str | None = None) -> CapReference:
    """A reference to the message :func:`render_cap` makes of ``warning`` (e.g. for an Ack)."""
    prefix = identifier_prefix or sender
    return CapReference(sender=sender, identifier=cap_identifier(warning, prefix=prefix),
                        sent=cap_sent(warning))


def alert_reference(warning: Warning, *, sender: str,
                    identifier_prefix: str | None = None) -> CapReference:
    """A reference to the warning's first message, the Alert of version 1."""
    prefix = identifier_prefix or sender
    _check_id_part("identifier prefix", prefix)
    return CapReference(sender=sender, identifier=f"{prefix}.{_id_part(warning.warning_id)}.1",
                        sent=warning.started_at)


def render_cap(
    warning: Warning,
    *,
    sender: str,
    sender_name: str = "",
    sender_name_en: str = "",
    identifier_prefix: str | None = None,
    identifier: str | None = None,
    msg_type: CapMsgType | None = None,
    references: Sequence[CapReference] | None = None,
    sent: datetime | None = None,
    restriction: str | None = None,
    code: Sequence[str] = (),
    note: str | None = None,
    web: str | None = None,
) -> bytes:
    """``warning`` as one CAP 1.2 ``<alert>`` (UTF-8 bytes with an XML declaration).

    ``sender`` identifies the originator (a domain name, no spaces, commas, ``<`` or ``&``);
    ``identifier_prefix`` defaults to it. ``msg_type`` overrides the derived one (Ack, Error:
    ``references`` then required); ``references`` override the derived one (the Alert, for an
    Update or Cancel of version 2 on). ``restriction`` makes the scope Restricted (department-only
    messages). ``sent`` overrides the message time (an Ack's own time). ``code`` are CAP
    ``code`` values (profiles), ``note`` a free note, ``web`` a URL about the warning.
    """
    _check_id_part("sender", sender)
    kind = msg_type or cap_msg_type(warning)
    prefix = identifier_prefix or sender
    ident = identifier or cap_identifier(warning, prefix=prefix, msg_type=kind)
    _check_id_part("identifier", ident)
    if references is None:
        references = ([alert_reference(warning, sender=sender, identifier_prefix=prefix)]
                      if kind in (CapMsgType.UPDATE, CapMsgType.CANCEL)
                      and (warning.version > 1 or _analysed(warning)) else [])
    refs = [r for r in references if r.identifier != ident or r.sender != sender]
    for r in refs:
        _check_id_part("reference sender", r.sender)
        _check_id_part("reference identifier", r.identifier)
    if kind in (CapMsgType.ACK, CapMsgType.ERROR) and not refs:
        raise ValueError(f"a CAP {kind} message needs references to the message(s) it answers")

    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", ident)
    _sub(alert, "sender", sender)
    _sub(alert, "sent", cap_time(sent or cap_sent(warning, msg_type=kind)))
    _sub(alert, "status", "Actual")
    _sub(alert, "msgType", kind.value)
    _sub(alert, "scope", "Restricted" if restriction else "Public")
    if restriction:
        _sub(alert, "restriction", restriction)
    for c in code:
        _sub(alert, "code", c)
    if note:
        _sub(alert, "note", note)
    if refs:
        _sub(alert, "references", " ".join(str(r) for r in refs))
    _sub(alert, "incidents", _id_part(warning.warning_id))
    if kind not in (CapMsgType.ACK, CapMsgType.ERROR):
        _info(alert, warning, "zh-CN", sender_name=sender_name, web=web)
        if warning.headline_en or warning.description_en:
            _info(alert, warning, "en-US", sender_name=sender_name_en or sender_name, web=web)
    ET.indent(alert)
    body = ET.tostring(alert, encoding="utf-8", xml_declaration=False,
                       default_namespace=CAP_NS)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


# --- info ------------------------------------------------------------------------------------


def _info(alert: ET.Element, w: Warning, language: str, *, sender_name: str,
          web: str | None) -> None:
    en = language != "zh-CN"
    info = _sub(alert, "info")
    _sub(info, "language", language)
    _sub(info, "category", w.category.value)
    _sub(info, "event", _event_name(w)[en])
    _sub(info, "responseType", _response_type(w))
    _sub(info, "urgency", w.urgency.value)
    _sub(info, "severity", w.severity.value)
    _sub(info, "certainty", w.certainty.value)
    _value(info, "eventCode", "TTI:kind", w.kind.value)
    if w.cause:
        _value(info, "eventCode", "TTI:cause", w.cause)
    gb_class = w.details.get("gbt29100_code")
    if isinstance(gb_class, str | int) and str(gb_class):
        _value(info, "eventCode", "GB/T 29100", str(gb_class))
    _sub(info, "effective", cap_time(w.updated_at))
    _sub(info, "onset", cap_time(w.started_at))
    # An expected end already past would make consumers drop a warning that is still on.
    if w.expected_end is not None and w.active and w.expected_end > w.updated_at:
        _sub(info, "expires", cap_time(w.expected_end))
    if sender_name:
        _sub(info, "senderName", sender_name)
    headline = w.headline_en if en else w.headline
    if headline:
        _sub(info, "headline", headline)
    description = w.description_en if en else w.description
    if description:
        _sub(info, "description", description)
    _sub(info, "instruction", _instruction(w)[en])
    if web:
        _sub(info, "web", web)
    for name, value in _parameters(w):
        _value(info, "parameter", name, value)
    _area(info, w)


def _event_name(w: Warning) -> tuple[str, str]:
    return _CAUSE_EVENT.get(w.cause) or _EVENT[w.kind]


def _response_type(w: Warning) -> str:
    if not w.active:
        return "AllClear"
    return "Avoid" if w.kind in _AVOID else "Monitor"


def _instruction(w: Warning) -> tuple[str, str]:
    if w.status is WarningStatus.CANCELLED:
        return _CANCELLED
    if not w.active:
        return _ALL_CLEAR
    zh, en = _INSTRUCTION[w.kind]
    d = w.detour
    if d is None:
        return zh, en
    km, minutes = d.length_m / 1000.0, _minutes(d.travel_time_s)
    usual = _minutes(d.usual_travel_time_s)
    return (f"绕行：请按推荐绕行路线行驶，全程约 {km:.1f} 公里，预计 {minutes} 分钟"
            f"（平时约 {usual} 分钟）。{zh}",
            f"Detour: take the recommended detour, about {km:.1f} km and {minutes} min "
            f"(usually {usual} min). {en}")


def _minutes(seconds: float) -> int:
    return max(1, round(seconds / 60.0)) if math.isfinite(seconds) else 0


def _parameters(w: Warning) -> list[tuple[str, str]]:
    out = [("warning_id", w.warning_id), ("version", str(w.version)),
           ("warning_status", w.status.value)]
    if w.segment_ids:
        out.append(("segment_ids", " ".join(w.segment_ids)))
    if w.level is not None:
        out.append(("level", str(w.level)))
    if w.speed_kmh is not None and math.isfinite(w.speed_kmh):
        out.append(("speed_kmh", _num(w.speed_kmh, 1)))
    if w.ended_at is not None:
        out.append(("ended_at", cap_time(w.ended_at)))
    ended_because = w.details.get("ended_because")
    if isinstance(ended_because, str) and ended_because:
        out.append(("ended_because", ended_because))
    if w.detour is not None:
        d = w.detour
        out += [("detour_length_m", _num(d.length_m, 0)),
                ("detour_travel_time_s", _num(d.travel_time_s, 0)),
                ("detour_usual_travel_time_s", _num(d.usual_travel_time_s, 0))]
        if d.segment_ids:
            out.append(("detour_segment_ids", " ".join(d.segment_ids)))
    if w.impact is not None:
        i = w.impact
        out += [("impact_trips_affected", str(i.trips_affected)),
                ("impact_trips_sampled", str(i.trips_sampled)),
                ("impact_max_delay_s", _num(i.max_delay_s, 0)),
                ("impact_computed_at", cap_time(i.computed_at))]
        if i.bus_routes:
            out.append(("impact_bus_routes", " ".join(i.bus_routes)))
    return out


# --- area ------------------------------------------------------------------------------------


def _area(info: ET.Element, w: Warning) -> None:
    a: Area | None = w.area
    label = "、".join(n for n in w.road_names if n)
    polygon = _polygon(a.polygon) if a is not None else None
    circle = _circle(a.circle) if a is not None and a.circle is not None else None
    if a is None and w.lon is not None and w.lat is not None:
        circle = _circle((w.lon, w.lat, 0.0))  # a point: CAP's circle of radius 0
    desc = (a.description if a is not None else "") or label
    if not desc and polygon is None and circle is None:
        return
    area = _sub(info, "area")
    _sub(area, "areaDesc", desc or "—")
    if polygon is not None:
        _sub(area, "polygon", polygon)
    if circle is not None:
        _sub(area, "circle", circle)


def _polygon(ring: Sequence[tuple[float, float]]) -> str | None:
    """CAP polygon ``lat,lon lat,lon …``, closed, at least 4 pairs; None if not a polygon."""
    pairs: list[str] = []
    for lon, lat in ring:
        if not _on_earth(lon, lat):
            return None
        pair = f"{_num(lat, 6)},{_num(lon, 6)}"
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)
    if pairs and pairs[0] != pairs[-1]:
        pairs.append(pairs[0])
    return " ".join(pairs) if len(set(pairs)) >= 3 and len(pairs) >= 4 else None


def _circle(circle: tuple[float, float, float]) -> str | None:
    """CAP circle ``lat,lon radius_km``; None if it is not on the earth."""
    lon, lat, radius_m = circle
    if not _on_earth(lon, lat) or not (math.isfinite(radius_m) and radius_m >= 0):
        return None
    return f"{_num(lat, 6)},{_num(lon, 6)} {_num(radius_m / 1000.0, 3)}"


def _on_earth(lon: float, lat: float) -> bool:
    return (math.isfinite(lon) and math.isfinite(lat)
            and -180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0)


# --- helpers ---------------------------------------------------------------------------------


def _analysed(w: Warning) -> bool:
    """Whether the message carries a detour or impact (the second message of its version)."""
    return w.detour is not None or w.impact is not None


def _num(x: float, places: int) -> str:
    """A decimal with at most ``places`` digits after the point, no exponent, no ``-0``."""
    s = f"{x:.{places}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _id_part(text: str) -> str:
    """``text`` with what CAP forbids in identifiers (space, comma, ``<``, ``&``) encoded."""
    # Percent-encoding only when needed keeps ordinary ids readable, and stays one-to-one: an
    # encoded id holds a "%", which an id left as it is never does.
    return quote(text, safe="-._~:@!$'()*+;=/") if _ENCODE_IN_ID.search(text) else text


def _check_id_part(what: str, text: str) -> None:
    if not text or _FORBIDDEN_IN_ID.search(text) or _NOT_XML.search(text):
        raise ValueError(f"CAP {what} may not be empty or hold spaces, commas, < or &: {text!r}")


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        el.text = _NOT_XML.sub("", text)
    return el


def _value(parent: ET.Element, tag: str, name: str, value: str) -> None:
    el = _sub(parent, tag)
    _sub(el, "valueName", name)
    _sub(el, "value", value)

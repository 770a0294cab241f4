"""0x0200 location report, its extra items, alarm/status bit tables, and 0x0704 batch upload.

Values stay raw (latitude in 1e-6 degrees, speed in 0.1 km/h, time as BCD digits in GMT+8);
properties and helpers convert. Extra items are kept in wire order as ``(item_id, value)``
pairs so a report re-encodes byte for byte; an item whose id we do not know, or whose length
does not match its id, keeps its raw value bytes.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.jt808._fast import fast_constructor
from shared.jt808.bcd import GMT8, bcd_time_to_datetime, bcd_time_to_utc
from shared.jt808.errors import BodyError, EncodeError

# --- alarm and status bits (digest section 4) -------------------------------------------------

ALARM_BITS_2013: dict[int, str] = {
    0: "emergency",
    1: "overspeed",
    2: "fatigue_driving",
    3: "danger_warning",
    4: "gnss_module_fault",
    5: "gnss_antenna_cut",
    6: "gnss_antenna_short",
    7: "power_undervoltage",
    8: "power_lost",
    9: "lcd_fault",
    10: "tts_fault",
    11: "camera_fault",
    12: "ic_card_module_fault",
    13: "overspeed_warning",
    14: "fatigue_driving_warning",
    18: "daily_driving_time_exceeded",
    19: "parked_too_long",
    20: "area_in_out",
    21: "route_in_out",
    22: "road_section_time_abnormal",
    23: "route_deviation",
    24: "vss_fault",
    25: "fuel_abnormal",
    26: "vehicle_stolen",
    27: "illegal_ignition",
    28: "illegal_movement",
    29: "collision_warning",
    30: "rollover_warning",
    31: "illegal_door_open",
}
"""Alarm flag bit -> name, JT/T 808-2013 (2011 is the same). Unlisted bits are reserved."""

ALARM_BITS_2019: dict[int, str] = {
    **{bit: name for bit, name in ALARM_BITS_2013.items() if bit != 31},
    3: "dangerous_driving",
    15: "illegal_driving",
    16: "tyre_pressure_warning",
    17: "right_turn_blind_zone",
    29: "collision_rollover",
}
"""Alarm flag bit -> name, JT/T 808-2019 (bit 31 became reserved)."""

ALARM_ACK_MASK_2013 = sum(1 << b for b in (0, 3, 20, 21, 22, 27, 28, 31))
"""Alarm bits the terminal clears only once the platform's 0x8001 arrives (2013)."""

ALARM_ACK_MASK_2019 = sum(1 << b for b in (0, 20, 21, 22, 27, 28))
"""2019: the digest marks no acknowledgement for the redefined bit 3, and bit 31 is reserved."""

STATUS_BITS_2013: dict[int, str] = {
    0: "acc_on",
    1: "positioned",
    2: "south_latitude",
    3: "west_longitude",
    4: "out_of_service",
    5: "coordinates_encrypted",
    10: "fuel_circuit_cut",
    11: "electric_circuit_cut",
    12: "doors_locked",
    13: "door1_open",
    14: "door2_open",
    15: "door3_open",
    16: "door4_open",
    17: "door5_open",
    18: "gps",
    19: "beidou",
    20: "glonass",
    21: "galileo",
}
"""Status bit -> name (2013). Bits 8-9 are the load state, see :func:`load_state`."""

STATUS_BITS_2019: dict[int, str] = {
    **STATUS_BITS_2013,
    6: "aeb_forward_collision_warning",
    7: "lane_departure_warning",
    22: "vehicle_moving",
}
"""Status bit -> name (2019 adds bits 6, 7 and 22)."""

STATUS_LOAD_MASK = 0x300
LOAD_STATES = {0: "empty", 1: "half", 2: "reserved", 3: "full"}

VEHICLE_SIGNAL_BITS: dict[int, str] = {
    0: "low_beam",
    1: "high_beam",
    2: "right_turn_signal",
    3: "left_turn_signal",
    4: "brake",
    5: "reverse",
    6: "fog_light",
    7: "clearance_lamps",
    8: "horn",
    9: "air_conditioner",
    10: "neutral",
    11: "retarder",
    12: "abs",
    13: "heater",
    14: "clutch",
}
"""Extra item 0x25 (extended vehicle signals) bit -> name."""

IO_STATUS_BITS: dict[int, str] = {0: "deep_sleep", 1: "sleep"}
"""Extra item 0x2A (IO status) bit -> name."""


def bit_names(value: int, table: dict[int, str]) -> list[str]:
    """Names of the set bits of ``value``, lowest bit first; unknown bits as ``reserved_<n>``."""
    names = []
    bit = 0
    while value:
        if value & 1:
            names.append(table.get(bit) or f"reserved_{bit}")
        value >>= 1
        bit += 1
    return names


def alarm_names(alarm: int, version: int = 2013) -> list[str]:
    """Names of the set alarm bits; bit 0 (emergency / SOS) comes first when set."""
    return bit_names(alarm, ALARM_BITS_2019 if version == 2019 else ALARM_BITS_2013)


def status_names(status: int, version: int = 2013) -> list[str]:
    """Names of the set single-bit status flags (the load state is not among them)."""
    table = STATUS_BITS_2019 if version == 2019 else STATUS_BITS_2013
    return bit_names(status & ~STATUS_LOAD_MASK, table)


def load_state(status: int) -> str:
    """Status bits 8-9: ``empty``, ``half``, ``full`` (or ``reserved`` for 10)."""
    return LOAD_STATES[(status & STATUS_LOAD_MASK) >> 8]


def carriage_temperature_c(raw: int) -> int:
    """Extra item 0x06 (2019) in °C: the top bit is a sign, not two's complement."""
    return -(raw & 0x7FFF) if raw & 0x8000 else raw


def analog_inputs(raw: int) -> tuple[int, int]:
    """Extra item 0x2B as ``(ad0, ad1)``: AD0 is bits 0-15, AD1 bits 16-31."""
    return raw & 0xFFFF, raw >> 16


# --- extra items --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeedingExtra:
    """Extra item 0x11: where a speeding alarm happened (1 byte, or 5 when typed)."""

    area_type: int
    """0 none, 1 circle, 2 rectangle, 3 polygon, 4 road section."""
    area_id: int | None = None
    """Area or section id; None when the item is the 1-byte form."""


@dataclass(frozen=True, slots=True)
class AreaRouteExtra:
    """Extra item 0x12: entering or leaving an area or route."""

    area_type: int
    area_id: int
    direction: int
    """0 in, 1 out."""


@dataclass(frozen=True, slots=True)
class RouteTimeExtra:
    """Extra item 0x13: road-section driving time too short or too long."""

    route_id: int
    drive_time_s: int
    result: int
    """0 too short, 1 too long."""


ExtraValue = int | bytes | SpeedingExtra | AreaRouteExtra | RouteTimeExtra
"""An extra item's value: int for numeric items, a dataclass for 0x11-0x13, bytes if raw."""

ExtraItem = tuple[int, ExtraValue]
"""``(item_id, value)``; a plain tuple because a report carries many and they must be cheap."""

INT_EXTRA_WIDTHS: dict[int, int] = {
    0x01: 4,  # odometer, 0.1 km
    0x02: 2,  # fuel, 0.1 L
    0x03: 2,  # driving-recorder speed, 0.1 km/h
    0x04: 2,  # id of an alarm event needing manual confirmation
    0x06: 2,  # 2019 carriage temperature, sign-magnitude °C (carriage_temperature_c)
    0x25: 4,  # extended vehicle signals (VEHICLE_SIGNAL_BITS)
    0x2A: 2,  # IO status (IO_STATUS_BITS)
    0x2B: 4,  # analogue inputs, raw DWORD (analog_inputs)
    0x30: 1,  # wireless signal strength
    0x31: 1,  # number of GNSS satellites
}
"""Numeric extra items and their value width in bytes."""

_U32 = struct.Struct(">I")
_AREA = struct.Struct(">BIB")
_ROUTE = struct.Struct(">IHB")


# Built on the decode path of every report that carries them, so skip the slow frozen __init__.
_make_speeding = fast_constructor(SpeedingExtra)
_make_area = fast_constructor(AreaRouteExtra)
_make_route = fast_constructor(RouteTimeExtra)


def _speeding(raw: bytes) -> SpeedingExtra:
    return _make_speeding(raw[0], _U32.unpack_from(raw, 1)[0] if len(raw) == 5 else None)


def _area(raw: bytes) -> AreaRouteExtra:
    return _make_area(*_AREA.unpack(raw))


def _route(raw: bytes) -> RouteTimeExtra:
    return _make_route(*_ROUTE.unpack(raw))


_INT_UNPACKERS = {1: struct.Struct(">B").unpack_from, 2: struct.Struct(">H").unpack_from,
                  4: struct.Struct(">I").unpack_from}

# Keyed by (item_id << 8 | length), so one lookup checks both the id and the length; an item
# whose length does not fit its id is kept raw rather than misread.
_INT_DECODERS: dict[int, Callable[[bytes, int], tuple[int]]] = {
    (item_id << 8) | width: _INT_UNPACKERS[width] for item_id, width in INT_EXTRA_WIDTHS.items()
}
_STRUCT_DECODERS: dict[int, Callable[[bytes], ExtraValue]] = {
    0x1101: _speeding,
    0x1105: _speeding,
    0x1206: _area,
    0x1307: _route,
}


def _encode_structured_extra(item_id: int, value: ExtraValue) -> bytes:
    if isinstance(value, SpeedingExtra) and item_id == 0x11:
        if value.area_id is None:
            return bytes((value.area_type,))
        return bytes((value.area_type,)) + _U32.pack(value.area_id)
    if isinstance(value, AreaRouteExtra) and item_id == 0x12:
        return _AREA.pack(value.area_type, value.area_id, value.direction)
    if isinstance(value, RouteTimeExtra) and item_id == 0x13:
        return _ROUTE.pack(value.route_id, value.drive_time_s, value.result)
    raise EncodeError("bad_value", f"{type(value).__name__} is not a value for 0x{item_id:02X}")


def _encode_extra(item_id: int, value: ExtraValue) -> bytes:
    if not 0 <= item_id <= 0xFF:
        raise EncodeError("bad_value", f"extra item id {item_id} outside 0..255")
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, int):
        width = INT_EXTRA_WIDTHS.get(item_id)
        if width is None:
            raise EncodeError("bad_value", f"extra item 0x{item_id:02X} is not numeric; use bytes")
        if not 0 <= value < 1 << (8 * width):
            raise EncodeError("bad_value", f"extra item 0x{item_id:02X} value {value} too big")
        data = value.to_bytes(width, "big")
    else:
        try:
            data = _encode_structured_extra(item_id, value)
        except (struct.error, ValueError) as exc:
            raise EncodeError("bad_value", f"extra item 0x{item_id:02X}: {exc}") from exc
    if len(data) > 0xFF:
        raise EncodeError("bad_value", f"extra item 0x{item_id:02X} longer than 255 bytes")
    return bytes((item_id, len(data))) + data


# --- 0x0200 ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocationReport:
    """0x0200 location report body (also each item of a 0x0704 batch).

    ``lat_e6``/``lon_e6`` are unsigned magnitudes in 1e-6 degrees (hemisphere in status bits
    2/3), ``speed_0_1kmh`` is in 0.1 km/h, ``time_bcd`` the 12 BCD digits ``YYMMDDhhmmss`` in
    GMT+8. ``trailing`` keeps bytes after the last complete extra item (a vendor item whose
    length runs past the body) instead of failing the whole report.
    """

    alarm: int
    status: int
    lat_e6: int
    lon_e6: int
    altitude_m: int
    speed_0_1kmh: int
    direction_deg: int
    time_bcd: str
    extras: tuple[ExtraItem, ...] = ()
    trailing: bytes = b""

    @property
    def lat_deg(self) -> float:
        """Signed latitude in degrees (south negative)."""
        return -self.lat_e6 / 1e6 if self.status & 0x4 else self.lat_e6 / 1e6

    @property
    def lon_deg(self) -> float:
        """Signed longitude in degrees (west negative)."""
        return -self.lon_e6 / 1e6 if self.status & 0x8 else self.lon_e6 / 1e6

    @property
    def speed_kmh(self) -> float:
        """GNSS speed in km/h."""
        return self.speed_0_1kmh / 10

    @property
    def acc_on(self) -> bool:
        """Status bit 0: ignition (ACC) on."""
        return bool(self.status & 0x1)

    @property
    def positioned(self) -> bool:
        """Status bit 1: the GNSS fix is valid."""
        return bool(self.status & 0x2)

    @property
    def coordinates_in_range(self) -> bool:
        """Latitude within 90° and longitude within 180° (test data from some libraries is not)."""
        return self.lat_e6 <= 90_000_000 and self.lon_e6 <= 180_000_000

    @property
    def load_state(self) -> str:
        """Load from status bits 8-9: empty, half, full or reserved."""
        return load_state(self.status)

    def time_local(self) -> datetime:
        """GNSS time as an aware GMT+8 datetime; ``BodyError("bad_time")`` if not a real time."""
        return bcd_time_to_datetime(self.time_bcd, GMT8)

    def time_utc(self) -> datetime:
        """GNSS time as an aware UTC datetime; ``BodyError("bad_time")`` if not a real time."""
        return bcd_time_to_utc(self.time_bcd, GMT8)

    def alarm_flags(self, version: int = 2013) -> list[str]:
        """Names of the set alarm bits, emergency / SOS first (see :data:`ALARM_BITS_2013`)."""
        return alarm_names(self.alarm, version)

    def status_flags(self, version: int = 2013) -> list[str]:
        """Names of the set status bits (load state excluded, see :attr:`load_state`)."""
        return status_names(self.status, version)

    def find_extra(self, item_id: int) -> ExtraValue | None:
        """Value of the first extra item with ``item_id``, or None."""
        for got, value in self.extras:
            if got == item_id:
                return value
        return None


_make_location = fast_constructor(LocationReport)
_BASIC = struct.Struct(">IIIIHHH6s")


# Layout cache: a fleet sends the same extra items (ids and lengths) in report after report, so
# for each body length we remember the first item layout seen that holds only numeric and raw
# items. A report of that length whose item id/length bytes all match is then decoded with one
# itemgetter (to check those bytes) and one precompiled struct for every value, instead of a
# Python loop per item: ~2x faster on a typical report. The check covers every id and length
# byte the loop would read, so the result is identical; any mismatch takes the loop.
_Layout = tuple[Callable[[bytes], tuple[int, ...]], tuple[int, ...],
                Callable[[bytes, int], tuple[int | bytes, ...]], tuple[int, ...]]
_LAYOUTS: dict[int, _Layout] = {}
_MAX_LAYOUTS = 512  # bounded: at most one per body length anyway
_INT_CODES = {1: "B", 2: "H", 4: "I"}


def _remember_layout(body: bytes, items: list[ExtraItem]) -> None:
    positions: list[int] = []
    expected: list[int] = []
    fmt = [">"]
    pos = 28
    for item_id, value in items:
        size = body[pos + 1]
        if isinstance(value, int):
            fmt.append("2x" + _INT_CODES[size])
        elif isinstance(value, bytes):
            fmt.append(f"2x{size}s")
        else:
            return  # structured items (0x11-0x13) are rare: leave them to the loop
        positions += (pos, pos + 1)
        expected += (item_id, size)
        pos += 2 + size
    _LAYOUTS[len(body)] = (operator.itemgetter(*positions), tuple(expected),
                           struct.Struct("".join(fmt)).unpack_from,
                           tuple(item_id for item_id, _ in items))


def decode_location(body: bytes) -> LocationReport:
    """Decode a 0x0200 body: the 28-byte basic block, then extra items to the end."""
    n = len(body)
    if n < 28:
        raise BodyError("truncated", f"location body of {n} bytes, need 28")
    alarm, status, lat, lon, alt, speed, direction, raw_time = _BASIC.unpack_from(body)
    time_bcd = raw_time.hex()
    if not time_bcd.isdigit():
        raise BodyError("bad_bcd", f"location time {time_bcd} has a non-decimal nibble")
    if n == 28:
        return _make_location(alarm, status, lat, lon, alt, speed, direction, time_bcd, (), b"")
    layout = _LAYOUTS.get(n)
    if layout is not None:
        check, expected, values_of, ids = layout
        if check(body) == expected:
            return _make_location(alarm, status, lat, lon, alt, speed, direction, time_bcd,
                                  tuple(zip(ids, values_of(body, 28), strict=True)), b"")
    items: list[ExtraItem] = []
    append = items.append
    int_decoders = _INT_DECODERS
    struct_decoders = _STRUCT_DECODERS
    pos = 28
    # Always step by the item's own length byte, even for known ids (digest section 4).
    while pos + 2 <= n:
        item_id = body[pos]
        size = body[pos + 1]
        start = pos + 2
        pos = start + size
        if pos > n:
            pos = start - 2
            break
        key = (item_id << 8) | size
        unpack = int_decoders.get(key)
        if unpack is not None:
            append((item_id, unpack(body, start)[0]))
        else:
            decoder = struct_decoders.get(key)
            value = body[start:pos]
            append((item_id, value if decoder is None else decoder(value)))
    if pos < n:
        trailing = body[pos:]
    else:
        trailing = b""
        if layout is None and len(_LAYOUTS) < _MAX_LAYOUTS:
            _remember_layout(body, items)
    return _make_location(alarm, status, lat, lon, alt, speed, direction, time_bcd,
                          tuple(items), trailing)


def encode_location(report: LocationReport) -> bytes:
    """Body bytes of ``report`` (extras in their order, then ``trailing``)."""
    r = report
    time_bcd = r.time_bcd
    if len(time_bcd) != 12 or not (time_bcd.isascii() and time_bcd.isdigit()):
        raise EncodeError("bad_value", f"time_bcd must be 12 decimal digits: {time_bcd!r}")
    try:
        out = _BASIC.pack(r.alarm, r.status, r.lat_e6, r.lon_e6, r.altitude_m, r.speed_0_1kmh,
                          r.direction_deg, bytes.fromhex(time_bcd))
    except struct.error as exc:
        raise EncodeError("bad_value", f"location field out of range: {exc}") from exc
    if r.extras:
        out += b"".join([_encode_extra(item_id, value) for item_id, value in r.extras])
    return out + r.trailing


# --- 0x0704 ----------------------------------------------------------------------------------

BATCH_NORMAL = 0
BATCH_BLIND_ZONE = 1
"""0x0704 type 1: points stored while offline (blind zone), sent late and out of order."""

_U16 = struct.Struct(">H")
_BATCH_HEAD = struct.Struct(">HB")


@dataclass(frozen=True, slots=True)
class BatchLocationUpload:
    """0x0704 batch of location reports; ``batch_type`` 0 normal, 1 blind-zone re-upload."""

    batch_type: int
    items: tuple[LocationReport, ...]

    @property
    def count(self) -> int:
        """Number of reports (the count WORD on the wire)."""
        return len(self.items)


def decode_batch(body: bytes) -> BatchLocationUpload:
    """Decode a 0x0704 body: count WORD, type BYTE, then count x (length WORD + 0x0200 body)."""
    n = len(body)
    if n < 3:
        raise BodyError("truncated", f"batch body of {n} bytes, need 3")
    count, batch_type = _BATCH_HEAD.unpack_from(body)
    items = []
    pos = 3
    for index in range(count):
        if pos + 2 > n:
            raise BodyError("truncated", f"batch ends before item {index + 1} of {count}")
        size = _U16.unpack_from(body, pos)[0]
        pos += 2
        if pos + size > n:
            raise BodyError("truncated", f"batch item {index + 1} runs past the body")
        items.append(decode_location(body[pos : pos + size]))
        pos += size
    if pos != n:
        raise BodyError("length_mismatch", f"{n - pos} bytes after the {count} batch items")
    return BatchLocationUpload(batch_type, tuple(items))


def encode_batch(batch: BatchLocationUpload) -> bytes:
    """Body bytes of a 0x0704 batch."""
    if len(batch.items) > 0xFFFF or not 0 <= batch.batch_type <= 0xFF:
        raise EncodeError("bad_value", "batch count or type out of range")
    parts = [_BATCH_HEAD.pack(len(batch.items), batch.batch_type)]
    for item in batch.items:
        data = encode_location(item)
        if len(data) > 0xFFFF:
            raise EncodeError("bad_value", "batch item longer than 65535 bytes")
        parts.append(_U16.pack(len(data)) + data)
    return b"".join(parts)

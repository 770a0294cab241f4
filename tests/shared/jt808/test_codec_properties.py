"""Property tests: decode(encode(x)) == x for every message and version; garbage never crashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.jt808 import (
    BODY_TYPES,
    ERROR_KINDS,
    INT_EXTRA_WIDTHS,
    VERSIONS,
    AlarmConfirm,
    AreaRouteExtra,
    BatchLocationUpload,
    Body,
    BodyError,
    CameraShot,
    DriverIdentity,
    EncodeError,
    FrameSplitter,
    Header,
    Heartbeat,
    Jt808Error,
    LocationReport,
    MultimediaEventInfo,
    ParameterReply,
    PlatformGeneralResponse,
    PositionQuery,
    PositionReply,
    QueryParameters,
    QueryServerTime,
    RegisterResponse,
    ResendRequest,
    RouteTimeExtra,
    ServerTimeReply,
    SetParameters,
    SpeedingExtra,
    TerminalAuth,
    TerminalGeneralResponse,
    TerminalLogout,
    TerminalParameter,
    TerminalRegister,
    TextMessage,
    Version,
    bcd_time_to_datetime,
    datetime_to_bcd_time,
    decode_body,
    decode_frame,
    decode_header,
    decode_location,
    encode_body,
    encode_header,
    encode_location,
    encode_message,
)
from shared.jt808 import location as location_module
from tests.shared.jt808 import all_vectors

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
digits = st.text("0123456789", min_size=12, max_size=12)

# Printable ASCII plus province characters: every one encodes in GBK to bytes >= 0x20.
ALPHABET = [chr(c) for c in range(0x20, 0x7F)] + list("粤测京沪津渝冀豫云辽黑湘皖鲁新苏浙赣鄂"
                                                      "桂甘晋蒙陕吉闽贵青藏川宁琼")


def gbk_text(max_bytes: int) -> st.SearchStrategy[str]:
    """Text without NUL that fits ``max_bytes`` once GBK-encoded."""
    return st.text(ALPHABET, max_size=max_bytes).filter(
        lambda s: len(s.encode("gbk")) <= max_bytes)


def phone(version: int) -> st.SearchStrategy[str]:
    """Full-width phone digits for the version's header."""
    width = 20 if version == 2019 else 12
    return st.text("0123456789", min_size=width, max_size=width)


# --- location reports ---------------------------------------------------------------------------

KNOWN_ITEM_KEYS = {(i << 8) | w for i, w in INT_EXTRA_WIDTHS.items()} | {0x1101, 0x1105, 0x1206,
                                                                         0x1307}
int_items = st.sampled_from(sorted(INT_EXTRA_WIDTHS.items())).flatmap(
    lambda iw: st.tuples(st.just(iw[0]), st.integers(0, (1 << (8 * iw[1])) - 1)))
raw_items = st.tuples(u8, st.binary(max_size=40)).filter(
    lambda t: (t[0] << 8) | len(t[1]) not in KNOWN_ITEM_KEYS)
extra_items: st.SearchStrategy[tuple[int, Any]] = st.one_of(
    int_items,
    raw_items,
    st.tuples(st.just(0x11), st.builds(SpeedingExtra, u8, st.none() | u32)),
    st.tuples(st.just(0x12), st.builds(AreaRouteExtra, u8, u32, u8)),
    st.tuples(st.just(0x13), st.builds(RouteTimeExtra, u32, u16, u8)),
)
# Bytes after the last item that cannot form an item: one byte, or an item running past the end.
trailing = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.tuples(u8, st.integers(1, 255)).flatmap(
        lambda t: st.binary(max_size=min(t[1] - 1, 20)).map(lambda d: bytes(t) + d)),
)
locations = st.builds(
    LocationReport, u32, u32, u32, u32, u16, u16, u16, digits,
    st.lists(extra_items, max_size=8).map(tuple), trailing,
)


# --- every body, per version --------------------------------------------------------------------


def registers(version: int, colors: st.SearchStrategy[int] = u8,
              ) -> st.SearchStrategy[TerminalRegister]:
    """0x0100 bodies in the version's widths."""
    maker_w, model_w, tid_w = {2011: (5, 8, 7), 2013: (5, 20, 7), 2019: (11, 30, 30)}[version]
    return st.builds(TerminalRegister, u16, u16, gbk_text(maker_w), gbk_text(model_w),
                     gbk_text(tid_w), colors, gbk_text(30))


def auths(version: int) -> st.SearchStrategy[TerminalAuth]:
    """0x0102 bodies: bare code before 2019."""
    if version != 2019:
        return st.builds(TerminalAuth, gbk_text(60))
    return st.builds(TerminalAuth, gbk_text(255), gbk_text(15), gbk_text(20))


def texts(version: int) -> st.SearchStrategy[TextMessage]:
    """0x8300 bodies: the 2019 layout has a text type byte, the older ones none."""
    text_type = u8 if version == 2019 else st.none()
    return st.builds(TextMessage, u8, gbk_text(300), text_type)


def driver_identities(version: int) -> st.SearchStrategy[DriverIdentity]:
    """0x0702 bodies in the version's layout, cut after any of their optional parts."""
    if version == 2011:
        return st.builds(DriverIdentity, driver_name=gbk_text(40), driver_id=gbk_text(20),
                         qualification_code=gbk_text(40), issuing_agency=gbk_text(60))
    date = st.text("0123456789", min_size=8, max_size=8)
    card = st.builds(DriverIdentity, u8, digits, u8, gbk_text(40), gbk_text(20), gbk_text(60),
                     date, gbk_text(20) if version == 2019 else st.none())
    return st.one_of(
        st.builds(DriverIdentity, u8, digits),
        st.builds(DriverIdentity, u8, digits, u8),
        card,
    )


def _params(with_serial: bool) -> st.SearchStrategy[Any]:
    items = st.lists(st.builds(TerminalParameter, u32, st.binary(max_size=30)), max_size=8)

    def build(params: list[TerminalParameter], declared: int | None, serial: int) -> Any:
        if declared == len(params):
            declared = None  # the decoder says "as many as the items" this way
        if with_serial:
            return ParameterReply(serial, tuple(params), declared)
        return SetParameters(tuple(params), declared)
    return st.builds(build, items, st.none() | u8, u16)


def bodies(version: int) -> st.SearchStrategy[tuple[int, Body]]:
    """(msg_id, body) for every message type the codec encodes."""
    max_ids = 255 if version != 2019 else 509
    resend = st.builds(ResendRequest, u16, st.lists(u16, max_size=min(max_ids, 40)).map(tuple))
    cases: list[st.SearchStrategy[tuple[int, Any]]] = [
        st.tuples(st.just(0x0001), st.builds(TerminalGeneralResponse, u16, u16, u8)),
        st.tuples(st.just(0x0002), st.just(Heartbeat())),
        st.tuples(st.just(0x0003), st.just(TerminalLogout())),
        st.tuples(st.just(0x0004), st.just(QueryServerTime())),
        st.tuples(st.just(0x0005), resend),
        st.tuples(st.just(0x0100), registers(version)),
        st.tuples(st.just(0x0102), auths(version)),
        st.tuples(st.just(0x0200), locations),
        st.tuples(st.just(0x0704), st.builds(BatchLocationUpload, u8,
                                             st.lists(locations, max_size=3).map(tuple))),
        st.tuples(st.just(0x0800), st.builds(MultimediaEventInfo, u32, u8, u8, u8, u8)),
        st.tuples(st.just(0x8001), st.builds(PlatformGeneralResponse, u16, u16, u8)),
        st.tuples(st.just(0x8003), resend),
        st.tuples(st.just(0x8004), st.builds(ServerTimeReply, digits)),
        st.tuples(st.just(0x8100), st.builds(RegisterResponse, u16, u8, gbk_text(60))),
        st.tuples(st.just(0x8300), texts(version)),
        st.tuples(st.just(0x8201), st.just(PositionQuery())),
        st.tuples(st.just(0x0201), st.builds(PositionReply, u16, locations)),
        st.tuples(st.just(0x8203), st.builds(AlarmConfirm, u16, u32)),
        st.tuples(st.just(0x0702), driver_identities(version)),
        st.tuples(st.just(0x8103), _params(with_serial=False)),
        st.tuples(st.just(0x8104), st.just(QueryParameters())),
        st.tuples(st.just(0x0104), _params(with_serial=True)),
        st.tuples(st.just(0x8801), st.builds(CameraShot, u8, u16, u16, u8, u8, u8, u8, u8, u8,
                                             u8)),
    ]
    return st.one_of(cases)


cases = st.sampled_from(VERSIONS).flatmap(
    lambda v: st.tuples(st.just(v), bodies(v), phone(v), u16, u8))


def test_strategies_cover_every_message_type() -> None:
    covered = {0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0100, 0x0102, 0x0200, 0x0704, 0x0800,
               0x8001, 0x8003, 0x8004, 0x8100, 0x8300, 0x8201, 0x0201, 0x8203, 0x0702, 0x8103,
               0x8104, 0x0104, 0x8801}
    assert covered == set(BODY_TYPES)


@SETTINGS
@given(cases)
def test_decode_encode_round_trip(case: tuple[Version, tuple[int, Body], str, int, int]) -> None:
    version, (msg_id, body), phone_bcd, serial, proto = case
    assume(len(encode_body(msg_id, body, version)) <= 1023)
    frame = encode_message(msg_id, body, phone_bcd=phone_bcd, serial=serial, version=version,
                           protocol_version=proto)
    msg = decode_frame(frame, version_hint=None if version == 2019 else version)
    assert msg.body == body
    assert msg.version == version
    assert msg.checksum_ok
    h = msg.header
    assert (h.msg_id, h.phone_bcd, h.serial) == (msg_id, phone_bcd, serial)
    assert h.protocol_version == (proto if version == 2019 else None)
    assert h.version_flag is (version == 2019)
    assert FrameSplitter().feed(b"\x00" + frame + frame[:3]) == [frame]
    # And back to the very same bytes.
    assert encode_message(msg_id, msg.body, phone_bcd=phone_bcd, serial=serial,
                          version=version, protocol_version=proto) == frame


@SETTINGS
@given(bodies(2013), phone(2013), u16)
def test_bit_14_on_a_2013_frame_is_read_as_2013(case: tuple[int, Body], phone_bcd: str,
                                                serial: int) -> None:
    msg_id, body = case
    assume(len(encode_body(msg_id, body, 2013)) <= 1023)
    frame = encode_message(msg_id, body, phone_bcd=phone_bcd, serial=serial, version=2013,
                           version_flag=True)
    msg = decode_frame(frame, version_hint=2013)
    assert msg.body == body
    assert msg.header.version_flag and msg.header.protocol_version is None


plausible_registers = st.sampled_from([2011, 2013]).flatmap(
    lambda v: st.tuples(st.just(v), registers(v, st.integers(0, 9))))


@SETTINGS
@given(plausible_registers, phone(2013))
def test_register_layout_is_detected_without_a_hint(case: tuple[Version, TerminalRegister],
                                                    phone_bcd: str) -> None:
    version, register = case
    frame = encode_message(0x0100, register, phone_bcd=phone_bcd, serial=1, version=version)
    msg = decode_frame(frame)
    assert msg.version == version
    assert msg.body == register


def headers() -> st.SearchStrategy[Header]:
    """Valid headers of both layouts, split or not."""
    def build(is_2019: bool, split: bool) -> st.SearchStrategy[Header]:
        return st.builds(
            Header, u16, st.integers(0, 1023), st.integers(0, 7), st.just(split),
            st.just(is_2019), u8 if is_2019 else st.none(), phone(2019 if is_2019 else 2013),
            u16, u16 if split else st.none(), u16 if split else st.none())
    return st.tuples(st.booleans(), st.booleans()).flatmap(lambda t: build(*t))


@given(headers())
def test_header_round_trip(header: Header) -> None:
    raw = encode_header(header)
    assert len(raw) == header.size
    assert decode_header(raw) == header


@given(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])))
def test_bcd_time_round_trip(moment: datetime) -> None:
    moment = moment.replace(microsecond=0)
    assert bcd_time_to_datetime(datetime_to_bcd_time(moment)) == moment


# --- garbage never leaks anything but Jt808Error ------------------------------------------------


def _only_jt808_errors(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except Jt808Error as exc:
        assert exc.kind in ERROR_KINDS


@SETTINGS
@given(st.binary(max_size=1200), st.booleans())
def test_random_bytes_never_crash_decode_frame(data: bytes, verify: bool) -> None:
    _only_jt808_errors(decode_frame, data, verify_checksum=verify)
    _only_jt808_errors(decode_frame, b"\x7e" + data + b"\x7e", verify_checksum=verify)
    _only_jt808_errors(decode_header, data)


@SETTINGS
@given(st.sampled_from(sorted(BODY_TYPES)), st.binary(max_size=400),
       st.sampled_from([None, *VERSIONS]))
def test_random_bodies_never_crash(msg_id: int, body: bytes, version: Version | None) -> None:
    _only_jt808_errors(decode_body, msg_id, body, version)
    frame = encode_message(msg_id, body, phone_bcd="1", serial=1, version=version or 2013)
    _only_jt808_errors(decode_frame, frame)


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    """One random edit: flip, insert, delete, truncate or duplicate a span."""
    pos = data.draw(st.integers(0, len(frame)))
    what = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
    if what == "flip" and pos < len(frame):
        return frame[:pos] + bytes([frame[pos] ^ data.draw(st.integers(1, 255))]) + frame[pos + 1:]
    if what == "insert":
        return frame[:pos] + data.draw(st.binary(min_size=1, max_size=4)) + frame[pos:]
    if what == "delete":
        return frame[:pos] + frame[pos + data.draw(st.integers(1, 4)):]
    if what == "truncate":
        return frame[:pos]
    return frame[:pos] + frame[pos // 2 : pos] + frame[pos:]


@SETTINGS
@given(cases, st.data())
def test_mutated_frames_never_crash(case: tuple[Version, tuple[int, Body], str, int, int],
                                    data: st.DataObject) -> None:
    version, (msg_id, body), phone_bcd, serial, proto = case
    assume(len(encode_body(msg_id, body, version)) <= 1023)
    frame = encode_message(msg_id, body, phone_bcd=phone_bcd, serial=serial, version=version,
                           protocol_version=proto)
    for _ in range(3):
        frame = _mutate(frame, data)
        _only_jt808_errors(decode_frame, frame, verify_checksum=False)
        _only_jt808_errors(decode_frame, frame)


@pytest.fixture(scope="module")
def vector_frames() -> list[bytes]:
    """Every frame of the reference vectors (skip/fail when the data is missing)."""
    return [bytes.fromhex(v["hex"]) for v in all_vectors() if v["kind"] == "frame"]


@SETTINGS
@given(st.data())
def test_mutated_vector_frames_never_crash(vector_frames: list[bytes],
                                           data: st.DataObject) -> None:
    frame = data.draw(st.sampled_from(vector_frames))
    for _ in range(3):
        frame = _mutate(frame, data)
        _only_jt808_errors(decode_frame, frame, verify_checksum=False)


# --- errors on encode and on helpers ------------------------------------------------------------


@pytest.mark.parametrize(("call", "kind"), [
    (lambda: encode_message(0x0002, Heartbeat(), phone_bcd="12ab", serial=1, version=2013),
     "bad_value"),
    (lambda: encode_message(0x0002, Heartbeat(), phone_bcd="1" * 13, serial=1, version=2013),
     "bad_value"),
    (lambda: encode_message(0x0002, Heartbeat(), phone_bcd="1", serial=70000, version=2013),
     "bad_value"),
    (lambda: encode_message(0x0200, Heartbeat(), phone_bcd="1", serial=1, version=2013),
     "unsupported"),
    (lambda: encode_message(0x0100, TerminalRegister(1, 1, "too-long-maker", "", "", 1, "A"),
                            phone_bcd="1", serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x8100, RegisterResponse(1, 0, "\U0001f600"), phone_bcd="1",
                            serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x0200, LocationReport(-1, 0, 0, 0, 0, 0, 0, "240101000000"),
                            phone_bcd="1", serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x0200, LocationReport(0, 0, 0, 0, 0, 0, 0, "2401"), phone_bcd="1",
                            serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x0200, LocationReport(0, 0, 0, 0, 0, 0, 0, "240101000000",
                                                   ((0x01, 1 << 40),)),
                            phone_bcd="1", serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x0200, LocationReport(0, 0, 0, 0, 0, 0, 0, "240101000000",
                                                   ((0x51, 7),)),
                            phone_bcd="1", serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x8003, ResendRequest(1, tuple(range(256))), phone_bcd="1",
                            serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x0102, TerminalAuth("code", "123456789012345"), phone_bcd="1",
                            serial=1, version=2013), "bad_value"),
    (lambda: encode_message(0x0900, b"x" * 1024, phone_bcd="1", serial=1, version=2013),
     "too_large"),
    (lambda: datetime_to_bcd_time(datetime(2024, 1, 1)), "bad_value"),
])
def test_encode_errors(call: Any, kind: str) -> None:
    with pytest.raises(EncodeError) as info:
        call()
    assert info.value.kind == kind


@pytest.mark.parametrize("value", ["241301000000", "000000000000", "240230120000", "240101246000"])
def test_invalid_bcd_time_is_a_clear_error(value: str) -> None:
    report = LocationReport(0, 0, 0, 0, 0, 0, 0, value)
    frame = encode_message(0x0200, report, phone_bcd="1", serial=1, version=2013)
    decoded = decode_frame(frame).body
    assert isinstance(decoded, LocationReport)  # the report still decodes and can be acked
    with pytest.raises(BodyError) as info:
        decoded.time_utc()
    assert info.value.kind == "bad_time"


def test_server_time_reply_is_utc() -> None:
    reply = ServerTimeReply(datetime_to_bcd_time(datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC), UTC))
    assert reply.time_bcd == "240501030405"
    assert reply.time_utc() == datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC)


def test_2013_resend_request_holds_255_packets() -> None:
    request = ResendRequest(7, tuple(range(1, 256)))
    frame = encode_message(0x8003, request, phone_bcd="1", serial=1, version=2013)
    assert decode_frame(frame).body == request


# --- the location layout cache gives exactly what the item loop gives --------------------------


def _decode_uncached(body: bytes) -> LocationReport:
    saved = dict(location_module._LAYOUTS)
    location_module._LAYOUTS.clear()
    try:
        return decode_location(body)
    finally:
        location_module._LAYOUTS.clear()
        location_module._LAYOUTS.update(saved)


@SETTINGS
@given(locations, st.data())
def test_layout_cache_matches_the_item_loop(report: LocationReport, data: st.DataObject) -> None:
    body = encode_location(report)
    location_module._LAYOUTS.pop(len(body), None)
    assert decode_location(body) == report  # the loop; may remember the layout
    assert decode_location(body) == report  # the cache, when it applies
    if len(body) > 28:  # same length, one byte changed among the items
        pos = data.draw(st.integers(28, len(body) - 1))
        mutated = body[:pos] + bytes([body[pos] ^ data.draw(st.integers(1, 255))]) + body[pos + 1:]
        assert decode_location(mutated) == _decode_uncached(mutated)


def test_layout_cache_is_not_fooled_by_another_layout_of_the_same_length() -> None:
    a = LocationReport(0, 0, 1, 2, 3, 4, 5, "240101000000", ((0x01, 7), (0x30, 9)))
    b = LocationReport(0, 0, 1, 2, 3, 4, 5, "240101000000", ((0x02, 7), (0x31, 9), (0x99, b"")))
    c = LocationReport(0, 0, 1, 2, 3, 4, 5, "240101000000", ((0x30, 7),),
                       b"\x01\x05\x00\x00\x00\x00")  # an item running past the end
    bodies = [encode_location(r) for r in (a, b, c)]
    assert len({len(x) for x in bodies}) == 1
    location_module._LAYOUTS.pop(len(bodies[0]), None)
    for _ in range(2):
        assert [decode_location(x) for x in bodies] == [a, b, c]


@pytest.mark.parametrize("item", [
    (0x11, SpeedingExtra(300)), (0x12, AreaRouteExtra(1, -1, 0)), (0x13, RouteTimeExtra(1, 1, 256)),
    (0x12, SpeedingExtra(1)), (0x01, b"x" * 256), (256, 1),
])
def test_bad_extra_items_are_encode_errors(item: tuple[int, Any]) -> None:
    report = LocationReport(0, 0, 0, 0, 0, 0, 0, "240101000000", (item,))
    with pytest.raises(EncodeError) as info:
        encode_location(report)
    assert info.value.kind == "bad_value"


wild = st.integers(-(1 << 33), 1 << 33) | st.sampled_from([-1, 0x100, 0x10000, 1 << 32])
wild_bodies: st.SearchStrategy[tuple[int, Any]] = st.one_of(
    st.tuples(st.just(0x0001), st.builds(TerminalGeneralResponse, wild, wild, wild)),
    st.tuples(st.just(0x8001), st.builds(PlatformGeneralResponse, wild, wild, wild)),
    st.tuples(st.just(0x0100), st.builds(TerminalRegister, wild, wild, st.text(max_size=12),
                                         st.text(max_size=32), st.text(max_size=32), wild,
                                         st.text(max_size=12))),
    st.tuples(st.just(0x0102), st.builds(TerminalAuth, st.text(max_size=300),
                                         st.text(max_size=20), st.text(max_size=25))),
    st.tuples(st.just(0x0200), st.builds(LocationReport, wild, wild, wild, wild, wild, wild, wild,
                                         st.text(max_size=13),
                                         st.lists(st.tuples(wild, wild), max_size=3).map(tuple))),
    st.tuples(st.just(0x8003), st.builds(ResendRequest, wild,
                                         st.lists(wild, max_size=300).map(tuple))),
    st.tuples(st.just(0x8004), st.builds(ServerTimeReply, st.text(max_size=13))),
    st.tuples(st.just(0x8100), st.builds(RegisterResponse, wild, wild, st.text(max_size=20))),
    st.tuples(st.just(0x0800), st.builds(MultimediaEventInfo, wild, wild, wild, wild, wild)),
)


@SETTINGS
@given(wild_bodies, st.sampled_from(VERSIONS), st.text(max_size=22), wild)
def test_out_of_range_values_raise_only_encode_errors(case: tuple[int, Body], version: Version,
                                                      phone_bcd: str, serial: int) -> None:
    msg_id, body = case
    try:
        encode_message(msg_id, body, phone_bcd=phone_bcd, serial=serial, version=version)
    except EncodeError as exc:
        assert exc.kind in ERROR_KINDS


def test_ten_thousand_mutated_real_frames_through_the_decoders() -> None:
    """The ``make fuzz`` decoder run (``tests/fuzz/run.py``) at 10⁴ inputs: only
    ``Jt808Error`` with a known kind comes out, memory bounded (it raises if not)."""
    from tests.fuzz.run import fuzz_decoders

    all_vectors()  # skip (or fail in CI) without the reference frames
    report = fuzz_decoders(10_000, seed=808)
    assert report.inputs == 10_000 and report.accepted > 0 and report.rejected > 0
    assert set(report.kinds) <= ERROR_KINDS

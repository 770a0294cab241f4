"""orjson codec for bus envelopes; decode and encode happen only at the edges.

An envelope carries the event id (also JetStream's ``Nats-Msg-Id``), the time it was made, a
correlation id that follows one report or query through the services, and the payload. Unknown
payload fields are ignored (a newer producer may add some); a missing required field is a
:class:`~shared.errors.DecodeError`.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Generic, TypeVar, cast

import orjson

from shared.errors import DecodeError
from shared.events import Subject

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Envelope(Generic[T]):
    """One event on the bus: identity, timing, correlation and payload."""

    event_id: str
    subject: str
    created_at: datetime
    correlation_id: str
    payload: T

    @classmethod
    def new(cls, subject: Subject[T], payload: T, *, correlation_id: str | None = None,
            event_id: str | None = None, created_at: datetime | None = None) -> Envelope[T]:
        """A fresh envelope; the correlation id defaults to the event id.

        ``created_at`` is the bus's clock reading (``shared/clock.py``); without one, now.
        """
        eid = event_id or uuid.uuid4().hex
        return cls(eid, subject.name, created_at or datetime.now(UTC), correlation_id or eid,
                   payload)


def _default(obj: object) -> object:
    if isinstance(obj, tuple | frozenset | set):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode_envelope(env: Envelope[Any]) -> bytes:
    """Envelope → JSON bytes (datetimes as RFC 3339 UTC)."""
    return orjson.dumps(
        {
            "id": env.event_id,
            "subject": env.subject,
            "time": env.created_at,
            "correlation_id": env.correlation_id,
            "payload": env.payload,
        },
        default=_default,
        option=orjson.OPT_UTC_Z,
    )


Convert = typing.Callable[[object, str], object]


def _identity(value: object, name: str) -> object:
    return value


def _converter(hint: Any) -> Convert:
    """How to turn a decoded JSON value into a field of type ``hint`` (None passes through)."""
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _converter(args[0]) if len(args) == 1 else _identity
    if hint is datetime:
        return _parse_time
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        enum_type = hint

        def to_enum(value: object, name: str) -> object:
            try:
                return enum_type(value)
            except ValueError:
                raise DecodeError(f"field {name!r}: {value!r} is not one of "
                                  f"{', '.join(str(m.value) for m in enum_type)}",
                                  code="bad_field") from None
        return to_enum
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        nested = hint
        return lambda value, name: payload_from_dict(nested, value)
    if origin is tuple:
        parts = typing.get_args(hint)
        if len(parts) == 2 and parts[1] is Ellipsis:
            item = _converter(parts[0])

            def to_tuple(value: object, name: str) -> object:
                if not isinstance(value, list | tuple):
                    raise DecodeError(f"field {name!r} must be a list", code="bad_field")
                return tuple(item(v, name) if v is not None else None for v in value)
            return to_tuple
        items = [_converter(a) for a in parts]

        def to_fixed(value: object, name: str) -> object:
            if not isinstance(value, list | tuple) or len(value) != len(items):
                raise DecodeError(f"field {name!r} must be a list of {len(items)}",
                                  code="bad_field")
            return tuple(c(v, name) if v is not None else None
                         for c, v in zip(items, value, strict=True))
        return to_fixed
    return _identity


@cache
def _fields(cls: type) -> tuple[tuple[str, bool, Convert], ...]:
    """(name, required, converter) per dataclass field, computed once per type."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, required, _converter(hints[f.name])))
    return tuple(out)


def _parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise DecodeError(f"field {name!r} must be an RFC 3339 string", code="bad_field")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DecodeError(f"field {name!r}: {exc}", code="bad_field") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def payload_from_dict(cls: type[T], data: object) -> T:
    """Build a payload dataclass from decoded JSON; unknown keys are ignored.

    Datetimes, enums (by value), nested dataclasses and tuples are rebuilt from their JSON
    form; a value of the wrong shape is a :class:`DecodeError`.
    """
    if not isinstance(data, dict):
        raise DecodeError(f"{cls.__name__} payload must be an object", code="bad_payload")
    kwargs: dict[str, object] = {}
    for name, required, convert in _fields(cast(type, cls)):
        if name not in data:
            if required:
                raise DecodeError(f"{cls.__name__}: missing field {name!r}", code="missing_field")
            continue
        value = data[name]
        if value is not None and convert is not _identity:
            value = convert(value, name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the loop above
        raise DecodeError(f"{cls.__name__}: {exc}", code="bad_payload") from exc


def decode_envelope(subject: Subject[T], raw: bytes) -> Envelope[T]:
    """JSON bytes → Envelope with a typed payload; :class:`DecodeError` when malformed."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}", code="not_json") from exc
    if not isinstance(data, dict):
        raise DecodeError("envelope must be an object", code="bad_envelope")
    try:
        event_id = str(data["id"])
        created_at = _parse_time(data["time"], "time")
        correlation_id = str(data.get("correlation_id") or event_id)
        payload = payload_from_dict(subject.payload_type, data["payload"])
    except KeyError as exc:
        raise DecodeError(f"envelope lacks {exc}", code="bad_envelope") from exc
    return Envelope(event_id, str(data.get("subject", subject.name)), created_at,
                    correlation_id, payload)


def dumps(obj: object) -> bytes:
    """orjson dumps with the project's options (UTC 'Z', dataclasses, tuples)."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_UTC_Z)

"""Packed BCD helpers: digit strings, and ``YYMMDDhhmmss`` times (GMT+8 in JT/T 808)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo

from shared.jt808.errors import BodyError, EncodeError

GMT8 = timezone(timedelta(hours=8), "GMT+8")
"""JT/T 808 times are Beijing time; only the 2019 0x8004 server-time reply is UTC."""


def bcd_to_digits(raw: bytes, what: str = "BCD") -> str:
    """Digits of packed BCD ``raw`` (two per byte, leading zeros kept); non-decimal → bad_bcd."""
    digits = raw.hex()
    # hex() yields only ASCII 0-9a-f, so isdigit() is exactly "every nibble is 0-9".
    if not digits.isdigit() and digits:
        raise BodyError("bad_bcd", f"{what} {digits!r} has a non-decimal nibble")
    return digits


def digits_to_bcd(digits: str, nbytes: int, what: str = "BCD") -> bytes:
    """Pack decimal ``digits`` into ``nbytes`` bytes, padding with zeros on the left."""
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 2 * nbytes:
        raise EncodeError("bad_value", f"{what} must be 1-{2 * nbytes} decimal digits: {digits!r}")
    return bytes.fromhex(digits.rjust(2 * nbytes, "0"))


def bcd_time_to_datetime(digits: str, tz: tzinfo = GMT8) -> datetime:
    """Aware datetime for ``YYMMDDhhmmss`` read in ``tz`` (year 20YY).

    Raises ``BodyError("bad_time")`` for values that are not a real date and time (month 13,
    the all-zero time some terminals send before their first fix...).
    """
    if len(digits) != 12 or not (digits.isascii() and digits.isdigit()):
        raise BodyError("bad_bcd", f"BCD time {digits!r} is not 12 decimal digits")
    try:
        return datetime(
            2000 + int(digits[0:2]), int(digits[2:4]), int(digits[4:6]),
            int(digits[6:8]), int(digits[8:10]), int(digits[10:12]), tzinfo=tz,
        )
    except ValueError as exc:
        raise BodyError("bad_time", f"BCD time {digits!r} is not a valid date/time") from exc


def bcd_time_to_utc(digits: str, tz: tzinfo = GMT8) -> datetime:
    """Like :func:`bcd_time_to_datetime`, converted to UTC."""
    return bcd_time_to_datetime(digits, tz).astimezone(UTC)


def datetime_to_bcd_time(moment: datetime, tz: tzinfo = GMT8) -> str:
    """``YYMMDDhhmmss`` digits of aware ``moment`` expressed in ``tz`` (GMT+8 by default)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A naive time is exactly the simulator bug the digest warns about (UTC sent as GMT+8).
        raise EncodeError("bad_value", "BCD time needs an aware datetime")
    local = moment.astimezone(tz)
    if not 2000 <= local.year <= 2099:
        raise EncodeError("bad_value", f"year {local.year} does not fit YY")
    return local.strftime("%y%m%d%H%M%S")

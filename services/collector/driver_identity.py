"""JT/T 808 0x0702 driver identity (IC card) → ``shared.events.DriverIdentity``.

The gateway decodes the body (2011, 2013 or 2019 layout: ``shared/jt808/downlink.py``) and
calls :func:`identity_event`; this module only maps the decoded card to the one internal model
the fatigue rules read, and refuses a card time that cannot be right.

- ``state``: status 1 (card inserted) ``card_in``, 2 (card removed) ``card_out``. The 2011
  layout has no status: a terminal sends it when a card is read, so it is ``card_in``.
- ``observed_at``: the card time (BCD, GMT+8) in UTC; the 2011 layout has none, so the
  gateway's clock. A card time that is not a date, more than 10 minutes ahead or more than a
  week old is refused (:class:`RejectedCard`), with the same window as location reports.
- ``driver_id``: the qualification certificate code (从业资格证编码, the key that follows a driver
  from vehicle to vehicle); ``id_card`` the identity card number (2011 and 2019 layouts);
  ``authority`` the issuing agency; ``valid_until`` the certificate expiry as ``YYYYMMDD``
  digits (all zeros, which devices send for "unknown", is None); ``ic_result`` the card read
  result (0 read; 1 key authentication failed, 2 locked, 3 pulled out, 4 checksum error: then
  the card fields are absent). Blank texts are None.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.events import DriverIdentity
from shared.jt808 import GMT8, Jt808Error, bcd_time_to_utc
from shared.jt808 import DriverIdentity as DriverCard

MAX_FUTURE = timedelta(minutes=10)
MAX_PAST = timedelta(days=7)
_STATES = {1: "card_in", 2: "card_out"}


class RejectedCard(ValueError):
    """A 0x0702 whose card time or status cannot be right; ``kind`` labels the error metric."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def identity_event(vehicle_id: str, card: DriverCard, *, now: datetime) -> DriverIdentity:
    """The ``DriverIdentity`` event of a decoded 0x0702 body; ``now`` is the gateway's UTC time.

    Raises :class:`RejectedCard` (``card_bad_time``, ``card_future_time``, ``card_stale_time``,
    ``card_bad_status``) for a card that cannot be placed in time or state.
    """
    if card.status is None:  # 2011 layout: no status, no time
        state, observed = "card_in", now
    else:
        got = _STATES.get(card.status)
        if got is None:
            raise RejectedCard("card_bad_status", f"card status {card.status} is neither 1 "
                                                  f"(inserted) nor 2 (removed)")
        state = got
        try:
            observed = bcd_time_to_utc(card.time_bcd or "", GMT8)
        except Jt808Error as exc:
            raise RejectedCard("card_bad_time", str(exc)) from exc
        if observed > now + MAX_FUTURE:
            raise RejectedCard("card_future_time",
                               f"card time {observed.isoformat()} is in the future")
        if observed < now - MAX_PAST:
            raise RejectedCard("card_stale_time", f"card time {observed.isoformat()} is too old")
    expiry = card.cert_expiry_bcd
    if expiry is not None and not expiry.strip("0"):
        expiry = None
    # 2011: ``driver_id`` is the identity card number; 2019 puts it in the same field.
    return DriverIdentity(
        vehicle_id=vehicle_id, observed_at=observed, state=state,
        driver_id=_text(card.qualification_code), driver_name=_text(card.driver_name),
        authority=_text(card.issuing_agency), valid_until=expiry,
        id_card=_text(card.driver_id), ic_result=card.ic_read_result)

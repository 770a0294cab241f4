"""What a feature's live values may be: the one implementation of the plausibility rules.

The collector checks every live state at the edge (so a sensor hears about its mistake: HTTP
400/422, MQTT ``…/state/rejected``); bigdata runs the same check on the merged state before it
writes, defensively. A rule bounds one numeric value of one kind: a whole number or not, a range,
and optionally a bound taken from the feature itself (a parking lot's ``capacity``, carried to
the collector in the :class:`~shared.events.FeatureCatalogue`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import TtiError


class LiveValueError(TtiError):
    """A live value of the wrong type (400 ``bad_type``) or an impossible one (422)."""

    code = "implausible_value"
    http_status = 422

    def __init__(self, message: str, *, code: str = "implausible_value",
                 key: str | None = None) -> None:
        super().__init__(message, code=code, details={"value": key} if key else None)
        self.http_status = 400 if code == "bad_type" else 422
        self.key = key


@dataclass(frozen=True, slots=True)
class NumberRule:
    """One numeric live value of one kind: ``minimum`` ≤ value ≤ ``maximum`` (and the bound).

    ``bound`` names the catalogue field (``capacity``) the value may not exceed, when the
    feature has one.
    """

    key: str
    minimum: float
    maximum: float = math.inf
    integer: bool = False
    bound: str | None = None
    what: str = ""


LIVE_RULES: Mapping[str, tuple[NumberRule, ...]] = {
    "parking": (NumberRule("free_spaces", 0, integer=True, bound="capacity",
                           what="free parking spaces"),),
    # Physical limits, not forecasts: beyond them the sensor is broken (records: -89.2 / 56.7 °C).
    "weather_station": (NumberRule("visibility_m", 0, what="visibility"),
                        NumberRule("temperature_c", -90, 60, what="air temperature")),
}
"""The rules per kind; keys without a rule only need to be finite numbers, strings, booleans."""


def bound_names(kind: str) -> frozenset[str]:
    """The feature fields the rules of ``kind`` bound values by (``{"capacity"}`` for parking)."""
    return frozenset(r.bound for r in LIVE_RULES.get(kind, ()) if r.bound)


def check_live_values(kind: str, values: Mapping[str, Any], *,
                      bounds: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """The values as they may be stored, or :class:`LiveValueError` naming what is wrong.

    ``bounds`` are the feature's own limits (``{"capacity": 300}``); an unknown bound is not
    checked. A whole number sent as ``12.0`` comes back as ``12``; None (delete the key) passes.
    """
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise LiveValueError(f"{key} must be a finite number", code="bad_type", key=key)
    for rule in LIVE_RULES.get(kind, ()):
        value = values.get(rule.key)
        if value is None:
            continue
        label = f"{kind} {rule.key}"
        # bool is an int in Python, but true/false is never a count.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LiveValueError(f"{label} must be a number, not {type(value).__name__}",
                                 code="bad_type", key=rule.key)
        if rule.integer:
            if isinstance(value, float) and not value.is_integer():
                raise LiveValueError(f"{label} must be a whole number of {rule.what}: {value}",
                                     key=rule.key)
            value = int(value)
        if value < rule.minimum:
            raise LiveValueError(f"{label} {value} is below {rule.minimum:g}", key=rule.key)
        if value > rule.maximum:
            raise LiveValueError(f"{label} {value} is above {rule.maximum:g}", key=rule.key)
        limit = (bounds or {}).get(rule.bound) if rule.bound else None
        if isinstance(limit, int) and not isinstance(limit, bool) and value > limit:
            raise LiveValueError(f"{label} {value} exceeds the {rule.bound} of {limit}",
                                 key=rule.key)
        out[rule.key] = value
    return out

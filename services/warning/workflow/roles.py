"""Who sees and does what: police the traffic warnings, safety the 两客一危 alarms, transport both.

Departments work on the kinds of warning that concern them. Police: congestion, incidents,
closures and weather. Safety: vehicle alarms (coach and dangerous-goods safety). Transport:
all of those (and bus operations). Hotline: citizen tickets (no warnings to act on). Admin:
everything, and only admins manage users.
"""

from __future__ import annotations

from shared.events import DEPARTMENT_ROLES, WarningKind

TRAFFIC = frozenset({WarningKind.CONGESTION, WarningKind.INCIDENT, WarningKind.CLOSURE,
                     WarningKind.WEATHER})
ALARMS = frozenset({WarningKind.VEHICLE_ALARM})

VISIBLE: dict[str, frozenset[WarningKind]] = {
    "police": TRAFFIC,
    "safety": ALARMS,
    "transport": TRAFFIC | ALARMS,
    "hotline": frozenset(),
    "admin": frozenset(WarningKind),
}
"""Kinds of warning each role sees (and may act on)."""

RAISES: dict[str, frozenset[WarningKind]] = {
    "police": frozenset({WarningKind.CLOSURE, WarningKind.INCIDENT, WarningKind.WEATHER}),
    "safety": ALARMS,
    "transport": frozenset({WarningKind.CLOSURE, WarningKind.INCIDENT, WarningKind.WEATHER,
                            WarningKind.VEHICLE_ALARM}),
    "hotline": frozenset(),
    "admin": frozenset(WarningKind) - {WarningKind.CONGESTION},
}
"""Kinds each role may raise by hand (congestion is measured, never declared)."""

assert set(VISIBLE) == set(RAISES) == set(DEPARTMENT_ROLES)


def sees(role: str, kind: WarningKind) -> bool:
    """Whether a role sees (and may act on) warnings of this kind."""
    return kind in VISIBLE.get(role, frozenset())


def may_raise(role: str, kind: WarningKind) -> bool:
    """Whether a role may raise a warning of this kind by hand."""
    return kind in RAISES.get(role, frozenset())


TEXTS_ANY_VEHICLE = frozenset({"safety", "transport", "admin"})
"""Roles that may text any vehicle's driver (JT/T 808 0x8300) and read any vehicle's command log.

Police may text a driver only about a warning they see (a closure or an incident ahead, the
vehicle of their warning): the request must name it, and they read only the commands sent about
the warnings they see. Hotline agents text nobody.
"""


def may_text(role: str, about: WarningKind | None) -> bool:
    """Whether a role may text a driver about a warning of kind ``about`` (None: no warning)."""
    if role in TEXTS_ANY_VEHICLE:
        return about is None or sees(role, about)
    return role == "police" and about is not None and sees(role, about)

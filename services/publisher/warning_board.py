"""Warnings as the publisher holds them: one entry per ``warning_id``, updated in place.

The warning service owns the lifecycle; the publisher only mirrors its latest word (the highest
``version``). Ended warnings (resolved, closed, cancelled) are kept for a while (citizens ask
"is it over?") and then expire; the whole board is capped so a flood of warnings cannot exhaust
memory.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from shared.errors import DecodeError
from shared.events import INCIDENT_STATUSES, AreaIndex, Incident, Warning

STATUS_FILTERS = ("active", "cleared", "all")
"""Values of the ``status`` filter of ``GET /api/v1/warnings``."""


def is_cleared(warning: Warning) -> bool:
    """Whether the warning is over (resolved, closed or cancelled)."""
    return not warning.active


def _utc(dt: datetime) -> datetime:
    return dt if dt.utcoffset() == timedelta(0) else dt.astimezone(UTC)


def warning_to_dict(warning: Warning) -> dict[str, object]:
    """Every field of a Warning, plus ``active``; times stay datetimes (encoded as UTC 'Z')."""
    out: dict[str, object] = {f.name: getattr(warning, f.name)
                              for f in dataclasses.fields(warning)}
    out["active"] = not is_cleared(warning)
    return out


class WarningBoard:
    """Latest state of each warning by id; newer ``updated_at`` wins; bounded."""

    def __init__(self, *, max_entries: int = 5000, cleared_ttl_s: float = 86_400.0) -> None:
        self.max_entries = max_entries
        self.cleared_ttl_s = cleared_ttl_s
        self._by_id: dict[str, Warning] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def active_count(self) -> int:
        """How many warnings are not cleared."""
        return sum(1 for w in self._by_id.values() if not is_cleared(w))

    def apply(self, warning: Warning) -> bool:
        """Insert or update a warning; returns False when a newer version is already held."""
        if not warning.warning_id:
            raise DecodeError("warning_id is empty", code="bad_field")
        warning = dataclasses.replace(warning, started_at=_utc(warning.started_at),
                                      updated_at=_utc(warning.updated_at))
        held = self._by_id.get(warning.warning_id)
        if held is not None and (held.version, held.updated_at) > (warning.version,
                                                                   warning.updated_at):
            return False  # redelivered or late: never roll a warning back to an older state
        if held is not None and held.version == warning.version and warning.detour is None \
                and warning.impact is None and (held.detour or held.impact):
            return False  # the same version again, without the analysis that came after it
        self._by_id[warning.warning_id] = warning
        if len(self._by_id) > self.max_entries:
            self._evict()
        return True

    def _evict(self) -> None:
        # Trim to 90 % so a steady flood sorts once per many inserts, not on every one;
        # cleared warnings go first, then the least recently updated.
        keep = max(int(self.max_entries * 0.9), 1)
        ranked = sorted(self._by_id.values(), key=lambda w: (not is_cleared(w), w.updated_at))
        for w in ranked[: len(ranked) - keep]:
            del self._by_id[w.warning_id]

    def find(self, warning_id: str) -> Warning | None:
        """One warning by id, or None."""
        return self._by_id.get(warning_id)

    def list_warnings(self, status: str = "active") -> list[Warning]:
        """Warnings matching ``status`` (active, cleared, all), newest first.

        Newest means latest ``started_at``; ties go to the most recently updated.
        """
        if status not in STATUS_FILTERS:
            raise ValueError(f"status must be one of {STATUS_FILTERS}")
        items = [w for w in self._by_id.values()
                 if status == "all" or (status == "cleared") == is_cleared(w)]
        items.sort(key=lambda w: (w.started_at, w.updated_at), reverse=True)
        return items

    def prune(self, now: datetime) -> int:
        """Forget warnings cleared more than ``cleared_ttl_s`` ago; returns how many."""
        cutoff = now - timedelta(seconds=self.cleared_ttl_s)
        old = [wid for wid, w in self._by_id.items() if is_cleared(w) and w.updated_at < cutoff]
        for wid in old:
            del self._by_id[wid]
        return len(old)


class IncidentBoard:
    """Latest state of each incident by id (newest ``updated_at`` wins); cleared ones expire."""

    def __init__(self, *, max_entries: int = 5000, cleared_ttl_s: float = 86_400.0) -> None:
        self.max_entries = max_entries
        self.cleared_ttl_s = cleared_ttl_s
        self._by_id: dict[str, Incident] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, incident: Incident) -> bool:
        """Insert or update; False when a newer state is held."""
        if not incident.incident_id:
            raise DecodeError("incident_id is empty", code="bad_field")
        if incident.status not in INCIDENT_STATUSES:
            raise DecodeError(f"unknown incident status {incident.status!r}", code="bad_field")
        incident = dataclasses.replace(incident, detected_at=_utc(incident.detected_at),
                                       updated_at=_utc(incident.updated_at))
        held = self._by_id.get(incident.incident_id)
        if held is not None and held.updated_at > incident.updated_at:
            return False
        self._by_id[incident.incident_id] = incident
        if len(self._by_id) > self.max_entries:
            ranked = sorted(self._by_id.values(),
                            key=lambda i: (i.status != "cleared", i.updated_at))
            for i in ranked[: len(ranked) - int(self.max_entries * 0.9)]:
                del self._by_id[i.incident_id]
        return True

    def list_incidents(self, status: str = "active") -> list[Incident]:
        """``active`` (suspected or confirmed), ``cleared`` or ``all``, newest first."""
        items = [i for i in self._by_id.values()
                 if status == "all" or (status == "cleared") == (i.status == "cleared")]
        return sorted(items, key=lambda i: (i.detected_at, i.incident_id), reverse=True)

    def prune(self, now: datetime) -> int:
        """Forget incidents cleared more than ``cleared_ttl_s`` ago."""
        cutoff = now - timedelta(seconds=self.cleared_ttl_s)
        old = [k for k, i in self._by_id.items() if i.status == "cleared" and i.updated_at < cutoff]
        for k in old:
            del self._by_id[k]
        return len(old)


class IndexBoard:
    """The traffic performance index of the network and each area: newest ``observed_at``."""

    def __init__(self, *, max_age_s: float = 1800.0) -> None:
        self.max_age_s = max_age_s
        self._by_id: dict[str, AreaIndex] = {}

    def apply(self, area: AreaIndex) -> bool:
        """Keep the newest index of an area; False when an older one."""
        if not area.area_id:
            raise DecodeError("area_id is empty", code="bad_field")
        area = dataclasses.replace(area, observed_at=_utc(area.observed_at))
        held = self._by_id.get(area.area_id)
        if held is not None and held.observed_at > area.observed_at:
            return False
        self._by_id[area.area_id] = area
        return True

    def network(self, now: datetime) -> AreaIndex | None:
        """The whole network's index, unless it is too old."""
        return self._fresh(self._by_id.get("network"), now)

    def areas(self, now: datetime) -> list[AreaIndex]:
        """Every other area's index (fresh ones), by id."""
        return [a for aid, a in sorted(self._by_id.items())
                if aid != "network" and self._fresh(a, now) is not None]

    def _fresh(self, area: AreaIndex | None, now: datetime) -> AreaIndex | None:
        if area is None or (now - area.observed_at).total_seconds() > self.max_age_s:
            return None
        return area

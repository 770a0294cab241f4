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
from shared.events import Warning

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

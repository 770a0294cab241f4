"""One violation, one warning: the episode bookkeeping every vehicle rule shares.

An *episode* is one (subject, violation) from its start to its end: a vehicle speeding, a driver
over the continuous-driving limit, a coach on the road between 02:00 and 05:00. It is raised
once, updated at most once every ``update_every_s`` (or at once when a rule says something new
happened: the severity changed, the vehicle moved on …), and resolved at an end time the rule
derives from the events' own times, so every replica ends it alike whenever its tick runs.

Updates held back by the throttle are not lost: the latest fields wait in the episode and go
out with the next update or with the resolution. Ids are a hash of the rule, the subject and
the start time, so a replayed stream makes the same warnings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from shared.events import CapMsgType, CapUrgency, Warning, WarningStatus

Key = tuple[str, str]
"""(subject, violation): a vehicle id or ``driver:<id>``, and the rule's name for it."""

UPDATE_EVERY_S = 60.0
"""An episode's warning is updated at most once a minute unless something new happened."""

_KEPT = (WarningStatus.ACKNOWLEDGED, WarningStatus.ASSIGNED)
"""Statuses a department set that an update keeps (the department's view is not undone)."""


def episode_id(prefix: str, *parts: str | datetime) -> str:
    """Deterministic warning id: ``<prefix>-`` and a hash of the parts (times in ISO 8601)."""
    text = "|".join(p.isoformat() if isinstance(p, datetime) else p for p in parts)
    return f"{prefix}-" + hashlib.sha1(text.encode()).hexdigest()[:20]


@dataclass(slots=True)
class Episode:
    """An open episode: the warning last published, what is held back, the last evidence."""

    key: Key
    warning: Warning
    last_seen: datetime
    pending: dict[str, Any] = field(default_factory=dict)


class EpisodeBook:
    """Open episodes of one rule by key; every warning of theirs passes through here."""

    def __init__(self, *, key_of: Callable[[Warning], Key],
                 update_every_s: float = UPDATE_EVERY_S) -> None:
        self.key_of = key_of
        self.update_every = timedelta(seconds=update_every_s)
        self.open: dict[Key, Episode] = {}

    def __len__(self) -> int:
        return len(self.open)

    def __iter__(self) -> Iterator[Episode]:
        return iter(list(self.open.values()))

    def find(self, key: Key) -> Episode | None:
        """The open episode of this key, or None."""
        return self.open.get(key)

    def raise_(self, key: Key, w: Warning, *, at: datetime) -> Warning:
        """Open an episode with its first warning (version 1, an Alert); returns it."""
        self.open[key] = Episode(key, w, at)
        return w

    def update(self, ep: Episode, *, at: datetime, news: bool = False,
               **fields: Any) -> Warning | None:
        """Fold the latest facts in; the warning to publish when due, else None (held back)."""
        if at > ep.last_seen:
            ep.last_seen = at
        details = fields.pop("details", None)
        ep.pending.update(fields)
        if details:
            # Merged into the warning's details when published: a department's notes and
            # actions, adopted meanwhile, stay.
            ep.pending.setdefault("details", {}).update(details)
        if not news and at - ep.warning.updated_at < self.update_every:
            return None
        if not ep.pending:
            return None
        w = ep.warning
        status = w.status if w.status in _KEPT else WarningStatus.UPDATED
        changes = dict(ep.pending)
        changes["details"] = {**w.details, **changes.get("details", {})}
        w = replace(w, status=status, msg_type=CapMsgType.UPDATE,
                    updated_at=max(at, w.updated_at), version=w.version + 1, **changes)
        ep.pending = {}
        ep.warning = w
        return w

    def resolve(self, ep: Episode, *, end: datetime, because: str, **fields: Any) -> Warning:
        """Close the episode at ``end`` (from the events); the resolved warning to publish."""
        self.open.pop(ep.key, None)
        w = ep.warning
        merged = {**ep.pending, **fields}
        details = {**w.details, **ep.pending.get("details", {}), **fields.get("details", {}),
                   "ended_because": because}
        merged.pop("details", None)
        return replace(w, status=WarningStatus.RESOLVED, msg_type=CapMsgType.UPDATE,
                       urgency=CapUrgency.PAST, updated_at=max(end, w.updated_at),
                       ended_at=max(end, w.started_at), version=w.version + 1,
                       details=details, **merged)

    def resume(self, w: Warning) -> Episode | None:
        """An episode a previous run left open (its warning still active), or None."""
        if not w.active:
            return None
        key = self.key_of(w)
        ep = self.open[key] = Episode(key, w, w.updated_at)
        return ep

    def adopt(self, w: Warning) -> Episode | None:
        """A department's change of an open episode's warning; None when it is over for us."""
        key = self.key_of(w)
        ep = self.open.get(key)
        if ep is None or ep.warning.warning_id != w.warning_id:
            return None
        if not w.active:
            del self.open[key]  # closed or cancelled by hand: the episode is over for us too
            return None
        ep.warning = w
        return ep

"""The push hub: changes of the publisher's state, fanned out to the clients following them.

A follower names what it follows — a box (roads, buses, warnings and incidents inside it), a
stop (its arrivals) or a bus route (its buses and arrivals) — and gets a bounded queue. A client
that does not keep up is dropped (its stream ends with an ``overflow`` event and it reconnects)
rather than making the publisher hold an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

BBox = tuple[float, float, float, float]

FOLLOWERS = Gauge("tti_publisher_stream_followers", "Clients following the change stream")
PUSHED = Counter("tti_publisher_stream_events_total", "Change events queued to followers, by kind",
                 ["kind"])
DROPPED = Counter("tti_publisher_stream_dropped_total", "Followers dropped for not keeping up")


@dataclass(frozen=True, slots=True)
class Change:
    """One change: its kind (the SSE event name) and its JSON-ready data."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Where:
    """What a change concerns: a point or box, a stop, a route (any may be unknown)."""

    bbox: BBox | None = None
    stop_ids: frozenset[str] = frozenset()
    route_id: str | None = None
    everywhere: bool = False


@dataclass(eq=False)
class Follower:
    """One client's filter and queue; ``closed`` is set when the hub dropped it."""

    bbox: BBox | None = None
    stop_ids: frozenset[str] = frozenset()
    route_id: str | None = None
    queue: asyncio.Queue[Change] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    overflowed: bool = False

    def wants(self, where: Where) -> bool:
        """Whether the change concerns what this follower follows."""
        if self.bbox is not None:
            if where.everywhere:
                return True
            if where.bbox is None:
                return False
            a, b = self.bbox, where.bbox
            return not (b[2] < a[0] or b[0] > a[2] or b[3] < a[1] or b[1] > a[3])
        if self.stop_ids:
            return bool(self.stop_ids & where.stop_ids)
        if self.route_id is not None:
            return where.route_id == self.route_id
        return False


class PushHub:
    """Followers by registration; :meth:`push` is cheap when nobody follows."""

    def __init__(self) -> None:
        self._followers: set[Follower] = set()

    def __bool__(self) -> bool:
        return bool(self._followers)

    def follow(self, follower: Follower) -> Follower:
        """Register a follower."""
        self._followers.add(follower)
        FOLLOWERS.set(len(self._followers))
        return follower

    def leave(self, follower: Follower) -> None:
        """Unregister a follower (idempotent)."""
        self._followers.discard(follower)
        FOLLOWERS.set(len(self._followers))

    def close_all(self) -> None:
        """End every stream (the server is shutting down): each gets a ``closing`` change and
        ends at once, so shutdown does not wait out its grace for open streams; clients
        reconnect after the stream's ``retry``."""
        for f in list(self._followers):
            self.leave(f)
            with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
                if f.queue.full():
                    f.queue.get_nowait()
                f.queue.put_nowait(Change("closing", {}))

    def push(self, kind: str, data: dict[str, Any], where: Where) -> None:
        """Queue a change to every follower it concerns; drop those whose queue is full."""
        change = Change(kind, data)
        for f in list(self._followers):
            if not f.wants(where):
                continue
            try:
                f.queue.put_nowait(change)
                PUSHED.labels(kind).inc()
            except asyncio.QueueFull:
                f.overflowed = True
                DROPPED.inc()
                self.leave(f)
                # Wake the stream so it can say so and end.
                with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
                    f.queue.get_nowait()
                    f.queue.put_nowait(Change("overflow", {}))


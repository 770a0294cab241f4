"""Events a service owes the bus, kept until the bus takes them (the one outbox).

A value computed once (a closed speed window, a replica's share of one, a warning message) must
not be lost because the bus refused it for a while: it waits here and is sent again on the next
``send``. Each event
carries a deterministic id, so a resend of one the bus did take after all (a PubAck lost on the
way) is dropped by JetStream as a duplicate. The outbox is bounded: past ``limit`` the oldest
events are dropped and counted (``tti_bus_outbox_total{result="dropped"}``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from shared.bus.base import EventBus
from shared.events import Subject

log = logging.getLogger("tti.bus.outbox")

OUTBOX = Counter("tti_bus_outbox_total",
                 "Events a service owes the bus, by subject and outcome (published, retried: "
                 "refused and kept for the next flush, dropped: over the bound, expired)",
                 ["subject", "result"])


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event to publish: its id (JetStream's ``Nats-Msg-Id``), subject, payload, key.

    ``bucket`` is the speed window it belongs to, for owners that expire what is too late;
    ``correlation_id`` the input's (one vehicle report followed through the services), None
    for the bus's default.
    """

    event_id: str
    subject: Subject[Any]
    payload: Any
    key: str | None
    bucket: int = 0
    correlation_id: str | None = None


class Outbox:
    """Events in order, published in concurrent batches; what the bus refuses stays queued."""

    def __init__(self, bus: EventBus, subject: Subject[Any], *, limit: int,
                 batch: int = 256) -> None:
        if limit < 1 or batch < 1:
            raise ValueError("outbox limit and batch must be ≥ 1")
        self.bus = bus
        self.subject = subject
        self.limit = limit
        self.batch = batch
        self._items: list[Outgoing] = []
        self._failing = False
        self._label = subject.name

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(self._items)

    def add(self, item: Outgoing) -> None:
        """Queue one event (dropping the oldest when over the bound)."""
        self._items.append(item)
        if len(self._items) > self.limit:
            dropped = len(self._items) - self.limit
            del self._items[:dropped]
            OUTBOX.labels(self._label, "dropped").inc(dropped)
            log.error("outbox of %s full: %d oldest events dropped", self._label, dropped)

    def expire(self, stale: Callable[[Outgoing], bool]) -> int:
        """Forget the events ``stale`` says are no longer worth sending; returns how many."""
        keep = [item for item in self._items if not stale(item)]
        gone = len(self._items) - len(keep)
        if gone:
            self._items = keep
            OUTBOX.labels(self._label, "expired").inc(gone)
        return gone

    async def send(self) -> list[Outgoing]:
        """Publish what is queued, a batch at a time; returns what the bus took.

        Stops at the first batch with a refusal: the refused events (in order) and the rest stay
        for the next call. The queue is only trimmed after a batch, so a cancelled send loses
        nothing (its resend is a duplicate JetStream drops).
        """
        taken: list[Outgoing] = []
        while self._items:
            batch = self._items[:self.batch]
            # Concurrent publishes share JetStream round trips.
            results = await asyncio.gather(*(
                self.bus.publish(item.subject, item.payload, key=item.key,
                                 event_id=item.event_id, correlation_id=item.correlation_id)
                for item in batch), return_exceptions=True)
            failed = [item for item, r in zip(batch, results, strict=True)
                      if isinstance(r, BaseException)]
            sent = [item for item, r in zip(batch, results, strict=True)
                    if not isinstance(r, BaseException)]
            taken += sent
            self._items = failed + self._items[len(batch):]
            if sent:
                OUTBOX.labels(self._label, "published").inc(len(sent))
            if failed:
                error = next(r for r in results if isinstance(r, BaseException))
                OUTBOX.labels(self._label, "retried").inc(len(failed))
                if not self._failing:  # once when it starts failing, once when it recovers
                    self._failing = True
                    log.warning("bus refused %s events; %d kept, retried on the next flush: %s",
                                self._label, len(self._items), error)
                return taken
        if self._failing:
            self._failing = False
            log.warning("bus takes %s events again", self._label)
        return taken

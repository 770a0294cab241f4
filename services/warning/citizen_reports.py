"""Citizens' reports and hotline tickets into the warning service's keeping.

Every ``tti.citizen.report`` (from the app, the page, WeChat, the hotlines: the publisher takes
them in) is stored once by report id as ``received`` (``workflow/reports.py``); departments then
move it on through ``/v1/dept/reports`` and anyone holding its number reads its status at
``GET /v1/reports/{number}`` (``api/reports.py``), which the publisher relays to citizens.
Every replica consumes every report (its own durable) and writes idempotently, so a replica
that dies loses nothing and two replicas store a report once between them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from services.warning.workflow.reports import ReportStore
from shared.bus import EventBus
from shared.bus.base import Subscription
from shared.clock import Clock
from shared.codec import Envelope
from shared.errors import DecodeError
from shared.events import (
    CITIZEN_REPORT,
    CITIZEN_REPORT_CHANNELS,
    CITIZEN_REPORT_KINDS,
    CitizenReport,
)

log = logging.getLogger("tti.warning.reports")

STORED = Counter("tti_warning_citizen_reports_total",
                 "Citizen reports and hotline tickets taken into keeping, by result", ["result"])

MAX_TEXT = 4000


def check_report(r: CitizenReport) -> None:
    """:class:`DecodeError` for a report no channel of ours would have sent."""
    if r.channel not in CITIZEN_REPORT_CHANNELS:
        raise DecodeError(f"unknown report channel {r.channel!r}")
    if r.kind not in CITIZEN_REPORT_KINDS:
        raise DecodeError(f"unknown report kind {r.kind!r}")
    if not r.report_id or len(r.report_id) > 200 or len(r.text) > MAX_TEXT:
        raise DecodeError("report id or text out of bounds")
    if (r.lon is None) != (r.lat is None) or (
            r.lon is not None and r.lat is not None
            and not (-180 <= r.lon <= 180 and -90 <= r.lat <= 90)):
        raise DecodeError("a report's lon and lat must both be valid or both absent")


class CitizenReports:
    """Follows ``tti.citizen.report`` into the report store."""

    def __init__(self, bus: EventBus, store: ReportStore, clock: Clock, *, durable: str,
                 listener: Callable[[CitizenReport], Awaitable[None]] | None = None) -> None:
        self.bus = bus
        self.listener = listener
        self.store = store
        self.clock = clock
        self.durable = durable
        self._subs: list[Subscription] = []

    async def subscribe(self) -> None:
        """Start consuming reports."""
        self._subs.append(await self.bus.subscribe(CITIZEN_REPORT, self.on_report,
                                                   durable=self.durable))

    async def unsubscribe(self) -> None:
        """Stop consuming (the report in hand is stored first)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.stop()

    async def on_report(self, env: Envelope[CitizenReport]) -> None:
        """Bus handler: keep the report (a database away is transient: redelivered)."""
        try:
            check_report(env.payload)
        except DecodeError:
            STORED.labels("rejected").inc()
            raise
        added = await self.store.add(env.payload, self.clock.now())
        STORED.labels("new" if added else "duplicate").inc()
        if self.listener is not None:  # every replica's engine, stored here or by another
            await self.listener(env.payload)
        if added:
            log.info("citizen report kept", extra={"report_id": env.payload.report_id,
                                                   "channel": env.payload.channel,
                                                   "kind": env.payload.kind})

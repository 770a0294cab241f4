"""Template messages to followers whose subscription a warning affects.

Every publisher replica consumes every warning, so each would send: a key per (follower,
warning, version) in the shared key-value store, taken with ``create``, lets exactly one
replica send each message (a send that fails for a reason that may pass gives the key back, so
the next copy of the event tries again). A warning affects

- a **route** subscription when its impact names the route (``Impact.bus_routes``, which the
  warning service computes beside the stream and sends as a second message of the version);
- a **road** subscription when it names the road or lies on a segment of that name;
- a **stop** subscription when it is placed (area, point or roads) within
  :data:`~services.publisher.signs.NEAR_M` of the stop — the rule of the stop's sign.

Public warnings only (no vehicle alarms), while active, and once more when they end; a warning
last updated more than :data:`MAX_AGE_S` ago is not news (a consumer catching up after a
restart). Sends run in a background worker from a bounded queue, so the bus consumer never
waits for WeChat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter

from services.publisher import render
from services.publisher.cap_feed import is_public
from services.publisher.channels.wechat.client import WechatApiError, WechatClient
from services.publisher.channels.wechat.replies import BEIJING
from services.publisher.channels.wechat.store import Subscription, WechatStore
from services.publisher.signs import NEAR_M
from shared.bus.kv import KeyValue
from shared.errors import BusError, TtiError
from shared.events import Warning

if TYPE_CHECKING:
    from services.publisher.state import Publisher

log = logging.getLogger("tti.publisher.wechat")

MAX_AGE_S = 3600.0
QUEUE_SIZE = 1000
PERMANENT = frozenset({43004, 43101, 40003, 40037, 47003})
"""Refusals a retry cannot mend: unfollowed, refused subscription messages, bad openid,
bad template id, bad template data."""

TEMPLATES = Counter("tti_publisher_wechat_templates_total",
                    "Warning template messages to followers, by result", ["result"])

_SEVERITY = {"Extreme": "特别严重", "Severe": "严重", "Moderate": "较重", "Minor": "一般",
             "Unknown": "未知"}


@dataclass
class Notifier:
    """Matches warnings to subscriptions and sends each follower one template message."""

    publisher: Publisher
    store: WechatStore
    client: WechatClient
    template_id: str
    sent: KeyValue
    public_url: str = ""
    _queue: asyncio.Queue[Warning] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, warning: Warning) -> None:
        """Bus side: queue a warning for matching (dropped and counted when the queue is full)."""
        try:
            self._queue.put_nowait(warning)
        except asyncio.QueueFull:
            TEMPLATES.labels("queue_full").inc()

    async def run(self) -> None:
        """Forever: take queued warnings and notify their subscribers."""
        while True:
            warning = await self._queue.get()
            try:
                await self.notify(warning)
            except (TtiError, OSError) as exc:
                TEMPLATES.labels("failed").inc()
                log.warning("warning %s: notifying subscribers failed: %s", warning.warning_id,
                            exc)

    def _news(self, w: Warning) -> bool:
        if not is_public(w):
            return False
        held = self.publisher.warnings.find(w.warning_id)
        if held is not None and held.version > w.version:
            return False  # an older version, arriving late
        now = self.publisher.clock.now()
        return now - w.updated_at <= timedelta(seconds=MAX_AGE_S)

    async def subscribers(self, w: Warning) -> list[Subscription]:
        """The subscriptions ``w`` affects (one per follower: the first that matched)."""
        catalogue = self.publisher.catalogue
        roads = set(w.road_names)
        if catalogue is not None:
            for sid in w.segment_ids:
                seg = catalogue.find(sid)
                if seg is not None and seg.name:
                    roads.add(seg.name)
        routes = w.impact.bus_routes if w.impact is not None else ()
        box = render.warning_bbox(w, catalogue)
        stops_in = None
        if box is not None:
            d = NEAR_M / 111_195.0
            dlon = d / max(math.cos(math.radians((box[1] + box[3]) / 2)), 1e-6)
            stops_in = (box[0] - dlon, box[1] - d, box[2] + dlon, box[3] + d)
        found = await self.store.find_subscribers(routes=routes, roads=roads, stops_in=stops_in)
        first: dict[str, Subscription] = {}
        for sub in found:
            first.setdefault(sub.openid, sub)
        return list(first.values())

    async def notify(self, w: Warning) -> int:
        """Send ``w`` to the followers it affects, once per follower and version; how many."""
        if not self._news(w):
            return 0
        sent = 0
        for sub in await self.subscribers(w):
            key = "t" + hashlib.sha256(
                f"{sub.openid}|{w.warning_id}|{w.version}".encode()).hexdigest()[:40]
            try:
                if not await self.sent.create(key, b"1"):
                    TEMPLATES.labels("duplicate").inc()
                    continue
            except BusError as exc:
                TEMPLATES.labels("guard_unavailable").inc()  # never send without the guard
                log.warning("template guard unavailable: %s", exc)
                return sent
            try:
                await self.client.send_template(sub.openid, self.template_id,
                                                self.template_data(w, sub), url=self._link(sub))
            except WechatApiError as exc:
                if exc.errcode in PERMANENT:
                    TEMPLATES.labels("refused").inc()
                    if exc.errcode == 43004:  # the follower has gone
                        await self.store.forget(sub.openid)
                    continue
                TEMPLATES.labels("failed").inc()
                with contextlib.suppress(BusError):
                    await self.sent.delete(key)  # the next copy of the event may try again
                log.warning("warning %s: template message failed: %s", w.warning_id, exc)
                continue
            TEMPLATES.labels("sent").inc()
            sent += 1
        return sent

    def _link(self, sub: Subscription) -> str | None:
        if not self.public_url:
            return None
        base = self.public_url.rstrip("/")
        return f"{base}/signs/{sub.ref}" if sub.kind == "stop" else f"{base}/"

    def template_data(self, w: Warning, sub: Subscription) -> dict[str, str]:
        """The template's fields: first, keyword1 (where), keyword2 (what), keyword3 (when),
        remark."""
        ended = not w.active
        where = "、".join(w.road_names[:3]) or sub.label
        level = f"，{_SEVERITY.get(str(w.severity), '')}" if not ended else ""
        return {
            "first": ("预警解除：" if ended else "交通预警：") + w.headline,
            "keyword1": where,
            "keyword2": (w.description or w.headline)[:100] + level,
            "keyword3": (w.ended_at or w.updated_at).astimezone(BEIJING).strftime(
                "%Y-%m-%d %H:%M"),
            "remark": f"您订阅的「{sub.label}」受此影响。" + ("点击查看实时情况" if self.public_url
                                                        else ""),
        }

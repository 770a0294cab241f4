"""What the account answers a follower: queries, locations, subscriptions, menu clicks, events.

A text goes to the one resolver (:func:`services.publisher.channels.query.resolve`) with the
follower's last shared location, and its answer is rendered by :mod:`.replies`; except the
subscription commands (订阅 X, 我的订阅, 取消订阅 N|X|全部) and 帮助. A location message
(GCJ-02, as WeChat sends it; converted with :mod:`shared.geo`) is remembered and answered with
the roads and car parks around it. A voice message WeChat has recognised counts as its text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter

from services.publisher.answers import Answers
from services.publisher.api import AnswerCache, Rendered
from services.publisher.channels.query import (
    Ambiguous,
    NotedPoint,
    RoadStatusAnswer,
    RouteArrivals,
    StopArrivals,
    normalize,
    resolve,
)
from services.publisher.channels.wechat import replies
from services.publisher.channels.wechat.protocol import Inbound
from services.publisher.channels.wechat.store import (
    MAX_PER_FOLLOWER,
    Location,
    Subscription,
    WechatStore,
)
from shared.errors import BadRequest, TransientError
from shared.geo import gcj02_to_wgs84

log = logging.getLogger("tti.publisher.wechat")

MESSAGES = Counter("tti_publisher_wechat_messages_total",
                   "Messages and events from WeChat followers, by kind", ["kind"])

WELCOME = "欢迎关注！这里可以查询实时路况、公交到站和停车场。\n"
LOADING = "数据正在加载，请稍后再试。"
MAX_TEXT_CHARS = 200
MENU = {"TTI_INDEX": "路况", "TTI_PARKING": "停车", "TTI_NEARBY": "附近",
        "TTI_SUBSCRIPTIONS": "我的订阅", "TTI_HELP": "帮助"}
"""Menu button keys (EventKey of a CLICK) and the text each stands for; ``QUERY:<text>`` asks
``<text>``."""

LOCATION_GRID_DEG = 0.0005
"""A follower's location is used to this grid (~50 m): followers in one cell share answers,
and no answer says more precisely where a follower is."""
LOCATION_CACHE_S = 60.0
"""How long a replica reuses a follower's location read from the database: a location shared
through another replica meanwhile is seen here this much later at most."""
MAX_LOCATIONS_CACHED = 100_000
class _ReadsLocation(Exception):
    """The answer to a text that was everyone's now depends on where the sender is."""


Locate = Callable[[], Awaitable[tuple[float, float] | None]]
"""How to look a sender's location up, when an answer needs it."""
_TOPICS = ("roads", "catalogue", "warnings", "incidents", "index", "buses", "places",
           "parking")
"""Every topic of the publisher's state an answer may be made of."""

_SUBSCRIBE = re.compile(r"^(?:订阅|关注|subscribe)\s*(.*)$")
_UNSUBSCRIBE = re.compile(r"^(?:取消订阅|退订|取消关注|unsubscribe)\s*(.*)$")
_LIST = frozenset({"我的订阅", "查看订阅", "订阅列表", "订阅", "subscriptions"})
_HELP = frozenset({"帮助", "help", "?", "？", "菜单", "怎么用", "使用说明", "h"})
_ALL = frozenset({"全部", "所有", "all", "全部订阅"})


@dataclass
class Conversation:
    """Replies to one account's followers over the publisher's answers and the store."""

    answers: Answers
    store: WechatStore
    cache: AnswerCache = field(default_factory=AnswerCache)
    _locations: dict[str, tuple[float, tuple[float, float]]] = field(default_factory=dict)
    _lookups: dict[str, asyncio.Future[Location | None]] = field(default_factory=dict)
    _looking: asyncio.Task[None] | None = None
    _everyones: dict[str, bool] = field(default_factory=dict)
    """Per text: whether its last answer was the same for every sender (did not read where
    the sender is)."""

    async def reply(self, msg: Inbound) -> str | None:
        """The reply text for a message or event (None: nothing to say, answer ``success``)."""
        kind = msg.msg_type if msg.msg_type != "event" else f"event_{msg.event.lower()}"
        MESSAGES.labels(kind if kind in _KINDS else "other").inc()
        try:
            if msg.msg_type == "text":
                return await self.text(msg.from_user, msg.content)
            if msg.msg_type == "voice" and msg.recognition:
                return await self.text(msg.from_user, msg.recognition)
            if msg.msg_type == "location":
                return await self.location(msg)
            if msg.msg_type == "event":
                return await self.event(msg)
        except TransientError as exc:
            if exc.code == "catalogue_loading":
                return LOADING
            raise
        return "暂时只能识别文字和位置消息。\n" + replies.HELP

    async def event(self, msg: Inbound) -> str | None:
        """subscribe, unsubscribe, menu clicks, reported locations."""
        if msg.event == "SUBSCRIBE":
            return WELCOME + replies.HELP
        if msg.event == "UNSUBSCRIBE":
            await self.store.forget(msg.from_user)
            self._locations.pop(msg.from_user, None)
            return None
        if msg.event == "LOCATION" and msg.lon is not None and msg.lat is not None:
            await self._remember(msg.from_user, msg.lon, msg.lat, "")
            return None
        if msg.event == "CLICK":
            key = msg.event_key
            text = key.removeprefix("QUERY:") if key.startswith("QUERY:") else MENU.get(key)
            return await self.text(msg.from_user, text) if text else replies.HELP
        return None  # VIEW, SCAN, TEMPLATESENDJOBFINISH …: nothing to say

    async def _remember(self, openid: str, lon: float, lat: float, label: str
                        ) -> tuple[float, float]:
        point = gcj02_to_wgs84(lon, lat)
        await self.store.save_location(openid, point[0], point[1], label,
                                       self.answers.p.clock.now())
        self._keep_location(openid, point)
        return point

    async def location(self, msg: Inbound) -> str:
        """A shared location: remembered, answered with the roads and car parks around it."""
        if msg.lon is None or msg.lat is None:
            return "没有读到位置，请重新发送。"
        point = await self._remember(msg.from_user, msg.lon, msg.lat, msg.label)
        return await self.query("", point) + "\n\n发送「停车」查看附近停车场"

    async def _near(self, openid: str) -> tuple[float, float] | None:
        """The follower's last location: this replica's copy (at most LOCATION_CACHE_S old),
        else the database's (never cached when absent: a location shared through another
        replica is seen at once)."""
        mono = time.monotonic()
        held = self._locations.get(openid)
        if held is not None and mono - held[0] <= LOCATION_CACHE_S:
            return held[1]
        found = await self._lookup(openid)
        if found is None:
            self._locations.pop(openid, None)
            return None
        self._keep_location(openid, (found.lon, found.lat))
        return found.lon, found.lat

    async def _lookup(self, openid: str) -> Location | None:
        """The database's location of ``openid``: the lookups of every follower asking
        meanwhile go in one query (a burst of 停车 is one round trip, not hundreds)."""
        future = self._lookups.get(openid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._lookups[openid] = future
            if self._looking is None:
                self._looking = asyncio.get_running_loop().create_task(self._look_up())
        return await asyncio.shield(future)

    async def _look_up(self) -> None:
        try:
            while self._lookups:
                await asyncio.sleep(0)  # the requests already in hand join this batch
                batch, self._lookups = self._lookups, {}
                try:
                    found = await self.store.find_locations(list(batch))
                except Exception as exc:
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for openid, future in batch.items():
                    if not future.done():
                        future.set_result(found.get(openid))
        finally:
            self._looking = None

    def _keep_location(self, openid: str, point: tuple[float, float]) -> None:
        if len(self._locations) >= MAX_LOCATIONS_CACHED:
            self._locations.clear()
        self._locations[openid] = (time.monotonic(), point)

    async def text(self, openid: str, content: str) -> str:
        """A text: a command, or a query for the resolver."""
        text = normalize(content)[:MAX_TEXT_CHARS + 1]
        if text in _HELP:
            return replies.HELP
        if text in _LIST:
            return await self.list_subscriptions(openid)
        if (m := _UNSUBSCRIBE.match(text)) is not None:
            return await self.unsubscribe(openid, m.group(1).strip())
        if (m := _SUBSCRIBE.match(text)) is not None:
            return await self.subscribe(openid, m.group(1).strip())
        return await self.query(content, lambda: self._near(openid))

    async def query(self, content: str, near: tuple[float, float] | Locate | None) -> str:
        """The resolver's answer to ``content`` near ``near`` (a point, or how to look the
        sender's up), rendered once while the data behind it holds (the publisher's answer
        cache: its topics' change stamps, at most 1 s).

        An answer that did not read the location (a bridge, a route at a named stop, the
        index: :class:`NotedPoint`) is shared by every sender, and the location is then not
        looked up: a text whose last answer was everyone's is rendered again once for all
        (not once per sender's location after each change); the others are shared by the
        senders in one 50 m cell.
        """
        p = self.answers.p
        text = normalize(content)
        stamps = tuple(p.changed.get(t) for t in _TOPICS)
        mono = p.clock.monotonic()
        anywhere = ("wechat", text)
        held = self.cache.find(anywhere, stamps, mono)
        if held is not None:
            return held.payload.decode()
        if callable(near) and self._everyones.get(text):
            try:
                held = await self.cache.render_once(
                    anywhere, lambda: self._render(content, stamps, NotedPoint((0.0, 0.0))))
                return held.payload.decode()
            except _ReadsLocation:
                pass  # no longer everyone's (the data changed): by the sender's cell below
        point = await near() if callable(near) else near
        cell = None if point is None else (  # the location counts to ~50 m
            round(point[0] / LOCATION_GRID_DEG) * LOCATION_GRID_DEG,
            round(point[1] / LOCATION_GRID_DEG) * LOCATION_GRID_DEG)
        key = ("wechat", text, cell)
        held = self.cache.find(key, stamps, mono)
        if held is None:
            held = await self.cache.render_once(key, lambda: self._render(
                content, stamps, None if cell is None else NotedPoint(cell), anywhere))
        return held.payload.decode()

    async def _render(self, content: str, stamps: tuple[datetime | None, ...],
                      near: NotedPoint | None, anywhere: tuple[str, str] | None = None
                      ) -> Rendered:
        """The rendered answer near ``near``. Without ``anywhere``, :class:`_ReadsLocation`
        when it read ``near`` (a stand-in); with it, an answer that did not read ``near`` is
        kept under ``anywhere`` too."""
        p = self.answers.p
        reply = replies.render(await resolve(self.answers, content, near=near))
        if near is not None:
            if len(self._everyones) >= MAX_LOCATIONS_CACHED:
                self._everyones.clear()
            self._everyones[normalize(content)] = not near.read
            if near.read and anywhere is None:
                raise _ReadsLocation
        rendered = Rendered(stamps=stamps, at=p.clock.monotonic(), payload=reply.encode(),
                            etag="", last_modified=p.clock.now(), last_modified_http="")
        if near is not None and not near.read and anywhere is not None:
            self.cache.keep(anywhere, rendered)
        return rendered

    # -- subscriptions ------------------------------------------------------------------------

    async def subscribe(self, openid: str, target: str) -> str:
        """``订阅 X``: a route, a stop or a road, as the resolver understands X."""
        answer = await resolve(self.answers, target, near=await self._near(openid))
        sub = self._subscription(openid, answer)
        if sub is None:
            if isinstance(answer, Ambiguous):
                return replies.ambiguous(answer).replace("请发送更完整的名称",
                                                         "请发送「订阅 完整名称」")
            return f"「{target}」不是可订阅的线路、站点或道路。例如：订阅 512路"
        try:
            added = await self.store.subscribe(sub)
        except BadRequest as exc:
            if exc.code == "too_many":
                return f"最多订阅{MAX_PER_FOLLOWER}项，请先取消一些（发送「我的订阅」）"
            raise
        if not added:
            return f"您已订阅「{sub.label}」"
        return f"已订阅「{sub.label}」，有相关预警时会通知您。发送「我的订阅」查看"

    def _subscription(self, openid: str, answer: object) -> Subscription | None:
        now = self.answers.p.clock.now()
        places = self.answers.p.places
        if isinstance(answer, RouteArrivals) and answer.stop_name is None:
            return Subscription(openid, "route", answer.route_id,
                                f"{answer.route_short_name}路", now)
        stop_ids: tuple[str, ...] = ()
        if isinstance(answer, StopArrivals | RouteArrivals):
            stop_ids = answer.stop_ids
        if stop_ids and places is not None and stop_ids[0] in places.stop_by_id:
            stop = places.stop_by_id[stop_ids[0]]
            return Subscription(openid, "stop", stop.stop_id, stop.name, now, stop.lon,
                                stop.lat)
        if isinstance(answer, RoadStatusAnswer):
            return Subscription(openid, "road", answer.name, answer.name, now)
        return None

    async def list_subscriptions(self, openid: str) -> str:
        """``我的订阅``: numbered, as 取消订阅 N takes them."""
        subs = await self.store.list_subscriptions(openid)
        if not subs:
            return "您还没有订阅。发送「订阅 512路」「订阅 站名」或「订阅 道路名」"
        kinds = {"route": "线路", "stop": "站点", "road": "道路"}
        return ("您的订阅：\n" + replies.numbered([f"{s.label}（{kinds[s.kind]}）" for s in subs])
                + "\n发送「取消订阅 序号」取消，「取消订阅 全部」全部取消")

    async def unsubscribe(self, openid: str, target: str) -> str:
        """``取消订阅 N``, ``取消订阅 X`` or ``取消订阅 全部``."""
        if target in _ALL:
            n = await self.store.unsubscribe_all(openid)
            return f"已取消全部{n}项订阅" if n else "您还没有订阅"
        subs = await self.store.list_subscriptions(openid)
        if not target:
            return await self.list_subscriptions(openid)
        chosen = None
        if target.isdigit() and 1 <= int(target) <= len(subs):
            chosen = subs[int(target) - 1]
        else:
            bare = target.removesuffix("路") if target.endswith("路") else None
            chosen = next((s for s in subs if s.label.casefold() == target.casefold()
                           or (bare is not None and s.kind == "route"
                               and s.label == f"{bare}路")), None)
        if chosen is None:
            return f"没有找到订阅「{target}」。\n" + await self.list_subscriptions(openid)
        await self.store.unsubscribe(openid, chosen.kind, chosen.ref)
        return f"已取消订阅「{chosen.label}」"


_KINDS = frozenset({"text", "voice", "location", "image", "event_subscribe",
                    "event_unsubscribe", "event_click", "event_location", "event_view",
                    "event_templatesendjobfinish"})

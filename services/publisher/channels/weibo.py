"""Weibo: significant warnings and their clearance posted through the share API.

``POST {TTI_WEIBO_API_URL}/2/statuses/share.json`` with the form fields ``access_token`` and
``status``; the status must carry a link on the domain bound to the Weibo app
(``TTI_WEIBO_LINK_URL``, ``{warning_id}`` in it replaced by the warning's id; else
``TTI_PUBLIC_URL``). Without a token (or a link) the channel is off and says so once at start.

**Significant** (posted): a public warning (no vehicle alarm) in force that is severe or worse
(CAP severity Severe or Extreme), or a road closure, or an incident, or congestion at level 5
(严重拥堵). It is posted once, when it first becomes significant; its later versions are not
(the page and the feeds carry them). When a posted warning ends (resolved or closed; cancelled:
withdrawn) its clearance is posted, once. A warning last updated over an hour ago is not news
(a consumer catching up after a restart).

**Once, across replicas**: every publisher replica sees every warning, so each decision is a
``create`` in the shared key-value store (:mod:`shared.bus.kv`: a NATS KV bucket in the
distributed run, memory in the embedded one) — whoever creates the key posts; the value becomes
``posted`` after Weibo took it. A post that keeps failing for a reason that may pass (network,
5xx, Weibo's rate limits) is retried with backoff (``max_attempts``), then its key is given
back so a later copy of the event may try again; a refusal (bad token, refused content) is
counted and logged, not retried. Never the same message twice: at worst a crash between the
claim and the post loses that one post.

**Rate**: at most one request per ``TTI_WEIBO_MIN_INTERVAL_S`` across replicas, by slots of
that length claimed in the store. **Length**: ≤ 140 as Weibo counts (a Chinese character 1,
two ASCII characters 1): the text is cut (…) and the link always kept. The token is never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
from collections.abc import AsyncIterator
from datetime import timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from services.publisher.cap_feed import is_public
from shared.bus.kv import KeyValue, kv_for_bus
from shared.errors import BusError, ConfigError, TtiError
from shared.events import CapSeverity, Warning, WarningKind, WarningStatus
from shared.service import spawn

if TYPE_CHECKING:
    from services.publisher.state import Publisher

log = logging.getLogger("tti.publisher.weibo")

BEIJING = timezone(timedelta(hours=8))
MAX_UNITS = 140
MAX_AGE_S = 3600.0
QUEUE_SIZE = 1000
POSTED_TTL_S = 30 * 86_400.0
"""How long "this warning was posted" is remembered (its clearance needs it)."""
SHARE_PATH = "/2/statuses/share.json"
RETRYABLE_CODES = frozenset({10001, 10009, 10010, 10012, 10022, 10023, 10024})
"""Weibo errors that may pass: system error, task too busy, job expired, system busy, and the
IP / user / user-per-API request limits."""
REPEATED_CODES = frozenset({20017, 20019})
""""Repeated content": Weibo already has this very text (taken as posted)."""

POSTS = Counter("tti_publisher_weibo_posts_total",
                "Weibo decisions per warning, by kind (alert, clear) and result",
                ["kind", "result"])
ATTEMPTS = Counter("tti_publisher_weibo_requests_total",
                   "Requests to Weibo's share API, by result (ok, retryable, refused)",
                   ["result"])

_SIGNIFICANT_SEVERITIES = frozenset({CapSeverity.SEVERE, CapSeverity.EXTREME})
_LABELS = {WarningKind.CLOSURE: "道路封闭", WarningKind.INCIDENT: "交通事件",
           WarningKind.CONGESTION: "拥堵预警", WarningKind.WEATHER: "天气预警"}


class WeiboError(TtiError):
    """Weibo refused or could not be reached; ``transient`` when a retry may help."""

    code = "weibo_error"
    http_status = 502

    def __init__(self, message: str, *, transient: bool, error_code: int | None = None
                 ) -> None:
        super().__init__(message)
        self.transient = transient
        self.error_code = error_code


# -- text ---------------------------------------------------------------------------------------


def weibo_length(text: str) -> int:
    """Length as Weibo counts it: a Chinese (non-ASCII) character 1, two ASCII characters 1."""
    halves = sum(1 if ord(c) < 128 else 2 for c in text)
    return math.ceil(halves / 2)


def fit(body: str, link: str, limit: int = MAX_UNITS) -> str:
    """``body`` and `` link``, the body cut with … so the whole is within ``limit``."""
    tail = " " + link
    room = 2 * limit - sum(1 if ord(c) < 128 else 2 for c in tail)
    if room < 2:
        raise ConfigError(f"the Weibo link is too long to leave room for a text ({link!r})")
    halves = sum(1 if ord(c) < 128 else 2 for c in body)
    if halves <= room:
        return body + tail
    room -= 2  # the ellipsis, a Chinese-width character
    out, used = [], 0
    for c in body:
        w = 1 if ord(c) < 128 else 2
        if used + w > room:
            break
        out.append(c)
        used += w
    return "".join(out).rstrip("，。、；： ") + "…" + tail


def significant(w: Warning) -> bool:
    """Whether a warning in force is posted: public and severe, a closure, an incident, or
    congestion at level 5."""
    return is_public(w) and w.active and (
        w.severity in _SIGNIFICANT_SEVERITIES
        or w.kind in (WarningKind.CLOSURE, WarningKind.INCIDENT)
        or (w.kind == WarningKind.CONGESTION and (w.level or 0) >= 5))


def alert_text(w: Warning, link: str) -> str:
    """The post of a warning: 【label】headline：description (time) link."""
    body = f"【{_LABELS.get(w.kind, '交通预警')}】{w.headline}"
    if w.description and w.description != w.headline:
        body += f"：{w.description}"
    body += f"（{w.started_at.astimezone(BEIJING):%H:%M}发布）"
    return fit(body, link)


def clear_text(w: Warning, link: str) -> str:
    """The post of a warning's end: 【预警解除】 (or 【预警撤销】 when withdrawn)."""
    at = (w.ended_at or w.updated_at).astimezone(BEIJING)
    if w.status == WarningStatus.CANCELLED:
        return fit(f"【预警撤销】{w.headline}：此前发布的预警已撤销（{at:%H:%M}）", link)
    return fit(f"【预警解除】{w.headline}：已于{at:%H:%M}解除，恢复通行", link)


def link_for(template: str, w: Warning) -> str:
    """The link of a post: the template with ``{warning_id}`` replaced."""
    return template.replace("{warning_id}", quote(w.warning_id, safe=""))


# -- the API ------------------------------------------------------------------------------------


class WeiboClient:
    """Posts through Weibo's share API; the access token goes in the form body only."""

    def __init__(self, api_url: str, access_token: str, *, timeout_s: float = 15.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = access_token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WeiboClient({self.api_url!r})"  # never the token

    async def start(self) -> None:
        """Open the HTTP session."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=5.0))

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def share(self, status: str) -> str:
        """Post ``status``; returns the post's id. :class:`WeiboError` when it fails."""
        if self._session is None:
            raise WeiboError("the Weibo client is not started", transient=True)
        try:
            async with self._session.post(self.api_url + SHARE_PATH, data={
                    "access_token": self._token, "status": status}) as resp:
                try:
                    body: Any = await resp.json(content_type=None)
                except ValueError:
                    body = None
                status_code = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WeiboError(f"Weibo unreachable: {type(exc).__name__}",
                             transient=True) from None
        if status_code == 200 and isinstance(body, dict) and body.get("id") is not None:
            return str(body.get("idstr") or body["id"])
        code = body.get("error_code") if isinstance(body, dict) else None
        text = body.get("error") if isinstance(body, dict) else None
        code = code if isinstance(code, int) else None
        transient = status_code >= 500 or status_code == 429 or code in RETRYABLE_CODES
        raise WeiboError(f"Weibo answered HTTP {status_code}, error {code}: "
                         f"{str(text)[:200] if text else 'no detail'}", transient=transient,
                         error_code=code)


# -- posting ------------------------------------------------------------------------------------


class WeiboPoster:
    """Decides what to post, claims it in the shared store, and posts it at the allowed rate."""

    def __init__(self, publisher: Publisher, client: WeiboClient, *, posted: KeyValue,
                 slots: KeyValue, link_url: str, min_interval_s: float = 30.0,
                 max_attempts: int = 5, backoff_initial_s: float = 2.0,
                 backoff_max_s: float = 120.0) -> None:
        if not link_url.startswith(("https://", "http://")):
            raise ConfigError("TTI_WEIBO_LINK_URL must be an http(s) URL on the domain bound "
                              "to the Weibo app")
        if min_interval_s <= 0:
            raise ConfigError("TTI_WEIBO_MIN_INTERVAL_S must be positive")
        self.publisher = publisher
        self.client = client
        self.posted = posted
        self.slots = slots
        self.link_url = link_url
        self.min_interval_s = min_interval_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._queue: asyncio.Queue[Warning] = asyncio.Queue(QUEUE_SIZE)
        self.handled = 0
        """Warnings taken from the queue and decided on (posted or not)."""

    def offer(self, warning: Warning) -> None:
        """Bus side: queue a warning (dropped and counted when the queue is full)."""
        try:
            self._queue.put_nowait(warning)
        except asyncio.QueueFull:
            POSTS.labels("alert" if warning.active else "clear", "queue_full").inc()

    async def run(self) -> None:
        """Forever: take queued warnings and post what is due."""
        while True:
            warning = await self._queue.get()
            try:
                await self.handle(warning)
            except TtiError as exc:
                log.warning("weibo: warning %s not handled: %s", warning.warning_id, exc)
            finally:
                self.handled += 1

    def _key(self, kind: str, w: Warning) -> str:
        return kind[0] + "." + hashlib.sha256(w.warning_id.encode()).hexdigest()[:40]

    async def handle(self, w: Warning) -> str:
        """Post ``w`` or its clearance if due; returns what happened (the metric's result)."""
        kind = "alert" if w.active else "clear"
        result = await self._handle(kind, w)
        POSTS.labels(kind, result).inc()
        return result

    async def _handle(self, kind: str, w: Warning) -> str:
        if not is_public(w):
            return "not_public"
        held = self.publisher.warnings.find(w.warning_id)
        if held is not None and held.version > w.version:
            return "stale"  # an older version arriving late
        if self.publisher.clock.now() - w.updated_at > timedelta(seconds=MAX_AGE_S):
            return "old"
        try:
            if kind == "alert":
                if not significant(w):
                    return "not_significant"
            elif await self.posted.get(self._key("alert", w)) != b"posted":
                return "not_posted_before"
            key = self._key(kind, w)
            if not await self.posted.create(key, b"claimed"):
                return "duplicate"
        except BusError as exc:
            log.warning("weibo: the shared store is unavailable (%s); not posting", exc)
            return "guard_unavailable"  # never post without the guard
        link = link_for(self.link_url, w)
        text = alert_text(w, link) if kind == "alert" else clear_text(w, link)
        return await self._post(key, text, w)

    async def _post(self, key: str, text: str, w: Warning) -> str:
        delay = self.backoff_initial_s
        for attempt in range(1, self.max_attempts + 1):
            error = await self._attempt(text)
            if error is None:
                ATTEMPTS.labels("ok").inc()
                await self._mark(key, b"posted")
                log.info("weibo: posted warning %s", w.warning_id)
                return "posted"
            if error.error_code in REPEATED_CODES:
                ATTEMPTS.labels("refused").inc()
                await self._mark(key, b"posted")
                return "posted_before"
            if not error.transient:
                ATTEMPTS.labels("refused").inc()
                await self._mark(key, b"refused")
                log.warning("weibo: post of warning %s refused: %s", w.warning_id, error)
                return "refused"
            ATTEMPTS.labels("retryable").inc()
            log.info("weibo: post of warning %s failed (attempt %d of %d): %s", w.warning_id,
                     attempt, self.max_attempts, error)
            if attempt < self.max_attempts:
                await self.publisher.clock.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max_s)
        with contextlib.suppress(BusError):
            await self.posted.delete(key)  # a later copy of the event may try again
        log.warning("weibo: giving up on warning %s after %d attempts", w.warning_id,
                    self.max_attempts)
        return "failed"

    async def _attempt(self, text: str) -> WeiboError | None:
        """One request in a free slot; the error, or None when Weibo took it."""
        try:
            await self._slot()
            await self.client.share(text)
        except BusError as exc:
            return WeiboError(f"the shared store is unavailable: {exc}", transient=True)
        except WeiboError as exc:
            return exc
        return None

    async def _mark(self, key: str, value: bytes) -> None:
        try:
            await self.posted.put(key, value)
        except BusError as exc:  # the claim stands: it is not posted again either way
            log.warning("weibo: could not record %s: %s", value.decode(), exc)

    async def _slot(self) -> None:
        """Wait for a request slot of ``min_interval_s`` no replica has taken."""
        clock = self.publisher.clock
        while True:
            now = clock.now().timestamp()
            slot = int(now // self.min_interval_s)
            if await self.slots.create(f"s.{slot}", b"1"):
                return
            await clock.sleep(max(0.01, (slot + 1) * self.min_interval_s - now))


WEIBO = web.AppKey("weibo", WeiboPoster)


def add_weibo(app: web.Application, publisher: Publisher) -> WeiboPoster | None:
    """Wire the channel (no I/O here); None (and a log line at start) when it is off."""
    config = publisher.config
    link = config.weibo_link_url or config.public_url
    if not config.weibo_access_token or not link:
        why = ("TTI_WEIBO_ACCESS_TOKEN is not set" if not config.weibo_access_token
               else "neither TTI_WEIBO_LINK_URL nor TTI_PUBLIC_URL is set (a post needs a "
                    "link on the app's domain)")

        async def say_off(app: web.Application) -> None:
            log.info("Weibo channel off: %s", why)

        app.on_startup.append(say_off)
        return None
    client = WeiboClient(config.weibo_api_url, config.weibo_access_token)
    interval = config.weibo_min_interval_s
    poster = WeiboPoster(
        publisher, client, posted=kv_for_bus(publisher.bus, "weibo_posted", ttl_s=POSTED_TTL_S),
        slots=kv_for_bus(publisher.bus, "weibo_slots", ttl_s=max(60.0, 4 * interval)),
        link_url=link, min_interval_s=interval)
    app[WEIBO] = poster

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await client.start()
        publisher.warning_listeners.append(poster.offer)
        spawn(app, poster.run(), name="weibo-poster")
        log.info("Weibo channel on: significant warnings and their clearance posted to %s, "
                 "at most one request per %g s", config.weibo_api_url, interval)
        yield
        publisher.warning_listeners.remove(poster.offer)
        await client.close()

    app.cleanup_ctx.append(ctx)
    return poster

"""``/wechat/callback``: the official account's callback, with its 5-second passive-reply rule.

- ``GET`` is WeChat's verification: a right, fresh ``signature`` gets ``echostr`` back.
- ``POST`` is a message or an event, plain or (``encrypt_type=aes``) encrypted. A forged or
  stale signature gets 403 and nothing else happens; the body is read up to
  :data:`~.protocol.MAX_BODY_BYTES` (413 beyond) and parsed safely (400 when malformed).

WeChat waits 5 s for a passive reply and then retries the same message (same ``MsgId``) twice.
Each message is claimed once across replicas with ``create`` on its key in the shared
key-value store (kept :data:`MSG_TTL_S`). The claimant answers within :attr:`WechatChannel.
reply_deadline_s` (4 s) as a passive reply, and stores that reply under the key; an answer not
ready by then is replied ``success`` and sent, once ready, through the customer-service API
(``message/custom/send``). A retry gets the stored reply (WeChat had not received it: the
follower sees it once), or ``success`` when the answer goes out as a customer-service message —
so the answer is computed, and shown, once. If the store cannot be reached the message is
answered anyway (a rare double answer is better than none).

Each follower may send :data:`RATE_PER_MIN` messages a minute (in this replica); more get a
short "too fast" reply, and nothing is computed for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from services.publisher.channels.wechat.client import WechatApiError, WechatClient
from services.publisher.channels.wechat.conversation import Conversation
from services.publisher.channels.wechat.protocol import (
    MAX_BODY_BYTES,
    Cipher,
    Inbound,
    Signed,
    check_request,
    inbound,
    parse_xml,
    text_reply,
)
from shared.bus.kv import KeyValue
from shared.errors import BadRequest, BusError, Forbidden, TransientError, TtiError

log = logging.getLogger("tti.publisher.wechat")

MSG_TTL_S = 300.0
"""How long a message's key is kept: WeChat's retries come within 15 s."""
RATE_PER_MIN = 20
MAX_FOLLOWERS_TRACKED = 50_000
MAX_DEFERRED = 1000
BUSY = "系统繁忙，请稍后再试。"
TOO_FAST = "您发送得太快了，请稍后再试。"

CALLBACKS = Counter("tti_publisher_wechat_callbacks_total",
                    "WeChat callback requests, by outcome", ["outcome"])
REPLIES = Counter("tti_publisher_wechat_replies_total",
                  "Answers to followers' messages, by how they went out", ["how"])

_PENDING = b'{"state":"pending"}'
_DEFERRED = b'{"state":"deferred"}'


@dataclass
class WechatChannel:
    """The callback's state: the account's secrets, the shared stores, the conversation."""

    token: str
    conversation: Conversation
    messages: KeyValue
    cipher: Cipher | None = None
    client: WechatClient | None = None
    reply_deadline_s: float = 4.0
    wall: Callable[[], float] = time.time
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _rates: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    # -- HTTP -----------------------------------------------------------------------------------

    async def verify(self, request: web.Request) -> web.Response:
        """``GET``: WeChat's server verification; echoes ``echostr`` when the signature holds."""
        try:
            check_request(self.token, Signed.from_query(request.query), now=self.wall())
        except Forbidden:
            CALLBACKS.labels("forbidden").inc()
            raise
        echo = request.query.get("echostr", "")
        if not echo or len(echo) > 128:
            CALLBACKS.labels("bad_request").inc()
            raise BadRequest("echostr is required (at most 128 characters)")
        CALLBACKS.labels("verified").inc()
        return web.Response(text=echo, content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        """``POST``: a message or event; the passive reply (XML) or ``success``."""
        started = time.monotonic()
        try:
            signed = Signed.from_query(request.query)
            check_request(self.token, signed, now=self.wall())
            body = await _read_bounded(request)
            fields = parse_xml(body)
            if self.cipher is not None:
                if not signed.safe_mode:
                    raise Forbidden("safe mode is on here: the request must be encrypted "
                                    "(encrypt_type=aes)", code="plain_refused")
                fields = parse_xml(self.cipher.decrypt(signed, fields))
            elif signed.safe_mode:
                raise BadRequest("an encrypted request, but no TTI_WECHAT_AES_KEY is set",
                                 code="safe_mode_off")
            msg = inbound(fields)
        except TtiError as exc:
            CALLBACKS.labels("forbidden" if isinstance(exc, Forbidden) else "bad_request").inc()
            raise
        CALLBACKS.labels("accepted").inc()
        text = await self.answer(msg, started)
        if text is None:
            return web.Response(text="success", content_type="text/plain")
        xml = text_reply(msg.from_user, msg.to_user, text, now=self.wall())
        if self.cipher is not None:
            xml = self.cipher.encrypt(xml, signed.nonce, str(int(self.wall())))
        return web.Response(text=xml, content_type="application/xml")

    # -- answering once -------------------------------------------------------------------------

    async def answer(self, msg: Inbound, started: float) -> str | None:
        """The passive reply text for ``msg`` (None: reply ``success``), computed once."""
        if not self._allow(msg.from_user):
            REPLIES.labels("rate_limited").inc()
            return TOO_FAST
        key = "m" + hashlib.sha256(msg.dedup_key.encode()).hexdigest()[:40]
        try:
            claimed = await self.messages.create(key, _PENDING)
        except BusError as exc:
            log.warning("message store unavailable (%s): answering without de-duplication", exc)
            REPLIES.labels("unguarded").inc()
            claimed = True
            key = ""
        if not claimed:
            return await self._retried(key, started)
        if len(self.tasks) >= MAX_DEFERRED:
            REPLIES.labels("busy").inc()
            return BUSY
        task = asyncio.get_running_loop().create_task(self._compute(msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        remaining = self.reply_deadline_s - (time.monotonic() - started)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                text = await asyncio.shield(task)
        except TimeoutError:
            await self._mark(key, _DEFERRED)
            REPLIES.labels("deferred").inc()
            deliver = asyncio.get_running_loop().create_task(self._deliver_late(msg, task))
            self.tasks.add(deliver)
            deliver.add_done_callback(self.tasks.discard)
            return None
        await self._mark(key, orjson.dumps({"state": "replied", "text": text}))
        REPLIES.labels("passive" if text is not None else "none").inc()
        return text

    async def _compute(self, msg: Inbound) -> str | None:
        try:
            return await self.conversation.reply(msg)
        except TransientError as exc:
            log.warning("a WeChat message could not be answered now: %s", exc)
            return BUSY
        except Exception:
            log.exception("answering a WeChat message failed")
            return BUSY

    async def _mark(self, key: str, value: bytes) -> None:
        if not key:
            return
        try:
            await self.messages.put(key, value)
        except BusError as exc:
            log.warning("message store unavailable (%s): a retry may be answered twice", exc)

    async def _retried(self, key: str, started: float) -> str | None:
        """A retry (or the other replica's copy): the stored reply once there is one."""
        while True:
            try:
                raw = await self.messages.get(key)
            except BusError:
                raw = None
            state = orjson.loads(raw) if raw else {"state": "gone"}
            if state.get("state") == "replied":
                REPLIES.labels("retry_same").inc()
                text = state.get("text")
                return text if isinstance(text, str) else None
            if state.get("state") != "pending" or (
                    time.monotonic() - started > self.reply_deadline_s):
                REPLIES.labels("retry_success").inc()
                return None  # deferred (a customer-service message follows) or lost
            await asyncio.sleep(0.05)

    async def _deliver_late(self, msg: Inbound, task: asyncio.Task[str | None]) -> None:
        """The answer that missed the passive reply, as a customer-service message."""
        text = await task
        if text is None:
            return
        if self.client is None:
            REPLIES.labels("late_lost").inc()
            log.warning("an answer missed the 5 s passive reply and no TTI_WECHAT_APP_SECRET "
                        "is set for customer-service messages: dropped")
            return
        try:
            await self.client.send_text(msg.from_user, text)
        except WechatApiError as exc:
            REPLIES.labels("late_failed").inc()
            log.warning("customer-service message failed: %s", exc)
            return
        REPLIES.labels("late_sent").inc()

    def _allow(self, openid: str) -> bool:
        """A token bucket of RATE_PER_MIN per follower (bounded: the oldest are forgotten)."""
        now = time.monotonic()
        tokens, at = self._rates.pop(openid, (float(RATE_PER_MIN), now))
        tokens = min(float(RATE_PER_MIN), tokens + (now - at) * RATE_PER_MIN / 60.0)
        allowed = tokens >= 1.0
        self._rates[openid] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._rates) > MAX_FOLLOWERS_TRACKED:
            self._rates.popitem(last=False)
        return allowed

    async def close(self) -> None:
        """Cancel and await the answers still being computed or delivered."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read_bounded(request: web.Request) -> bytes:
    """The body, at most MAX_BODY_BYTES (413 beyond; Content-Length checked first)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(16384):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> TtiError:
    exc = BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes", code="too_large")
    exc.http_status = 413
    return exc


def openapi_paths() -> dict[str, Any]:
    """The callback's entry in the publisher's OpenAPI document."""

    def error(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}

    signature = [{"name": n, "in": "query", "required": True, "schema": {"type": "string",
                                                                          "maxLength": 128}}
                 for n in ("signature", "timestamp", "nonce")]
    common = {"403": error("Forged or stale signature (bad_signature, stale_signature), or "
                           "a plain request in safe mode"),
              "503": error("The channel is off: TTI_WECHAT_TOKEN is not set "
                           "(wechat_disabled)")}
    return {"/wechat/callback": {
        "get": {
            "tags": ["channels"], "operationId": "verifyWechatCallback",
            "summary": "WeChat's server verification: echoes echostr for a right signature",
            "parameters": [*signature, {"name": "echostr", "in": "query", "required": True,
                                        "schema": {"type": "string", "maxLength": 128}}],
            "responses": {"200": {"description": "echostr", "content": {
                "text/plain": {"schema": {"type": "string"}}}},
                "400": error("echostr missing"), **common}},
        "post": {
            "tags": ["channels"], "operationId": "receiveWechatMessage",
            "summary": "A follower's message or event (WeChat's XML, plain or AES); the "
                       "passive reply within 5 s, or 'success'",
            "parameters": [*signature, *({"name": n, "in": "query", "required": False,
                                          "schema": {"type": "string", "maxLength": 128}}
                                         for n in ("msg_signature", "encrypt_type", "openid"))],
            "requestBody": {"required": True, "content": {
                "text/xml": {"schema": {"type": "string", "maxLength": MAX_BODY_BYTES}}}},
            "responses": {"200": {"description": "Passive reply (XML) or 'success'", "content": {
                "application/xml": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}}}},
                "400": error("Malformed XML or message (bad_xml, bad_message)"),
                "413": error("Body larger than 64 KiB (too_large)"), **common}},
    }}

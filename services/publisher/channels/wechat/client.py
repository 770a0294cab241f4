"""The WeChat API as the channel uses it: the access token, customer-service and template messages.

The access token (``GET cgi-bin/token?grant_type=client_credential&appid=&secret=``, valid
``expires_in`` seconds, 7200) is shared by every publisher replica through the key-value store
(:mod:`shared.bus.kv`): one replica fetches it (the others wait for it under a short
``create``-lock), all read it, and :meth:`WechatClient.keep_token` refreshes it
:data:`REFRESH_BEFORE_S` before it expires (WeChat keeps the old one valid for five minutes after
a new one is issued, so a replica holding the old one is not cut off). A token WeChat calls
invalid or expired (40001, 40014, 42001) is dropped and fetched again once.

Transient failures (network, HTTP 5xx, errcode -1 "system busy", 45009 rate limits) are retried
with exponential backoff and jitter; refusals (a wrong AppSecret, an IP not whitelisted, a
follower who unfollowed) are not. The secret and the token travel in query strings and are
never logged: errors are reported with them masked.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter

from shared.bus.kv import KeyValue
from shared.errors import ConfigError, TransientError

log = logging.getLogger("tti.publisher.wechat")

REFRESH_BEFORE_S = 600.0
"""The token is refreshed this long before WeChat says it expires."""
TOKEN_KEY = "access-token"
LOCK_KEY = "access-token-refresh"
LOCK_STALE_S = 30.0
INVALID_TOKEN = frozenset({40001, 40014, 42001})
RETRYABLE = frozenset({-1, 45009, 45011})
"""errcodes worth another try: system busy, API rate limits."""

API_CALLS = Counter("tti_publisher_wechat_api_calls_total",
                    "Calls to the WeChat API, by endpoint and result", ["endpoint", "result"])


class WechatApiError(TransientError):
    """WeChat refused or could not be reached; ``errcode`` is WeChat's (0: not an errcode)."""

    code = "wechat_unavailable"

    def __init__(self, message: str, *, errcode: int = 0, retryable: bool = True) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.retryable = retryable


class WechatClient:
    """The account's API client; ``start``/``close`` own the HTTP session."""

    def __init__(self, base_url: str, app_id: str, app_secret: str, kv: KeyValue, *,
                 timeout_s: float = 5.0, attempts: int = 4, backoff_s: float = 0.5,
                 wall: Callable[[], float] = time.time) -> None:
        if not (app_id and app_secret):
            raise ConfigError("the WeChat API needs TTI_WECHAT_APP_ID and TTI_WECHAT_APP_SECRET")
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self._secret = app_secret
        self.kv = kv
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.wall = wall
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, float] | None = None  # (token, expires at, epoch s)
        self._fetching: asyncio.Lock | None = None

    async def start(self) -> None:
        """Open the HTTP session (idempotent)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=3.0))

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _mask(self, text: str) -> str:
        text = text.replace(self._secret, "***")
        if self._token is not None:
            text = text.replace(self._token[0], "***")
        return text

    # -- the access token ---------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid access token: this replica's copy, the shared one, or a new one."""
        now = self.wall()
        if self._token is not None and self._token[1] - now > REFRESH_BEFORE_S / 2:
            return self._token[0]
        shared = await self._shared_token()
        if shared is not None and shared[1] - now > REFRESH_BEFORE_S / 2:
            self._token = shared
            return shared[0]
        return await self.refresh_token()

    async def _shared_token(self) -> tuple[str, float] | None:
        raw = await self.kv.get(TOKEN_KEY)
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return str(data["token"]), float(data["expires_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def refresh_token(self, *, stale: str | None = None) -> str:
        """Fetch a new token (one replica at a time) and share it.

        ``stale``: the token WeChat just refused; a shared token other than it is taken as new.
        """
        if self._fetching is None:
            self._fetching = asyncio.Lock()
        async with self._fetching:  # one fetch per replica
            if self._token is not None and self._token[0] != stale and (
                    self._token[1] - self.wall() > REFRESH_BEFORE_S):
                return self._token[0]  # refreshed while we waited for the lock
            deadline = time.monotonic() + 3 * self.timeout_s
            while True:
                lock = orjson.dumps({"at": self.wall()})
                if await self.kv.create(LOCK_KEY, lock):
                    try:
                        return await self._fetch_token()
                    finally:
                        await self.kv.delete(LOCK_KEY)
                # Another replica is fetching: wait for its token, or take over a stale lock.
                await asyncio.sleep(0.1)
                shared = await self._shared_token()
                if shared is not None and shared[0] != stale and (
                        shared[1] - self.wall() > REFRESH_BEFORE_S):
                    self._token = shared
                    return shared[0]
                held = await self.kv.get(LOCK_KEY)
                if held is not None and _lock_age(held, self.wall()) > LOCK_STALE_S:
                    await self.kv.delete(LOCK_KEY)
                if time.monotonic() > deadline:
                    return await self._fetch_token()  # the other replica is stuck

    async def _fetch_token(self) -> str:
        params = {"grant_type": "client_credential", "appid": self.app_id,
                  "secret": self._secret}
        body = await self._call("token", "GET", "/cgi-bin/token", params=params)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise WechatApiError("the token answer has no access_token/expires_in")
        expires_at = self.wall() + expires_in
        self._token = (token, expires_at)
        await self.kv.put(TOKEN_KEY, orjson.dumps({"token": token, "expires_at": expires_at}))
        log.info("WeChat access token refreshed; valid %d s", expires_in)
        return token

    async def keep_token(self) -> None:
        """Forever: refresh the shared token ``REFRESH_BEFORE_S`` before it expires."""
        failing = False
        while True:
            try:
                await self.access_token()
                assert self._token is not None
                wait = self._token[1] - REFRESH_BEFORE_S - self.wall()
                if wait <= 0:
                    await self.refresh_token()
                    wait = self._token[1] - REFRESH_BEFORE_S - self.wall()
                if failing:
                    log.info("WeChat access token available again")
                failing = False
            except (WechatApiError, TransientError) as exc:
                if not failing:
                    log.warning("cannot get a WeChat access token: %s; retrying",
                                self._mask(str(exc)))
                failing = True
                wait = 30.0
            # Jitter, so replicas do not all wake at once; the lock makes one of them fetch.
            await asyncio.sleep(max(1.0, wait) * random.uniform(0.9, 1.0))

    # -- messages -----------------------------------------------------------------------------

    async def send_text(self, openid: str, content: str) -> None:
        """A customer-service text message (the answer a passive reply could not carry)."""
        await self._post("custom_send", "/cgi-bin/message/custom/send",
                         {"touser": openid, "msgtype": "text", "text": {"content": content}})

    async def send_template(self, openid: str, template_id: str, data: dict[str, str], *,
                            url: str | None = None) -> str:
        """A template message; returns WeChat's ``msgid``."""
        payload: dict[str, Any] = {
            "touser": openid, "template_id": template_id,
            "data": {k: {"value": v} for k, v in data.items()}}
        if url:
            payload["url"] = url
        body = await self._post("template_send", "/cgi-bin/message/template/send", payload)
        return str(body.get("msgid", ""))

    async def _post(self, endpoint: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        token = await self.access_token()
        data = orjson.dumps(payload)
        try:
            return await self._call(endpoint, "POST", path, params={"access_token": token},
                                    data=data)
        except WechatApiError as exc:
            if exc.errcode not in INVALID_TOKEN:
                raise
        token = await self.refresh_token(stale=token)
        return await self._call(endpoint, "POST", path, params={"access_token": token},
                                data=data)

    async def _call(self, endpoint: str, method: str, path: str, *, params: dict[str, str],
                    data: bytes | None = None) -> dict[str, Any]:
        """One API call with retries; the JSON answer when its errcode is 0 (or absent)."""
        if self._session is None:
            raise WechatApiError("the WeChat client is not started")
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._once(endpoint, method, path, params, data)
            except WechatApiError as exc:
                if not exc.retryable or attempt == self.attempts:
                    raise
                log.info("WeChat %s failed (%s); retry %d in %.1f s", endpoint,
                         self._mask(str(exc)), attempt, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay *= 2
        raise AssertionError("unreachable")

    async def _once(self, endpoint: str, method: str, path: str, params: dict[str, str],
                    data: bytes | None) -> dict[str, Any]:
        assert self._session is not None
        headers = {"Content-Type": "application/json; charset=utf-8"} if data else None
        try:
            async with self._session.request(method, self.base_url + path, params=params,
                                             data=data, headers=headers) as resp:
                if resp.status != 200:
                    API_CALLS.labels(endpoint, "http_error").inc()
                    raise WechatApiError(f"HTTP {resp.status} from {path}",
                                         retryable=resp.status >= 500 or resp.status == 429)
                body = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            API_CALLS.labels(endpoint, "unreachable").inc()
            raise WechatApiError(f"{path}: {type(exc).__name__}: "
                                 f"{self._mask(str(exc))[:200]}") from None
        if not isinstance(body, dict):
            API_CALLS.labels(endpoint, "bad_answer").inc()
            raise WechatApiError(f"{path} answered no JSON object")
        errcode = body.get("errcode", 0)
        if errcode not in (0, None):
            code = errcode if isinstance(errcode, int) else -1
            API_CALLS.labels(endpoint, "refused").inc()
            raise WechatApiError(f"{path}: errcode {code}: {str(body.get('errmsg'))[:200]}",
                                 errcode=code, retryable=code in RETRYABLE)
        API_CALLS.labels(endpoint, "ok").inc()
        return body


def _lock_age(raw: bytes, now: float) -> float:
    try:
        return now - float(orjson.loads(raw)["at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return LOCK_STALE_S + 1.0

"""A stand-in for WeChat, both ways: its API server, and its callback requests to us.

:func:`api_app` serves ``cgi-bin/token``, ``message/custom/send`` and ``message/template/send``
and checks each request as WeChat does (grant type, app id and secret; a known, unexpired
access token; the JSON body's fields and types), answering with WeChat's ``errcode``s.
:class:`Follower` signs and sends callback requests the way WeChat's servers do, plain or
encrypted (wechatpy's own crypto, in the sender's role), and reads the replies.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from wechatpy.crypto import WeChatCrypto

from services.publisher.channels.wechat.protocol import cdata, parse_xml

TOKEN = "tti-test-token"
APP_ID = "wx0123456789abcdef"
APP_SECRET = "0123456789abcdef0123456789abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters
TEMPLATE_ID = "tpl-warning-1"
ACCOUNT = "gh_0123456789ab"
_MSG_IDS = itertools.count(int(time.time() * 1000) % 10**9 * 1000)


@dataclass
class WechatState:
    """What the stand-in saw and how it behaves."""

    tokens: dict[str, float] = field(default_factory=dict)
    """Issued access tokens → expiry (epoch s)."""
    token_calls: int = 0
    custom: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    fail_next: int = 0
    """Answer this many of the next requests with HTTP 503 (a WeChat outage)."""
    expires_in: int = 7200
    unfollowed: set[str] = field(default_factory=set)


def _refuse(state: WechatState, errcode: int, errmsg: str) -> web.Response:
    state.refused.append(f"{errcode} {errmsg}")
    return web.json_response({"errcode": errcode, "errmsg": errmsg})


def api_app(state: WechatState) -> web.Application:
    """WeChat's API as the channel calls it, checking every request."""

    def outage() -> web.Response | None:
        if state.fail_next > 0:
            state.fail_next -= 1
            return web.Response(status=503, text="busy")
        return None

    async def token(request: web.Request) -> web.Response:
        if (down := outage()) is not None:
            return down
        state.token_calls += 1
        q = request.query
        if q.get("grant_type") != "client_credential":
            return _refuse(state, 40002, "invalid grant_type")
        if q.get("appid") != APP_ID:
            return _refuse(state, 40013, "invalid appid")
        if q.get("secret") != APP_SECRET:
            return _refuse(state, 40001, "invalid credential, access_token is invalid")
        issued = secrets.token_urlsafe(48)
        state.tokens[issued] = time.time() + state.expires_in
        return web.json_response({"access_token": issued, "expires_in": state.expires_in})

    async def body_of(request: web.Request) -> dict[str, Any] | web.Response:
        if (down := outage()) is not None:
            return down
        held = state.tokens.get(request.query.get("access_token", ""))
        if held is None:
            return _refuse(state, 40001, "invalid credential, access_token is invalid")
        if held < time.time():
            return _refuse(state, 42001, "access_token expired")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _refuse(state, 47001, "data format error")
        if not isinstance(body, dict) or not isinstance(body.get("touser"), str):
            return _refuse(state, 40003, "invalid openid")
        if body["touser"] in state.unfollowed:
            return _refuse(state, 43004, "require subscribe")
        return body

    async def custom_send(request: web.Request) -> web.Response:
        body = await body_of(request)
        if isinstance(body, web.Response):
            return body
        text = body.get("text")
        if body.get("msgtype") != "text" or not isinstance(text, dict) or not isinstance(
                text.get("content"), str) or not text["content"]:
            return _refuse(state, 47001, "data format error")
        if len(text["content"].encode()) > 2048:
            return _refuse(state, 45002, "content size out of limit")
        state.custom.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def template_send(request: web.Request) -> web.Response:
        body = await body_of(request)
        if isinstance(body, web.Response):
            return body
        if body.get("template_id") != TEMPLATE_ID:
            return _refuse(state, 40037, "invalid template_id")
        data = body.get("data")
        if not isinstance(data, dict) or not data or not all(
                isinstance(v, dict) and isinstance(v.get("value"), str) for v in data.values()):
            return _refuse(state, 47001, "data format error")
        url = body.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith(("http://",
                                                                             "https://"))):
            return _refuse(state, 40039, "invalid url size")
        state.templates.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok",
                                  "msgid": 200000000 + len(state.templates)})

    app = web.Application()
    app.router.add_get("/cgi-bin/token", token)
    app.router.add_post("/cgi-bin/message/custom/send", custom_send)
    app.router.add_post("/cgi-bin/message/template/send", template_send)
    return app


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 of the sorted parts, concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def message_xml(openid: str, msg_type: str, *, msg_id: str | None = None,
                created: int | None = None, **fields: str) -> str:
    """A follower's message as WeChat posts it."""
    created = created or int(time.time())
    parts = [f"<ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>",
             f"<FromUserName><![CDATA[{openid}]]></FromUserName>",
             f"<CreateTime>{created}</CreateTime>",
             f"<MsgType><![CDATA[{msg_type}]]></MsgType>"]
    parts += [f"<{k}>{cdata(v)}</{k}>" for k, v in fields.items()]
    if msg_id is not None:
        parts.append(f"<MsgId>{msg_id}</MsgId>")
    return "<xml>" + "".join(parts) + "</xml>"


@dataclass
class Reply:
    """What the callback answered: status, raw body and, for a message, its fields."""

    status: int
    body: str
    fields: dict[str, str] | None

    @property
    def content(self) -> str:
        """The reply's text (empty for ``success``)."""
        return (self.fields or {}).get("Content", "")


class Follower:
    """One follower, through WeChat's servers: signed (and in safe mode encrypted) requests."""

    def __init__(self, client: TestClient[Any, Any], openid: str, *, aes: bool = False,
                 token: str = TOKEN) -> None:
        self.client = client
        self.openid = openid
        self.aes = aes
        self.token = token
        self.crypto = WeChatCrypto(token, AES_KEY, APP_ID) if aes else None

    def next_msg_id(self) -> str:
        """A fresh MsgId (unique in the process: two Followers of one openid never collide)."""
        return str(next(_MSG_IDS))

    def signed_query(self, *, timestamp: int | None = None, encrypt: str | None = None
                     ) -> dict[str, str]:
        """signature, timestamp, nonce (and openid; msg_signature in safe mode)."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = "".join(secrets.choice(string.digits) for _ in range(10))
        query = {"signature": sign(self.token, ts, nonce), "timestamp": ts, "nonce": nonce,
                 "openid": self.openid}
        if encrypt is not None:
            query.update(encrypt_type="aes", msg_signature=sign(self.token, ts, nonce, encrypt))
        return query

    async def post_xml(self, xml: str, *, query: dict[str, str] | None = None) -> Reply:
        """POST one plain message XML (encrypted first in safe mode)."""
        if self.crypto is not None:
            ts, nonce = str(int(time.time())), "".join(secrets.choice(string.digits)
                                                        for _ in range(10))
            envelope = parse_xml(self.crypto.encrypt_message(xml, nonce, ts))
            encrypt = envelope["Encrypt"]
            body = f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[" \
                   f"{encrypt}]]></Encrypt></xml>"
            query = query or {"signature": sign(self.token, ts, nonce), "timestamp": ts,
                              "nonce": nonce, "openid": self.openid, "encrypt_type": "aes",
                              "msg_signature": sign(self.token, ts, nonce, encrypt)}
        else:
            body = xml
            query = query or self.signed_query()
        resp = await self.client.post("/wechat/callback", params=query, data=body.encode(),
                                      headers={"Content-Type": "text/xml"})
        return await self._reply(resp.status, await resp.text())

    async def _reply(self, status: int, text: str) -> Reply:
        if status != 200 or text == "success" or not text:
            return Reply(status, text, None)
        fields = parse_xml(text)
        if self.crypto is not None:
            assert set(fields) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}, fields
            # WeChat checks our reply's signature and decrypts it, as we check theirs.
            plain = self.crypto.decrypt_message({"Encrypt": fields["Encrypt"]},
                                                fields["MsgSignature"], fields["TimeStamp"],
                                                fields["Nonce"])
            fields = parse_xml(plain)
        return Reply(status, text, fields)

    async def send(self, msg_type: str, *, msg_id: str | None = None, **fields: str) -> Reply:
        """A message of this follower (a fresh MsgId unless given; events have none)."""
        if msg_id is None and msg_type != "event":
            msg_id = self.next_msg_id()
        xml = message_xml(self.openid, msg_type, msg_id=msg_id, **fields)  # type: ignore[arg-type]
        return await self.post_xml(xml)

    async def text(self, content: str, **kw: str) -> Reply:
        """A text message."""
        return await self.send("text", Content=content, **kw)

    async def location(self, lon_gcj: float, lat_gcj: float, label: str = "") -> Reply:
        """A location message (GCJ-02, as the WeChat app sends it)."""
        return await self.send("location", Location_X=f"{lat_gcj:.6f}",
                               Location_Y=f"{lon_gcj:.6f}", Scale="15", Label=label)

    async def event(self, event: str, key: str = "") -> Reply:
        """An event (subscribe, unsubscribe, CLICK …)."""
        fields = {"Event": event}
        if key:
            fields["EventKey"] = key
        return await self.send("event", **fields)

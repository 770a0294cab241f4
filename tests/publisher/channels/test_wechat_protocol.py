"""The WeChat protocol pieces on their own: signatures, safe XML, AES both ways, replies, and the
API client (shared access token, refresh, retries) against the stand-in WeChat server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpy.crypto import WeChatCrypto

from services.publisher.channels.wechat.client import TOKEN_KEY, WechatApiError, WechatClient
from services.publisher.channels.wechat.protocol import (
    MAX_BODY_BYTES,
    MAX_REPLY_BYTES,
    Cipher,
    Signed,
    check_request,
    cut,
    inbound,
    parse_xml,
    text_reply,
)
from shared.bus.kv import MemoryKeyValue
from shared.errors import BadRequest, ConfigError, Forbidden
from tests.publisher.channels.wechat_standin import (
    AES_KEY,
    APP_ID,
    APP_SECRET,
    TEMPLATE_ID,
    TOKEN,
    WechatState,
    api_app,
    message_xml,
    sign,
)


def signed(ts: int, nonce: str = "12345", token: str = TOKEN) -> Signed:
    return Signed(signature=sign(token, str(ts), nonce), timestamp=str(ts), nonce=nonce)


# -- signatures ---------------------------------------------------------------------------------


def test_a_right_fresh_signature_passes_and_a_forged_or_stale_one_is_403() -> None:
    now = 1_790_000_000
    check_request(TOKEN, signed(now), now=now)
    check_request(TOKEN, signed(now - 299), now=now)
    with pytest.raises(Forbidden) as forged:
        check_request(TOKEN, signed(now, token="not-our-token"), now=now)
    assert forged.value.code == "bad_signature" and forged.value.http_status == 403
    with pytest.raises(Forbidden) as stale:
        check_request(TOKEN, signed(now - 301), now=now)
    assert stale.value.code == "stale_signature"
    tampered = signed(now)
    with pytest.raises(Forbidden):
        check_request(TOKEN, Signed(tampered.signature, tampered.timestamp, "54321"), now=now)


def test_signature_parameters_must_be_there_and_short() -> None:
    for query in ({}, {"signature": "x", "timestamp": "1"}, {"signature": "x" * 200,
                                                              "timestamp": "1", "nonce": "1"}):
        with pytest.raises(Forbidden):
            Signed.from_query(query)


# -- XML ----------------------------------------------------------------------------------------


def test_message_fields_are_read_from_flat_xml() -> None:
    xml = message_xml("o-user", "text", msg_id="42", Content="512路 光谷广场 ]]> &amp;")
    fields = parse_xml(xml.encode())
    msg = inbound(fields)
    assert msg.from_user == "o-user" and msg.msg_type == "text" and msg.msg_id == "42"
    assert msg.content == "512路 光谷广场 ]]> &amp;"  # CDATA: taken as it is
    loc = inbound(parse_xml(message_xml("o-user", "location", msg_id="43", Location_X="30.5",
                                        Location_Y="114.4", Label="光谷")))
    assert (loc.lon, loc.lat, loc.label) == (114.4, 30.5, "光谷")
    bad = inbound(parse_xml(message_xml("o-user", "location", msg_id="44", Location_X="91",
                                        Location_Y="114.4")))
    assert bad.lon is None and bad.lat is None
    event = inbound(parse_xml(message_xml("o-user", "event", created=1700000000,
                                          Event="CLICK", EventKey="TTI_INDEX")))
    assert event.event == "CLICK" and event.dedup_key == "o-user:1700000000:CLICK:TTI_INDEX"


@pytest.mark.parametrize("xml", [
    # The billion laughs: an internal entity bomb.
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
    "<xml><Content>&b;</Content></xml>",
    # An external entity reading a local file.
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    "<xml><Content>&e;</Content></xml>",
    '<!DOCTYPE xml><xml><Content>a</Content></xml>',
    "<xml><Content>unclosed</xml>",
    "<notxml><Content>a</Content></notxml>",
    "not xml at all",
    "<xml>" + "".join(f"<F{i}>x</F{i}>" for i in range(100)) + "</xml>",
])
def test_dangerous_or_malformed_xml_is_a_400(xml: str) -> None:
    with pytest.raises(BadRequest):
        parse_xml(xml.encode())


def test_oversized_xml_is_refused() -> None:
    with pytest.raises(BadRequest) as exc:
        parse_xml(b"<xml><Content>" + b"a" * MAX_BODY_BYTES + b"</Content></xml>")
    assert exc.value.code == "too_large"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_crashes_the_parser(raw: bytes) -> None:
    with contextlib.suppress(BadRequest):
        inbound(parse_xml(raw))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=1500))
def test_any_reply_text_round_trips_through_its_xml(text: str) -> None:
    text = "".join(c for c in text if c.isprintable() or c == "\n").strip()
    fields = parse_xml(text_reply("o-user", "gh_x", text, now=1).encode())
    assert fields["ToUserName"] == "o-user" and fields["MsgType"] == "text"
    assert fields["Content"] == cut(text).strip()


def test_a_long_reply_is_cut_within_wechats_limit() -> None:
    text = "\n".join(f"第{i}行：江城一桥 严重拥堵" for i in range(400))
    short = cut(text)
    assert len(short.encode()) <= MAX_REPLY_BYTES and short.endswith("\n…")
    assert text.startswith(short.removesuffix("\n…"))


# -- AES (safe mode) ----------------------------------------------------------------------------


def test_safe_mode_decrypts_what_wechat_encrypts_and_checks_app_id() -> None:
    wechat = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    cipher = Cipher(TOKEN, AES_KEY, APP_ID)
    plain = message_xml("o-user", "text", msg_id="1", Content="路况")
    ts, nonce = str(int(time.time())), "998877"
    envelope = parse_xml(wechat.encrypt_message(plain, nonce, ts))
    query = Signed(signature=sign(TOKEN, ts, nonce), timestamp=ts, nonce=nonce,
                   msg_signature=sign(TOKEN, ts, nonce, envelope["Encrypt"]),
                   encrypt_type="aes")
    assert inbound(parse_xml(cipher.decrypt(query, envelope))).content == "路况"
    # Our encrypted reply is what WeChat can check and decrypt.
    reply = parse_xml(cipher.encrypt(text_reply("o-user", "gh", "好"), "n1", ts))
    out = wechat.decrypt_message({"Encrypt": reply["Encrypt"]}, reply["MsgSignature"],
                                 reply["TimeStamp"], reply["Nonce"])
    assert parse_xml(out)["Content"] == "好"
    # A forged msg_signature, another app's message, garbage: refused.
    with pytest.raises(Forbidden):
        cipher.decrypt(Signed(query.signature, ts, nonce, "0" * 40, "aes"), envelope)
    other = WeChatCrypto(TOKEN, AES_KEY, "wxanotherapp0000")
    foreign = parse_xml(other.encrypt_message(plain, nonce, ts))
    with pytest.raises(Forbidden):
        cipher.decrypt(Signed(query.signature, ts, nonce,
                              sign(TOKEN, ts, nonce, foreign["Encrypt"]), "aes"), foreign)
    junk = "not-base64!!"
    with pytest.raises(BadRequest):
        cipher.decrypt(Signed(query.signature, ts, nonce, sign(TOKEN, ts, nonce, junk), "aes"),
                       {"Encrypt": junk})
    with pytest.raises(ConfigError):
        Cipher(TOKEN, "short", APP_ID)


# -- the API client -----------------------------------------------------------------------------


@pytest.fixture
async def wechat() -> AsyncIterator[tuple[WechatState, str]]:
    state = WechatState()
    server = TestServer(api_app(state))
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


async def _client(url: str, kv: MemoryKeyValue, **kw: Any) -> WechatClient:
    client = WechatClient(url, APP_ID, APP_SECRET, kv, backoff_s=0.01, **kw)
    await client.start()
    return client


async def test_replicas_share_one_access_token(wechat: tuple[WechatState, str]) -> None:
    state, url = wechat
    kv = MemoryKeyValue("wechat_token")
    replicas = [await _client(url, kv) for _ in range(3)]
    try:
        tokens = await asyncio.gather(*(c.access_token() for c in replicas for _ in range(4)))
        assert len(set(tokens)) == 1 and state.token_calls == 1
        assert await kv.get(TOKEN_KEY) is not None
        await replicas[2].send_text("o-user", "你好")
        assert state.custom == [{"touser": "o-user", "msgtype": "text",
                                 "text": {"content": "你好"}}]
    finally:
        for c in replicas:
            await c.close()


async def test_an_expired_token_is_refreshed_and_the_call_retried(
        wechat: tuple[WechatState, str]) -> None:
    state, url = wechat
    kv = MemoryKeyValue("wechat_token")
    client = await _client(url, kv)
    try:
        first = await client.access_token()
        state.tokens[first] = time.time() - 1  # WeChat expired it early
        msgid = await client.send_template("o-user", TEMPLATE_ID, {"first": "预警"},
                                           url="https://tti.example.cn/")
        assert msgid and state.token_calls == 2
        assert any(r.startswith("42001") for r in state.refused)
        assert await client.access_token() != first
    finally:
        await client.close()


async def test_the_token_is_refreshed_before_it_expires(wechat: tuple[WechatState, str]) -> None:
    state, url = wechat
    state.expires_in = 650  # less than REFRESH_BEFORE_S + a margin: refreshed at once
    now = [time.time()]
    client = await _client(url, MemoryKeyValue("wechat_token"), wall=lambda: now[0])
    try:
        await client.access_token()
        assert state.token_calls == 1
        now[0] += 400  # 250 s left: inside the refresh window
        await client.access_token()
        assert state.token_calls == 2
    finally:
        await client.close()


async def test_outages_are_retried_with_backoff_and_refusals_are_not(
        wechat: tuple[WechatState, str]) -> None:
    state, url = wechat
    client = await _client(url, MemoryKeyValue("wechat_token"))
    try:
        state.fail_next = 2
        await client.send_text("o-user", "hi")  # two 503s, then through
        assert len(state.custom) == 1 and state.fail_next == 0
        state.fail_next = 10
        with pytest.raises(WechatApiError):
            await client.send_text("o-user", "hi")
        state.fail_next = 0
        state.unfollowed.add("o-gone")
        with pytest.raises(WechatApiError) as gone:
            await client.send_text("o-gone", "hi")
        assert gone.value.errcode == 43004 and not gone.value.retryable
    finally:
        await client.close()


async def test_a_wrong_secret_is_refused_and_never_logged(
        wechat: tuple[WechatState, str], caplog: pytest.LogCaptureFixture) -> None:
    state, url = wechat
    client = WechatClient(url, APP_ID, "wrong-secret-value", MemoryKeyValue("t"), backoff_s=0.01)
    await client.start()
    try:
        with pytest.raises(WechatApiError) as exc:
            await client.access_token()
        assert exc.value.errcode == 40001 and state.token_calls == 1  # no retry of a refusal
        assert "wrong-secret-value" not in str(exc.value)
        assert "wrong-secret-value" not in caplog.text
    finally:
        await client.close()
    with pytest.raises(ConfigError):
        WechatClient(url, APP_ID, "", MemoryKeyValue("t"))

"""Acceptance: the WeChat callback over the real publisher, bigdata and warning apps on the demo
city, with the stand-in WeChat server — in plain and in safe (AES) mode.

Verification, text queries, a location, a subscription and the template message when a warning
hits the followed stop; a forged signature gets 403 and changes nothing; a retried MsgId is
answered once (on one replica or two); an answer that misses the passive reply goes out as a
customer-service message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.publisher.app import PUBLISHER, create_app
from services.publisher.channels.wechat import WECHAT
from services.publisher.channels.wechat.protocol import MAX_BODY_BYTES
from services.publisher.channels.wechat.store import WechatStore
from shared.demo import DemoRegion, generate_demo_region
from shared.events import Impact
from shared.geo import haversine_m, wgs84_to_gcj02
from tests.publisher import is_ready, running_publisher, wait_for
from tests.publisher.channels.demo_feeds import (
    STOP,
    live_bus,
    network_index,
    publish_warning,
    road_status,
    warning,
)
from tests.publisher.channels.wechat_standin import (
    AES_KEY,
    APP_ID,
    APP_SECRET,
    TEMPLATE_ID,
    TOKEN,
    Follower,
    WechatState,
    api_app,
    message_xml,
    sign,
)
from tests.publisher.stack import Stack, import_demo, running_stack

PUBLIC_URL = "https://tti.example.cn"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def imported(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_demo(demo, tmp_path_factory.mktemp("db") / "geo.db")


@pytest.fixture
async def wechat() -> AsyncIterator[tuple[WechatState, str]]:
    state = WechatState()
    server = TestServer(api_app(state))
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture(params=["plain", "aes"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stack(demo: DemoRegion, imported: Path, tmp_path: Path, mode: str,
                wechat: tuple[WechatState, str]) -> AsyncIterator[Stack]:
    async with running_stack(demo, imported, tmp_path, wechat_token=TOKEN,
                             wechat_app_id=APP_ID, wechat_app_secret=APP_SECRET,
                             wechat_aes_key=AES_KEY if mode == "aes" else "",
                             wechat_api_url=wechat[1], wechat_template_id=TEMPLATE_ID,
                             public_url=PUBLIC_URL) as s:
        yield s


def follower(stack: Stack, mode: str, openid: str = "oFollower0001") -> Follower:
    return Follower(stack.client, openid, aes=mode == "aes")


def store_of(stack: Stack) -> WechatStore:
    app = stack.client.app
    assert app is not None
    return app[WECHAT].conversation.store


# -- verification and forged requests -----------------------------------------------------------


async def test_verification_echoes_only_for_a_right_fresh_signature(stack: Stack,
                                                                   mode: str) -> None:
    f = follower(stack, mode)
    query = f.signed_query()
    resp = await stack.client.get("/wechat/callback", params={**query, "echostr": "e-1234"})
    assert resp.status == 200 and await resp.text() == "e-1234"
    forged = {**query, "signature": sign("wrong-token", query["timestamp"], query["nonce"])}
    resp = await stack.client.get("/wechat/callback", params={**forged, "echostr": "e-1234"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "bad_signature"
    stale = f.signed_query(timestamp=int(time.time()) - 3600)
    resp = await stack.client.get("/wechat/callback", params={**stale, "echostr": "e-1234"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "stale_signature"


async def test_a_forged_signature_gets_403_and_nothing_happens(
        stack: Stack, mode: str, wechat: tuple[WechatState, str]) -> None:
    f = follower(stack, mode)
    xml = message_xml(f.openid, "text", msg_id="7001", Content="订阅 1路")
    good = f.signed_query()
    forged = {**good, "signature": sign("guess", good["timestamp"], good["nonce"])}
    if mode == "aes":
        forged.update(encrypt_type="aes", msg_signature="0" * 40)
    resp = await stack.client.post("/wechat/callback", params=forged, data=xml.encode())
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "bad_signature"
    missing = await stack.client.post("/wechat/callback", data=xml.encode())
    assert missing.status == 403
    assert await store_of(stack).list_subscriptions(f.openid) == []
    # The same MsgId, now signed, is answered: the forgery did not claim it.
    reply = await f.post_xml(xml)
    assert reply.status == 200 and reply.content.startswith("已订阅「1路」")
    assert wechat[0].custom == [] and wechat[0].templates == []


async def test_bad_bodies_are_refused_with_a_reason(stack: Stack, mode: str) -> None:
    f = follower(stack, mode)
    resp = await stack.client.post("/wechat/callback", params=f.signed_query(),
                                   data=b"<xml>" + b"a" * (MAX_BODY_BYTES + 1) + b"</xml>")
    assert resp.status == 413
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            "<xml><Content>&e;</Content></xml>")
    if mode == "plain":
        resp = await stack.client.post("/wechat/callback", params=f.signed_query(),
                                       data=bomb.encode())
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_xml"
        plain_to_aes = None
    else:  # the body inside the encryption is parsed as safely
        reply = await f.post_xml(bomb)
        assert reply.status == 400
        # Safe mode is on: a plain (unencrypted) request is refused.
        plain_to_aes = await stack.client.post(
            "/wechat/callback", params=f.signed_query(),
            data=message_xml(f.openid, "text", msg_id="1", Content="路况").encode())
        assert plain_to_aes.status == 403


# -- queries ------------------------------------------------------------------------------------


async def test_text_queries_are_answered_from_the_one_resolver(
        stack: Stack, mode: str, demo: DemoRegion) -> None:
    f = follower(stack, mode)
    bridge = demo.bridges[0]
    for sid in bridge.segment_ids:
        await road_status(stack, sid, 5, 8.0)
    reply = await f.text("江城一桥")
    assert reply.status == 200 and reply.fields is not None
    assert reply.fields["ToUserName"] == f.openid and reply.fields["MsgType"] == "text"
    assert reply.content.startswith("【江城一桥】桥梁") and "严重拥堵" in reply.content
    # The same text again after the road changed: a new answer, not the cached one.
    for sid in bridge.segment_ids:
        await road_status(stack, sid, 1, 55.0)
    again = await follower(stack, mode, "oSecond00001").text("江城一桥")
    assert "严重拥堵" not in again.content and again.content.splitlines()[1].startswith("畅通")
    await live_bus(stack)
    reply = await f.text("1路 解放大道八一路")
    assert reply.content.startswith("【1路 · 解放大道八一路】"), reply.content
    assert "4分钟" in reply.content and "仅剩站位" in reply.content
    await network_index(stack, 6.5, 4)
    reply = await f.text("路况")
    assert reply.content.startswith("【交通指数】全路网 6.5（中度拥堵）"), reply.content
    click = await f.event("CLICK", "TTI_INDEX")
    assert click.content == reply.content
    unknown = await f.text("火星基地")
    assert "没有找到「火星基地」" in unknown.content and "1路" in unknown.content
    welcome = await f.event("subscribe")
    assert welcome.content.startswith("欢迎关注") and "订阅" in welcome.content
    picture = await f.send("image", PicUrl="http://x/y.jpg", MediaId="m1")
    assert "文字和位置" in picture.content


async def test_a_location_gets_nearby_roads_and_parking_and_is_remembered(
        stack: Stack, mode: str) -> None:
    f = follower(stack, mode)
    places = stack.publisher.places
    assert places is not None
    park = next(p for p in places.parking if p.name == "江城广场停车场")
    lon_gcj, lat_gcj = wgs84_to_gcj02(park.lon, park.lat)  # as the WeChat app reports it
    reply = await f.location(lon_gcj, lat_gcj, "江城广场")
    assert reply.content.startswith("【您的位置周边】"), reply.content
    assert "江城广场停车场" in reply.content and "停车" in reply.content
    held = await store_of(stack).find_location(f.openid)
    assert held is not None and haversine_m(held.lon, held.lat, park.lon, park.lat) < 2.0
    parking = await f.text("停车")
    assert parking.content.startswith("【您的位置附近停车场】"), parking.content
    name, metres, *_ = parking.content.splitlines()[1].split()
    assert name == "江城广场停车场" and int(metres.removesuffix("米")) <= 40  # to ~50 m
    stranger = follower(stack, mode, "oNoLocation01")
    needs = await stranger.text("停车")
    assert "请先发送您的位置" in needs.content


async def test_followers_asking_at_once_each_get_their_own_car_parks(
        stack: Stack, mode: str) -> None:
    """Locations shared through another replica (only in the database) are read for a burst
    of 停车 together; each follower still gets the car parks around them, and one who never
    shared a location is asked for it."""
    places = stack.publisher.places
    assert places is not None and len(places.parking) >= 2
    store = store_of(stack)
    askers = []
    for k, park in enumerate(places.parking * 3):
        f = follower(stack, mode, f"oBurst{k:04d}")
        await store.save_location(f.openid, park.lon, park.lat, "", stack.publisher.clock.now())
        askers.append((f, park.name))
    stranger = follower(stack, mode, "oBurstNowhere")
    replies = await asyncio.gather(*(f.text("停车") for f, _ in askers), stranger.text("停车"))
    for (f, nearest), reply in zip(askers, replies, strict=False):
        assert reply.content.startswith("【您的位置附近停车场】"), (f.openid, reply.content)
        assert reply.content.splitlines()[1].split()[0] == nearest, (f.openid, reply.content)
    assert "请先发送您的位置" in replies[-1].content


# -- subscriptions and template messages --------------------------------------------------------


async def test_a_warning_at_the_followed_stop_sends_one_template_message(
        stack: Stack, mode: str, wechat: tuple[WechatState, str]) -> None:
    state = wechat[0]
    f = follower(stack, mode)
    rider = follower(stack, mode, "oRouteRider01")
    reply = await f.text("订阅 解放大道八一路")
    assert reply.content.startswith("已订阅「解放大道八一路」"), reply.content
    assert (await f.text("订阅 解放大道八一路")).content == "您已订阅「解放大道八一路」"
    assert (await rider.text("订阅 1路")).content.startswith("已订阅「1路」")
    listing = await f.text("我的订阅")
    assert "1. 解放大道八一路（站点）" in listing.content
    subs = await store_of(stack).list_subscriptions(f.openid)
    assert [(s.kind, s.ref) for s in subs] == [("stop", STOP)]

    places = stack.publisher.places
    assert places is not None
    stop = places.stop_by_id[STOP]
    hit = dataclasses.replace(warning(stack, "w-stop"), lon=stop.lon + 0.002, lat=stop.lat,
                              road_names=("解放大道",))
    await publish_warning(stack, hit)
    await wait_for(lambda: len(state.templates) >= 1, within_s=10)
    sent = state.templates[0]
    assert sent["touser"] == f.openid and sent["template_id"] == TEMPLATE_ID
    assert sent["url"] == f"{PUBLIC_URL}/signs/{STOP}"
    assert sent["data"]["first"]["value"] == "交通预警：江城一桥严重拥堵"
    assert "解放大道八一路" in sent["data"]["remark"]["value"]
    # The same version again, now with its impact on route 1: the stop's follower has had it;
    # the route's rider gets it now — each once.
    impact = Impact(bus_routes=("R1",), trips_sampled=10, trips_affected=2, max_delay_s=300.0,
                    computed_at=stack.clock.now())
    await publish_warning(stack, dataclasses.replace(hit, impact=impact))
    await wait_for(lambda: len(state.templates) >= 2, within_s=10)
    assert state.templates[1]["touser"] == rider.openid
    assert state.templates[1]["url"] == f"{PUBLIC_URL}/"
    await publish_warning(stack, dataclasses.replace(hit, impact=impact))
    # A new version reaches both again; a far warning reaches nobody.
    far = dataclasses.replace(warning(stack, "w-far"), lon=stop.lon + 0.2, lat=stop.lat + 0.2)
    await publish_warning(stack, far)
    await publish_warning(stack, dataclasses.replace(hit, impact=impact, version=2))
    await wait_for(lambda: len(state.templates) >= 4, within_s=10)
    assert sorted(t["touser"] for t in state.templates[2:]) == sorted([f.openid, rider.openid])
    # Cancelled: no more.
    assert (await f.text("取消订阅 1")).content == "已取消订阅「解放大道八一路」"
    assert (await rider.text("取消订阅 1路")).content == "已取消订阅「1路」"
    await publish_warning(stack, dataclasses.replace(hit, impact=impact, version=3))
    done = await f.text("路况")  # a round trip: the notifier has had time to act
    assert done.status == 200
    await stack.clock.sleep(0.3)
    assert len(state.templates) == 4


async def test_unfollowing_forgets_the_follower(stack: Stack, mode: str) -> None:
    f = follower(stack, mode)
    await f.text("订阅 1路")
    await f.location(114.3, 30.56)
    bye = await f.event("unsubscribe")
    assert bye.body == "success"
    assert await store_of(stack).list_subscriptions(f.openid) == []
    assert await store_of(stack).find_location(f.openid) is None


# -- once -----------------------------------------------------------------------------------------


async def test_a_retried_msg_id_is_answered_once(stack: Stack, mode: str) -> None:
    f = follower(stack, mode)
    xml = message_xml(f.openid, "text", msg_id="880001", Content="订阅 1路")
    first = await f.post_xml(xml)
    retry = await f.post_xml(xml)  # WeChat's retry: same MsgId
    assert first.content.startswith("已订阅「1路」")
    assert retry.content == first.content  # the stored reply, not "您已订阅" from a second run
    assert len(await store_of(stack).list_subscriptions(f.openid)) == 1
    fresh = await f.text("订阅 1路")  # a new MsgId is a new message
    assert fresh.content == "您已订阅「1路」"


async def test_a_late_answer_goes_out_as_a_customer_service_message_once(
        stack: Stack, mode: str, wechat: tuple[WechatState, str]) -> None:
    state = wechat[0]
    app = stack.client.app
    assert app is not None
    app[WECHAT].reply_deadline_s = 0.0  # no answer can be ready in time
    f = follower(stack, mode)
    xml = message_xml(f.openid, "text", msg_id="990001", Content="江城一桥")
    reply = await f.post_xml(xml)
    assert reply.status == 200 and reply.body == "success"
    await wait_for(lambda: state.custom, within_s=10)
    assert state.custom[0]["touser"] == f.openid
    assert state.custom[0]["text"]["content"].startswith("【江城一桥】")
    assert state.token_calls == 1
    retry = await f.post_xml(xml)
    assert retry.body == "success"
    await stack.clock.sleep(0.2)
    assert len(state.custom) == 1


async def test_two_replicas_answer_a_message_once(stack: Stack, mode: str) -> None:
    """A second publisher on the same bus (shared key-value store) and database."""
    app1 = stack.client.app
    assert app1 is not None
    app2 = create_app(app1[PUBLISHER].config, bus=stack.bus, clock=stack.clock)
    other: TestClient[Any, Any] = TestClient(TestServer(app2))
    await other.start_server()
    try:
        await wait_for(lambda: is_ready(other), within_s=60.0)
        one, two = follower(stack, mode), Follower(other, "oFollower0001", aes=mode == "aes")
        xml = message_xml(one.openid, "text", msg_id="770001", Content="订阅 江城一桥")
        first = await one.post_xml(xml)
        second = await two.post_xml(xml)  # WeChat's retry landed on the other replica
        assert first.content.startswith("已订阅「江城一桥」")
        assert second.content == first.content
        # The subscription made on one replica is the other's too.
        listing = await two.text("我的订阅")
        assert "1. 江城一桥（道路）" in listing.content
    finally:
        await other.close()


async def test_without_a_token_the_callback_is_off() -> None:
    async with running_publisher() as env:
        for method in ("GET", "POST"):
            resp = await env.client.request(method, "/wechat/callback")
            assert resp.status == 503
            body = await resp.json()
            assert body["error"]["code"] == "wechat_disabled"
            assert "TTI_WECHAT_TOKEN" in body["error"]["message"]


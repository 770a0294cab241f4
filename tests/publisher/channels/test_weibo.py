"""Weibo: significant warnings and their clearance posted once through a stand-in of Weibo's
share API that checks every request as Weibo would (path, token, length, link), and can fail
requests to prove the retry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.publisher.channels.weibo import (
    WEIBO,
    WeiboClient,
    WeiboPoster,
    fit,
    weibo_length,
)
from services.publisher.state import Publisher
from shared.bus import EventBus, bus_from_url
from shared.bus.kv import kv_for_bus
from shared.clients.bigdata import BigdataClient
from shared.clients.warning import WarningClient
from shared.clock import Clock
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import WARNING, CapSeverity, WarningKind, WarningStatus
from tests.publisher import running_publisher, wait_for
from tests.publisher.channels.demo_feeds import warning
from tests.publisher.stack import Stack, import_demo, running_stack

TOKEN = "2.00weibo-secret-token-Xq9"
LINK = "https://tti.example.cn/cap/{warning_id}.xml"
BOUND = re.compile(r"https://tti\.example\.cn/\S+$")


@dataclass
class WeiboStandIn:
    """What the stand-in saw and how it answers: ``fail`` is a list of answers to give first
    (HTTP status, error_code) before it takes posts again."""

    posts: list[str] = field(default_factory=list)
    requests: int = 0
    fail: list[tuple[int, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def weibo_app(state: WeiboStandIn) -> web.Application:
    """Weibo's ``POST /2/statuses/share.json`` as the real API checks it."""

    def error(status: int, code: int, text: str) -> web.Response:
        state.refused.append(text)
        return web.json_response({"error": text, "error_code": code,
                                  "request": "/2/statuses/share.json"}, status=status)

    async def share(request: web.Request) -> web.Response:
        state.requests += 1
        if request.content_type != "application/x-www-form-urlencoded":
            return error(400, 10008, "param error, see doc for more info")
        form = await request.post()
        if form.get("access_token") != TOKEN:
            return error(401, 21332, "invalid_access_token")
        status = form.get("status")
        if not isinstance(status, str) or not status:
            return error(400, 10016, "miss required parameter (status)")
        # Weibo's count: a Chinese character is 1, two ASCII characters 1 (GBK bytes / 2).
        if math.ceil(len(status.encode("gbk", errors="replace")) / 2) > 140:
            return error(400, 20012, "Text too long, please input text less than 140 characters")
        if not BOUND.search(status):
            return error(403, 10017, "status must contain a URL of the app's security domain")
        if state.fail:
            http, code = state.fail.pop(0)
            return error(http, code, "system busy" if code else "internal error")
        if status in state.posts:
            return error(400, 20019, "repeat content!")
        state.posts.append(status)
        return web.json_response({"id": len(state.posts), "idstr": str(len(state.posts)),
                                  "text": status})

    app = web.Application()
    app.router.add_post("/2/statuses/share.json", share)
    return app


@pytest.fixture
async def standin() -> AsyncIterator[tuple[WeiboStandIn, str]]:
    state = WeiboStandIn()
    server = TestServer(weibo_app(state))
    await server.start_server()
    try:
        yield state, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def imported(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_demo(demo, tmp_path_factory.mktemp("db") / "geo.db")


@pytest.fixture
async def stack(demo: DemoRegion, imported: Path, tmp_path: Path,
                standin: tuple[WeiboStandIn, str]) -> AsyncIterator[Stack]:
    async with running_stack(demo, imported, tmp_path, weibo_access_token=TOKEN,
                             weibo_api_url=standin[1], weibo_link_url=LINK,
                             weibo_min_interval_s=0.05) as s:
        poster = poster_of(s)
        poster.backoff_initial_s = 0.02
        poster.backoff_max_s = 0.05
        yield s


def poster_of(stack: Stack) -> WeiboPoster:
    app = stack.client.app
    assert app is not None
    return app[WEIBO]


async def deliver(stack: Stack, *warnings: Any) -> None:
    """Publish warnings and wait until the poster has decided on every one."""
    poster = poster_of(stack)
    before = poster.handled
    for w in warnings:
        await stack.bus.publish(WARNING, w)
    await wait_for(lambda: poster.handled >= before + len(warnings), within_s=10)


def test_weibo_length_and_fit() -> None:
    assert weibo_length("江城一桥") == 4 and weibo_length("abc") == 2
    assert weibo_length("江城ab") == 3
    link = "https://tti.example.cn/cap/w-1.xml"
    short = fit("【拥堵预警】江城一桥严重拥堵", link)
    assert short == "【拥堵预警】江城一桥严重拥堵 " + link
    long = fit("江" * 300, link)
    assert weibo_length(long) <= 140 and long.endswith("… " + link)
    assert weibo_length(long) >= 139  # cut no shorter than it must be
    ascii_long = fit("x" * 400, link)
    assert weibo_length(ascii_long) <= 140 and ascii_long.endswith(link)


async def test_a_significant_warning_is_posted_once_and_its_clearance_once(
        stack: Stack, standin: tuple[WeiboStandIn, str]) -> None:
    state, _ = standin
    w = warning(stack, "w-bridge", segment_ids=(), road_names=("江城一桥",))
    # The same event delivered twice (the second after the first was posted), then a later
    # version: one post.
    await deliver(stack, w)
    assert len(state.posts) == 1
    await deliver(stack, w)
    await deliver(stack, dataclasses.replace(w, version=2, status=WarningStatus.UPDATED))
    assert len(state.posts) == 1 and state.requests == 1
    post = state.posts[0]
    assert post.startswith("【拥堵预警】江城一桥严重拥堵")
    assert post.endswith(" https://tti.example.cn/cap/w-bridge.xml")
    # Not significant: a minor congestion at level 3, and a vehicle alarm however severe.
    await deliver(stack, warning(stack, "w-minor", severity=CapSeverity.MINOR, level=3),
                  warning(stack, "w-alarm", kind=WarningKind.VEHICLE_ALARM,
                          severity=CapSeverity.EXTREME))
    assert len(state.posts) == 1
    # It ends (resolved, then closed by a department): one clearance.
    now = stack.clock.now()
    resolved = dataclasses.replace(w, version=3, status=WarningStatus.RESOLVED, ended_at=now,
                                   updated_at=now)
    closed = dataclasses.replace(resolved, version=4, status=WarningStatus.CLOSED)
    await deliver(stack, resolved)
    await deliver(stack, resolved)
    await deliver(stack, closed)
    assert len(state.posts) == 2
    assert state.posts[1].startswith("【预警解除】江城一桥严重拥堵：已于09:00解除")
    # The end of a warning never posted is not news on Weibo.
    minor_end = dataclasses.replace(warning(stack, "w-minor", severity=CapSeverity.MINOR,
                                            level=3), version=2,
                                    status=WarningStatus.RESOLVED, ended_at=now)
    await deliver(stack, minor_end)
    assert len(state.posts) == 2
    assert state.requests == 2 and not state.refused


async def test_a_failed_post_is_retried_with_backoff(
        stack: Stack, standin: tuple[WeiboStandIn, str]) -> None:
    state, _ = standin
    state.fail = [(500, 0), (403, 10023)]  # a server error, then Weibo's rate limit
    await deliver(stack, warning(stack, "w-closure", kind=WarningKind.CLOSURE,
                                 severity=CapSeverity.MODERATE, level=None))
    assert state.requests == 3 and len(state.posts) == 1
    assert state.posts[0].startswith("【道路封闭】")


async def test_a_refused_post_is_not_retried_and_the_token_never_logged(
        demo: DemoRegion, imported: Path, tmp_path: Path,
        standin: tuple[WeiboStandIn, str], caplog: pytest.LogCaptureFixture) -> None:
    state, url = standin
    caplog.set_level(logging.DEBUG)
    async with running_stack(demo, imported, tmp_path, weibo_access_token="wrong-" + TOKEN,
                             weibo_api_url=url, weibo_link_url=LINK,
                             weibo_min_interval_s=0.05) as stack:
        await deliver(stack, warning(stack, "w-x", severity=CapSeverity.EXTREME))
        assert state.requests == 1 and state.refused == ["invalid_access_token"]
        assert not state.posts
    assert "refused" in caplog.text
    assert TOKEN not in caplog.text and TOKEN not in repr(stack.publisher.config)


async def test_an_over_long_text_is_cut_and_keeps_its_link(
        stack: Stack, standin: tuple[WeiboStandIn, str]) -> None:
    state, _ = standin
    long = dataclasses.replace(
        warning(stack, "w-long", severity=CapSeverity.SEVERE),
        description="受江城一桥维修施工影响，" + "北向南方向车辆排队缓慢通行，" * 20)
    await deliver(stack, long)
    assert len(state.posts) == 1
    post = state.posts[0]
    assert post.endswith("… https://tti.example.cn/cap/w-long.xml")
    assert weibo_length(post) <= 140


@pytest.mark.parametrize("backend", ["memory", "nats"])
async def test_two_replicas_post_once_between_them(
        backend: str, request: pytest.FixtureRequest, unique_name: str,
        standin: tuple[WeiboStandIn, str]) -> None:
    """Every replica sees every warning; the shared store lets exactly one post it."""
    state, url = standin
    buses: list[EventBus] = []
    if backend == "memory":
        bus = bus_from_url("memory://", partitions=2)
        buses = [bus, bus]
    else:
        nats_url = request.getfixturevalue("nats_url")
        buses = [bus_from_url(nats_url, partitions=2, prefix=unique_name,
                              stream=unique_name.upper()) for _ in range(2)]
    for b in dict.fromkeys(buses):
        await b.start()
    clock = Clock()
    posters, clients = [], []
    try:
        for b in buses:
            client = WeiboClient(url, TOKEN)
            await client.start()
            clients.append(client)
            config = Config()
            publisher = Publisher(config, b, BigdataClient(config.bigdata_url),
                                  warning=WarningClient(config.warning_url), clock=clock)
            posters.append(WeiboPoster(
                publisher, client, posted=kv_for_bus(b, "weibo_posted"),
                slots=kv_for_bus(b, "weibo_slots", ttl_s=60), link_url=LINK,
                min_interval_s=0.05, backoff_initial_s=0.02))
        w = warning(clock, "w-twice")
        results = await asyncio.gather(*(p.handle(w) for p in posters))
        assert sorted(results) == ["duplicate", "posted"]
        ended = dataclasses.replace(w, version=2, status=WarningStatus.RESOLVED,
                                    ended_at=clock.now(), updated_at=clock.now())
        results = await asyncio.gather(*(p.handle(ended) for p in posters))
        assert sorted(results) == ["duplicate", "posted"]
        assert len(state.posts) == 2 and state.requests == 2
    finally:
        for client in clients:
            await client.close()
        for b in dict.fromkeys(buses):
            await b.close()
        if backend == "nats":
            await _drop_nats(request.getfixturevalue("nats_url"), unique_name.upper())


async def _drop_nats(url: str, stream: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(url)
    js = nc.jetstream()
    for bucket in ("weibo_posted", "weibo_slots"):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_key_value(f"{stream}_{bucket}")
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(stream)
    await nc.close()


async def test_without_a_token_weibo_is_off_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tti.publisher.weibo")
    async with running_publisher() as env:
        assert WEIBO not in env.app
    said = [r for r in caplog.records if r.name == "tti.publisher.weibo"]
    assert [r.getMessage() for r in said] == [
        "Weibo channel off: TTI_WEIBO_ACCESS_TOKEN is not set"]

"""Two publisher replicas on NATS JetStream and one PostgreSQL database: a WeChat message whose
retry lands on the other replica is answered once (the claim is in a NATS KV bucket), and a
subscription made through one replica is the other's too."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.publisher.app import PUBLISHER, create_app
from shared.bus.nats import NatsBus
from shared.config import Config
from tests.publisher import BigdataState, is_ready, make_bigdata_app, wait_for
from tests.publisher.channels.wechat_standin import APP_ID, TOKEN, Follower, message_xml

pytestmark = pytest.mark.integration


@pytest.fixture
async def replicas(nats_url: str, unique_name: str, pg_dsn: str
                   ) -> AsyncIterator[list[TestClient[Any, Any]]]:
    bigdata = TestServer(make_bigdata_app(BigdataState()))
    await bigdata.start_server()
    stream = unique_name.upper()
    clients: list[TestClient[Any, Any]] = []
    buses: list[NatsBus] = []
    try:
        for index in range(2):
            bus = NatsBus(nats_url, partitions=2, prefix=unique_name, stream=stream)
            await bus.start()
            buses.append(bus)
            config = Config(bigdata_url=str(bigdata.make_url("/")), db_url=pg_dsn,
                            bus_url=nats_url, bus_stream=stream, bus_prefix=unique_name,
                            partitions=2, replica_index=index, replica_count=2,
                            wechat_token=TOKEN, wechat_app_id=APP_ID)
            app = create_app(config, bus=bus)
            app[PUBLISHER].retry_initial_s = 0.02
            client: TestClient[Any, Any] = TestClient(TestServer(app))
            await client.start_server()
            clients.append(client)
        for client in clients:
            await wait_for(lambda: is_ready(client), within_s=30)  # noqa: B023 (awaited here)
        yield clients
    finally:
        for client in clients:
            await client.close()
        for bus in buses:
            await bus.close()
        await bigdata.close()
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for name in (f"KV_{stream}_wechat_msgs", stream):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
        await nc.close()


async def test_a_retry_on_the_other_replica_is_answered_once(
        replicas: list[TestClient[Any, Any]]) -> None:
    one = Follower(replicas[0], "oNatsFollower1")
    two = Follower(replicas[1], "oNatsFollower1")
    xml = message_xml(one.openid, "text", msg_id="660001", Content="订阅 珞喻路")
    first = await one.post_xml(xml)
    retry = await two.post_xml(xml)
    assert first.content.startswith("已订阅「珞喻路」"), first.content
    assert retry.content == first.content  # not "您已订阅": the conversation ran once
    listing = await two.text("我的订阅")
    assert "1. 珞喻路（道路）" in listing.content
    again = await one.text("订阅 珞喻路")  # a new message: computed, and the store says so
    assert again.content == "您已订阅「珞喻路」"

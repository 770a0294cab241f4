"""The WeChat followers' store on SQLite and PostgreSQL: subscriptions, locations, matching, a
restart, and two replicas on one database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.publisher.channels.wechat.store import (
    MAX_PER_FOLLOWER,
    Subscription,
    WechatStore,
)
from shared.db import database_from_url
from shared.errors import BadRequest
from tests.conftest import fresh_pg_database

T0 = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
StoreFactory = Callable[[], Awaitable[WechatStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
                     ) -> AsyncIterator[StoreFactory]:
    """Stores on one fresh database: each call is another replica (or a restart)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path}/tti.db"
        else:
            url = await stack.enter_async_context(fresh_pg_database(unique_name))

        async def factory() -> WechatStore:
            store = WechatStore(database_from_url(url))
            await store.open()
            stack.push_async_callback(store.close)
            return store

        yield factory


def sub(openid: str, kind: str, ref: str, minutes: int = 0, **kw: float) -> Subscription:
    return Subscription(openid, kind, ref, ref, T0 + timedelta(minutes=minutes), kw.get("lon"),
                        kw.get("lat"))


async def test_subscribe_list_and_cancel(make_store: StoreFactory) -> None:
    store = await make_store()
    assert await store.subscribe(sub("o1", "route", "R1", 0))
    assert await store.subscribe(sub("o1", "stop", "1479", 1, lon=114.30, lat=30.56))
    assert await store.subscribe(sub("o1", "road", "江城一桥", 2))
    assert not await store.subscribe(sub("o1", "route", "R1", 3))  # already held
    subs = await store.list_subscriptions("o1")
    assert [(s.kind, s.ref) for s in subs] == [("route", "R1"), ("stop", "1479"),
                                               ("road", "江城一桥")]
    assert subs[1].lon == 114.30 and subs[1].lat == 30.56 and subs[0].created_at == T0
    assert await store.list_subscriptions("o2") == []
    assert await store.unsubscribe("o1", "stop", "1479")
    assert not await store.unsubscribe("o1", "stop", "1479")
    assert await store.unsubscribe_all("o1") == 2
    assert await store.list_subscriptions("o1") == []


async def test_a_follower_has_at_most_ten(make_store: StoreFactory) -> None:
    store = await make_store()
    for i in range(MAX_PER_FOLLOWER):
        assert await store.subscribe(sub("o1", "route", f"R{i}", i))
    with pytest.raises(BadRequest) as exc:
        await store.subscribe(sub("o1", "route", "R99", 99))
    assert exc.value.code == "too_many"
    assert not await store.subscribe(sub("o1", "route", "R0", 100))  # held: not an error
    assert await store.subscribe(sub("o2", "route", "R99", 0))  # another follower's own ten


async def test_subscribers_of_routes_roads_and_stops_in_a_box(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.subscribe(sub("a", "route", "R1"))
    await store.subscribe(sub("b", "route", "R2"))
    await store.subscribe(sub("c", "road", "江城一桥"))
    await store.subscribe(sub("d", "stop", "near", lon=114.300, lat=30.560))
    await store.subscribe(sub("e", "stop", "far", lon=114.500, lat=30.700))
    found = await store.find_subscribers(routes=["R1", "R9"], roads=["江城一桥"],
                                         stops_in=(114.29, 30.55, 114.31, 30.57))
    assert sorted(s.openid for s in found) == ["a", "c", "d"]
    assert await store.find_subscribers() == []
    many = [f"X{i}" for i in range(450)] + ["R2"]  # more than one IN list
    assert [s.openid for s in await store.find_subscribers(routes=many)] == ["b"]


async def test_locations_and_unfollowing(make_store: StoreFactory) -> None:
    store = await make_store()
    assert await store.find_location("o1") is None
    await store.save_location("o1", 114.30, 30.56, "江城广场", T0)
    await store.save_location("o1", 114.31, 30.57, "", T0 + timedelta(minutes=5))
    held = await store.find_location("o1")
    assert held is not None and (held.lon, held.lat, held.at) == (114.31, 30.57,
                                                                  T0 + timedelta(minutes=5))
    await store.subscribe(sub("o1", "route", "R1"))
    await store.forget("o1")
    assert await store.find_location("o1") is None and await store.list_subscriptions("o1") == []


async def test_replicas_and_restarts_see_the_same(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    await a.subscribe(sub("o1", "road", "江城一桥"))
    await b.save_location("o1", 114.3, 30.5, "", T0)
    assert [s.ref for s in await b.list_subscriptions("o1")] == ["江城一桥"]
    await a.close()
    again = await make_store()  # a restart: the migrations do not run twice, the data stays
    assert [s.ref for s in await again.list_subscriptions("o1")] == ["江城一桥"]
    assert await again.find_location("o1") is not None

"""shared/bus/kv: the same contract on the memory backend and a real NATS JetStream KV bucket.

Two "replicas" are two stores opened on two buses (NATS) or on the one in-process bus (memory):
what one writes the other reads, and of two racing ``create`` calls exactly one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shared.bus import EventBus, bus_from_url
from shared.bus.kv import KeyValue, MemoryKeyValue, NatsKeyValue, kv_for_bus
from shared.errors import BusError, ConfigError

KvFactory = Callable[..., Awaitable[KeyValue]]


@pytest.fixture(params=["memory", "nats"])
async def make_kv(request: pytest.FixtureRequest, unique_name: str
                  ) -> AsyncIterator[KvFactory]:
    """Stores on one backend namespace per test; each call is another replica's store."""
    buses: list[EventBus] = []
    memory = bus_from_url("memory://", partitions=2)
    url = request.getfixturevalue("nats_url") if request.param == "nats" else ""

    async def factory(bucket: str = "test", ttl_s: float | None = None) -> KeyValue:
        if request.param == "memory":
            if not buses:
                await memory.start()
                buses.append(memory)
            return kv_for_bus(memory, bucket, ttl_s=ttl_s)
        bus = bus_from_url(url, partitions=2,
                           prefix=unique_name, stream=unique_name.upper())
        await bus.start()
        buses.append(bus)
        return kv_for_bus(bus, bucket, ttl_s=ttl_s)

    yield factory
    for bus in buses:
        await bus.close()
    if request.param == "nats":
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        js = nc.jetstream()
        for name in ("test", "other", "short"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(f"{unique_name.upper()}_{name}")
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(unique_name.upper())
        await nc.close()


async def test_put_get_delete_across_replicas(make_kv: KvFactory) -> None:
    a, b = await make_kv(), await make_kv()
    assert await a.get("k1") is None
    await a.put("k1", b"one")
    assert await b.get("k1") == b"one"
    await b.put("k1", "二".encode())
    assert await a.get("k1") == "二".encode()
    await a.delete("k1")
    assert await b.get("k1") is None
    await b.delete("k1")  # absent: no error
    await a.put("k.with/every_char=-", b"")
    assert await b.get("k.with/every_char=-") == b""


async def test_create_only_when_absent(make_kv: KvFactory) -> None:
    a, b = await make_kv(), await make_kv()
    assert await a.create("msg-1", b"a") is True
    assert await b.create("msg-1", b"b") is False
    assert await b.get("msg-1") == b"a"  # the loser wrote nothing
    await a.delete("msg-1")
    assert await b.create("msg-1", b"b") is True  # a deleted key may be created again
    assert await a.get("msg-1") == b"b"


async def test_racing_creates_have_one_winner(make_kv: KvFactory) -> None:
    stores = [await make_kv() for _ in range(4)]
    for round_ in range(5):
        key = f"race-{round_}"
        won = await asyncio.gather(*(s.create(key, str(i).encode())
                                     for i, s in enumerate(stores) for _ in range(3)))
        assert sum(won) == 1
        winner = won.index(True) // 3
        assert await stores[0].get(key) == str(winner).encode()


async def test_buckets_are_separate(make_kv: KvFactory) -> None:
    a, b = await make_kv("test"), await make_kv("other")
    await a.put("k", b"a")
    assert await b.get("k") is None
    assert await b.create("k", b"b") is True
    assert await a.get("k") == b"a"


async def test_keys_expire_after_the_bucket_ttl(make_kv: KvFactory) -> None:
    a, b = await make_kv("short", ttl_s=1.0), await make_kv("short", ttl_s=1.0)
    await a.put("k", b"v")
    assert await b.get("k") == b"v"
    deadline = asyncio.get_running_loop().time() + 30.0
    while await b.get("k") is not None:  # NATS expires on its own schedule: wait, bounded
        assert asyncio.get_running_loop().time() < deadline, "the key never expired"
        await asyncio.sleep(0.1)
    assert await a.create("k", b"again") is True


async def test_bad_keys_and_buckets_are_refused(make_kv: KvFactory) -> None:
    kv = await make_kv()
    for key in ("", "a b", "a*", "a>", "ü", ".a", "a.", "x" * 300):
        with pytest.raises(ValueError, match="invalid key"):
            await kv.get(key)
    with pytest.raises(ConfigError):
        MemoryKeyValue("bad name")
    with pytest.raises(ConfigError):
        MemoryKeyValue("ok", ttl_s=0)


def test_memory_expiry_follows_its_clock() -> None:
    now = [100.0]
    kv = MemoryKeyValue("t", ttl_s=10.0, clock=lambda: now[0])

    async def run() -> None:
        await kv.put("a", b"1")
        now[0] += 9.9
        assert await kv.get("a") == b"1"
        await kv.put("a", b"2")  # a write restarts the ttl
        now[0] += 9.9
        assert await kv.get("a") == b"2"
        now[0] += 0.2
        assert await kv.get("a") is None
        assert len(kv) == 0

    asyncio.run(run())


@pytest.mark.integration
async def test_nats_store_on_a_closed_bus_is_a_bus_error(nats_url: str, unique_name: str
                                                         ) -> None:
    bus = bus_from_url(nats_url, partitions=2, prefix=unique_name, stream=unique_name.upper())
    await bus.start()
    kv = kv_for_bus(bus, "test")
    assert isinstance(kv, NatsKeyValue)
    await kv.put("k", b"v")
    await bus.close()
    with pytest.raises(BusError):
        await kv.get("k")
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.delete_key_value(f"{unique_name.upper()}_test")
    with contextlib.suppress(Exception):
        await js.delete_stream(unique_name.upper())
    await nc.close()

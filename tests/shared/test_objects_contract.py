"""shared/bus/objects: blobs larger than a NATS message, kept by one replica, read by another —
on the memory backend and on a real JetStream object store."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shared.bus import EventBus, bus_from_url
from shared.bus.objects import MemoryObjects, Objects, objects_for_bus

Factory = Callable[[], Awaitable[Objects]]


@pytest.fixture(params=["memory", "nats"])
async def make_store(request: pytest.FixtureRequest, unique_name: str
                     ) -> AsyncIterator[Factory]:
    """Each call is another replica's store of the same bucket."""
    buses: list[EventBus] = []
    memory = bus_from_url("memory://", partitions=2)
    url = request.getfixturevalue("nats_url") if request.param == "nats" else ""

    async def factory() -> Objects:
        if request.param == "memory":
            if not buses:
                await memory.start()
                buses.append(memory)
            return objects_for_bus(memory, "photos", max_bytes=8 << 20)
        bus = bus_from_url(url, partitions=2, prefix=unique_name, stream=unique_name.upper())
        await bus.start()
        buses.append(bus)
        return objects_for_bus(bus, "photos", max_bytes=64 << 20)

    yield factory
    for bus in buses:
        await bus.close()
    if request.param == "nats":
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_object_store(f"{unique_name.upper()}_photos")
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(unique_name.upper())
        await nc.close()


async def test_a_blob_larger_than_a_message_is_read_back_by_another_replica(
        make_store: Factory) -> None:
    a, b = await make_store(), await make_store()
    photo = os.urandom(2 * 1024 * 1024)  # a full-size report photo: twice NATS's 1 MB payload
    name = hashlib.sha256(photo).hexdigest()
    assert await b.get(name) is None
    await a.put(name, photo)
    assert await b.get(name) == photo
    await b.put(name, photo)  # the same photo again (a resent report): still one, still whole
    assert await a.get(name) == photo
    with pytest.raises(ValueError):
        await a.get("not a key")


async def test_memory_blobs_are_bounded_oldest_first() -> None:
    store = MemoryObjects("b", max_bytes=10)
    await store.put("one", b"123456")
    await store.put("two", b"abcdef")
    assert await store.get("one") is None and await store.get("two") == b"abcdef"

"""Blobs too large for an event, shared by every replica: a citizen report's photo.

An event references the blob by name (its SHA-256); whichever replica later serves it reads it
back. Two backends, chosen by the bus like :mod:`shared.bus.kv`:

* :class:`MemoryObjects` for the embedded run: one dict per (bus, bucket), bounded in bytes
  (the oldest go first), so every object opened on the same
  :class:`~shared.bus.memory.MemoryBus` shares it.
* :class:`NatsObjects` on a JetStream object store ``<stream>_<bucket>`` (created if missing;
  NATS chunks a blob, so it may exceed the server's message size), ``ttl_s`` its age limit and
  ``max_bytes`` its size limit. NATS failures and timeouts are :class:`BusError`.

Names use NATS's key characters (a hex digest is one).
"""

from __future__ import annotations

import abc
import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig

from shared.bus.base import EventBus
from shared.bus.kv import check_key
from shared.errors import BusError, ConfigError

__all__ = ["MemoryObjects", "NatsObjects", "Objects", "objects_for_bus"]


class Objects(abc.ABC):
    """One bucket of blobs by name."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    @abc.abstractmethod
    async def put(self, name: str, data: bytes) -> None:
        """Keep ``data`` under ``name`` (replacing what it held)."""

    @abc.abstractmethod
    async def get(self, name: str) -> bytes | None:
        """The blob, or None when absent (never kept, expired or evicted)."""


class MemoryObjects(Objects):
    """Blobs in this process, at most ``max_bytes`` together (oldest evicted first)."""

    def __init__(self, bucket: str, *, max_bytes: int,
                 data: OrderedDict[str, bytes] | None = None) -> None:
        super().__init__(bucket)
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict() if data is None else data

    async def put(self, name: str, data: bytes) -> None:
        self._data.pop(check_key(name), None)
        self._data[name] = bytes(data)
        while sum(len(v) for v in self._data.values()) > self.max_bytes and len(self._data) > 1:
            self._data.popitem(last=False)

    async def get(self, name: str) -> bytes | None:
        return self._data.get(check_key(name))


_MEMORY: weakref.WeakKeyDictionary[EventBus, dict[str, OrderedDict[str, bytes]]] = (
    weakref.WeakKeyDictionary())


class NatsObjects(Objects):
    """A JetStream object store; reopened on a new connection, requests bounded in time."""

    def __init__(self, js: Callable[[], Any], bucket: str, *, ttl_s: float | None,
                 max_bytes: int, request_timeout_s: float = 10.0) -> None:
        super().__init__(bucket)
        self._js = js
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.request_timeout_s = request_timeout_s
        self._store: Any = None
        self._store_js: Any = None
        self._opening = asyncio.Lock()

    async def _bucket(self) -> Any:
        js = self._js()
        async with self._opening:
            if self._store is None or js is not self._store_js:
                try:
                    self._store = await js.object_store(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    try:
                        self._store = await js.create_object_store(
                            bucket=self.bucket, config=ObjectStoreConfig(
                                bucket=self.bucket, ttl=self.ttl_s, max_bytes=self.max_bytes,
                                description="TTI blobs referenced by events"))
                    except nats.errors.Error:  # created meanwhile by another replica
                        self._store = await js.object_store(self.bucket)
                self._store_js = js
        return self._store

    async def _call(self, what: str, op: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await op(await self._bucket())
        except nats.js.errors.NotFoundError:
            raise
        except TimeoutError as exc:
            raise BusError(f"object store {self.bucket}: no answer from NATS to {what}") from exc
        except nats.errors.Error as exc:
            raise BusError(f"object store {self.bucket}: {what} failed: {exc}") from exc

    async def put(self, name: str, data: bytes) -> None:
        check_key(name)
        await self._call("put", lambda store: store.put(name, data))

    async def get(self, name: str) -> bytes | None:
        check_key(name)
        try:
            result = await self._call("get", lambda store: store.get(name))
        except nats.js.errors.NotFoundError:  # ObjectNotFoundError, ObjectDeletedError
            return None
        return None if result.data is None else bytes(result.data)


def objects_for_bus(bus: EventBus, bucket: str, *, ttl_s: float | None = None,
                    max_bytes: int = 1 << 30, memory_max_bytes: int = 256 << 20) -> Objects:
    """The blob backend matching ``bus`` (nothing is opened until the first call).

    MemoryBus → :class:`MemoryObjects` shared under the bucket name by everything on that bus,
    at most ``memory_max_bytes`` (and ``max_bytes``); NatsBus → :class:`NatsObjects` on
    ``<stream>_<bucket>``, at most ``max_bytes`` on the server.
    """
    from shared.bus.memory import MemoryBus
    from shared.bus.nats import NatsBus

    if isinstance(bus, MemoryBus):
        buckets = _MEMORY.get(bus)
        if buckets is None:
            buckets = _MEMORY[bus] = {}
        return MemoryObjects(bucket, max_bytes=min(max_bytes, memory_max_bytes),
                             data=buckets.setdefault(bucket, OrderedDict()))
    if isinstance(bus, NatsBus):
        return NatsObjects(bus._js_or_raise, f"{bus.stream}_{bucket}", ttl_s=ttl_s,
                           max_bytes=max_bytes)
    raise ConfigError(f"no object backend for {type(bus).__name__}")

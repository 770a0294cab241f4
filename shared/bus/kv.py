"""A small key-value store shared by the replicas of a service: get, put, create, delete.

For state that several replicas must agree on but that is not worth a database table: a
message already being answered, a cached access token, "this was sent once". Two backends:

* :class:`MemoryKeyValue` for the embedded run: a dict per (bus, bucket), so every object
  opened on the same :class:`~shared.bus.memory.MemoryBus` shares it (replicas in one process).
* :class:`NatsKeyValue` on a JetStream KV bucket ``<stream>_<bucket>`` (created if missing, one
  value per key). NATS 2.9 has no per-message TTL, so a bucket's ``ttl_s`` is the stream's
  ``max_age``: a key is forgotten ``ttl_s`` after its last write, in both backends.

Keys use NATS's key characters (letters, digits, ``-/_=.``); hash anything else. Values are
bytes. ``create`` is the compare-and-set that decides who goes first: it writes only when the key
is absent (or was deleted, or expired) and says whether it did.
"""

from __future__ import annotations

import abc
import asyncio
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors

from shared.bus.base import EventBus
from shared.errors import BusError, ConfigError

__all__ = ["KeyValue", "MemoryKeyValue", "NatsKeyValue", "kv_for_bus"]

_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]{1,256}$")
_BUCKET_RE = re.compile(r"^[-_a-zA-Z0-9]{1,64}$")


def check_key(key: str) -> str:
    """``key`` if it is a valid key, else :class:`ValueError` (a programming error)."""
    if not _KEY_RE.match(key) or key.startswith(".") or key.endswith("."):
        raise ValueError(f"invalid key {key!r}: use letters, digits and - / _ = . (hash others)")
    return key


class KeyValue(abc.ABC):
    """One bucket of keys; ``ttl_s`` (None: forever) counts from each key's last write."""

    def __init__(self, bucket: str, ttl_s: float | None) -> None:
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(f"bucket name {bucket!r}: use letters, digits, - and _")
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError(f"bucket {bucket}: ttl_s must be positive")
        self.bucket = bucket
        self.ttl_s = ttl_s

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The key's value, or None when absent (never written, deleted or expired)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Write the key, whatever it held."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes) -> bool:
        """Write the key only if it is absent; False (nothing written) when it is present."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Forget the key (no error when absent)."""


# -- memory ---------------------------------------------------------------------------------


class MemoryKeyValue(KeyValue):
    """A bucket in this process; ``clock`` (seconds, monotonic) decides expiry."""

    def __init__(self, bucket: str, ttl_s: float | None = None, *,
                 data: dict[str, tuple[bytes, float]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(bucket, ttl_s)
        self._data: dict[str, tuple[bytes, float]] = {} if data is None else data
        self._clock = clock
        self._writes = 0

    def _live(self, key: str) -> bytes | None:
        held = self._data.get(key)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._data[key]
            return None
        return held[0]

    def _write(self, key: str, value: bytes) -> None:
        expires = self._clock() + self.ttl_s if self.ttl_s is not None else float("inf")
        self._data[key] = (bytes(value), expires)
        self._writes += 1
        if self._writes % 1024 == 0:  # expired keys nobody reads again go too
            now = self._clock()
            for k in [k for k, (_, at) in self._data.items() if at <= now]:
                del self._data[k]

    async def get(self, key: str) -> bytes | None:
        return self._live(check_key(key))

    async def put(self, key: str, value: bytes) -> None:
        self._write(check_key(key), value)

    async def create(self, key: str, value: bytes) -> bool:
        if self._live(check_key(key)) is not None:
            return False
        self._write(key, value)
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(check_key(key), None)

    def __len__(self) -> int:
        return sum(1 for k in list(self._data) if self._live(k) is not None)


_MEMORY: weakref.WeakKeyDictionary[EventBus, dict[str, dict[str, tuple[bytes, float]]]] = (
    weakref.WeakKeyDictionary())


# -- NATS JetStream KV ----------------------------------------------------------------------


class NatsKeyValue(KeyValue):
    """A JetStream KV bucket; every request is abandoned after ``request_timeout_s``.

    ``js`` returns the current JetStream context (``NatsBus._js_or_raise``, which raises
    :class:`BusError` while the bus is closed); the bucket is reopened on a new connection.
    NATS failures and timeouts are :class:`BusError`.
    """

    def __init__(self, js: Callable[[], Any], bucket: str, ttl_s: float | None = None, *,
                 request_timeout_s: float = 5.0, description: str = "",
                 replicas: int = 1) -> None:
        super().__init__(bucket, ttl_s)
        self._js = js
        self.replicas = replicas
        self.request_timeout_s = request_timeout_s
        self.description = description or f"TTI shared state: {bucket}"
        self._kv: Any = None
        self._kv_js: Any = None
        self._opening: asyncio.Lock | None = None

    async def _bucket(self) -> Any:
        js = self._js()
        if self._kv is not None and js is self._kv_js:
            return self._kv
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._kv is None or js is not self._kv_js:
                self._kv = await self._open(js)
                self._kv_js = js
        return self._kv

    async def _open(self, js: Any) -> Any:
        try:
            return await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            return await js.create_key_value(bucket=self.bucket, history=1, ttl=self.ttl_s,
                                             description=self.description,
                                             replicas=self.replicas)
        except nats.errors.Error:
            return await js.key_value(self.bucket)  # created meanwhile by another replica

    async def _call(self, what: str, op: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await op(await self._bucket())
        except (nats.js.errors.NotFoundError, nats.js.errors.KeyWrongLastSequenceError):
            raise  # a key's state, for the caller
        except TimeoutError as exc:
            raise BusError(f"KV bucket {self.bucket}: no answer from NATS to {what}") from exc
        except nats.errors.Error as exc:
            raise BusError(f"KV bucket {self.bucket}: {what} failed: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        check_key(key)
        try:
            entry = await self._call("get", lambda kv: kv.get(key))
        except nats.js.errors.NotFoundError:  # KeyNotFoundError, KeyDeletedError
            return None
        return b"" if entry.value is None else bytes(entry.value)  # None: an empty value

    async def put(self, key: str, value: bytes) -> None:
        check_key(key)
        await self._call("put", lambda kv: kv.put(key, value))

    async def create(self, key: str, value: bytes) -> bool:
        check_key(key)
        try:
            await self._call("create", lambda kv: kv.create(key, value))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._call("delete", lambda kv: kv.delete(key))


def kv_for_bus(bus: EventBus, bucket: str, *, ttl_s: float | None = None,
               request_timeout_s: float = 5.0) -> KeyValue:
    """The key-value backend matching ``bus`` (nothing is opened until the first call).

    MemoryBus → :class:`MemoryKeyValue` shared by everything opened on that bus under the same
    bucket name; NatsBus → :class:`NatsKeyValue` on bucket ``<stream>_<bucket>``.
    """
    from shared.bus.memory import MemoryBus
    from shared.bus.nats import NatsBus

    if isinstance(bus, MemoryBus):
        buckets = _MEMORY.get(bus)
        if buckets is None:
            buckets = _MEMORY[bus] = {}
        return MemoryKeyValue(bucket, ttl_s, data=buckets.setdefault(bucket, {}))
    if isinstance(bus, NatsBus):
        return NatsKeyValue(bus._js_or_raise, f"{bus.stream}_{bucket}", ttl_s,
                            request_timeout_s=request_timeout_s, replicas=bus.stream_replicas)
    raise ConfigError(f"no key-value backend for {type(bus).__name__}")

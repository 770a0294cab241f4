"""Leader leases: one replica of a service is active, the others stand by and take over.

A :class:`Lease` is held by at most one replica at a time. The holder acts (publishes); the
others keep their state warm and act only once they hold it. Two backends:

* :class:`MemoryLease` for the embedded run: acquired at ``start`` unless another object in the
  process holds the same name, in which case it waits and gets it when that one stops.
* :class:`NatsLease` on a JetStream KV bucket (one key per lease name; its value names the
  holder). Acquire with ``create`` (fails if the key exists); renew with a compare-and-set
  ``update(last=revision)`` every ``renew_s``; a standby that sees the same revision for ``ttl_s``
  takes over with a compare-and-set on that revision; a clean stop deletes the key (again on the
  revision) so a standby acquires at its next poll.

Why a lost lease is noticed by the holder before anyone else can take it
------------------------------------------------------------------------
All durations are measured on each host's own monotonic clock (the event loop's), so only clock
*rates* matter between hosts, never their offsets (wall clocks may be skewed freely).

* The holder notes ``sent``, the monotonic time just *before* it sends a create/update. When that
  write succeeds with revision ``r``, the holder is entitled to act until
  ``deadline = sent + ttl_s - margin_s``; :attr:`Lease.held` is false from that instant on, even
  if the renewing task were late or dead, and every request is abandoned at the deadline.
* The server stores ``r`` after ``sent``; a standby first observes ``r`` after it is stored, at
  ``seen ≥ sent``, and takes over only with ``update(last=r)`` at ``seen + ttl_s`` or later. The
  compare-and-set fails if the holder wrote anything after ``r``.
* So a takeover of ``r`` happens at ``≥ sent + ttl_s``, at least ``margin_s`` after the holder
  stopped being active. ``margin_s`` (default ``ttl_s / 5``, 3 s) absorbs a rate difference
  between the clocks (parts per million) and the gap between checking :attr:`~Lease.held` and
  acting (event-loop lag); a replica should check ``held`` right before each act.

A dead holder is replaced within ``poll_s + ttl_s`` of its last renewal (17 s with the defaults
ttl 15 s, renew 3 s, poll 2 s); a cleanly stopped one within ``poll_s``. A renewal that fails
(timeout, disconnect, reconnecting server) is retried at the normal cadence; the holder gives the
lease up when its deadline passes without a success. A renewal whose write was stored but whose
acknowledgment was lost is recognised on the next attempt (the key holds this instance's token at a
newer revision) and adopted, keeping the deadline of the last *confirmed* write.

Timings use real time (the event loop's clock), not :class:`shared.clock.Clock`: they pace a
server and other hosts, not the traffic.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import re
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from prometheus_client import Counter, Gauge

from shared.bus.base import EventBus
from shared.errors import BusError, ConfigError

__all__ = ["Lease", "MemoryLease", "MemoryLeaseRegistry", "NatsLease", "OnChange", "lease_for_bus"]

log = logging.getLogger("tti.lease")

OnChange = Callable[[bool], "Awaitable[None] | None"]

HELD = Gauge("tti_lease_held", "1 while this process holds the lease", ["lease"])
CHANGES = Counter("tti_lease_changes_total", "Lease transitions, by new state", ["lease", "to"])

_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # NATS KV key characters (no wildcards)
_WRONG_LAST_SEQUENCE = 10071  # JetStream error code: expected last subject sequence mismatch


class Lease(abc.ABC):
    """A named lease held by at most one replica (``holder``) at a time.

    ``on_change(True)`` runs when the lease is acquired and ``on_change(False)`` when it is lost
    or released; calls run one at a time, in order, outside the renewal path (a slow callback
    never delays a renewal). Gate every act on :attr:`held`, which turns false at the deadline
    even before the callback runs.
    """

    def __init__(self, name: str, holder: str, *, on_change: OnChange | None = None) -> None:
        if not name:
            raise ConfigError("a lease needs a name")
        if not holder:
            raise ConfigError("a lease needs a holder identity")
        self.name = name
        self.holder = holder
        self._on_change = on_change
        self._is_held = False
        self._held_event = asyncio.Event()
        self._lost_event = asyncio.Event()
        self._lost_event.set()
        self._changes: asyncio.Queue[bool] = asyncio.Queue()
        self._notifier: asyncio.Task[None] | None = None
        self._gauge: Any = HELD.labels(name)  # creates the series at 0 if new; never resets it

    # -- interface ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin acquiring (returns at once; the lease may be acquired later)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop; if held, give it up (``on_change(False)`` has run) and release it at once."""

    @abc.abstractmethod
    async def find_holder(self) -> str | None:
        """The identity of the current holder as far as the backend knows, or None."""

    @property
    def held(self) -> bool:
        """Whether this replica holds the lease right now (and may act)."""
        return self._is_held

    async def wait_held(self) -> None:
        """Return once the lease is held (at once if it is)."""
        await self._held_event.wait()

    async def wait_lost(self) -> None:
        """Return once the lease is not held (at once if it is not)."""
        await self._lost_event.wait()

    # -- shared machinery ---------------------------------------------------------------------

    def _start_notifier(self) -> None:
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify(), name=f"lease-notify:{self.name}")

    async def _stop_notifier(self) -> None:
        """Let queued callbacks finish, then end the notifier task."""
        task, self._notifier = self._notifier, None
        if task is None:
            return
        if not task.done():
            await self._changes.join()
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _notify(self) -> None:
        while True:
            value = await self._changes.get()
            try:
                if self._on_change is not None:
                    result = self._on_change(value)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                log.exception("lease %s: on_change(%s) failed", self.name, value,
                              extra={"lease": self.name, "holder": self.holder})
            finally:
                self._changes.task_done()

    def _transition(self, held: bool, reason: str) -> None:
        """Record a change of state: events, metrics, one log line, the callback."""
        if held == self._is_held:
            return
        self._is_held = held
        extra = {"lease": self.name, "holder": self.holder, "reason": reason}
        if held:
            self._lost_event.clear()
            self._held_event.set()
            log.info("lease %s acquired by %s (%s)", self.name, self.holder, reason, extra=extra)
        else:
            self._held_event.clear()
            self._lost_event.set()
            level = logging.INFO if reason == "released" else logging.WARNING
            log.log(level, "lease %s no longer held by %s (%s)", self.name, self.holder, reason,
                    extra=extra)
        self._gauge.set(1 if held else 0)
        CHANGES.labels(self.name, "held" if held else "standby").inc()
        self._changes.put_nowait(held)


# -- memory ---------------------------------------------------------------------------------


class MemoryLeaseRegistry:
    """Which :class:`MemoryLease` holds each name, and who waits for it (first come first)."""

    def __init__(self) -> None:
        self._holders: dict[str, MemoryLease] = {}
        self._waiting: dict[str, list[MemoryLease]] = {}

    def find_holder(self, name: str) -> MemoryLease | None:
        """The lease object holding ``name``, if any."""
        return self._holders.get(name)

    def _request(self, lease: MemoryLease) -> bool:
        """Grant ``name`` to ``lease`` if free (True), else queue it (False)."""
        if lease.name not in self._holders:
            self._holders[lease.name] = lease
            return True
        queue = self._waiting.setdefault(lease.name, [])
        if lease not in queue:
            queue.append(lease)
        return False

    def _release(self, lease: MemoryLease) -> MemoryLease | None:
        """Withdraw ``lease``; when it held the name, hand it to the next waiter (returned)."""
        queue = self._waiting.get(lease.name, [])
        if lease in queue:
            queue.remove(lease)
        if self._holders.get(lease.name) is not lease:
            return None
        del self._holders[lease.name]
        if not queue:
            self._waiting.pop(lease.name, None)
            return None
        nxt = queue.pop(0)
        self._holders[lease.name] = nxt
        return nxt


_DEFAULT_REGISTRY = MemoryLeaseRegistry()
_BUS_REGISTRIES: weakref.WeakKeyDictionary[EventBus, MemoryLeaseRegistry] = (
    weakref.WeakKeyDictionary())


class MemoryLease(Lease):
    """An in-process lease: held from ``start`` until ``stop`` unless another object has it.

    Objects with the same name and registry share one lease; a second one waits until the
    holder stops and is then handed the lease. :func:`lease_for_bus` gives each
    :class:`~shared.bus.memory.MemoryBus` its own registry (replicas sharing state share a bus),
    so a test that leaks a lease cannot block another test's run.
    """

    def __init__(self, name: str, holder: str, *, on_change: OnChange | None = None,
                 registry: MemoryLeaseRegistry | None = None) -> None:
        super().__init__(name, holder, on_change=on_change)
        self._registry = registry if registry is not None else _DEFAULT_REGISTRY
        self._started = False

    async def start(self) -> None:
        """Take the lease if free, else wait for it (returns at once)."""
        if self._started:
            return
        self._started = True
        self._start_notifier()
        if self._registry._request(self):
            self._transition(True, "acquired")
        else:
            log.info("lease %s held by %s; %s stands by", self.name, await self.find_holder(),
                     self.holder, extra={"lease": self.name, "holder": self.holder})

    def _granted(self) -> None:
        self._transition(True, "handed over")

    async def stop(self) -> None:
        """Give the lease up (callbacks done) and hand it to the next waiter, if any."""
        if not self._started:
            return
        self._started = False
        self._transition(False, "released")
        await self._stop_notifier()  # on_change(False) has run before anyone else may act
        nxt = self._registry._release(self)
        if nxt is not None:
            nxt._granted()

    async def find_holder(self) -> str | None:
        """The holder identity of the object holding this name in the registry."""
        lease = self._registry.find_holder(self.name)
        return lease.holder if lease is not None else None


# -- NATS JetStream KV ----------------------------------------------------------------------


class NatsLease(Lease):
    """A lease on a JetStream KV key; see the module docstring for the timing argument.

    ``js`` returns the current JetStream context (``NatsBus._js_or_raise``: it raises
    :class:`BusError` while the bus is closed). The bucket is created if missing. The key's
    value is JSON ``{"holder": …, "instance": …}``; the instance token is new on every
    ``start``, so a restarted replica with the same ``holder`` never mistakes the key for its own.
    """

    def __init__(self, js: Callable[[], Any], bucket: str, name: str, holder: str, *,
                 on_change: OnChange | None = None, ttl_s: float = 15.0, renew_s: float = 3.0,
                 poll_s: float = 2.0, margin_s: float | None = None,
                 request_timeout_s: float | None = None, replicas: int = 1) -> None:
        super().__init__(name, holder, on_change=on_change)
        if not _KEY_RE.match(name):
            raise ConfigError(f"lease name {name!r}: use letters, digits and - / _ = .")
        margin = ttl_s / 5 if margin_s is None else margin_s
        if not (ttl_s > 0 and renew_s > 0 and poll_s > 0 and margin > 0):
            raise ConfigError("lease timings must be positive")
        if renew_s >= ttl_s - margin:
            raise ConfigError(f"lease renew_s ({renew_s:g}) must be below ttl_s - margin_s "
                              f"({ttl_s:g} - {margin:g})")
        self._js = js
        self.bucket = bucket
        self.replicas = replicas
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.poll_s = poll_s
        self.margin_s = margin
        self.request_timeout_s = request_timeout_s if request_timeout_s is not None else max(
            renew_s, 1.0)
        self._kv: Any = None
        self._kv_js: Any = None  # the JetStream context self._kv was opened on
        self._instance = ""
        self._value = b""
        self._revision = 0
        self._deadline = 0.0  # monotonic time at which the held lease lapses
        self._sent = 0.0  # when the last confirmed write was sent
        self._seen: tuple[int, float] | None = None  # (revision, first seen) while standing by
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def held(self) -> bool:
        """Held and not past the deadline of the last confirmed write (even if the task lags)."""
        return self._is_held and asyncio.get_running_loop().time() < self._deadline

    async def start(self) -> None:
        """Open (or create) the bucket and start acquiring; raises BusError if NATS refuses."""
        if self._task is not None:
            return
        try:
            await self._call(self._current_kv())
        except TimeoutError as exc:
            raise BusError(f"lease bucket {self.bucket}: no answer from NATS") from exc
        self._instance = uuid.uuid4().hex
        self._value = orjson.dumps({"holder": self.holder, "instance": self._instance})
        self._seen = None
        self._start_notifier()
        self._task = asyncio.create_task(self._run(), name=f"lease:{self.name}")

    async def stop(self) -> None:
        """Stop renewing; if held, step down (callbacks done) and delete the key."""
        task, self._task = self._task, None
        if task is None:
            return
        await _cancel(task)
        was_held = self._is_held
        self._transition(False, "released")
        await self._stop_notifier()  # the service stopped acting before a standby may start
        if was_held:
            await self._release()

    async def find_holder(self) -> str | None:
        """The holder named in the key, or None when it is free (or NATS is unreachable)."""
        try:
            entry = await self._call(self._get())
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, BusError, TimeoutError):
            return None
        return _decode(entry.value)[0]

    # -- internals ----------------------------------------------------------------------------

    async def _current_kv(self) -> Any:
        """The bucket, reopened when the bus has a new connection (BusError while closed)."""
        js = self._js()
        if self._kv is None or js is not self._kv_js:
            self._kv = await self._bucket(js)
            self._kv_js = js
        return self._kv

    async def _get(self) -> Any:
        kv = await self._current_kv()
        return await kv.get(self.name)

    async def _bucket(self, js: Any) -> Any:
        try:
            try:
                return await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                pass
            try:
                return await js.create_key_value(bucket=self.bucket, history=1,
                                                 description="TTI leader leases",
                                                 replicas=self.replicas)
            except nats.errors.Error:
                return await js.key_value(self.bucket)  # created meanwhile by another replica
        except nats.errors.Error as exc:
            raise BusError(f"cannot open lease bucket {self.bucket}: {exc}") from exc

    async def _call(self, op: Awaitable[Any], deadline: float | None = None) -> Any:
        """One KV request, abandoned after request_timeout_s (or at ``deadline``, if earlier)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.request_timeout_s
        if deadline is not None:
            until = min(until, deadline)
        async with asyncio.timeout_at(until):
            return await op

    async def _run(self) -> None:
        while True:
            try:
                if self._is_held:
                    await self._hold()
                else:
                    await self._stand_by()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the lease silently
                log.exception("lease %s: unexpected error", self.name,
                              extra={"lease": self.name, "holder": self.holder})
                await asyncio.sleep(self.poll_s)

    def _acquired(self, revision: int, sent: float, reason: str) -> None:
        self._revision = revision
        self._sent = sent
        self._deadline = sent + self.ttl_s - self.margin_s
        self._seen = None
        self._failing = False
        self._transition(True, reason)

    async def _stand_by(self) -> None:
        """One poll: create a free key, or take over a revision unchanged for ttl_s."""
        loop = asyncio.get_running_loop()
        try:
            kv = await self._call(self._current_kv())
            try:
                entry = await self._call(kv.get(self.name))
            except nats.js.errors.KeyNotFoundError:
                entry = None
            now = loop.time()
            if entry is None:
                sent = loop.time()
                revision = await self._call(kv.create(self.name, self._value))
                self._acquired(revision, sent, "acquired")
                return
            if self._seen is None or self._seen[0] != entry.revision:
                self._seen = (entry.revision, now)  # the ttl runs from our own first sight
            elif now - self._seen[1] >= self.ttl_s:
                sent = loop.time()
                revision = await self._call(kv.update(self.name, self._value,
                                                      last=entry.revision))
                previous = _decode(entry.value)[0]
                self._acquired(revision, sent, f"took over from {previous}")
                return
            self._recovered()
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # another replica created, renewed or took it first
        except (nats.errors.Error, BusError, TimeoutError) as exc:
            self._failed(exc)
        wait = self.poll_s
        if self._seen is not None:
            wait = min(wait, max(0.0, self._seen[1] + self.ttl_s - loop.time()))
        await asyncio.sleep(wait)

    async def _hold(self) -> None:
        """Renew every renew_s until the deadline passes or the compare-and-set fails."""
        loop = asyncio.get_running_loop()
        attempt_at = self._sent + self.renew_s
        while True:
            await asyncio.sleep(max(0.0, min(attempt_at, self._deadline) - loop.time()))
            if loop.time() >= self._deadline:
                self._transition(False, "expired: no renewal confirmed in time")
                return
            sent = loop.time()
            attempt_at = sent + self.renew_s
            try:
                revision = await self._call(self._renew(), self._deadline)
            except nats.js.errors.KeyWrongLastSequenceError:
                if not await self._adopt():
                    self._transition(False, "taken over")
                    return
                attempt_at = loop.time()  # renew from the adopted revision at once
                continue
            except (nats.errors.Error, BusError, TimeoutError) as exc:
                self._failed(exc)
                continue
            self._revision = revision
            self._sent = sent
            self._deadline = sent + self.ttl_s - self.margin_s
            self._recovered()

    async def _renew(self) -> int:
        kv = await self._current_kv()
        revision: int = await kv.update(self.name, self._value, last=self._revision)
        return revision

    async def _adopt(self) -> bool:
        """After a failed compare-and-set: is the newer revision our own (an ack was lost)?

        If so, continue from it; the deadline stays that of the last confirmed write.
        """
        try:
            entry = await self._call(self._get(), self._deadline)
        except (nats.errors.Error, BusError, TimeoutError):
            return False
        if _decode(entry.value)[1] != self._instance:
            return False
        self._revision = entry.revision
        return True

    async def _release(self) -> None:
        """Delete the key if it still holds our write, so a standby acquires at its next poll."""
        revision = self._revision
        for _ in range(2):
            try:
                await self._call(self._kv.delete(self.name, last=revision))
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    break
                # A renewal cancelled in flight may have been stored: delete that one if ours.
                try:
                    entry = await self._call(self._kv.get(self.name))
                except (nats.errors.Error, BusError, TimeoutError):
                    break
                if _decode(entry.value)[1] != self._instance:
                    return  # somebody else's already: nothing of ours to release
                revision = entry.revision
            except (nats.errors.Error, BusError, TimeoutError) as exc:
                log.warning("lease %s: release failed (%s); a standby takes over after ttl",
                            self.name, exc, extra={"lease": self.name, "holder": self.holder})
                return
        log.warning("lease %s: could not release; a standby takes over after ttl", self.name,
                    extra={"lease": self.name, "holder": self.holder})

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("lease %s: NATS KV request failing: %s", self.name,
                        str(exc) or type(exc).__name__,
                        extra={"lease": self.name, "holder": self.holder})

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("lease %s: NATS KV requests succeed again", self.name,
                     extra={"lease": self.name, "holder": self.holder})


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it goes on: a library
    call may swallow a cancellation (``asyncio.wait_for`` in Python 3.11 returns the result of
    a request that completes as it is cancelled), and the lease's loop would then carry on and
    ``stop`` wait for ever (seen: a test hung 300 s in it)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.warning("lease loop ended with %r", exc)


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    """(holder, instance) from a key's value; a foreign value names its raw text as holder."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace"), None
    if not isinstance(data, dict):
        return str(data), None
    holder, instance = data.get("holder"), data.get("instance")
    return (holder if isinstance(holder, str) else None,
            instance if isinstance(instance, str) else None)


def lease_for_bus(bus: EventBus, name: str, holder: str, *, on_change: OnChange | None = None,
                  **timings: float) -> Lease:
    """The lease backend matching ``bus`` (not started).

    MemoryBus → :class:`MemoryLease` in a registry of that bus; NatsBus → :class:`NatsLease`
    in bucket ``<stream>_leases`` (created if missing). ``timings`` (ttl_s, renew_s, poll_s,
    margin_s, request_timeout_s) apply to NATS only.
    """
    from shared.bus.memory import MemoryBus
    from shared.bus.nats import NatsBus

    if isinstance(bus, MemoryBus):
        registry = _BUS_REGISTRIES.get(bus)
        if registry is None:
            registry = _BUS_REGISTRIES[bus] = MemoryLeaseRegistry()
        return MemoryLease(name, holder, on_change=on_change, registry=registry)
    if isinstance(bus, NatsBus):
        return NatsLease(bus._js_or_raise, f"{bus.stream}_leases", name, holder,
                         on_change=on_change, replicas=bus.stream_replicas, **timings)
    raise ConfigError(f"no lease backend for {type(bus).__name__}")

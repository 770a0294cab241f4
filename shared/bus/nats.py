"""NATS JetStream bus: one stream, durable pull consumers per partition, pipelined publishes.

Publishing sends each event with a reply subject under one PubAck inbox and waits on a future,
so many concurrent ``publish`` calls share the connection's write buffer and their PubAcks arrive
in any order: throughput is bounded by a semaphore of pending publishes, not by round trips. The
event id is the ``Nats-Msg-Id`` header, so a retried publish inside the duplicate window is
stored once.

Consuming uses one durable pull consumer per partition (NATS 2.9 allows one ``filter_subject``
per consumer). Each consumer has one loop that keeps pull requests topped up and hands messages
to the handler strictly in arrival order, then acks, naks with delay or terminates according to
:func:`~shared.bus.base.run_handler`. Messages held longer than a third of ``ack_wait`` get an
in-progress ack, so a slow handler does not cause a redelivery behind its back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import api

from shared.bus.base import (
    FAILURES,
    PUBLISHED,
    EventBus,
    Handler,
    Outcome,
    ResumePoint,
    Subscription,
    run_handler,
)
from shared.codec import Envelope, decode_envelope, encode_envelope
from shared.errors import BusError, ConfigError, DecodeError
from shared.events import Subject

T = TypeVar("T")

log = logging.getLogger("tti.bus.nats")
_DRAIN_S = 10.0
"""How long closing waits for the connection to drain, then for it to close."""

_STREAM_NAME_IN_USE = 10058  # JetStream error code: stream exists with another configuration
_REPLAY_BATCH = 256
_REPLAY_IDLE_S = 120.0
"""A replay's ephemeral consumer is removed by the server this long after its last pull (if
the reader died; it deletes it itself otherwise): longer than handling a batch can take on a
busy start, or the consumer would vanish mid-replay."""
_PULL_GRACE_S = 1.0  # slack past a pull request's expiry before we assume it is gone


def _hosts(urls: list[str]) -> str:
    """The servers as host:port, for logs: a URL may carry a user and password."""
    return ",".join(u.rsplit("@", 1)[-1] for u in urls)


def _backoff_s(attempt: int) -> float:
    """Capped exponential backoff with jitter, so a fleet does not reconnect in lockstep."""
    return min(10.0, 0.25 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0)


def _reconnect_handler(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
    """nats-py hook: retry the least-failed server after a backoff that grows per failure."""
    server = min(servers, key=lambda s: s.reconnects)
    return server, _backoff_s(server.reconnects)


class _PullConsumer:
    """One durable pull consumer and the loop that handles its messages in order."""

    def __init__(self, bus: NatsBus, subject: Subject[Any], wire: str, name: str,
                 handler: Handler[Any]) -> None:
        self.bus = bus
        self.subject = subject
        self.wire = wire
        self.name = name
        self.handler = handler
        self._held: deque[tuple[Msg, float]] = deque()  # (message, time it arrived)
        self._arrived = asyncio.Event()
        self._stopping = False
        self._credits = 0  # messages still owed to us by outstanding pull requests
        self._last_pull = 0.0
        self._current: tuple[Msg, float] | None = None
        self._sub: NatsSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream}.{name}"
        self._inbox = ""

    def config(self) -> api.ConsumerConfig:
        """The consumer's configuration (durable, explicit ack, one filter subject)."""
        bus = self.bus
        return api.ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=f"TTI {self.subject.name} for group {self.name}",
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=bus.ack_wait_s,
            max_deliver=bus.max_deliver,
            filter_subject=self.wire,
            replay_policy=api.ReplayPolicy.INSTANT,
            max_ack_pending=bus.max_ack_pending,
        )

    async def ensure(self) -> None:
        """Create the durable consumer, or update an existing one in place (keeps its ack floor)."""
        await self.bus._js_or_raise().add_consumer(self.bus.stream, config=self.config())

    async def start(self) -> None:
        """Create the consumer, subscribe the pull inbox and start the loops."""
        await self.ensure()
        nc = self.bus._nc_or_raise()
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_msg)
        self._task = asyncio.create_task(self._run(), name=f"nats-consumer:{self.name}")
        self._keepalive = asyncio.create_task(self._keep_alive(),
                                              name=f"nats-keepalive:{self.name}")

    async def _on_msg(self, msg: Msg) -> None:
        self._held.append((msg, asyncio.get_running_loop().time()))
        self._arrived.set()

    def reset_pulls(self) -> None:
        """Forget outstanding pull requests (after a reconnect the server may have lost them)."""
        self._credits = 0
        self._arrived.set()

    async def _pull(self) -> None:
        """Top the outstanding pull requests up to one batch once half of it has arrived."""
        bus = self.bus
        now = asyncio.get_running_loop().time()
        if self._credits and now > self._last_pull + bus.pull_expires_s + _PULL_GRACE_S:
            # Every request has expired, yet no 408 came: we were disconnected or the consumer
            # is gone (a pull to a missing consumer gets no answer at all). Recreate and retry;
            # while disconnected only retry the pull (the bus logged the outage once, and the
            # reconnect resets the pulls).
            self._credits = 0
            if bus.connected:
                try:
                    await self.ensure()
                except (nats.errors.Error, BusError) as exc:
                    log.warning("consumer %s unavailable: %s", self.name, exc)
        if self._credits > bus.fetch_batch // 2:
            return
        n = bus.fetch_batch - self._credits
        req = orjson.dumps({"batch": n, "expires": int(bus.pull_expires_s * 1e9)})
        try:
            await bus._nc_or_raise().publish(self._next_subject, req, reply=self._inbox)
        except (nats.errors.Error, BusError) as exc:
            log.debug("pull request on %s failed: %s", self.name, exc)
        # Count it even if sending failed, so the expiry check above paces the retries.
        self._credits += n
        self._last_pull = now

    async def _wait_for_messages(self) -> None:
        self._arrived.clear()
        loop = asyncio.get_running_loop()
        timeout = self._last_pull + self.bus.pull_expires_s + _PULL_GRACE_S - loop.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.05)):
                await self._arrived.wait()

    async def _on_status(self, msg: Msg) -> None:
        """A status message ends (part of) a pull request: 408 expired, 409 refused."""
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS, "")
        if status == "100":  # idle heartbeat
            return
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self._credits = max(0, self._credits - int(pending))
        else:
            self._credits = 0
        if status in ("404", "408"):  # no messages / request expired: normal when idle
            return
        desc = headers.get(api.Header.DESCRIPTION, "")
        # Shutdown and leadership changes are routine (rolling restarts); others need a look.
        routine = desc in ("Server Shutdown", "Leadership Change")
        log.log(logging.DEBUG if routine else logging.WARNING,
                "pull request on %s ended: %s %s", self.name, status, desc)
        await asyncio.sleep(0.1)  # avoid a tight loop on a repeating server refusal

    async def _run(self) -> None:
        handled = 0
        try:
            while not self._stopping:
                try:
                    handled += await self._step()
                except Exception:  # a bug here must not silently end consumption
                    log.exception("consumer loop %s failed; continuing", self.name)
                    await asyncio.sleep(1.0)
                if handled >= 64:
                    handled = 0
                    await asyncio.sleep(0)  # a busy partition must not starve the others
        finally:
            await self._release_held()

    async def _step(self) -> int:
        """Wait for, or handle, the next message; returns how many events were handled."""
        if not self._held:
            await self._pull()
            await self._wait_for_messages()
            return 0
        msg, arrived_at = self._held.popleft()
        if not msg.reply:  # only status messages come without an ack subject
            await self._on_status(msg)
            return 0
        self._credits = max(0, self._credits - 1)
        await self._pull()
        self._current = (msg, arrived_at)
        try:
            await self._process(msg)
        except asyncio.CancelledError:
            # Drain timed out on a stuck handler: let another member have it now.
            await self._settle(msg, Outcome.NAK, delay=False)
            raise
        finally:
            self._current = None
        return 1

    async def _process(self, msg: Msg) -> None:
        try:
            delivery = msg.metadata.num_delivered
        except (nats.errors.Error, ValueError, IndexError):
            delivery = 1
        env: Envelope[Any] | DecodeError
        try:
            env = decode_envelope(self.subject, msg.data)
        except DecodeError as exc:
            env = exc
        outcome = await run_handler(self.handler, env, self.subject, delivery,
                                    self.bus.max_deliver)
        if outcome == Outcome.NAK and delivery >= self.bus.max_deliver:
            # The server will not deliver it again; say so instead of losing it silently.
            FAILURES.labels(self.subject.name, "max_deliver").inc()
            log.warning("giving up on an event on %s after %d deliveries",
                        self.subject.name, delivery)
        await self._settle(msg, outcome)

    async def _settle(self, msg: Msg, outcome: str, *, delay: bool = True) -> None:
        try:
            if outcome == Outcome.ACK:
                await msg.ack()
            elif outcome == Outcome.NAK:
                await msg.nak(delay=self.bus.nak_delay_s if delay else None)
            else:
                await msg.term()
        except (nats.errors.Error, BusError) as exc:
            # Without an ack the server redelivers after ack_wait: nothing is lost.
            log.debug("could not %s a message on %s: %s", outcome, self.name, exc)

    async def _keep_alive(self) -> None:
        """Send in-progress acks for messages held longer than a third of ``ack_wait``."""
        period = self.bus.ack_wait_s / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            cutoff = loop.time() - period
            stale = [m for m, t in itertools.chain([self._current] if self._current else [],
                                                   self._held)
                     if t < cutoff and m.reply]
            for m in stale:
                with contextlib.suppress(nats.errors.Error, BusError):
                    await m.in_progress()

    async def _release_held(self) -> None:
        """Stop receiving; hand back whatever arrived but was not started (nak, no delay)."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                # drain = unsubscribe + flush, so messages already sent to us land in _held.
                await self._sub.drain()
        while self._held:
            msg, _ = self._held.popleft()
            if msg.reply:
                await self._settle(msg, Outcome.NAK, delay=False)

    async def stop(self, grace_s: float) -> None:
        """Finish the message in hand (acking it), release the rest, stop the loops."""
        self._stopping = True
        self._arrived.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=grace_s)
            if not done:
                log.warning("handler on %s still busy after %.0fs; cancelling it",
                            self.name, grace_s)
                self._task.cancel()
            await _settled(self._task, f"consumer loop of {self.name}")
        if self._keepalive is not None:
            self._keepalive.cancel()
            await _settled(self._keepalive, f"keep-alive of {self.name}")


async def _settled(task: asyncio.Task[Any], what: str, timeout_s: float = 5.0) -> None:
    """Wait (bounded) for a finished or cancelled task: a task stuck in a library call that
    does not honour cancellation must not hang the bus's close, and with it a pod's shutdown."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("%s did not end %.0fs after being cancelled; leaving it", what, timeout_s)
        return
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with %r", what, task.exception())


class _NatsSubscription(Subscription):
    def __init__(self, bus: NatsBus, consumers: list[_PullConsumer]) -> None:
        self.bus = bus
        self.consumers = consumers

    async def stop(self) -> None:
        """Stop every consumer of this subscription (concurrently)."""
        if self in self.bus._subs:
            self.bus._subs.remove(self)
        await asyncio.gather(*(c.stop(self.bus.drain_timeout_s) for c in self.consumers))


class NatsBus(EventBus):
    """The production bus on NATS JetStream (works with NATS 2.9 and later)."""

    def __init__(self, url: str, *, stream: str = "TTI", partitions: int = 16,
                 prefix: str = "tti", max_deliver: int = 5, nak_delay_s: float = 1.0,
                 ack_wait_s: float = 30.0, publish_timeout_s: float = 10.0,
                 max_pending_publishes: int = 4096, fetch_batch: int = 256,
                 pull_expires_s: float = 5.0, max_ack_pending: int = 1024,
                 drain_timeout_s: float = 25.0, stream_max_age_s: float = 24 * 3600.0,
                 stream_max_bytes: int = 1 << 30, duplicate_window_s: float = 120.0,
                 stream_replicas: int = 1, name: str = "tti", **kwargs: Any) -> None:
        super().__init__(partitions=partitions, prefix=prefix, max_deliver=max_deliver,
                         nak_delay_s=nak_delay_s, **kwargs)
        if fetch_batch < 1 or max_pending_publishes < 1:
            raise ConfigError("fetch_batch and max_pending_publishes must be ≥ 1")
        if max_ack_pending < fetch_batch * 2:
            # Two half-batch pull requests may be outstanding; fewer slots would stall them.
            raise ConfigError("max_ack_pending must be at least 2 × fetch_batch")
        self.servers = [u.strip() for u in url.split(",") if u.strip()]
        self.stream = stream
        self.ack_wait_s = ack_wait_s
        self.publish_timeout_s = publish_timeout_s
        self.max_pending_publishes = max_pending_publishes
        self.fetch_batch = fetch_batch
        self.pull_expires_s = pull_expires_s
        self.max_ack_pending = max_ack_pending
        self.drain_timeout_s = drain_timeout_s
        self.stream_max_age_s = stream_max_age_s
        self.stream_max_bytes = stream_max_bytes
        self.duplicate_window_s = duplicate_window_s
        # Copies of the stream (and of the KV buckets opened on this bus); set on every start,
        # since an update without it would scale a replicated stream back to one copy.
        self.stream_replicas = stream_replicas
        self.name = name
        self._nc: Client | None = None
        self._js: Any = None
        self._acks: dict[str, tuple[asyncio.Future[None], float]] = {}  # token -> (ack, deadline)
        self._published: dict[str, Any] = {}  # subject name -> labelled counter
        self._expiry: asyncio.Task[None] | None = None
        self._ack_prefix = ""
        self._tokens = itertools.count()
        self._pub_slots: asyncio.Semaphore | None = None
        self._subs: list[_NatsSubscription] = []
        self._closing = False
        self._down_logged = False

    # -- connection ---------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if not self._down_logged and not (self._nc and self._nc.is_connected):
            log.warning("NATS at %s unreachable, retrying: %s", _hosts(self.servers), exc)
            self._down_logged = True
        else:
            log.debug("NATS error: %s", exc)

    async def _on_disconnected(self) -> None:
        if not self._closing and not self._down_logged:
            log.warning("disconnected from NATS; reconnecting")
            self._down_logged = True

    async def _on_reconnected(self) -> None:
        self._down_logged = False
        log.info("reconnected to NATS at %s", self._server())
        for sub in self._subs:
            for c in sub.consumers:
                c.reset_pulls()

    async def start(self) -> None:
        """Connect (retrying forever), create or update the stream, open the PubAck inbox."""
        self._closing = False
        nc = Client()
        options: dict[str, Any] = {
            "servers": self.servers,
            "name": self.name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # never give up: readiness reports the outage
            "reconnect_time_wait": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if "reconnect_to_server_handler" in inspect.signature(nc.connect).parameters:
            options["reconnect_to_server_handler"] = _reconnect_handler
        await nc.connect(**options)
        self._nc = nc
        self._down_logged = False
        log.info("connected to NATS at %s", self._server())
        self._js = nc.jetstream()
        await self._ensure_stream()
        self._pub_slots = asyncio.Semaphore(self.max_pending_publishes)
        self._ack_prefix = nc.new_inbox() + "."
        await nc.subscribe(self._ack_prefix + "*", cb=self._on_puback)
        self._expiry = asyncio.create_task(self._expire_publishes(), name="nats-puback-expiry")

    async def _ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self.stream,
            description="TTI events",
            subjects=[f"{self.prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=self.stream_max_age_s,
            max_bytes=self.stream_max_bytes,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.stream_replicas,
        )
        try:
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                await self._js.update_stream(config)
                log.info("updated stream %s", self.stream)
        except nats.errors.Error as exc:
            raise BusError(f"cannot create or update stream {self.stream}: {exc}") from exc

    def _server(self) -> str:
        """host:port of the current server (never the credentials a URL may carry)."""
        url = self._nc.connected_url if self._nc else None
        return f"{url.hostname}:{url.port}" if url else "?"

    def _nc_or_raise(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            raise BusError("NATS bus is not started")
        return self._nc

    def _js_or_raise(self) -> Any:
        self._nc_or_raise()
        return self._js

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up (readiness)."""
        return self._nc is not None and self._nc.is_connected and not self._closing

    async def close(self) -> None:
        """Stop subscriptions (finishing messages in hand), await PubAcks, drain, disconnect."""
        self._closing = True
        subs, self._subs = self._subs, []
        await asyncio.gather(*(s.stop() for s in subs))
        if self._acks:
            await asyncio.wait([f for f, _ in self._acks.values()],
                               timeout=self.publish_timeout_s)
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        try:
            # Flushes the acks sent above before closing. Bounded here: nats-py's drain can
            # wait forever on a connection the server stopped answering (seen in CI after KV
            # requests timed out), and a service must still stop.
            async with asyncio.timeout(_DRAIN_S):
                await nc.drain()
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("drain failed (%s); closing", exc)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                async with asyncio.timeout(_DRAIN_S):
                    await nc.close()

    # -- publishing ---------------------------------------------------------------------------

    async def _on_puback(self, msg: Msg) -> None:
        pending = self._acks.get(msg.subject[len(self._ack_prefix):])
        if pending is None or pending[0].done():
            return  # the publisher timed out already
        fut = pending[0]
        if msg.headers and msg.headers.get(api.Header.STATUS) == "503":
            fut.set_exception(BusError(f"no stream takes {self.prefix}.> (503 no responders)"))
            return
        try:
            resp = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            fut.set_exception(BusError("malformed PubAck"))
            return
        if isinstance(resp, dict) and "error" in resp:
            err = resp["error"]
            fut.set_exception(BusError(f"publish refused: {err.get('description', err)}"))
        else:
            fut.set_result(None)

    async def publish(self, subject: Subject[T], payload: T, *, key: str | None = None,
                      correlation_id: str | None = None, event_id: str | None = None) -> str:
        """Publish one event; returns its id once the stream has stored it (PubAck).

        Raises :class:`BusError` when no PubAck arrives within ``publish_timeout_s`` (a retry
        with the same ``event_id`` is then safe: the server drops duplicates).
        """
        slots = self._pub_slots
        if self._closing or slots is None:
            raise BusError("NATS bus is closed or not started")
        nc = self._nc_or_raise()
        wire = self.wire_subject(subject, self.partition_for(subject, key))
        env = self.envelope(subject, payload, correlation_id=correlation_id, event_id=event_id)
        raw = encode_envelope(env)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout_s
        if slots.locked():
            try:
                async with asyncio.timeout_at(deadline):
                    await slots.acquire()
            except TimeoutError:
                raise BusError(f"{self.max_pending_publishes} publishes awaiting PubAcks for "
                               f"{self.publish_timeout_s:g}s") from None
        else:
            await slots.acquire()  # free slot: returns at once, no timer needed
        token = str(next(self._tokens))
        fut: asyncio.Future[None] = loop.create_future()
        # The deadline is enforced by _expire_publishes: one sweep over the pending publishes
        # costs far less than a timer per publish at tens of thousands per second.
        self._acks[token] = (fut, deadline)
        try:
            await nc.publish(wire, raw, reply=self._ack_prefix + token,
                             headers={"Nats-Msg-Id": env.event_id})
            await fut
        except nats.errors.Error as exc:
            raise BusError(f"publish on {subject.name} failed: {exc}") from exc
        finally:
            del self._acks[token]
            slots.release()
        counter = self._published.get(subject.name)
        if counter is None:
            counter = self._published[subject.name] = PUBLISHED.labels(subject.name)
        counter.inc()
        return env.event_id

    async def _expire_publishes(self) -> None:
        """Fail publishes whose PubAck is overdue (lost in a disconnect, or a slow server)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(0.5, self.publish_timeout_s / 4))
            now = loop.time()
            for fut, deadline in list(self._acks.values()):
                if deadline <= now and not fut.done():
                    fut.set_exception(BusError(
                        f"no PubAck within {self.publish_timeout_s:g}s"))

    # -- replaying ----------------------------------------------------------------------------

    async def resume_point(self, subject: Subject[Any], *, durable: str,
                           partition: int | None = None) -> ResumePoint | None:
        """The durable consumer's last delivered message (``delivered.stream_seq``) and when
        it was stored; None for a consumer that does not exist or was handed nothing."""
        js = self._js_or_raise()
        name = self.consumer_name(subject, durable, partition)
        try:
            info = await js.consumer_info(self.stream, name)
            seq = info.delivered.stream_seq
            if not seq:
                return None
            msg = await js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            return None  # no such consumer, or its last message aged out of the stream
        except nats.errors.Error as exc:
            raise BusError(f"cannot read consumer {name}: {exc}") from exc
        if msg.time is None:
            return None
        return ResumePoint(seq, msg.time)

    async def replay(self, subject: Subject[T], handler: Handler[T], *,
                     partition: int | None = None, since: datetime,
                     through: int | None = None) -> int:
        """Read the partition's wire subject from ``since`` through an ephemeral pull consumer
        of its own (one ``filter_subject``, deliver by start time, no acks, removed after), in
        batches, handing each event to ``handler`` in order; an undecodable one is skipped."""
        js = self._js_or_raise()
        wire = self.wire_subject(subject, partition)
        try:
            try:
                newest = (await js.get_msg(self.stream, subject=wire)).seq or 0
            except nats.js.errors.NotFoundError:
                return 0  # nothing stored on it
            # A filtered consumer's delivered sequence moves on past other subjects' messages:
            # ``through`` may name one; the replay ends at the last of this subject before it.
            through = newest if through is None else min(through, newest)
            if not through:
                return 0
            name = f"replay-{next(self._tokens)}-{random.getrandbits(48):012x}"
            config = api.ConsumerConfig(
                name=name, description=f"TTI replay of {wire}", filter_subject=wire,
                deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=since,
                ack_policy=api.AckPolicy.NONE, replay_policy=api.ReplayPolicy.INSTANT,
                inactive_threshold=_REPLAY_IDLE_S, mem_storage=True, num_replicas=1)
            await js.add_consumer(self.stream, config=config)
            psub = await js.pull_subscribe_bind(consumer=name, stream=self.stream)
        except nats.errors.Error as exc:
            raise BusError(f"cannot replay {wire}: {exc}") from exc
        handed = 0
        try:
            while True:
                try:
                    msgs = await psub.fetch(_REPLAY_BATCH, timeout=2.0)
                except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
                    # Nothing more: what ``through`` names was deleted or aged out.
                    log.warning("replay of %s ended at %d events, before sequence %d",
                                wire, handed, through)
                    break
                last = 0
                for m in msgs:
                    last = m.metadata.sequence.stream
                    if last > through:
                        break
                    try:
                        env = decode_envelope(subject, m.data)
                    except DecodeError as exc:
                        log.warning("replay of %s skips an undecodable event: %s", wire, exc)
                        continue
                    await handler(env)
                    handed += 1
                if last >= through:
                    break
        except nats.errors.Error as exc:
            raise BusError(f"replay of {wire} failed after {handed} events: {exc}") from exc
        finally:
            with contextlib.suppress(nats.errors.Error):
                await psub.unsubscribe()
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await js.delete_consumer(self.stream, name)
        return handed

    # -- consuming ----------------------------------------------------------------------------

    def consumer_name(self, subject: Subject[Any], durable: str,
                      partition: int | None = None) -> str:
        """The durable consumer's name: ``<durable>-<subject-with-dashes>[-<partition>]``."""
        base = f"{durable}-{subject.name.replace('.', '-')}"
        return base if partition is None else f"{base}-{partition}"

    async def subscribe(self, subject: Subject[T], handler: Handler[T], *, durable: str,
                        partitions: Sequence[int] | None = None) -> Subscription:
        """Start one durable pull consumer per selected partition (or one if unpartitioned)."""
        if self._closing:
            raise BusError("NATS bus is closed")
        if subject.partitioned:
            parts = range(self.partitions) if partitions is None else partitions
            bad = [p for p in parts if not 0 <= p < self.partitions]
            if bad:
                raise ConfigError(f"partitions {bad} outside 0..{self.partitions - 1}")
            targets: list[tuple[str, str]] = [
                (self.wire_subject(subject, p), self.consumer_name(subject, durable, p))
                for p in parts]
        else:
            targets = [(self.wire_subject(subject), self.consumer_name(subject, durable))]
        consumers = [_PullConsumer(self, subject, wire, name, handler) for wire, name in targets]
        results = await asyncio.gather(*(c.start() for c in consumers), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            # Stop the ones that did start, so a failed subscribe leaves nothing running.
            await asyncio.gather(*(c.stop(0) for c in consumers))
            if isinstance(failed, nats.errors.Error):
                raise BusError(f"cannot create consumers for {subject.name}: {failed}") from failed
            raise failed
        sub = _NatsSubscription(self, consumers)
        self._subs.append(sub)
        return sub

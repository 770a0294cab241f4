"""The ``EventBus`` interface shared by every backend, and the handler outcome rules.

A handler that returns normally acks its message. One that raises
:class:`~shared.errors.TransientError` gets a nak with delay (redelivered later); one that raises
:class:`~shared.errors.DecodeError` is terminated at once; any other exception is redelivered up
to ``max_deliver`` times and then terminated. Every outcome is counted, labelled by subject name
(never by partition or vehicle) and outcome.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import Counter

from shared.clock import Clock
from shared.codec import Envelope
from shared.errors import ConfigError, DecodeError, TransientError
from shared.events import Subject, partition_of

T = TypeVar("T")
Handler = Callable[[Envelope[T]], Awaitable[None]]

log = logging.getLogger("tti.bus")

PUBLISHED = Counter("tti_bus_published_total", "Events handed to the bus", ["subject"])
DELIVERED = Counter(
    "tti_bus_handled_total", "Events handled by consumers, by outcome", ["subject", "outcome"]
)
FAILURES = Counter(
    "tti_bus_handler_failures_total", "Handler failures by kind", ["subject", "kind"]
)


@functools.cache
def published_counter(subject_name: str) -> Any:
    """The published-events counter child for one subject (labels() costs a lookup per call)."""
    return PUBLISHED.labels(subject_name)


@functools.cache
def _handled_counter(subject_name: str, outcome: str) -> Any:
    return DELIVERED.labels(subject_name, outcome)


class Outcome:
    """What to do with a delivered message after its handler ran."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"


async def run_handler(handler: Handler[Any], env_or_error: Envelope[Any] | DecodeError,
                      subject: Subject[Any], delivery: int, max_deliver: int) -> str:
    """Run one handler under the outcome rules; never raises (except cancellation)."""
    if isinstance(env_or_error, DecodeError):
        FAILURES.labels(subject.name, env_or_error.code).inc()
        log.warning("dropping undecodable event on %s: %s", subject.name, env_or_error)
        DELIVERED.labels(subject.name, Outcome.TERM).inc()
        return Outcome.TERM
    try:
        await handler(env_or_error)
    except DecodeError as exc:
        FAILURES.labels(subject.name, exc.code).inc()
        log.warning("handler rejected event %s on %s: %s", env_or_error.event_id, subject.name, exc)
        outcome = Outcome.TERM
    except TransientError as exc:
        FAILURES.labels(subject.name, "transient").inc()
        log.info("transient failure on %s (delivery %d): %s", subject.name, delivery, exc)
        outcome = Outcome.NAK
    except Exception:
        FAILURES.labels(subject.name, "handler_error").inc()
        log.exception("handler failed on %s (delivery %d)", subject.name, delivery)
        outcome = Outcome.NAK if delivery < max_deliver else Outcome.TERM
    else:
        outcome = Outcome.ACK
    _handled_counter(subject.name, outcome).inc()
    return outcome


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a durable consumer's partition stands: the stream sequence of the last message it
    was handed (acked or not) and when the stream stored that message."""

    seq: int
    stored_at: datetime


class Subscription(abc.ABC):
    """A running consumer; ``stop`` finishes the message in hand and stops fetching."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop consuming; in-flight handlers complete and are acked first."""


class EventBus(abc.ABC):
    """Publish typed events; consume them through durable, partition-aware subscriptions."""

    def __init__(self, *, partitions: int = 16, prefix: str = "tti", max_deliver: int = 5,
                 nak_delay_s: float = 1.0, clock: Clock | None = None) -> None:
        if partitions < 1:
            raise ConfigError("partitions must be ≥ 1")
        self.clock = clock or Clock()
        """Stamps envelopes (``time``); protocol timers (ack waits, nak delays) stay real."""
        self.partitions = partitions
        self.prefix = prefix
        self.max_deliver = max_deliver
        self.nak_delay_s = nak_delay_s

    def wire_subject(self, subject: Subject[Any], partition: int | None = None) -> str:
        """The subject on the wire: prefix replaces ``tti``; partitioned ones end in ``.<p>``."""
        name = subject.name
        if self.prefix != "tti" and name.startswith("tti."):
            name = self.prefix + name[3:]
        if subject.partitioned:
            if partition is None:
                raise ValueError(f"{subject.name} is partitioned: a partition is required")
            return f"{name}.{partition}"
        return name

    def envelope(self, subject: Subject[T], payload: T, *, correlation_id: str | None = None,
                 event_id: str | None = None) -> Envelope[T]:
        """A new envelope stamped with this bus's clock."""
        return Envelope.new(subject, payload, correlation_id=correlation_id, event_id=event_id,
                            created_at=self.clock.now())

    def partition_for(self, subject: Subject[Any], key: str | None) -> int | None:
        """The partition a key publishes to, for partitioned subjects."""
        if not subject.partitioned:
            return None
        if key is None:
            raise ValueError(f"{subject.name} is partitioned: publish needs a key")
        return partition_of(key, self.partitions)

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and create what the backend needs (streams)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every subscription (draining), flush publishes, disconnect."""

    @abc.abstractmethod
    async def publish(self, subject: Subject[T], payload: T, *, key: str | None = None,
                      correlation_id: str | None = None, event_id: str | None = None) -> str:
        """Hand one event to the bus; returns its event id once the bus has taken it.

        Memory: enqueued. JetStream: PubAck received. Raises BusError if it could not be taken.
        """

    @abc.abstractmethod
    async def subscribe(self, subject: Subject[T], handler: Handler[T], *, durable: str,
                        partitions: Sequence[int] | None = None) -> Subscription:
        """Consume ``subject`` as durable consumer group ``durable``.

        For partitioned subjects, ``partitions`` selects which (default: all); each partition is
        delivered in order. Each message goes to one member of the group.
        """

    async def resume_point(self, subject: Subject[Any], *, durable: str,
                           partition: int | None = None) -> ResumePoint | None:
        """The last message durable group ``durable`` was handed on ``subject``'s
        ``partition``, or None when it has had none (or the backend keeps no history: the
        memory bus dies with the process whose state it would rebuild)."""
        return None

    async def replay(self, subject: Subject[T], handler: Handler[T], *,
                     partition: int | None = None, since: datetime,
                     through: int | None = None) -> int:
        """Hand ``handler``, in stream order, every stored event of ``subject``'s
        ``partition`` stored at or after ``since`` and up to stream sequence ``through``
        (default: the last one stored now), without disturbing any durable consumer; returns
        how many. For rebuilding in-memory state after a crash (see ``resume_point``). The
        memory bus keeps no history: 0. A handler's exception propagates."""
        return 0

    @property
    def connected(self) -> bool:
        """Whether the backend can currently take publishes."""
        return True


def bus_from_url(url: str, **kwargs: Any) -> EventBus:
    """``memory://`` or ``nats://host:port[,nats://…]`` → a bus backend (not yet started)."""
    if url.startswith("memory:"):
        from shared.bus.memory import MemoryBus

        return MemoryBus(**kwargs)
    if url.startswith(("nats://", "tls://")):
        from shared.bus.nats import NatsBus

        return NatsBus(url, **kwargs)
    raise ConfigError(f"unsupported bus URL {url!r}: use memory:// or nats://host:port")

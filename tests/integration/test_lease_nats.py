"""NatsLease against a real NATS JetStream server: one holder, hand-over, takeover of a dead one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from shared.bus.lease import NatsLease, lease_for_bus
from shared.bus.nats import NatsBus

pytestmark = pytest.mark.integration

FAST = {"ttl_s": 3.0, "renew_s": 0.5, "poll_s": 0.5, "margin_s": 0.6}
WITHIN_S = 20.0  # generous bound for what should take ttl + poll (3.5 s)

LeaseFactory = Callable[..., Awaitable[NatsLease]]


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream context for looking at the bucket behind the leases' back."""
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def make_lease(nats_url: str, unique_name: str,
                     js: JetStreamContext) -> AsyncIterator[LeaseFactory]:
    """Started leases, each on its own started NatsBus (a replica); all on one fresh stream."""
    made: list[tuple[NatsBus, NatsLease]] = []

    async def factory(holder: str, **options: Any) -> NatsLease:
        bus = NatsBus(nats_url, partitions=4, prefix=unique_name, stream=unique_name.upper())
        await bus.start()
        lease = lease_for_bus(bus, "warning", holder, **{**FAST, **options})
        assert isinstance(lease, NatsLease)
        made.append((bus, lease))
        await lease.start()
        return lease

    yield factory
    for bus, lease in made:
        await lease.stop()
        await bus.close()
    for name in (f"KV_{unique_name.upper()}_leases", unique_name.upper()):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)


async def _wait_for(cond: Callable[[], bool], within_s: float = WITHIN_S) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _watch_exclusive(leases: list[NatsLease], until: Callable[[], bool],
                           within_s: float = WITHIN_S) -> None:
    """Sample ``held`` of every lease until ``until()``; never two at the same instant."""
    async with asyncio.timeout(within_s):
        while not until():
            holders = [lease.holder for lease in leases if lease.held]
            assert len(holders) <= 1, f"held by {holders} at once"
            await asyncio.sleep(0.005)


async def _exactly_one(leases: list[NatsLease]) -> NatsLease:
    await _wait_for(lambda: any(lease.held for lease in leases))
    await asyncio.sleep(2 * FAST["poll_s"])  # give the others polls to get it wrong
    held = [lease for lease in leases if lease.held]
    assert len(held) == 1, [lease.holder for lease in held]
    return held[0]


async def test_one_of_two_holds_and_the_key_names_it(make_lease: LeaseFactory) -> None:
    changes: list[bool] = []
    a, b = await asyncio.gather(make_lease("warning-0", on_change=changes.append),
                                make_lease("warning-1"))  # racing to create the key
    # Never two at once, through the start and more than a ttl of renewals and polls.
    loop = asyncio.get_running_loop()
    until = loop.time() + FAST["ttl_s"] + 2 * FAST["poll_s"]
    await _watch_exclusive([a, b], lambda: loop.time() > until)
    holder = await _exactly_one([a, b])
    assert await a.find_holder() == await b.find_holder() == holder.holder
    await asyncio.sleep(FAST["ttl_s"] + FAST["poll_s"])  # renewals keep it past the ttl
    assert holder.held and [lease.held for lease in (a, b)].count(True) == 1
    assert changes == ([True] if holder is a else [])


async def test_clean_stop_hands_over_at_the_next_poll(make_lease: LeaseFactory) -> None:
    a = await make_lease("warning-0")
    async with asyncio.timeout(WITHIN_S):
        await a.wait_held()
    b = await make_lease("warning-1")
    await asyncio.sleep(FAST["poll_s"] * 2)
    assert a.held and not b.held
    await a.stop()
    assert not a.held
    # Well under the ttl: the key was deleted, so b creates it at its next poll.
    async with asyncio.timeout(FAST["ttl_s"] - FAST["margin_s"]):
        await b.wait_held()
    assert await b.find_holder() == "warning-1"


async def test_holder_cut_off_from_nats_steps_down_before_the_takeover(
        make_lease: LeaseFactory) -> None:
    changes: list[bool] = []
    a = await make_lease("warning-0", on_change=changes.append)
    async with asyncio.timeout(WITHIN_S):
        await a.wait_held()
    b = await make_lease("warning-1")
    await asyncio.sleep(FAST["poll_s"] * 2)
    # a's connection dies abruptly (no delete); its renewals now fail, it keeps trying.
    bus = a._js.__self__  # type: ignore[attr-defined]  # lease_for_bus: bus._js_or_raise
    assert isinstance(bus, NatsBus)
    await bus._nc_or_raise().close()
    await _watch_exclusive([a, b], lambda: b.held)
    assert not a.held
    await _wait_for(lambda: changes == [True, False])  # a's callback heard it lost the lease
    assert await b.find_holder() == "warning-1"


async def test_frozen_holder_is_taken_over_and_reports_not_held(
        make_lease: LeaseFactory) -> None:
    a = await make_lease("warning-0")
    async with asyncio.timeout(WITHIN_S):
        await a.wait_held()
    b = await make_lease("warning-1")
    # a's renewing task dies without releasing (a hung replica): held must lapse on its own.
    assert a._task is not None
    a._task.cancel()
    await _watch_exclusive([a, b], lambda: b.held)
    assert not a.held


class _FlakyKV:
    """A KeyValue whose updates fail while ``down``; ``lose_ack`` stores one but reports failure."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv
        self.down = False
        self.lose_ack = False
        self.updates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self.updates += 1
        if self.down:
            raise nats.errors.TimeoutError
        revision: int = await self._kv.update(key, value, last=last)
        if self.lose_ack:
            self.lose_ack = False
            raise nats.errors.TimeoutError
        return revision


async def test_renewals_failing_shorter_than_the_margin_keep_the_lease(
        make_lease: LeaseFactory) -> None:
    changes: list[bool] = []
    a = await make_lease("warning-0", on_change=changes.append)
    async with asyncio.timeout(WITHIN_S):
        await a.wait_held()
    b = await make_lease("warning-1")
    flaky = a._kv = _FlakyKV(a._kv)
    flaky.down = True  # an outage (reconnecting server): deadline is 2.4 s after the last renewal
    start = flaky.updates
    await _wait_for(lambda: flaky.updates >= start + 2)
    flaky.down = False
    flaky.lose_ack = True  # the next renewal is stored but its ack lost: must be adopted
    await _wait_for(lambda: not flaky.lose_ack)
    await asyncio.sleep(FAST["ttl_s"] + FAST["poll_s"])
    assert a.held and not b.held
    assert changes == [True]


async def test_renewals_failing_past_the_deadline_lose_it_to_the_standby(
        make_lease: LeaseFactory) -> None:
    a = await make_lease("warning-0")
    async with asyncio.timeout(WITHIN_S):
        await a.wait_held()
    b = await make_lease("warning-1")
    flaky = a._kv = _FlakyKV(a._kv)
    flaky.down = True
    await _watch_exclusive([a, b], lambda: b.held)
    flaky.down = False
    # a is a standby now and stays one: b renews.
    await asyncio.sleep(FAST["ttl_s"] + FAST["poll_s"])
    assert b.held and not a.held

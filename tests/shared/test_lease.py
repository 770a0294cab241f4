"""MemoryLease: one holder per name in a process, hand-over on stop, callbacks and metrics."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from shared.bus.lease import MemoryLease, MemoryLeaseRegistry, NatsLease, lease_for_bus
from shared.bus.memory import MemoryBus
from shared.bus.nats import NatsBus
from shared.errors import ConfigError


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_first_lease_is_held_at_start(unique_name: str) -> None:
    lease = MemoryLease(unique_name, "warning-0", registry=MemoryLeaseRegistry())
    assert not lease.held
    await lease.start()
    assert lease.held
    async with asyncio.timeout(5):
        await lease.wait_held()
    assert await lease.find_holder() == "warning-0"
    await lease.stop()
    assert not lease.held
    assert await lease.find_holder() is None


async def test_second_waits_and_gets_it_when_the_first_stops(unique_name: str) -> None:
    registry = MemoryLeaseRegistry()
    first = MemoryLease(unique_name, "warning-0", registry=registry)
    second = MemoryLease(unique_name, "warning-1", registry=registry)
    await first.start()
    await second.start()
    assert first.held and not second.held
    assert await second.find_holder() == "warning-0"
    waiter = asyncio.create_task(second.wait_held())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await first.stop()
    async with asyncio.timeout(5):
        await waiter
    assert second.held and not first.held
    assert await first.find_holder() == "warning-1"
    await second.stop()
    assert await second.find_holder() is None


async def test_other_names_and_registries_are_independent(unique_name: str) -> None:
    registry = MemoryLeaseRegistry()
    a = MemoryLease(unique_name, "a", registry=registry)
    b = MemoryLease(unique_name + "-other", "b", registry=registry)
    c = MemoryLease(unique_name, "c", registry=MemoryLeaseRegistry())
    for lease in (a, b, c):
        await lease.start()
    assert a.held and b.held and c.held
    for lease in (a, b, c):
        await lease.stop()


async def test_a_waiter_that_stops_is_skipped(unique_name: str) -> None:
    registry = MemoryLeaseRegistry()
    first, second, third = (MemoryLease(unique_name, f"r{i}", registry=registry)
                            for i in range(3))
    for lease in (first, second, third):
        await lease.start()
    await second.stop()  # gave up waiting
    await first.stop()
    assert third.held and not second.held
    await third.stop()


async def test_callbacks_run_in_order_and_finish_before_hand_over(unique_name: str) -> None:
    registry = MemoryLeaseRegistry()
    calls: list[tuple[str, bool]] = []
    second_started = asyncio.Event()

    async def slow_first(value: bool) -> None:
        await asyncio.sleep(0.05)  # stopping work takes a moment: the next may not start before
        calls.append(("first", value))

    def second_cb(value: bool) -> None:
        calls.append(("second", value))
        if value:
            second_started.set()

    first = MemoryLease(unique_name, "first", registry=registry, on_change=slow_first)
    second = MemoryLease(unique_name, "second", registry=registry, on_change=second_cb)
    await first.start()
    await second.start()
    await first.stop()  # returns once first's callbacks (True, then False) have run
    assert calls == [("first", True), ("first", False)]
    async with asyncio.timeout(5):
        await second_started.wait()
    await second.stop()
    assert calls == [("first", True), ("first", False), ("second", True), ("second", False)]


async def test_a_failing_callback_does_not_break_the_lease(unique_name: str) -> None:
    def broken(_value: bool) -> None:
        raise RuntimeError("boom")

    lease = MemoryLease(unique_name, "x", registry=MemoryLeaseRegistry(), on_change=broken)
    await lease.start()
    assert lease.held
    await lease.stop()
    assert not lease.held
    await lease.start()  # restartable
    assert lease.held
    await lease.stop()


async def test_wait_lost_and_metrics(unique_name: str) -> None:
    lease = MemoryLease(unique_name, "x", registry=MemoryLeaseRegistry())
    assert _metric("tti_lease_held", lease=unique_name) == 0
    async with asyncio.timeout(5):
        await lease.wait_lost()  # not held yet: returns at once
    await lease.start()
    assert _metric("tti_lease_held", lease=unique_name) == 1
    assert _metric("tti_lease_changes_total", lease=unique_name, to="held") == 1
    lost = asyncio.create_task(lease.wait_lost())
    await asyncio.sleep(0.02)
    assert not lost.done()
    await lease.stop()
    async with asyncio.timeout(5):
        await lost
    assert _metric("tti_lease_held", lease=unique_name) == 0
    assert _metric("tti_lease_changes_total", lease=unique_name, to="standby") == 1


async def test_lease_for_memory_bus_shares_by_bus(unique_name: str) -> None:
    bus, other_bus = MemoryBus(), MemoryBus()
    a = lease_for_bus(bus, unique_name, "a")
    b = lease_for_bus(bus, unique_name, "b")
    c = lease_for_bus(other_bus, unique_name, "c")
    assert isinstance(a, MemoryLease)
    for lease in (a, b, c):
        await lease.start()
    assert a.held and not b.held and c.held
    await a.stop()
    assert b.held
    await b.stop()
    await c.stop()


def test_lease_for_nats_bus_and_timing_checks() -> None:
    bus = NatsBus("nats://127.0.0.1:4222", stream="TTIX")
    lease = lease_for_bus(bus, "warning", "w0", ttl_s=3, renew_s=0.5, poll_s=0.5)
    assert isinstance(lease, NatsLease)
    assert lease.bucket == "TTIX_leases"
    assert (lease.ttl_s, lease.renew_s, lease.poll_s, lease.margin_s) == (3, 0.5, 0.5, 0.6)
    with pytest.raises(ConfigError):
        lease_for_bus(bus, "warning", "w0", ttl_s=3, renew_s=2.5)  # no renewal before deadline
    with pytest.raises(ConfigError):
        lease_for_bus(bus, "a b", "w0")  # not a KV key
    with pytest.raises(ConfigError):
        MemoryLease("warning", "")

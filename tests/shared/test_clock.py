"""The one clock: rate, start and sleeping, asserted on the clock's own readings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from shared.clock import Clock, parse_clock_start
from shared.config import load_config
from shared.errors import ConfigError


def test_real_time_clock_is_the_wall_clock() -> None:
    clock = Clock()
    assert clock.realtime and clock.rate == 1.0
    assert clock.now().tzinfo is UTC


def test_start_sets_the_virtual_time() -> None:
    start = datetime(2019, 6, 3, 8, 0, tzinfo=UTC)
    clock = Clock(start=start)
    assert not clock.realtime
    assert start <= clock.now() < start + timedelta(minutes=1)
    assert clock.time() == pytest.approx(clock.now().timestamp(), abs=1.0)


async def test_sleep_counts_clock_seconds_at_the_rate() -> None:
    clock = Clock(50.0, start=datetime(2024, 1, 1, tzinfo=UTC))
    t0, m0 = clock.time(), clock.monotonic()
    await clock.sleep(10.0)  # 10 clock seconds: 0.2 s real at rate 50
    # At least the 10 s slept went by on the clock; both readings agree on how much.
    elapsed = clock.time() - t0
    assert elapsed >= 10.0 - 1e-6
    assert clock.monotonic() - m0 == pytest.approx(elapsed, abs=0.5)
    assert clock.real_seconds(10.0) == pytest.approx(0.2)
    assert clock.clock_seconds(0.2) == pytest.approx(10.0)


async def test_a_fast_clock_runs_ahead_of_a_real_one() -> None:
    real, fast = Clock(), Clock(20.0)
    r0, f0 = real.monotonic(), fast.monotonic()
    await asyncio.sleep(0.1)
    # Whatever the machine's pace, the fast clock saw 20 times the real clock's seconds.
    assert (fast.monotonic() - f0) == pytest.approx(20 * (real.monotonic() - r0), rel=0.05)


async def test_sleep_zero_or_negative_just_yields() -> None:
    clock = Clock(5.0)
    await clock.sleep(0)
    await clock.sleep(-3.0)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_rates_are_refused(rate: float) -> None:
    with pytest.raises(ConfigError):
        Clock(rate)


def test_naive_start_is_refused_but_a_naive_setting_is_utc() -> None:
    with pytest.raises(ConfigError):
        Clock(start=datetime(2024, 1, 1))
    assert parse_clock_start("2024-01-01T08:00:00") == datetime(2024, 1, 1, 8, tzinfo=UTC)
    assert parse_clock_start("2024-01-01T08:00:00Z") == datetime(2024, 1, 1, 8, tzinfo=UTC)
    assert parse_clock_start("") is None
    with pytest.raises(ConfigError, match="TTI_CLOCK_START"):
        parse_clock_start("yesterday")


def test_config_builds_the_clock_and_names_a_bad_setting() -> None:
    clock = load_config({"TTI_CLOCK_RATE": "10",
                         "TTI_CLOCK_START": "2024-05-01T00:00:00Z"}).make_clock()
    assert clock.rate == 10.0
    assert clock.now() >= datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(ConfigError, match="TTI_CLOCK_RATE"):
        load_config({"TTI_CLOCK_RATE": "0"})

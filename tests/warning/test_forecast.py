"""Speed forecasts 15 and 30 minutes ahead: against persistence, bounded, scored, deterministic."""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from services.warning.api.public import SERVICE
from services.warning.app import create_app
from services.warning.forecast import Forecaster, ProfileBook, predict
from shared.bus.memory import MemoryBus
from shared.clients.bigdata import ProfileSnapshot, ProfileSpeed
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config
from shared.events import FORECAST, SEGMENT_SPEED, SegmentForecast, SegmentSpeed
from tests.publisher import wait_for
from tests.warning.support import T0, Recorder, bigdata_standin, build_network, main_road, window

SID = "1:0:1"
BUCKET = timedelta(minutes=15)


def speed(minute: int, kmh: float | None, sid: str = SID) -> SegmentSpeed:
    """One minute's window of a primary road with free flow 60 km/h."""
    return window(sid, minute, kmh)


class Profiles:
    """bigdata's profiles: 15-minute buckets from T0, each a speed per segment; counts fetches."""

    def __init__(self, speed_of: Callable[[datetime], dict[str, float]]) -> None:
        self.speed_of = speed_of
        self.asked: list[datetime] = []

    async def fetch(self, at: datetime) -> ProfileSnapshot:
        self.asked.append(at)
        start = T0 + BUCKET * math.floor((at - T0) / BUCKET)
        return ProfileSnapshot(bucket=int((start - T0) / BUCKET), valid_until=start + BUCKET,
                               speeds={sid: ProfileSpeed(segment_id=sid, speed_kmh=v,
                                                         updated_at=start)
                                       for sid, v in self.speed_of(start).items()})


def forecaster(profiles: Profiles | None = None, output: Recorder | None = None) -> Forecaster:
    book = None if profiles is None else ProfileBook(profiles.fetch, clock=Clock())
    return Forecaster(window_s=60.0, output=output or Recorder(), profiles=book)


def recovering_queue(seed: int, *, usual_kmh: float = 45.0) -> list[float]:
    """Two hours of one segment: a queue at 10 km/h for 20 minutes, then recovering toward the
    usual speed (time constant 8 minutes), every window ±10 % noise (a few probe vehicles)."""
    rnd = random.Random(seed)
    out = []
    for m in range(120):
        v = 10.0 if m < 20 else usual_kmh - (usual_kmh - 10.0) * math.exp(-(m - 20) / 8.0)
        out.append(round(max(1.0, v * (1.0 + rnd.gauss(0.0, 0.1))), 1))
    return out


async def test_the_forecast_beats_persistence_on_a_recovering_queue_with_a_profile() -> None:
    fc = forecaster(Profiles(lambda start: {SID: 45.0}))
    for m, kmh in enumerate(recovering_queue(seed=1)):
        await fc.on_speed(speed(m, kmh))
    score = fc.score_json()["horizons"]
    assert [h["horizon_s"] for h in score] == [900.0, 1800.0]
    for h in score:
        f, p = h["forecast"], h["persistence"]
        assert h["scored"] == 120 - h["horizon_s"] / 60, "every target window came"
        assert f["mae_kmh"] < p["mae_kmh"], h
        assert f["within_25pct"] > p["within_25pct"], h
    # The further ahead, the more the profile knows that the present does not.
    assert score[0]["skill"] > 0.2 and score[1]["skill"] > 0.4, score


async def test_the_forecast_follows_the_profile_into_the_next_bucket() -> None:
    # A usual day (live = profile): the evening peak clears at 08:15, the profile says so.
    fc = forecaster(Profiles(lambda start: {SID: 20.0 if start < T0 + BUCKET else 50.0}))
    made = await fc.on_speed(speed(5, 20.0))
    by_h = {f.horizon_s: f for f in made}
    assert by_h[900.0].speed_kmh == 50.0 and by_h[900.0].source == "live+profile"
    assert (by_h[900.0].level, by_h[900.0].level_name_en) == (1, "smooth")
    assert by_h[900.0].valid_at == speed(5, 20.0).observed_at + timedelta(minutes=15)


@pytest.mark.parametrize("start_kmh, step_kmh", [(60.0, -2.0), (10.0, 2.0)])
async def test_a_trend_without_a_profile_does_not_run_away(start_kmh: float,
                                                           step_kmh: float) -> None:
    fc = forecaster()  # no profiles at all
    made: list[SegmentForecast] = []
    last = start_kmh
    for m in range(25):
        last = start_kmh + step_kmh * m
        made += await fc.on_speed(speed(m, last))
    assert {f.source for f in made} == {"live+trend"}
    assert all(f.speed_kmh is not None and 0.0 <= f.speed_kmh <= 60.0 for f in made)
    final = {f.horizon_s: f.speed_kmh for f in made[-2:]}
    # Straight-line extrapolation would say 12 - 60 = -48 km/h (or 58 + 60 = 118) at 30 min.
    for h, kmh in final.items():
        assert kmh is not None
        assert abs(kmh - last) < abs(step_kmh) * h / 60 / 2, (h, kmh)
    if step_kmh < 0:
        assert final[900.0] is not None and final[900.0] < last, "the trend still points down"


def test_predict_keeps_less_of_todays_deviation_the_further_ahead() -> None:
    history = deque([(0.0, 15.0)])
    f15, _ = predict(history, 900.0, profile_now_kmh=45.0, profile_then_kmh=45.0,
                     free_flow_kmh=60.0)
    f30, _ = predict(history, 1800.0, profile_now_kmh=45.0, profile_then_kmh=45.0,
                     free_flow_kmh=60.0)
    # Ratio 1/3: 59 % of the deviation kept 15 minutes ahead, 35 % at 30 (half-life 20 min).
    assert f15 == pytest.approx(45.0 * (1 - 2 / 3 * 0.5 ** 0.75))
    assert f30 == pytest.approx(45.0 * (1 - 2 / 3 * 0.5 ** 1.5))
    assert 15.0 < f15 < f30 < 45.0


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_score_updates_when_the_target_window_arrives() -> None:
    fc = forecaster(Profiles(lambda start: {SID: 50.0}))
    scored_before = _metric("tti_warning_forecast_scored_total", horizon="900")
    made = await fc.on_speed(speed(0, 25.0))  # half the usual speed
    f15 = next(f for f in made if f.horizon_s == 900.0)
    assert f15.speed_kmh == pytest.approx(50.0 * (1 - 0.5 * 0.5 ** 0.75), abs=0.05)
    assert [h["scored"] for h in fc.score_json()["horizons"]] == [0, 0]

    await fc.on_speed(speed(15, 35.0))  # the truth for the 15-minute forecast
    h15, h30 = fc.score_json()["horizons"]
    assert (h15["scored"], h30["scored"]) == (1, 0)
    assert f15.speed_kmh is not None
    assert h15["forecast"]["mae_kmh"] == pytest.approx(abs(f15.speed_kmh - 35.0), abs=1e-3)
    assert h15["persistence"]["mae_kmh"] == pytest.approx(10.0)
    assert (h15["forecast"]["within_25pct"], h15["persistence"]["within_25pct"]) == (1.0, 0.0)
    assert h15["skill"] > 0.9
    assert _metric("tti_warning_forecast_scored_total", horizon="900") == scored_before + 1
    assert _metric("tti_warning_forecast_mae_kmh", horizon="900", method="persistence") == 10.0

    # No window at minute 30: the 30-minute forecast of minute 0 and the 15-minute one of
    # minute 15 never come true; they are counted, not scored.
    await fc.on_speed(speed(31, 40.0))
    h15, h30 = fc.score_json()["horizons"]
    assert (h15["scored"], h30["scored"]) == (1, 0)
    assert (h15["unverified"], h30["unverified"]) == (1, 1)


async def test_forecasts_are_deterministic_and_one_per_segment_per_window() -> None:
    stream = [speed(m, kmh, sid) for m, kmh in enumerate(recovering_queue(seed=3)[:40])
              for sid in (SID, "1:1:2")]
    profiles = Profiles(lambda start: {SID: 45.0})
    a, b = Recorder(), Recorder()
    first, standby = forecaster(profiles, a), forecaster(profiles, b)
    for s in stream:
        await first.on_speed(s)
    for i, s in enumerate(stream):  # the standby's consumer was redelivered everything
        await standby.on_speed(s)
        await standby.on_speed(s)
        if i > 2:
            await standby.on_speed(stream[i - 2])  # and an older window of a segment
    assert a.events == b.events
    ids = [event_id for _, _, event_id in a.events]
    assert len(ids) == len(set(ids)) == 2 * len(stream)
    assert ids[0] == f"forecast:{SID}:{T0.isoformat()}:900"
    sources = {p.segment_id: p.source for p in a.of(FORECAST)}
    assert sources == {SID: "live+profile", "1:1:2": "live+trend"}


async def test_profiles_are_fetched_once_per_bucket() -> None:
    profiles = Profiles(lambda start: {SID: 45.0})
    fc = forecaster(profiles)
    for m in range(60):
        await fc.on_speed(speed(m, 30.0))
    # An hour of windows reaches 90 minutes of buckets: six of them, each asked for once.
    starts = {T0 + BUCKET * math.floor((at - T0) / BUCKET) for at in profiles.asked}
    assert len(profiles.asked) == len(starts) == 6


async def test_a_slow_or_failing_bigdata_never_holds_the_stream() -> None:
    release = asyncio.Event()
    calls = 0

    async def slow(at: datetime) -> ProfileSnapshot:
        nonlocal calls
        calls += 1
        await release.wait()
        return ProfileSnapshot(bucket=0, valid_until=T0 + timedelta(hours=2), speeds={
            SID: ProfileSpeed(segment_id=SID, speed_kmh=45.0, updated_at=T0)})

    book = ProfileBook(slow, clock=Clock(), wait_s=0.01)
    fc = Forecaster(window_s=60.0, output=Recorder(), profiles=book)
    assert {f.source for f in await fc.on_speed(speed(0, 20.0))} == {"live+trend"}
    release.set()
    await asyncio.sleep(0)
    assert {f.source for f in await fc.on_speed(speed(1, 20.0))} == {"live+profile"}
    assert calls == 1

    async def failing(at: datetime) -> ProfileSnapshot:
        nonlocal calls
        calls += 1
        raise ConnectionError("bigdata away")

    calls = 0
    fc = Forecaster(window_s=60.0, output=Recorder(),
                    profiles=ProfileBook(failing, clock=Clock(), retry_s=600.0))
    for m in range(5):
        assert {f.source for f in await fc.on_speed(speed(m, 20.0))} == {"live+trend"}
    assert calls == 1, "one failure, then nothing asked until the retry time"
    await fc.stop()


# --- in the warning app, on the memory bus ------------------------------------------------------

NETWORK = build_network()


@pytest.fixture
async def app_env(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], MemoryBus,
                                                          list[SegmentForecast]]]:
    sid = main_road(NETWORK, 0, 0)[0]
    bigdata = TestServer(bigdata_standin(NETWORK, profiles={sid: 50.0}))
    await bigdata.start_server()
    bus = MemoryBus(partitions=2)
    await bus.start()
    seen: list[SegmentForecast] = []

    async def on_forecast(env: Envelope[SegmentForecast]) -> None:
        seen.append(env.payload)

    await bus.subscribe(FORECAST, on_forecast, durable="test")
    app = create_app(Config(bigdata_url=str(bigdata.make_url("/")), speed_window_s=60.0,
                            db_url=f"sqlite:///{tmp_path}/tti.db"), bus=bus)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        await wait_for(lambda: app[SERVICE].ready.is_set(), within_s=20)
        yield client, bus, seen
    finally:
        await client.close()
        await bus.close()
        await bigdata.close()


async def test_the_warning_app_publishes_forecasts_and_serves_them_and_the_score(
        app_env: Any) -> None:
    client, bus, seen = app_env
    await bus.publish(SEGMENT_SPEED, speed(0, 25.0))
    await wait_for(lambda: len(seen) == 2, within_s=10)
    assert [(f.horizon_s, f.source) for f in seen] == [(900.0, "live+profile"),
                                                      (1800.0, "live+profile")]
    body = await (await client.get("/v1/forecasts", params={"segment": SID})).json()
    assert body["count"] == 2 and body["forecasts"][0]["speed_kmh"] == seen[0].speed_kmh
    assert body["forecasts"][0]["made_at"] == "2026-11-28T08:01:00Z"
    assert (await (await client.get("/v1/forecasts", params={"segment": "9:9:9"})).json()
            )["count"] == 0
    bad = await client.get("/v1/forecasts")
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_request"

    await bus.publish(SEGMENT_SPEED, speed(15, 35.0))
    await wait_for(lambda: len(seen) == 4, within_s=10)
    score = await (await client.get("/v1/forecasts/score")).json()
    h15, h30 = score["horizons"]
    assert (h15["horizon_s"], h15["scored"], h30["scored"]) == (900, 1, 0)
    assert h15["persistence"]["mae_kmh"] == 10.0 and h15["skill"] > 0.9
    assert score["as_of"] == "2026-11-28T08:15:00Z" and score["time_zone"] == "UTC"

"""Time-of-week profiles and learned free flow, on both store backends (the contract fixtures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.bigdata.profiles import (
    BUCKETS_PER_WEEK,
    MIN_FREE_FLOW_WINDOWS,
    bucket_end,
    bucket_label,
    bucket_of,
    percentile_cont,
)
from services.bigdata.store import GeoStore, SpeedRecord
from tests.bigdata.test_store_contract import (  # noqa: F401  (fixtures)
    LAT0,
    LON0,
    pg_template,
    pg_url,
    seg,
    store,
    store_url,
)

CST = timedelta(hours=8)
MONDAY = datetime(2024, 4, 1, tzinfo=UTC) - CST  # Monday 2024-04-01 00:00 local (UTC+8)
WEEKS = 3
STEP = timedelta(minutes=5)

A = seg(1, 1, 2, [(LON0, LAT0), (LON0 + 0.01, LAT0)])
B = seg(2, 3, 4, [(LON0, LAT0 + 0.01), (LON0 + 0.01, LAT0 + 0.01)])


def local(day: int, hour: int, minute: int = 0, week: int = WEEKS) -> datetime:
    """UTC instant of local weekday ``day`` (0 = Monday) hh:mm in week ``week`` after MONDAY."""
    return MONDAY + timedelta(weeks=week, days=day, hours=hour, minutes=minute)


def synthetic_speed(t: datetime) -> float:
    """Weekday rush hour 07:30-09:00 local at 15 km/h; nights 50-60 km/h; else 40 km/h."""
    lt = t + CST
    minutes = lt.hour * 60 + lt.minute
    if lt.weekday() < 5 and 7 * 60 + 30 <= minutes < 9 * 60:
        return 15.0
    if lt.hour >= 23 or lt.hour < 5:
        return 50.0 + (minutes % 60) / 6.0  # 50 … 59.2
    return 40.0


def history() -> list[SpeedRecord]:
    recs = []
    t = MONDAY
    while t < MONDAY + timedelta(weeks=WEEKS):
        recs.append(SpeedRecord(segment_id=A.segment_id, window_start=t,
                                observed_at=t + timedelta(minutes=1),
                                speed_kmh=synthetic_speed(t), sample_count=3, source="probe",
                                confidence=0.8))
        t += STEP
    # B: only a few windows (too few for a profile or a learned free flow) ...
    recs += [SpeedRecord(segment_id=B.segment_id, window_start=local(2, 8, m, week=0),
                         observed_at=local(2, 8, m + 1, week=0), speed_kmh=20.0,
                         sample_count=2, source="probe", confidence=0.5) for m in (0, 5, 10)]
    # ... and windows that must not count: no speed, a profile echo, outside the range.
    recs += [
        SpeedRecord(segment_id=B.segment_id, window_start=local(2, 8, 1, week=0),
                    observed_at=local(2, 8, 2, week=0), speed_kmh=None, sample_count=0,
                    source="probe", confidence=0.0),
        SpeedRecord(segment_id=B.segment_id, window_start=local(2, 8, 2, week=0),
                    observed_at=local(2, 8, 3, week=0), speed_kmh=20.0, sample_count=0,
                    source="profile", confidence=0.0),
        SpeedRecord(segment_id=B.segment_id, window_start=local(2, 8, 3, week=WEEKS),
                    observed_at=local(2, 8, 4, week=WEEKS), speed_kmh=20.0, sample_count=4,
                    source="probe", confidence=0.9),
    ]
    return recs


@pytest.fixture
async def learned(store: GeoStore) -> GeoStore:  # noqa: F811
    await store.import_segments("test.osm", "d1", "test", [A, B])
    await store.insert_speeds(history())
    n = await store.recompute_profiles(MONDAY, MONDAY + timedelta(weeks=WEEKS))
    assert n == BUCKETS_PER_WEEK  # A: every bucket has 3 windows × 3 weeks; B: none
    return store


def test_buckets_count_quarter_hours_of_the_local_week() -> None:
    assert bucket_of(MONDAY) == 0
    assert bucket_of(MONDAY - timedelta(seconds=1)) == BUCKETS_PER_WEEK - 1
    assert bucket_of(local(0, 7, 30)) == 30
    assert bucket_label(bucket_of(local(2, 8, 14))) == "Wed 08:00"
    assert bucket_end(local(2, 8, 14, week=0)) == local(2, 8, 15, week=0)
    assert bucket_end(local(2, 8, 15, week=0)) == local(2, 8, 30, week=0)
    assert bucket_of(local(2, 8, 0).replace(tzinfo=None)) == bucket_of(local(2, 8, 0))


def test_percentile_cont_matches_postgresql() -> None:
    assert percentile_cont([10.0, 20.0, 30.0, 40.0], 0.5) == 25.0
    assert percentile_cont([10.0], 0.85) == 10.0
    assert percentile_cont([0.0, 100.0], 0.85) == pytest.approx(85.0)


async def test_profile_shows_the_rush_hour_dip_in_the_local_bucket(learned: GeoStore) -> None:
    rush = await learned.profile_at(A.segment_id, local(2, 8, 0))  # Wednesday 08:00 local
    assert rush is not None
    assert rush.speed_kmh == pytest.approx(15.0)
    assert rush.bucket == 2 * 96 + 32
    assert rush.sample_windows == 3 * WEEKS
    assert rush.updated_at.tzinfo is not None
    # 07:15 local is before the dip; 08:00 UTC (16:00 local) is not rush hour either.
    assert (await learned.profile_at(A.segment_id, local(2, 7, 15))).speed_kmh == 40.0  # type: ignore[union-attr]
    assert (await learned.profile_at(
        A.segment_id, datetime(2024, 4, 3, 8, 0, tzinfo=UTC))).speed_kmh == 40.0  # type: ignore[union-attr]
    # No dip at the weekend; the profile repeats every week, also in a later month.
    assert (await learned.profile_at(A.segment_id, local(5, 8, 0))).speed_kmh == 40.0  # type: ignore[union-attr]
    later = await learned.profile_at(A.segment_id, local(0, 8, 40, week=10))
    assert later is not None and later.speed_kmh == 15.0

    every = await learned.segment_profile(A.segment_id)
    assert [p.bucket for p in every] == list(range(BUCKETS_PER_WEEK))
    dips = {p.bucket for p in every if p.speed_kmh < 20.0}
    assert dips == {d * 96 + q for d in range(5) for q in range(30, 36)}


async def test_too_little_data_gives_no_profile_and_the_default_free_flow(
        learned: GeoStore) -> None:
    assert await learned.profile_at(B.segment_id, local(2, 8, 0, week=0)) is None
    assert await learned.segment_profile(B.segment_id) == []
    at = await learned.profiles_at(local(2, 8, 0))
    assert set(at) == {A.segment_id}
    assert set(await learned.profiles_at(local(2, 8, 0), [B.segment_id, "9:9:9"])) == set()
    free = await learned.learned_free_flow([B.segment_id, "9:9:9"])
    assert set(free) == {B.segment_id}
    assert free[B.segment_id].source == "default"
    assert free[B.segment_id].speed_kmh == B.free_flow_kmh
    assert free[B.segment_id].updated_at is None


async def test_learned_free_flow_is_the_85th_percentile_of_night_speeds(
        learned: GeoStore) -> None:
    night = sorted(synthetic_speed(r.window_start) for r in history()
                   if r.segment_id == A.segment_id
                   and ((r.window_start + CST).hour >= 23 or (r.window_start + CST).hour < 5))
    assert len(night) >= MIN_FREE_FLOW_WINDOWS
    free = await learned.learned_free_flow()
    assert set(free) == {A.segment_id, B.segment_id}
    a = free[A.segment_id]
    assert a.source == "learned"
    assert a.sample_windows == len(night)
    assert a.speed_kmh == pytest.approx(percentile_cont(night, 0.85))
    assert 55.0 < a.speed_kmh < 60.0  # night speeds, not the 40 km/h of the day
    assert a.default_kmh == A.free_flow_kmh


async def test_recompute_replaces_and_forgets_what_is_no_longer_supported(
        learned: GeoStore) -> None:
    # Only the last week: still 3 windows per bucket, too few for a profile.
    last = MONDAY + timedelta(weeks=WEEKS - 1)
    assert await learned.recompute_profiles(last, last + timedelta(weeks=1)) == 0
    assert await learned.profiles_at(local(2, 8, 0)) == {}
    assert (await learned.learned_free_flow([A.segment_id]))[A.segment_id].source == "learned"
    assert await learned.recompute_profiles(MONDAY - timedelta(weeks=5), MONDAY) == 0
    assert (await learned.learned_free_flow([A.segment_id]))[A.segment_id].source == "default"

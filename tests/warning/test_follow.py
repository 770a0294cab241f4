"""A standby follows what the active replica published, so a restarted one holds the same.

A replica that restarts begins its memory at its consumers' ack floors: it has not seen the
normal windows that made a queue abnormal, or the first fixes of a coach's night drive, so on
its own it concludes less, or the same thing under another id (an episode seen to begin
later). Following the active replica's messages (the workflow store both share) it takes
their newer versions as its state, lets its own copy of the same queue or episode give way,
and then decides the next version as the active replica does.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest

from services.warning.engine import WarningEngine
from services.warning.rules.common import RuleSettings
from services.warning.rules.ruleset import RuleSet
from shared.clock import Clock
from shared.events import WARNING, MatchedPosition, Warning, WarningStatus
from shared.roadnet import RoadNetwork
from tests.warning.support import Recorder, build_network, main_road, window
from tests.warning.test_rules_night import ROUTES, TWO, every


@pytest.fixture(scope="module")
def network() -> RoadNetwork:
    return build_network()


def engine_on(network: RoadNetwork, *, clock: Clock | None = None,
              rules: RuleSettings | None = None) -> tuple[WarningEngine, Recorder]:
    out = Recorder()
    clock = clock or Clock()
    engine = WarningEngine(window_s=60.0, clock=clock, output=out)
    engine.set_network(network)
    if rules is not None:
        engine.rules = RuleSet(rules, clock=clock)
    return engine, out


async def minute(engine: WarningEngine, segments: list[str], m: int, kmh: float) -> None:
    for s in segments:
        await engine.apply_speed(window(s, m, kmh))
    await engine.evaluate()


def decisions(ws: list[Warning]) -> list[tuple[object, ...]]:
    return [(w.warning_id, w.version, w.status, w.segment_ids, w.cause) for w in ws]


async def test_a_restarted_standby_takes_the_active_replicas_queue_and_ends_it_alike(
        network: RoadNetwork) -> None:
    queue = main_road(network, 2, 7)
    active, a_out = engine_on(network)
    for m, kmh in ((0, 40.0), (1, 6.0), (2, 4.0)):
        await minute(active, queue, m, kmh)
    [wid] = active.warnings
    # The standby restarted after minute 1: it sees the queue from minute 2 on, and on its
    # own calls it a queue first seen then, under another id.
    standby, b_out = engine_on(network)
    await minute(standby, queue, 2, 4.0)
    assert set(standby.warnings) and wid not in standby.warnings
    for w in a_out.of(WARNING):
        standby.follow(w)
    assert standby.warnings == active.warnings, "theirs, and ours gave way"
    assert not any(standby.follow(w) for w in a_out.of(WARNING)), "taken once"
    # From here on it decides what the active replica decides.
    a_before, b_before = len(a_out.of(WARNING)), len(b_out.of(WARNING))
    for m, kmh in ((3, 5.0), (4, 50.0)):
        await minute(active, queue, m, kmh)
        await minute(standby, queue, m, kmh)
    a_next, b_next = a_out.of(WARNING)[a_before:], b_out.of(WARNING)[b_before:]
    assert a_next and a_next[-1].status is WarningStatus.RESOLVED
    assert decisions(b_next) == decisions(a_next)
    assert b_next == a_next, "the same messages, word for word"
    assert not standby.warnings and standby.queues == {}


async def test_an_ended_warning_ends_on_the_standby_too(network: RoadNetwork) -> None:
    queue = main_road(network, 2, 7)
    active, a_out = engine_on(network)
    for m, kmh in ((0, 40.0), (1, 6.0), (2, 4.0), (3, 50.0)):
        await minute(active, queue, m, kmh)
    standby, _ = engine_on(network)
    *earlier, last = a_out.of(WARNING)
    for w in earlier:
        standby.follow(w)
    assert standby.queues == {last.warning_id: set(queue)}
    assert standby.follow(last)
    assert not standby.warnings and standby.queues == {}
    assert standby.find_warning(last.warning_id) == last


async def test_a_night_drive_seen_from_the_middle_goes_on_under_the_active_replicas_id(
        network: RoadNetwork) -> None:
    clock = Clock(start=TWO + timedelta(hours=2))
    active, a_out = engine_on(network, clock=clock, rules=ROUTES)
    standby, b_out = engine_on(network, clock=clock, rules=ROUTES)
    trip = every(-300, 1800)  # 01:55-02:30, moving
    for p in trip:
        await active.put_rule_warnings(active.rules.on_matched(p))
    # Restarted at 02:10: its episode begins with the first fix it sees.
    late: list[MatchedPosition] = [p for p in trip if p.observed_at >= TWO + timedelta(minutes=10)]
    for p in late:
        await standby.put_rule_warnings(standby.rules.on_matched(p))
    theirs, ours = a_out.of(WARNING), b_out.of(WARNING)
    assert {w.warning_id for w in theirs} != {w.warning_id for w in ours}, "another id alone"
    for w in theirs:
        standby.follow(w)
    assert standby.warnings == active.warnings
    a_before, b_before = len(theirs), len(ours)
    stop = every(1800, 3000, kmh=0.0)  # it stands: the episode ends alike
    for p in stop:
        await active.put_rule_warnings(active.rules.on_matched(p))
        await standby.put_rule_warnings(standby.rules.on_matched(p))
    a_next, b_next = a_out.of(WARNING)[a_before:], b_out.of(WARNING)[b_before:]
    assert a_next[-1].status is WarningStatus.RESOLVED
    assert b_next == a_next, "the same messages, word for word"
    assert all(a.version + 1 == b.version for a, b in pairwise(a_next))

"""The warning engine: the one writer of warning state.

It consumes segment speeds and detected events in stream order and decides, deterministically,
every road status the public sees (live, profile fallback, or none), every congestion queue and
incident warning, and the area index. Everything it concludes goes out through an `Output`,
which the app gates on the replica's lease: a standby replica runs the same engine on the same
stream and so holds the same state, but publishes nothing until it takes over (then it
republishes what is active, under the same deterministic ids and event ids, so JetStream drops
what the old active replica had already sent).

Time comes from the one clock (``shared/clock.py``); a window's own times come from the stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Gauge

from services.warning import abnormal, congestion, incidents
from services.warning.adoption import MAX_ENDED, Adoption
from services.warning.area_index import AreaGrid, compute_index
from services.warning.congestion import STALE_WINDOWS, Grade, grade
from services.warning.rules.ruleset import RuleSet
from shared.clients.bigdata import DetectorSite, ProfileSnapshot
from shared.clock import Clock
from shared.codec import Envelope
from shared.errors import TtiError
from shared.events import (
    AREA_INDEX,
    INCIDENT,
    ROAD_STATUS,
    TERMINAL_COMMAND,
    WARNING,
    AreaIndex,
    CapCertainty,
    CapMsgType,
    CapUrgency,
    CitizenReport,
    DetectedEvent,
    Detour,
    Impact,
    Incident,
    RoadStatus,
    SegmentSpeed,
    Subject,
    TerminalAlarm,
    Warning,
    WarningAction,
    WarningKind,
    WarningStatus,
)
from shared.roadnet import RoadNetwork

log = logging.getLogger("tti.warning")

T = TypeVar("T")

STATUSES = Counter("tti_warning_road_status_total", "Road statuses graded, by level and source",
                   ["level", "source"])
WARNINGS = Counter("tti_warning_warnings_total", "Warning messages, by kind and status",
                   ["kind", "status"])
ACTIVE = Gauge("tti_warning_active_warnings", "Active warnings, by kind", ["kind"])
IGNORED = Counter("tti_warning_inputs_ignored_total",
                  "Inputs the engine did not apply, by reason", ["input", "reason"])

"""Ended warnings kept for ``/v1/warnings?status=ended`` (newest kept)."""


class Output(Protocol):
    """Where the engine's conclusions go (the bus, gated by the lease)."""

    async def publish(self, subject: Subject[T], payload: T, *, event_id: str) -> None:
        """Hand one event over; ``event_id`` is deterministic (JetStream drops repeats)."""


Analyst = Callable[[Warning], Awaitable[tuple[Detour | None, Impact | None]]]
"""Computes a warning's detour and impact (routing); slow, so run beside the engine."""


@dataclass(slots=True)
class _Segment:
    last: SegmentSpeed
    grade: Grade
    stale: bool = False


@dataclass(slots=True)
class _Published:
    """What was last published for a segment: (source, level, speed) to skip repeats."""

    source: str
    level: int | None


class WarningEngine(Adoption):
    """Grades segments, tracks queues and incidents, and keeps every warning's lifecycle."""

    def __init__(self, *, window_s: float, clock: Clock, output: Output,
                 analyst: Analyst | None = None) -> None:
        self.window_s = window_s
        self.clock = clock
        self.output = output
        self.analyst = analyst
        self.network: RoadNetwork | None = None
        self.grid: AreaGrid | None = None
        self.segments: dict[str, _Segment] = {}
        self.warnings: dict[str, Warning] = {}
        self.ended: OrderedDict[str, Warning] = OrderedDict()
        self.queues: dict[str, set[str]] = {}
        self.recent = abnormal.RecentState(window_s)
        self.incidents = incidents.IncidentBook()
        self.rules = RuleSet(clock=clock)  # the 两客一危 rules; the service sets their settings
        self.detectors: Mapping[str, DetectorSite] = {}
        self.profiles: ProfileSnapshot | None = None
        self.index: dict[str, AreaIndex] = {}
        self._published: dict[str, _Published] = {}
        self._dirty = False
        self._open_window: datetime | None = None
        self._last_arrival = -1.0e18
        self._analysis: dict[str, asyncio.Task[None]] = {}
        # Congestion warnings a department closed or cancelled while the queue goes on: their
        # segments stay claimed, silently, so the queue does not come back as a "new" warning.
        self.silenced: dict[str, Warning] = {}
        self._followed: OrderedDict[str, None] = OrderedDict()
        """Warnings taken from the active replica (`follow`), oldest first."""
        self._actions: dict[str, asyncio.Future[Warning]] = {}

    # --- inputs ------------------------------------------------------------------------------

    def set_network(self, network: RoadNetwork) -> None:
        """The road graph queues are traced on (and the area grid drawn over)."""
        self.network = network
        self.incidents.network = network
        self.grid = AreaGrid(network)

    async def on_speed(self, env: Envelope[SegmentSpeed]) -> None:
        """Bus handler for ``tti.segment.speed``: grade, publish the status, note the queue."""
        await self.apply_speed(env.payload)

    async def apply_speed(self, s: SegmentSpeed) -> None:
        """Grade one window of one segment; queues are re-evaluated once the window is in."""
        held = self.segments.get(s.segment_id)
        if held is not None and s.window_start <= held.last.window_start:
            IGNORED.labels("speed", "not_newer").inc()
            return  # redelivered, or older than what is held: changes nothing
        if self._open_window is not None and s.window_start > self._open_window and self._dirty:
            await self.evaluate()  # the previous window is complete: trace its queues first
        if self._open_window is None or s.window_start > self._open_window:
            self._open_window = s.window_start
        g = grade(s.speed_kmh, s.road_class)
        self.segments[s.segment_id] = _Segment(s, g)
        self.recent.note(s, g.level, profile_kmh=self._profile_kmh(s.segment_id, s.observed_at))
        self._dirty = True
        self._last_arrival = self.clock.monotonic()
        await self._publish_status(RoadStatus(
            segment_id=s.segment_id, level=g.level, level_name=g.names[0],
            level_name_en=g.names[1], speed_kmh=s.speed_kmh, free_flow_kmh=s.free_flow_kmh,
            observed_at=s.observed_at, sample_count=s.sample_count, source=s.source, tpi=g.tpi),
            event_id=f"status:{s.segment_id}:{s.window_start.isoformat()}")

    async def on_detected_event(self, env: Envelope[DetectedEvent]) -> None:
        """Bus handler for ``tti.detector.event``: incidents and weather warnings."""
        e = env.payload
        site = self.detectors.get(e.detector_id)
        change = self.incidents.apply(e, site, self._segment_level)
        if change is None:
            IGNORED.labels("detected_event", "not_newer").inc()
            return
        await self._publish_incident(*change)

    async def on_terminal_alarm(self, env: Envelope[TerminalAlarm]) -> None:
        """Bus handler for ``tti.alarm``: terminals' own alarm bits as vehicle alarms, and an
        SOS as word of an incident where the vehicle is."""
        await self.put_rule_warnings(self.rules.on_alarm(env.payload))
        await self._add_evidence(incidents.from_alarm(env.payload, self.network))

    async def on_citizen_report(self, report: CitizenReport) -> None:
        """A citizen's report (``tti.citizen.report``, every replica): an accident or closure
        at a place is word of an incident there."""
        await self._add_evidence(incidents.from_report(report, self.network))

    async def _add_evidence(self, ev: incidents.Evidence | None) -> None:
        if ev is None:
            return
        change = self.incidents.add(ev, self._segment_level,
                                    new_id="inc-" + incidents.digest(ev.key))
        if change is not None:
            await self._publish_incident(*change)

    async def _publish_incident(self, inc: Incident | None, warning: Warning | None) -> None:
        if inc is not None:
            await self.output.publish(
                INCIDENT, inc, event_id=f"{inc.incident_id}:{inc.updated_at.isoformat()}")
        if warning is not None:
            await self._put_warning(warning, analyse=warning.kind == WarningKind.INCIDENT)

    async def put_rule_warnings(self, warnings: Iterable[Warning]) -> None:
        """Publish what the safety rules concluded; a just-raised alarm's driver gets a text."""
        for w in warnings:
            await self._put_warning(w, analyse=False)
            for cmd in self.rules.commands_for(w):
                await self.output.publish(TERMINAL_COMMAND, cmd, event_id=cmd.command_id)

    def set_profiles(self, snapshot: ProfileSnapshot) -> None:
        """The time-of-week profile speeds of the current bucket (the fallback)."""
        self.profiles = snapshot

    # --- time --------------------------------------------------------------------------------

    SETTLE_S = 1.0
    """A window's speeds arrive in a burst: queues are traced this long after the last."""

    async def settle(self) -> bool:
        """Trace the queues once the window's burst of speeds is over (cheap: call often, the
        warning's latency is this check's period plus ``SETTLE_S``). True if it traced."""
        settle_s = min(self.SETTLE_S, self.window_s / 4)
        if self._dirty and self.clock.monotonic() - self._last_arrival >= settle_s:
            await self.evaluate()
            return True
        return False

    async def tick(self) -> None:
        """Periodic work: a quiet window's queues, staleness, profile fallback, the index."""
        now = self.clock.now()
        await self.settle()
        await self.expire_stale(now)
        for change in self.incidents.expire(now, self._segment_level):
            await self._publish_incident(*change)
        self.incidents.prune(now)
        await self.put_rule_warnings(self.rules.expire(now))

    async def evaluate(self) -> None:
        """Re-trace the queues from the held grades and publish the area index."""
        self._dirty = False
        if self.network is not None:
            await self._trace_queues()
        await self._publish_index(self.clock.now())

    async def expire_stale(self, now: datetime) -> None:
        """Segments without a window for STALE_WINDOWS windows fall back to their profile."""
        limit = timedelta(seconds=self.window_s * STALE_WINDOWS)
        changed = False
        # A copy: publishing awaits, and speeds arriving meanwhile add segments.
        for sid, seg in list(self.segments.items()):
            if seg.stale or now - seg.last.observed_at < limit:
                continue
            seg.stale = True
            changed = True
            await self._publish_fallback(sid, seg.last.road_class, seg.last.free_flow_kmh, now)
        if changed and self.network is not None:
            await self._trace_queues(no_data_at=now)

    async def refresh_profiles(self, snapshot: ProfileSnapshot) -> int:
        """A new bucket's profiles: re-grade every segment without live data; returns how many."""
        self.profiles = snapshot
        if self.network is None:
            return 0
        now = self.clock.now()
        count = 0
        for seg in self.network:
            held = self.segments.get(seg.segment_id)
            if held is not None and not held.stale:
                continue
            if await self._publish_fallback(seg.segment_id, seg.road_class, seg.free_flow_kmh,
                                            now):
                count += 1
        return count

    # --- outputs -----------------------------------------------------------------------------

    def _profile_kmh(self, segment_id: str, at: datetime) -> float | None:
        """The segment's profile speed for the bucket holding ``at``, if one is held."""
        snap = self.profiles
        if snap is None or at >= snap.valid_until + timedelta(seconds=self.window_s):
            return None
        profile = snap.speeds.get(segment_id)
        return None if profile is None else profile.speed_kmh

    def _segment_level(self, segment_id: str) -> int | None:
        seg = self.segments.get(segment_id)
        return None if seg is None or seg.stale else seg.grade.level

    async def _publish_status(self, status: RoadStatus, *, event_id: str) -> None:
        self._published[status.segment_id] = _Published(status.source, status.level)
        STATUSES.labels(str(status.level or 0), status.source).inc()
        await self.output.publish(ROAD_STATUS, status, event_id=event_id)

    async def _publish_fallback(self, segment_id: str, road_class: str | None,
                                free_flow_kmh: float | None, now: datetime) -> bool:
        """Publish the profile status of a segment (or ``none``); False when nothing to say."""
        snap = self.profiles
        profile = None
        if snap is not None and now < snap.valid_until + timedelta(seconds=self.window_s):
            profile = snap.speeds.get(segment_id)
        if profile is None:
            prev = self._published.get(segment_id)
            if prev is None or prev.source == "none":
                return False  # nothing was said of it, or "no data" already was
            g, source, speed = Grade(None, None), "none", None
        else:
            g, source, speed = grade(profile.speed_kmh, road_class), "profile", profile.speed_kmh
        await self._publish_status(RoadStatus(
            segment_id=segment_id, level=g.level, level_name=g.names[0],
            level_name_en=g.names[1], speed_kmh=speed, free_flow_kmh=free_flow_kmh,
            observed_at=now, sample_count=0, source=source, tpi=g.tpi),
            event_id=f"status:{segment_id}:{source}:{now.isoformat()}")
        return True

    async def _publish_index(self, now: datetime) -> None:
        if self.grid is None:
            return
        live = {sid: s for sid, s in self.segments.items() if not s.stale}
        for area in compute_index(self.grid, live, now):
            self.index[area.area_id] = area
            await self.output.publish(AREA_INDEX, area,
                                      event_id=f"index:{area.area_id}:{now.isoformat()}")

    async def republish(self) -> None:
        """Send what is active again (a standby that just took over, or a restarted consumer)."""
        for w in list(self.warnings.values()):
            await self.output.publish(WARNING, w, event_id=f"{w.warning_id}:{w.version}")
            for cmd in self.rules.commands_for(w):  # the old holder may not have sent it
                await self.output.publish(TERMINAL_COMMAND, cmd, event_id=cmd.command_id)
        for inc in self.incidents.active():
            await self.output.publish(INCIDENT, inc,
                                      event_id=f"{inc.incident_id}:{inc.updated_at.isoformat()}")

    # --- queues ------------------------------------------------------------------------------

    async def _trace_queues(self, *, no_data_at: datetime | None = None) -> None:
        network = self.network
        assert network is not None
        severe = {sid for sid, s in self.segments.items()
                  if not s.stale and congestion.raises(s.last, s.grade.level)}
        raising = {sid for sid in severe
                   if abnormal.may_start(network, sid, self.recent, self._live_window)}
        holding = {sid for sid, s in self.segments.items()
                   if not s.stale and (s.grade.level or 0) >= congestion.HOLD_AT_OR_ABOVE}
        plan = congestion.plan_queues(
            network, raising=raising, holding=holding, joining=severe, queues=self.queues,
            started=lambda wid: ((self.warnings.get(wid) or self.silenced[wid]).started_at, wid))
        for wid, into in sorted(plan.merged.items()):
            await self._end(wid, WarningStatus.RESOLVED, cause=f"merged into {into}",
                            at=self._latest_at(self.queues[wid]))
        for wid in sorted(plan.ended):
            segs = self.queues[wid]
            all_stale = all(self.segments[s].stale for s in segs if s in self.segments)
            reason = "no_data" if all_stale else "recovered"
            at = no_data_at if all_stale and no_data_at is not None else self._latest_at(segs)
            await self._end(wid, WarningStatus.RESOLVED, cause=reason, at=at)
        for wid, kept in sorted(plan.keep.items()):
            await self._update_queue(wid, kept)
        for new in plan.new:
            await self._raise_queue(new)

    def _ends_at_a_point(self, network: RoadNetwork, facts: dict[str, Any]) -> bool:
        """Whether a queue is a suspected incident: it ends at one point (``bottleneck``)."""
        return abnormal.bottleneck(network, facts["head"].segment_id, live=self._live_window,
                                   state=self.recent, level_of=self._segment_level)

    async def _queue_evidence(self, w: Warning) -> None:
        """A queue that ends at one point is word of an incident at its head; once it is, the
        queue holds the incident until it dissolves."""
        if w.kind == WarningKind.INCIDENT:
            await self._add_evidence(incidents.from_queue(w))

    def _live_window(self, segment_id: str) -> SegmentSpeed | None:
        seg = self.segments.get(segment_id)
        return None if seg is None or seg.stale else seg.last

    def _latest_at(self, segment_ids: set[str] | list[str]) -> datetime:
        times = [self.segments[s].last.observed_at for s in segment_ids if s in self.segments]
        return max(times) if times else self.clock.now()

    async def _raise_queue(self, segs: list[str]) -> None:
        network = self.network
        assert network is not None
        facts = congestion.queue_facts(network, self.segments, segs)
        wid = congestion.queue_warning_id(facts["head"].segment_id, facts["window_start"])
        if wid in self.warnings or wid in self.ended:
            # The same queue seen again (a replay, or it ended and came back in the same
            # window): continue under its id rather than making a second warning.
            IGNORED.labels("queue", "known").inc()
            prior = self.warnings.get(wid) or self.ended.pop(wid)
            self.warnings[wid] = prior
            self.queues[wid] = set(segs)
            await self._update_queue(wid, list(segs))
            return
        w = Warning(
            warning_id=wid, status=WarningStatus.RAISED,
            certainty=CapCertainty.OBSERVED, urgency=CapUrgency.IMMEDIATE,
            msg_type=CapMsgType.ALERT, started_at=facts["window_start"],
            updated_at=facts["observed_at"],
            **congestion.queue_fields(network, facts,
                                      incident=self._ends_at_a_point(network, facts)))
        self.queues[wid] = set(segs)
        await self._put_warning(w, analyse=True)
        await self._queue_evidence(w)

    async def _update_queue(self, wid: str, segs: list[str]) -> None:
        if wid in self.silenced:
            self.queues[wid] = set(segs)
            return
        old = self.warnings[wid]
        network = self.network
        assert network is not None
        facts = congestion.queue_facts(network, self.segments, segs)
        incident = old.kind == WarningKind.INCIDENT or self._ends_at_a_point(network, facts)
        fields = congestion.queue_fields(network, facts, incident=incident)
        moved = set(segs) != self.queues.get(wid, set())
        self.queues[wid] = set(segs)
        same = all(getattr(old, k) == v for k, v in fields.items())
        if same:
            return
        status = old.status if old.status in (WarningStatus.ACKNOWLEDGED,
                                              WarningStatus.ASSIGNED) else WarningStatus.UPDATED
        w = replace(old, status=status, msg_type=CapMsgType.UPDATE,
                    updated_at=max(old.updated_at, facts["observed_at"]),
                    version=old.version + 1, **fields)
        if moved:
            w = replace(w, detour=None, impact=None)
        await self._put_warning(w, analyse=moved)
        await self._queue_evidence(w)

    async def _end(self, wid: str, status: WarningStatus, *, cause: str, at: datetime) -> None:
        old = self.warnings.pop(wid, None)
        self.queues.pop(wid, None)
        self.silenced.pop(wid, None)
        if old is None:
            return
        task = self._analysis.pop(wid, None)
        if task is not None:
            task.cancel()
        at = max(at, old.updated_at)
        w = replace(old, status=status, msg_type=CapMsgType.UPDATE, urgency=CapUrgency.PAST,
                    updated_at=at, ended_at=at, version=old.version + 1,
                    details={**old.details, "ended_because": cause})
        await self._emit(w)
        if self.incidents.incident_of(f"queue:{wid}") is not None:
            await self._add_evidence(incidents.from_queue(w, cleared=True))
        self.ended[wid] = w
        while len(self.ended) > MAX_ENDED:
            self.ended.popitem(last=False)
        self._count_active()
        log.info("warning resolved", extra={"warning_id": wid, "because": cause})

    # --- warnings ----------------------------------------------------------------------------

    async def _put_warning(self, w: Warning, *, analyse: bool, event_suffix: str = "") -> None:
        if not w.active:
            self.warnings.pop(w.warning_id, None)
            self.ended[w.warning_id] = w
        else:
            self.warnings[w.warning_id] = w
        await self._emit(w, event_suffix)
        self._count_active()
        if analyse and w.active and self.analyst is not None and w.segment_ids:
            self._schedule_analysis(w)

    async def _emit(self, w: Warning, event_suffix: str = "") -> None:
        WARNINGS.labels(w.kind.value, w.status.value).inc()
        await self.output.publish(WARNING, w,
                                  event_id=f"{w.warning_id}:{w.version}{event_suffix}")
        if w.version == 1 and not event_suffix:
            log.info("warning raised", extra={"warning_id": w.warning_id, "kind": w.kind.value,
                                              "segments": len(w.segment_ids)})

    def _count_active(self) -> None:
        for kind in WarningKind:
            ACTIVE.labels(kind.value).set(sum(1 for w in self.warnings.values()
                                              if w.kind == kind))

    def _schedule_analysis(self, w: Warning) -> None:
        old = self._analysis.pop(w.warning_id, None)
        if old is not None:
            old.cancel()
        analyst = self.analyst
        assert analyst is not None
        wid, segments = w.warning_id, w.segment_ids

        async def run() -> None:
            try:
                detour, impact = await analyst(w)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("detour and impact of %s failed", wid)
                return
            finally:
                if self._analysis.get(wid) is asyncio.current_task():
                    del self._analysis[wid]
            current = self.warnings.get(wid)
            if current is None or current.segment_ids != segments:
                return  # the warning moved on while we computed: a newer analysis follows
            if current.detour == detour and current.impact == impact:
                return
            # Same version: versions count what the stream decided, so every replica numbers
            # them alike; the analysis (timing-dependent) rides on the version it describes.
            await self._put_warning(replace(current, detour=detour, impact=impact),
                                    analyse=False, event_suffix=":analysis")

        self._analysis[wid] = asyncio.get_running_loop().create_task(run(),
                                                                      name=f"analyse:{wid}")

    async def stop(self) -> None:
        """Cancel running analyses."""
        tasks = list(self._analysis.values())
        self._analysis.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- departments ---------------------------------------------------------------------------

    async def on_action(self, env: Envelope[WarningAction]) -> None:
        """Bus handler for ``tti.warning.action``: apply it; whoever waits learns the outcome."""
        a = env.payload
        waiter = self._actions.pop(a.action_id, None)
        try:
            w = await self.apply_department_action(a)
        except TtiError as exc:
            IGNORED.labels("action", exc.code).inc()
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return  # refused: the state said no, a redelivery would too
        if waiter is not None and not waiter.done():
            waiter.set_result(w)

    def expect_action(self, action_id: str) -> asyncio.Future[Warning]:
        """A future resolved when this replica has applied (or refused) the action."""
        fut: asyncio.Future[Warning] = asyncio.get_running_loop().create_future()
        self._actions[action_id] = fut
        return fut

    def forget_action(self, action_id: str) -> None:
        """Stop waiting for an action (the request gave up)."""
        self._actions.pop(action_id, None)

    # --- reads -------------------------------------------------------------------------------

    def list_warnings(self, status: str = "active") -> list[Warning]:
        """Active warnings (``active``), ended ones (``ended``) or both (``all``), newest first."""
        items: list[Warning] = []
        if status in ("active", "all"):
            items.extend(self.warnings.values())
        if status in ("ended", "all"):
            items.extend(self.ended.values())
        items.sort(key=lambda w: (w.started_at, w.updated_at, w.warning_id), reverse=True)
        return items

    def find_warning(self, warning_id: str) -> Warning | None:
        """One warning by id (active or recently ended), or None."""
        return self.warnings.get(warning_id) or self.ended.get(warning_id)


def warning_json(w: Warning) -> dict[str, object]:
    """A warning as the HTTP API shows it: every field, plus ``active``."""
    out = {f.name: getattr(w, f.name) for f in dataclasses.fields(w)}
    out["active"] = w.active
    return out

"""Whether a segment's congestion is abnormal for that place and time (issue 15 §3).

Congestion is a status every citizen sees; a *warning* is for congestion that is not what the
place usually has. A queue at a red light that comes back every cycle is level 5 on its approach
minute after minute: it is the road's normal state at that hour, not news. So a severe window
(:func:`services.warning.congestion.raises`) starts a queue warning only when one of these holds:

* **Abnormal against the usual speed.** The usual speed is the median of the segment's own
  recent windows (the last ``HORIZON_WINDOWS`` windows' span) that were not abnormal themselves,
  once there are ``MIN_HISTORY`` of them — or the segment's time-of-week profile (bigdata's
  history) where that is lower: what the place usually has at this hour. Both must find the
  window abnormal; a profile alone, often a median of a handful of windows, does not judge.
  The window is abnormal at or below ``ABNORMAL_RATIO`` of it, and the evidence is
  *corroborated* when the segment's previous window (within ``PERSIST_WINDOWS``) was abnormal
  too, when a neighbouring segment's latest window is abnormal, or when the window rests on
  ``STRONG_SAMPLES`` vehicles.
* **Severe with nothing to compare.** Too little recent state (a segment seen
  for the first time, a replica just started): the window must be far below free flow
  (``COLD_RATIO``) on at least ``STRONG_SAMPLES`` vehicles — a crawl many vehicles share, not a
  car or two that caught a red light.
* **Severe and lasting.** Severe on at least ``LASTING_SHARE`` of the segment's windows over the
  last ``LASTING_WINDOWS`` windows' span, with at least ``LASTING_MIN`` windows: a jam that long
  is worth a warning even where it is the usual state.

A queue already warned of grows onto any severe neighbour (``joining`` in
:func:`services.warning.congestion.plan_queues`): the queue is one warning however far back it
reaches. The state is built from the stream alone, so a standby replica holds the same.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.events import SegmentSpeed
from shared.roadnet import RoadNetwork

HORIZON_WINDOWS = 30
"""Recent windows kept per segment (30 minutes of one-minute windows)."""
MIN_HISTORY = 4
"""Normal windows needed before a segment's recent state can say what is usual."""
ABNORMAL_RATIO = 0.5
"""A window at or below this share of the usual speed is abnormal."""
PERSIST_WINDOWS = 3
"""The previous abnormal window corroborates within this many windows."""
STRONG_SAMPLES = 3
"""A window resting on this many vehicles needs no corroboration."""
COLD_RATIO = 0.3
"""Without a usual speed, a severe window must be at or below this share of free flow."""
LASTING_WINDOWS = 30
LASTING_SHARE = 0.9
LASTING_MIN = 15

SEVERE = 5


@dataclass(frozen=True, slots=True)
class _Window:
    start: float  # epoch seconds
    speed_kmh: float
    severe: bool
    abnormal: bool


@dataclass(frozen=True, slots=True)
class Judgement:
    """What a segment's latest window says."""

    usual_kmh: float | None
    basis: str
    """``profile``, ``recent`` or ``none`` (nothing to compare with)."""
    abnormal: bool
    """At or below ``ABNORMAL_RATIO`` of the usual speed."""
    corroborated_alone: bool
    """Abnormal and backed by the segment's own previous window or by many vehicles."""
    cold_severe: bool
    """No usual speed, and a crawl on ``STRONG_SAMPLES`` vehicles (see the module docstring)."""
    lasting: bool
    """Severe and lasting."""
    window_start: datetime


class RecentState:
    """Each segment's recent windows and the judgement of its latest one."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._windows: dict[str, deque[_Window]] = {}
        self.latest: dict[str, Judgement] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def note(self, s: SegmentSpeed, level: int | None, *,
             profile_kmh: float | None = None) -> Judgement | None:
        """Judge a new window of ``s.segment_id`` (newer than any held) and keep it."""
        if s.speed_kmh is None:
            return None
        start = s.window_start.timestamp()
        held = self._windows.setdefault(s.segment_id, deque())
        horizon = start - HORIZON_WINDOWS * self.window_s
        while held and held[0].start < horizon:
            held.popleft()
        severe = level == SEVERE
        normal = [w.speed_kmh for w in held if not w.abnormal]
        usual = statistics.median(normal) if len(normal) >= MIN_HISTORY else None
        basis = "recent" if usual is not None else "none"
        if usual is not None and profile_kmh is not None and 0 < profile_kmh < usual:
            usual, basis = profile_kmh, "profile"
        abnormal = usual is not None and s.speed_kmh <= ABNORMAL_RATIO * usual
        previous = held[-1] if held else None
        persisted = (previous is not None and previous.abnormal
                     and start - previous.start <= PERSIST_WINDOWS * self.window_s)
        strong = s.sample_count >= STRONG_SAMPLES
        cold = (usual is None and severe and strong and s.free_flow_kmh is not None
                and s.speed_kmh <= COLD_RATIO * s.free_flow_kmh)
        held.append(_Window(start, s.speed_kmh, severe, abnormal))
        lasting_from = start - LASTING_WINDOWS * self.window_s
        span = [w for w in held if w.start > lasting_from]
        lasting = (severe and len(span) >= LASTING_MIN
                   and sum(w.severe for w in span) >= LASTING_SHARE * len(span))
        j = Judgement(usual_kmh=usual, basis=basis, abnormal=abnormal,
                      corroborated_alone=abnormal and (persisted or strong),
                      cold_severe=cold, lasting=lasting, window_start=s.window_start)
        self.latest[s.segment_id] = j
        return j


RECOVERED_RATIO = 0.7
"""Past a bottleneck, traffic runs at this share of its usual speed (or of free flow) or more."""


def bottleneck(network: RoadNetwork, head: str, *, live: Callable[[str], SegmentSpeed | None],
               state: RecentState, level_of: Callable[[str], int | None]) -> bool:
    """Whether a queue ends at one point: past its head, traffic flows as usual there.

    That contrast — a queue behind a point, free road after it — is what a lane blocked by an
    accident or a stopped vehicle looks like, where congestion spreading from downstream has
    no such edge. ``live`` gives a segment's latest window while it is fresh.
    """
    reverse = network.find_reverse(head)
    for nxt in network.successors(head) if head in network else ():
        s = live(nxt)
        if nxt == reverse or s is None or s.speed_kmh is None:
            continue
        j = state.latest.get(nxt)
        ref = j.usual_kmh if j is not None and j.usual_kmh else s.free_flow_kmh
        if ref and s.speed_kmh >= RECOVERED_RATIO * ref and (level_of(nxt) or 0) <= 3:
            return True
    return False


def may_start(network: RoadNetwork, sid: str, state: RecentState,
              live: Callable[[str], SegmentSpeed | None]) -> bool:
    """Whether a severe segment may start a queue warning (the module docstring's rules)."""
    j = state.latest.get(sid)
    if j is None:
        return False
    if j.corroborated_alone or j.cold_severe or j.lasting:
        return True
    if not j.abnormal or sid not in network:
        return False
    reverse = network.find_reverse(sid)
    for other in (*network.successors(sid), *network.predecessors(sid)):
        nj = state.latest.get(other)
        if other != reverse and live(other) is not None and nj is not None and nj.abnormal:
            return True
    return False

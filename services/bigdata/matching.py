"""Online hidden-Markov-model map matching with a bounded lag, one small state per vehicle.

Model (Newson & Krumm 2009, with the usual additions for probe vehicles that report speed and
heading, as JT/T 808 terminals do):

- **States** are candidate positions: the projections of a fix onto the directed segments within
  ``search_radius_m`` (each direction of a two-way road is its own candidate).
- **Emission**: Gaussian in the distance from the fix to the candidate (σ ≈ GPS error); a
  penalty when a moving vehicle's heading disagrees with the segment's direction, which is what
  tells the two directions of a road and the two carriageways of a dual carriageway apart; and a
  penalty for a reported speed far above the segment's free-flow speed (a car at 70 km/h is on
  the trunk road, not on the 40 km/h service road 15 m beside it).
- **Transition**: exponential in |route distance − great-circle distance| between consecutive
  fixes, and Gaussian (capped, so stop-and-go traffic cannot veto a route) in |route distance −
  distance expected from the reported speeds|. Routes are costed with a penalty per ramp
  (``*_link``) segment, so a vehicle is not sent off a road and back onto it through two ramps
  on the strength of a few metres of GPS noise. Routes not drivable within a speed-derived
  bound have probability 0. A transition onto a different OSM way that keeps the direction of
  travel but moves sideways of it costs a little (``way_change_log``): turning at a junction
  is free, and so is a road going on as another OSM way; drifting onto a parallel road is not.
- **Decoding**: Viterbi over a sliding window. A fix is decided once ``lag`` newer fixes have
  arrived, or once newer fixes span ``lag_s`` seconds (4 fixes or 30 s by default: 3 at 10 s
  sampling, 1 at 30 s; lag 0 decides at once), from the best path through the window, and the
  decision is then fixed: later paths must pass through it, so consecutive decisions are
  always joined by a drivable route.
- **Confidence**: at the decision, the posterior probability that the fix is on the directed
  road (OSM way and direction: its limit, class and name) of the decided candidate, by
  forward-backward: forward over every path since the chain began (``alpha``, kept beside the
  Viterbi scores and not narrowed by decisions, so a coin toss between an elevated road and
  its ground road stays one for as long as they run together), backward over the window's
  newer fixes. Calibrated on the Wuhan OSM traces (40 vehicles, 10 m noise; by true road):
  at 10 s, fixes at ≥ 0.99 (88 % of them) are on the right road 99.8 % of the time, at
  0.9-0.99 96 %, 0.7-0.9 83 %, 0.5-0.7 71 %, below 0.5 36 %; at 30 s, 99.8 / 94 / 80 / 66 /
  53 % (74 % of the fixes at ≥ 0.99).
- **Refinement along the road**: GPS noise along the road is as large as across it. When
  speeds are reported, a decided fix's position along its route is re-estimated by a Kalman
  smoother along the route: forward, the previous fix's filtered position plus the distance the
  speeds say was driven; backward, the newer fixes' projections folded back the same way; and
  the fix's own projection. This cuts the median position error by more than a third
  (6.7 → 4.2 m at σ = 10 m), which is what the driven distances, and so the speeds, are
  computed from. Distances here are metres driven: the ramp penalty is for choosing routes and
  stays out of them.
- **Standing still** (reported speed below ``stationary_kmh``): a fix just past a node is
  unlikely (vehicles wait at the stop line before the junction), and from one standing fix to
  the next the vehicle is placed where it was: GPS jitter does not carry a waiting car over
  the junction, or round onto the other direction of its road.
- **Junctions**: the lattice's states are single points, so near a junction of a straight road
  it weighs "just before" against "just after" on the fix's own projection alone (the
  neighbours' route distances barely differ). A fix whose refined position is within
  ``junction_reach_m`` of a junction is therefore placed on the segment of its route (from the
  previous decided fix to the next fix) with the most probability mass: the neighbours'
  Gaussian estimate times the fix's own likelihood along each segment's line (distance and
  heading), integrated over each segment's stretch. Wuhan OSM, 10 s: +0.7 pt of fixes on the
  right directed segment. With everything here ours puts 95.4 % of the fixes on the right
  directed segment, where a Bayesian smoother told the true route reaches 97.0 %
  (``bench/bench_matching_bound.py``).

Routing uses `MatchGraph`, a compact copy of the network's topology shared by all vehicles, on
the project's one resumable, target-bounded Dijkstra (`shared.roadnet.ShortestPaths`, searches
cached per source node: an on-demand version of FMM's upper-bounded origin-destination table): a
vehicle moving along a street keeps asking from the same few nodes.

Results: `OnlineMatcher.update` returns the fixes decided by that call (zero, one or, when a
chain ends, several), oldest first, each a `MatchResult` with the fix's time and reported
position, its matched position (a `Candidate`; None when it matched nothing) and the pieces
driven since the previously decided fix: distance per segment and the time it took, split
between segments by the reported speeds. `flush` decides what is still pending (vehicle idle or
gone) and ends the chain; `settle` decides the pending fixes older than a time and goes on (a
vehicle gone quiet while its speed windows close). Per-vehicle memory is bounded: at most
``lag + 1`` fixes of at most ``max_candidates`` candidates each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.bigdata.match_graph import M_PER_DEG as _M_PER_DEG
from services.bigdata.match_graph import MatchGraph
from services.bigdata.match_graph import planar_m as _planar_m
from shared.roadnet import Candidate, RoadNetwork

__all__ = [
    "MatchGraph",
    "MatchParams",
    "MatchResult",
    "OnlineMatcher",
    "Piece",
]

_NEG_INF = -math.inf
_INF = math.inf
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class MatchParams:
    """Tuning of the matcher (metres, seconds, km/h). Defaults suit 5-30 s fixes, σ ≈ 10 m."""

    search_radius_m: float = 50.0
    max_candidates: int = 8
    sigma_m: float = 10.0
    beta_m: float = 30.0
    # Heading: penalty weight * (difference / 45°)², capped so that a terminal reporting a
    # broken heading degrades matching instead of forcing the wrong direction everywhere.
    # 30 rather than 10: on real OSM, side roads 12-15 m beside main roads and crossing streets
    # at junctions are told apart by heading as much as by distance (Wuhan, 10 s: +0.3 pt for
    # 20, another +0.15 for 30).
    heading_weight: float = 30.0
    heading_cap: float = 20.0
    min_heading_speed_kmh: float = 5.0
    # Reported speed above free flow + margin costs ((excess) / scale)²: a car at 72 km/h is
    # more likely on the 80 km/h trunk road than on its 60 km/h side road 14 m away (Wuhan,
    # margin 10 → 0: +0.2 pt).
    speed_margin_kmh: float = 0.0
    speed_scale_kmh: float = 10.0
    # Expected driven distance from reported speeds: σ = hypot(abs, rel * distance), capped.
    distance_sigma_m: float = 10.0
    distance_sigma_rel: float = 0.1
    distance_cap: float = 4.0
    # Candidates this much less likely (log) than the best one are not kept as states.
    prune_log: float = 12.0
    # Reported speeds below this mean "not moving": no heading, no driven distance.
    stationary_kmh: float = 2.0
    # GPS jitter moves a standing or crawling vehicle backwards along its segment: up to this
    # far it is read as standing still instead of as a drive round the block.
    backward_tolerance_m: float = 45.0
    # Refinement along the road (False turns it off): relative and absolute (km/h) error of
    # the distance predicted from the reported speeds.
    refine: bool = True
    refine_rel: float = 0.08
    refine_speed_kmh: float = 2.0
    # A fix is decided after ``lag`` newer ones, or sooner once newer fixes span ``lag_s``
    # seconds: evidence from later fixes settles which segment a fix near a junction is on,
    # and which of two parallel roads a run of fixes is on. Wuhan OSM, 10 s sampling, by
    # directed segment: lag 2 → 3 (30 s) gains 0.2-0.4 pt, 40 s another 0.1. 30 s keeps a
    # decision inside the speed windows' 45 s grace (bigdata app) up to 40 s reporting
    # intervals (30 s, the usual JT/T 808 interval on the move, decides after one newer fix).
    lag: int = 4
    lag_s: float = 30.0
    # Continuity prior: a transition onto another OSM way that keeps (within
    # ``way_straight_deg``) the direction of travel but moves at least ``way_hop_m`` sideways
    # of it costs ``way_change_log`` (log units). Turning onto a crossing street is free, and
    # so is a road going on as another way (OSM splits ways wherever a tag changes); hopping
    # to a parallel road (a trunk road to its side road 12-15 m away, say) is not. Wuhan OSM,
    # 10 s: 93.4 → 93.8 % with the cost on every straight way change, +0.1 more with the
    # sideways test. Dearer hops measured worse: a chain that entered the wrong one of two
    # parallel roads then stays on it.
    way_change_log: float = 0.5
    way_straight_deg: float = 30.0
    way_hop_m: float = 8.0
    # Fixes whose refined position is within this distance of a junction are placed on the
    # segment of their route they most probably are on (0 turns it off).
    junction_reach_m: float = 30.0
    # A vehicle standing still is rarely just past a node: it waits before the junction, at
    # the stop line. A standing fix's candidate within ``past_node_m`` of its segment's start
    # costs ``past_node_log``, so the wait is not counted on the road beyond the junction
    # (SUMO, demo city, 10 s reports, 30 min: within 10 % of the probes' own speed 73.7 →
    # 76.4 % of segment-minutes, within 25 % 87.4 → 90.9 %). Then, standing since the last
    # fix, a vehicle stays where it was (`_refine`), whatever its jitter says.
    past_node_m: float = 20.0
    past_node_log: float = 2.0
    max_gap_s: float = 120.0
    max_speed_kmh: float = 160.0


@dataclass(frozen=True, slots=True)
class Piece:
    """Distance a vehicle drove on one segment between two fixes, and the time it took."""

    segment_id: str
    distance_m: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class MatchResult:
    """A decided fix: its time (s) and reported position, where it matched, the pieces driven.

    ``candidate`` is the matched position (segment, offset, point, distance from the fix), None
    when the fix matched no road. ``pieces`` cover the time from the previously decided fix of
    the same chain to this one; they are empty for the first fix of a chain (after a start, a
    long gap, an off-road stretch or an impossible jump). ``confidence`` (0-1) is the posterior
    probability, given the chain's fixes up to the newest one when it was decided, that the fix
    is on the matched road (the segment's OSM way in its direction): low where a parallel road,
    the other carriageway or a crossing street was almost as likely; 0 when unmatched.
    """

    t: float
    lon: float
    lat: float
    candidate: Candidate | None
    pieces: tuple[Piece, ...] = ()
    confidence: float = 1.0


def _combine(estimates: list[tuple[float, float]]) -> tuple[float, float]:
    """Inverse-variance mean of (value, variance) estimates, and its variance."""
    num = den = 0.0
    for value, var in estimates:
        num += value / var
        den += 1.0 / var
    return num / den, 1.0 / den


@dataclass(slots=True)
class _Step:
    """One fix in the Viterbi window and its candidate states."""

    t: float
    lon: float
    lat: float
    speed_kmh: float | None
    heading: float | None
    cands: list[Candidate]
    segs: list[int]
    emissions: list[float]
    scores: list[float]
    back: list[int]
    # Log forward probabilities (sum over every path since the chain began, normalised to a
    # maximum of 0), unlike ``scores`` not narrowed by decisions: the confidence's forward term.
    alpha: list[float]
    # trans[j][i]: log transition from the previous step's candidate i to candidate j, and the
    # route cost behind it, negative for jitter backwards on one segment (None for the first
    # step of a chain).
    trans: list[list[float]] | None = None
    route_m: list[list[float]] | None = None
    # Once decided: the chosen candidate, and the refined position as (segment index, offset,
    # variance of the position along the route, in m²).
    decided: int = -1
    pos_seg: int = -1
    pos_off: float = 0.0
    pos_delta: float = 0.0
    pos_var: float = 0.0
    # The forward-filtered position (same coordinates, without the newer fixes' evidence).
    filt_delta: float = 0.0
    filt_var: float = 0.0
    # Distance (m) the reported speeds say was driven since the previous step, and its
    # variance (`_driven`; None without both speeds).
    drive: tuple[float, float] | None = None
    # Candidate index → how far past its segment's end the fix projects (when clamped).
    overshoot: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class OnlineMatcher:
    """Map-matches a stream of fixes of one vehicle, deciding each after ``params.lag`` more.

    ``network`` should be the `MatchGraph` shared by all vehicles; a `RoadNetwork` also works
    (a private graph is built: fine for one vehicle, wasteful for many).
    """

    network: RoadNetwork | MatchGraph
    params: MatchParams = field(default_factory=MatchParams)
    graph: MatchGraph = field(init=False)
    road: RoadNetwork = field(init=False)
    _steps: list[_Step] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.network, MatchGraph):
            self.graph = self.network
        else:
            self.graph = MatchGraph(self.network, cache_sources=256)
        self.road = self.graph.network

    # --- public API ---

    @property
    def pending(self) -> int:
        """Fixes received but not decided yet (at most ``lag``)."""
        # Only the oldest step of the window can be decided (it anchors the next decision).
        steps = self._steps
        return len(steps) - 1 if steps and steps[0].decided >= 0 else len(steps)

    def state_size(self) -> int:
        """Candidates held in the window: this vehicle's memory, in units (bounded)."""
        return sum(len(s.cands) for s in self._steps)

    def update(self, t: float, lon: float, lat: float, *, heading: float | None = None,
               speed_kmh: float | None = None) -> list[MatchResult]:
        """Add the fix at time ``t`` (s); return the fixes this decides, oldest first.

        A fix not newer than the previous one is ignored (duplicates, late retransmissions).
        """
        p = self.params
        last = self._steps[-1] if self._steps else None
        if last is not None and t <= last.t:
            return []
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return [*self.flush(), MatchResult(t, lon, lat, None, confidence=0.0)]
        if speed_kmh is not None and not math.isfinite(speed_kmh):
            speed_kmh = None
        out: list[MatchResult] = []
        cands = self.road.nearest(lon, lat, radius_m=p.search_radius_m, k=p.max_candidates)
        if not cands:
            # Off the network (parking lot, GPS jump): end the chain rather than guess through.
            out.extend(self.flush())
            out.append(MatchResult(t, lon, lat, None, confidence=0.0))
            return out
        step = self._make_step(t, lon, lat, heading, speed_kmh, cands)
        if last is not None and t - last.t <= p.max_gap_s and self._link(last, step):
            self._steps.append(step)
        else:
            # First fix, a long gap or no drivable route from the last fixes: a new chain.
            out.extend(self.flush())
            self._steps = [step]
        while self.pending > p.lag or (self.pending > 1 and self._waited() >= p.lag_s):
            out.append(self._decide_oldest())
        return out

    def _waited(self) -> float:
        """Seconds from the oldest undecided fix to the newest one."""
        steps = self._steps
        return steps[-1].t - steps[0 if steps[0].decided < 0 else 1].t

    @property
    def undecided_since(self) -> float | None:
        """Where the time not decided yet begins (s): the last decided fix of the chain (the
        next decision's pieces start there), else its oldest fix; None when nothing is pending.
        """
        return self._steps[0].t if self.pending else None

    def settle(self, before_t: float) -> list[MatchResult]:
        """Decide pending fixes, oldest first, until the undecided time begins at or after
        ``before_t``; the chain goes on (the next fix is joined to the last decision).

        For a vehicle gone quiet, or reporting less often than the lag allows for: the speed
        windows close on time, so what a decision would add to a window about to close is
        decided now, on the evidence at hand, rather than after the window is gone.
        """
        out = []
        while self.pending and self._steps[0].t < before_t:
            out.append(self._decide_oldest())
        return out

    def flush(self) -> list[MatchResult]:
        """Decide every pending fix now (best path through the window) and end the chain."""
        out = []
        while self.pending:
            out.append(self._decide_oldest())
        self._steps.clear()
        return out

    # --- model ---

    def _make_step(self, t: float, lon: float, lat: float, heading: float | None,
                   speed_kmh: float | None, cands: list[Candidate]) -> _Step:
        p = self.params
        g = self.graph
        index = g.seg_index
        free_flow = g.seg_free_flow_kmh
        inv_sigma = 1.0 / p.sigma_m
        use_heading = (heading is not None and math.isfinite(heading) and speed_kmh is not None
                       and speed_kmh >= p.min_heading_speed_kmh)
        h = heading if use_heading and heading is not None else 0.0
        segs = [index[c.segment_id] for c in cands]
        standing = speed_kmh is not None and speed_kmh < p.stationary_kmh
        past_node_m, past_node_log = p.past_node_m, p.past_node_log
        heading_cap, heading_weight = p.heading_cap, p.heading_weight
        margin, scale = p.speed_margin_kmh, p.speed_scale_kmh
        emissions = []
        for c, seg in zip(cands, segs, strict=True):
            z = c.distance_m * inv_sigma
            score = -0.5 * z * z
            if use_heading:
                diff = abs((h - c.bearing_deg + 180.0) % 360.0 - 180.0) / 45.0
                score -= min(heading_cap, heading_weight * diff * diff)
            if standing and c.offset_m < past_node_m:
                score -= past_node_log
            if speed_kmh is not None:
                over = (speed_kmh - free_flow[seg] - margin) / scale
                if over > 0.0:
                    score -= over * over
            emissions.append(score)
        keep = max(emissions) - p.prune_log
        if min(emissions) < keep:
            kept = [n for n, e in enumerate(emissions) if e >= keep]
            cands = [cands[n] for n in kept]
            segs = [segs[n] for n in kept]
            emissions = [emissions[n] for n in kept]
        return _Step(t, lon, lat, speed_kmh, heading if use_heading else None, cands, segs,
                     emissions, emissions[:], [-1] * len(cands), emissions[:])

    def _link(self, prev: _Step, step: _Step) -> bool:
        """Fill the transitions from prev to step and step's Viterbi scores; False if none."""
        p = self.params
        g = self.graph
        dt = step.t - prev.t
        gc = _planar_m(prev.lon, prev.lat, step.lon, step.lat)
        vmax = p.max_speed_kmh / 3.6
        # A route much longer than the straight line is improbable anyway (the transition
        # decays by e every beta_m); the bound keeps each routing search small.
        limit = min(max(2.0 * gc + 4.0 * p.sigma_m + 100.0, 0.5 * vmax * dt), vmax * dt + 100.0)
        inv_beta = 1.0 / p.beta_m
        expected = -1.0
        inv_dsig = 0.0
        if prev.speed_kmh is not None and step.speed_kmh is not None:
            expected = 0.5 * (prev.speed_kmh + step.speed_kmh) / 3.6 * dt
            # The speed changed from one reported value to the other at an unknown moment
            # (at a junction, say): uniform over dt, that adds (Δv·dt)²/12 to the variance.
            dv = (step.speed_kmh - prev.speed_kmh) / 3.6 * dt
            rel = p.distance_sigma_rel * expected
            inv_dsig = 1.0 / math.sqrt(p.distance_sigma_m ** 2 + rel * rel + dv * dv / 12.0)
        cap = p.distance_cap
        tol = p.backward_tolerance_m
        seg_len, seg_cost, seg_to, seg_from = g.seg_len, g.seg_cost, g.seg_to, g.seg_from
        costs = g.costs
        n_prev = len(prev.cands)
        seg_way = g.seg_way
        way_pen, straight_deg, hop_m = p.way_change_log, p.way_straight_deg, p.way_hop_m
        kx = _M_PER_DEG * math.cos(math.radians(step.lat))
        radians, cos, sin = math.radians, math.cos, math.sin
        # The current candidates as (index, segment, its way, offset, bearing, lon, lat).
        cur = [(j, seg, seg_way[seg], c.offset_m, c.bearing_deg, c.lon, c.lat)
               for j, (c, seg) in enumerate(zip(step.cands, step.segs, strict=True))]
        n_cur = len(cur)
        trans = [[_NEG_INF] * n_prev for _ in range(n_cur)]
        route_m = [[_INF] * n_prev for _ in range(n_cur)]
        targets = [seg_from[s] for s in step.segs]
        scores = [_NEG_INF] * n_cur
        back = [-1] * n_cur
        # Terms of each candidate's forward sum, from the previous candidates in order.
        forward: list[list[float]] = [[] for _ in range(n_cur)]
        # Transitions from every candidate the forward probabilities still hold, not only from
        # those a path through the last decision reaches (ps = -inf adds nothing to scores).
        for i, (pc, ps, pseg, pa) in enumerate(zip(prev.cands, prev.scores, prev.segs,
                                                    prev.alpha, strict=True)):
            if pa == _NEG_INF:
                continue
            poff = pc.offset_m
            pway = seg_way[pseg]
            plen = seg_len[pseg]
            rest = plen - poff
            # Cost of finishing this segment, in route-cost units (ramps carry their penalty).
            rest_cost = rest + (seg_cost[pseg] - plen) * rest / max(plen, 1e-9)
            node_cost: list[tuple[float, float]] | None = None
            for j, cseg, cway, coff, cbear, clon, clat in cur:
                if cseg == pseg and coff >= poff - tol:
                    # Signed: a little backwards is jitter, kept for refining positions.
                    along = coff - poff
                    r = driven = max(0.0, along)
                else:
                    if rest > limit:
                        continue
                    if node_cost is None:
                        node_cost = costs(seg_to[pseg], targets, limit - rest_cost)
                    d, d_m = node_cost[j]
                    if d == _INF:
                        continue
                    # Cost (ramps carry their penalty) against the straight line; metres
                    # against what the speeds say was driven, and for refining positions.
                    r = rest_cost + d + coff
                    driven = along = rest + d_m + coff
                    if r > limit:
                        continue
                tr = -abs(r - gc) * inv_beta
                if way_pen and cway != pway:
                    turn = (cbear - pc.bearing_deg + 180.0) % 360.0 - 180.0
                    if abs(turn) < straight_deg:
                        # Sideways displacement across the mean direction of travel: none for
                        # a road that goes on as another way (straight or curving), the gap
                        # between the roads for a hop onto a parallel one.
                        b = radians(pc.bearing_deg + 0.5 * turn)
                        side = abs((clon - pc.lon) * kx * cos(b)
                                   - (clat - pc.lat) * _M_PER_DEG * sin(b))
                        if side >= hop_m:
                            tr -= way_pen
                if expected >= 0.0:
                    z = (driven - expected) * inv_dsig
                    tr -= min(cap, 0.5 * z * z)
                trans[j][i] = tr
                route_m[j][i] = along
                forward[j].append(pa + tr)
                s = ps + tr
                if s > scores[j]:
                    scores[j] = s
                    back[j] = i
        top = max(scores)
        if top == _NEG_INF:
            return False
        if prev.speed_kmh is not None and step.speed_kmh is not None:
            step.drive = self._driven(prev.speed_kmh, step.speed_kmh, dt)
        # Normalise so scores do not drift towards -inf over a long trip.
        step.scores = [s - top + e if s != _NEG_INF else _NEG_INF
                       for s, e in zip(scores, step.emissions, strict=True)]
        step.back = back
        step.trans = trans
        step.route_m = route_m
        exp, log = math.exp, math.log
        alpha = []
        for terms, em in zip(forward, step.emissions, strict=True):
            if len(terms) == 1:
                alpha.append(em + terms[0])  # log(exp(0)) adds exactly 0
            elif terms:
                m = max(terms)
                alpha.append(em + m + log(sum([exp(x - m) for x in terms])))
            else:
                alpha.append(_NEG_INF)
        top = max(alpha)
        step.alpha = [a - top for a in alpha]
        return True

    # --- decoding ---

    def _decide_oldest(self) -> MatchResult:
        """Decide the oldest pending fix from the best path through the window, then fix it."""
        steps = self._steps
        k = 0 if steps[0].decided < 0 else 1
        scores = steps[-1].scores
        j = scores.index(max(scores))
        path = [j]
        for n in range(len(steps) - 1, k, -1):
            j = steps[n].back[j]
            path.append(j)
        path.reverse()  # best candidate of steps[k], steps[k + 1], ...
        step = steps[k]
        confidence = self._confidence(k, j)
        step.decided = j
        anchor = steps[0] if k == 1 else None
        self._refine(anchor, step, steps[k + 1:], path)
        pieces: tuple[Piece, ...] = ()
        if anchor is not None:
            pieces = self._pieces(anchor, step)
            del steps[0]
        # Later paths must pass through the decision: recompute their scores from it alone.
        scores = [_NEG_INF] * len(step.cands)
        scores[j] = 0.0
        step.scores = scores
        if len(steps) > 1:
            nxt = steps[1]
            if all(b == j or s == _NEG_INF for b, s in zip(nxt.back, nxt.scores, strict=True)):
                # Every best path already goes through the decision: the scores stay what
                # they are (up to a constant, which nothing depends on).
                return MatchResult(step.t, step.lon, step.lat, self._candidate(step), pieces,
                                   confidence)
        # Only candidates still on a path through the decision count (right after it, that
        # is the decided one alone).
        alive = [(j, 0.0)]
        for nxt in steps[1:]:
            assert nxt.trans is not None
            scores, back = [], []
            if len(alive) == 1:
                i, ps = alive[0]
                for row, em in zip(nxt.trans, nxt.emissions, strict=True):
                    s = ps + row[i]
                    if s > _NEG_INF:
                        scores.append(s + em)
                        back.append(i)
                    else:
                        scores.append(_NEG_INF)
                        back.append(-1)
            else:
                for row, em in zip(nxt.trans, nxt.emissions, strict=True):
                    best, arg = _NEG_INF, -1
                    for i, ps in alive:
                        s = ps + row[i]
                        if s > best:
                            best, arg = s, i
                    scores.append(best + em if arg >= 0 else _NEG_INF)
                    back.append(arg)
            top = max(scores)
            scores = [s - top if s != _NEG_INF else s for s in scores]
            nxt.scores = scores
            nxt.back = back
            alive = [(i, s) for i, s in enumerate(scores) if s != _NEG_INF]
        return MatchResult(step.t, step.lon, step.lat, self._candidate(step), pieces, confidence)

    def _confidence(self, k: int, j: int) -> float:
        """Posterior probability that steps[k] is on the directed road of its candidate j.

        Forward-backward: the forward term sums over every path since the chain began
        (``alpha``: not conditioned on earlier decisions, or a coin toss between an elevated
        road and its ground road, once decided, would make every later fix look sure), the
        backward one over every continuation through the newer fixes of the window
        (``trans[j][i]``: row j of the newer step, column i of the older, so each row is
        weighted by its newer candidate's emission and backward term and the columns are
        summed). The road is the candidate's
        OSM way in its direction (`MatchGraph.seg_road`): "just before or just after a node" of
        the same street has the same limit, class and name, while a parallel ground road, the
        other carriageway or direction, or a crossing street compete.
        """
        steps = self._steps
        step = steps[k]
        seg_road = self.graph.seg_road
        segs = step.segs
        road = seg_road[segs[j]]
        forward = step.alpha
        for s, f in zip(segs, forward, strict=True):
            if f != _NEG_INF and seg_road[s] != road:
                break
        else:
            return 1.0  # nothing else is possible: no need to look ahead
        exp, log = math.exp, math.log
        beta = [0.0] * len(steps[-1].cands)
        for n in range(len(steps) - 1, k, -1):
            nxt = steps[n]
            assert nxt.trans is not None
            # Rows whose newer candidate cannot be reached or continued add nothing.
            rows = [(row, em + b) for row, em, b in zip(nxt.trans, nxt.emissions, beta,
                                                        strict=True) if b != _NEG_INF]
            msg = []
            for i in range(len(steps[n - 1].cands)):
                col = [row[i] + w for row, w in rows if row[i] != _NEG_INF]
                if len(col) == 1:
                    msg.append(col[0])  # log(exp(0)) adds exactly 0
                elif col:
                    top = max(col)
                    msg.append(top + log(sum([exp(x - top) for x in col])))
                else:
                    msg.append(_NEG_INF)
            beta = msg
        total = [f + b for f, b in zip(forward, beta, strict=True)]
        top = max(total)
        if top == _NEG_INF:
            return 1.0  # no path on through the window: nothing competes either
        z = mass = 0.0
        for x, s in zip(total, segs, strict=True):
            if x != _NEG_INF:
                p = exp(x - top)
                z += p
                if seg_road[s] == road:
                    mass += p
        return min(1.0, mass / z)

    def _candidate(self, step: _Step) -> Candidate:
        """The matched position of a decided step as a Candidate."""
        c = step.cands[step.decided]
        seg, off = step.pos_seg, step.pos_off
        if seg == step.segs[step.decided] and abs(off - c.offset_m) < 0.5:
            return c
        lon, lat, bearing = self.graph.point_at(seg, off)
        return Candidate(self.graph.seg_ids[seg], _planar_m(step.lon, step.lat, lon, lat),
                         off, lon, lat, bearing)

    def _refine(self, anchor: _Step | None, step: _Step, ahead: list[_Step],
                path: list[int]) -> None:
        """Set step's position along its route from itself, the anchor and the fixes ahead.

        Coordinates are metres along the route relative to step's chosen projection. A
        Kalman smoother along the route: the forward estimate is the anchor's filtered
        position plus the distance the reported speeds say was driven since; the backward one
        folds the newer fixes' projections from the newest back, each step back minus the
        distance driven. Forward, backward and the fix's own projection are combined by
        inverse variance (the smoothed position, clamped between the anchor's position and the
        next fix's projection); forward and own alone are kept as the filtered position the
        next fix starts from, so no fix's evidence is counted twice.
        """
        p = self.params
        j = step.decided
        c = step.cands[j]
        seg = step.segs[j]
        var0 = p.sigma_m ** 2
        step.pos_seg, step.pos_off, step.pos_var = seg, c.offset_m, var0
        step.filt_delta, step.filt_var = 0.0, var0
        v = step.speed_kmh
        if not p.refine or v is None:
            return
        if anchor is not None and anchor.speed_kmh is not None \
                and max(anchor.speed_kmh, v) < p.stationary_kmh:
            # Standing still since the anchor: it is where it was, whatever the jitter says
            # (a car at a stop line is not hopped over the junction by its fixes).
            assert step.route_m is not None
            r_prev = step.route_m[j][anchor.decided]
            if math.isfinite(r_prev):
                step.pos_seg, step.pos_off = anchor.pos_seg, anchor.pos_off
                step.pos_delta, step.pos_var = anchor.pos_delta - r_prev, anchor.pos_var
                step.filt_delta, step.filt_var = anchor.filt_delta - r_prev, anchor.filt_var
                return
        # The fix's own position: its projection, where a clamped one (beyond an end of the
        # segment) is taken along the end's extension instead.
        own = self._overshoot(step, j)
        terms: list[tuple[float, float]] = []
        lo = -_INF
        if anchor is not None and anchor.speed_kmh is not None:
            assert step.route_m is not None and step.drive is not None
            r_prev = step.route_m[j][anchor.decided]
            d, var_d = step.drive
            terms.append((anchor.filt_delta - r_prev + d, anchor.filt_var + var_d))
            lo = anchor.pos_delta - r_prev
        step.filt_delta, step.filt_var = _combine([(own, var0), *terms])
        # The newer fixes' projections along the route: (position, distance driven to it
        # from the fix before, its variance).
        chain: list[tuple[float, float, float]] = []
        hi = _INF
        r = 0.0
        prev_j = j
        seg_len = self.graph.seg_len
        for nxt, nj in zip(ahead, path[1:], strict=False):
            if nxt.speed_kmh is None:
                break
            assert nxt.route_m is not None and nxt.drive is not None
            r += nxt.route_m[nj][prev_j]
            if not chain:
                hi = r
            nc = nxt.cands[nj]
            off = nc.offset_m
            if 1e-6 < off < seg_len[nxt.segs[nj]] - 1e-6:
                chain.append((r + 0.0, *nxt.drive))
            else:
                chain.append((r + self._overshoot(nxt, nj), *nxt.drive))
            prev_j = nj
        if chain:
            it = reversed(chain)
            pos, d, var_d = next(it)
            b_mu, b_var = pos - d, var0 + var_d
            inv0 = 1.0 / var0
            for pos, d, var_d in it:
                # _combine([(b_mu, b_var), (pos, var0)]) inline, then back by the drive.
                den = 1.0 / b_var + inv0
                b_mu = (b_mu / b_var + pos / var0) / den - d
                b_var = 1.0 / den + var_d
            terms.append((b_mu, b_var))
        delta, step.pos_var = _combine([(own, var0), *terms])
        delta = max(lo, min(hi, delta)) if lo <= hi else delta
        if p.junction_reach_m > 0.0 and terms and lo <= hi:
            mu, var_n = _combine(terms)
            if self._across_junction(anchor, step, path, ahead, mu, var_n, lo, hi, delta):
                return
        delta = max(-c.offset_m, min(seg_len[seg] - c.offset_m, delta))
        step.pos_delta = delta
        step.pos_off = c.offset_m + delta

    def _across_junction(self, anchor: _Step | None, step: _Step, path: list[int],
                         ahead: list[_Step], mu: float, var_n: float, lo: float, hi: float,
                         delta: float) -> bool:
        """Place a fix near a junction on the segment of its route it most probably is on.

        The lattice's candidates are single points (a fix's projection onto each segment), so
        near a junction of a straight road it weighs "just before" against "just after" on
        the raw projection alone. Here the route (the anchor's segment, the segments between,
        the step's, those on to the next fix) is a line with a coordinate, the neighbours say
        the fix is at ``mu`` ± √``var_n`` on it, the fix itself says where it projects onto
        each segment's line (and how far off, and at what bearing), and each segment gets the
        probability mass of the product over its stretch of the line. Sets step's position
        (on that segment, at the product's mean) and returns True; returns False, changing
        nothing, when the route has no other segment within reach of the fix.
        """
        p = self.params
        g = self.graph
        seg_len = g.seg_len
        j = step.decided
        c = step.cands[j]
        seg = step.segs[j]
        reach = p.junction_reach_m
        start0 = -c.offset_m
        pieces = [(seg, start0)]
        if delta - reach < start0 and anchor is not None and anchor.pos_seg != seg:
            middle = g.path(g.seg_to[anchor.pos_seg], g.seg_from[seg])
            if middle is not None:
                start = start0
                for s in reversed([anchor.pos_seg, *middle]):
                    start -= seg_len[s]
                    pieces.insert(0, (s, start))
                    if start < delta - reach:
                        break
        end0 = start0 + seg_len[seg]
        if delta + reach > end0 and ahead and len(path) > 1:
            nseg = ahead[0].segs[path[1]]
            if nseg != seg:
                middle = g.path(g.seg_to[seg], g.seg_from[nseg])
                if middle is not None:
                    start = end0
                    for s in [*middle, nseg]:
                        pieces.append((s, start))
                        start += seg_len[s]
                        if start > delta + reach:
                            break
        if len(pieces) == 1:
            return False
        var0 = p.sigma_m ** 2
        s2 = var0 + var_n
        sd = math.sqrt(var0 * var_n / s2)
        heading = step.heading
        best: tuple[float, int, float, float] | None = None
        for s, start in pieces:
            a = max(start, lo)
            b = min(start + seg_len[s], hi)
            if b <= a:
                continue
            u, off_road, bearing = g.project(s, step.lon, step.lat)
            x = start + u
            m = (x * var_n + mu * var0) / s2
            mass = 0.5 * (math.erf((b - m) / (sd * _SQRT2)) - math.erf((a - m) / (sd * _SQRT2)))
            if mass <= 1e-300:
                continue
            score = math.log(mass) - 0.5 * (off_road * off_road / var0 + (x - mu) ** 2 / s2)
            if heading is not None:
                diff = abs((heading - bearing + 180.0) % 360.0 - 180.0) / 45.0
                score -= min(p.heading_cap, p.heading_weight * diff * diff)
            if best is None or score > best[0]:
                best = (score, s, start, min(b, max(a, m)))
        if best is None:
            return False
        _, s, start, pos = best
        step.pos_seg = s
        step.pos_delta = pos
        step.pos_off = pos - start
        return True

    def _overshoot(self, step: _Step, i: int) -> float:
        """How far past an end of its segment candidate i's fix projects (0 when inside)."""
        c = step.cands[i]
        seg = step.segs[i]
        if 1e-6 < c.offset_m < self.graph.seg_len[seg] - 1e-6:
            return 0.0
        over = step.overshoot.get(i)
        if over is None:  # asked again for each older fix it lies ahead of: kept
            over = step.overshoot[i] = self.graph.project(seg, step.lon, step.lat)[0] - c.offset_m
        return over

    def _driven(self, v0: float, v1: float, dt: float) -> tuple[float, float]:
        """Distance (m) the reported speeds say was driven in dt, and its variance (m²)."""
        p = self.params
        d = 0.5 * (v0 + v1) / 3.6 * dt
        sd_speed = p.refine_speed_kmh / 3.6 * dt
        # The speed changed from v0 to v1 at some moment in between (at a junction, say):
        # uniformly distributed, that moment adds (Δv·dt)²/12 to the variance of the distance.
        dv = (v1 - v0) / 3.6 * dt
        return d, sd_speed * sd_speed + (p.refine_rel * d) ** 2 + dv * dv / 12.0

    def _pieces(self, a: _Step, b: _Step) -> tuple[Piece, ...]:
        """What the vehicle drove from a's decided position to b's, and how long it took."""
        g = self.graph
        p = self.params
        dt = b.t - a.t
        sa, oa, sb, ob = a.pos_seg, a.pos_off, b.pos_seg, b.pos_off
        v0, v1 = a.speed_kmh, b.speed_kmh
        stationary = p.stationary_kmh
        if v0 is not None and v1 is not None and v0 < stationary and v1 < stationary:
            # Standing still: whatever the jitter says, the vehicle drove nothing.
            return (Piece(g.seg_ids[sb], 0.0, dt),)
        if sa == sb and ob >= oa - p.backward_tolerance_m:
            return (Piece(g.seg_ids[sa], max(0.0, ob - oa), dt),)
        middle = g.path(g.seg_to[sa], g.seg_from[sb], p.max_speed_kmh / 3.6 * dt + 100.0)
        if middle is None:
            return ()
        route = [sa, *middle, sb]
        lengths = g.seg_len
        parts = [max(0.0, lengths[sa] - oa), *(lengths[s] for s in middle), ob]
        if sum(parts) > p.max_speed_kmh / 3.6 * dt + 100.0:
            return ()
        # Split the time by the reported speeds: the first piece at the speed reported on it,
        # the last at the last fix's, those between at the same share of their free-flow speed
        # as the two ends (a ramp between two motorway fixes is driven slower than they were).
        # Vehicles change speed at junctions, so this beats splitting in proportion to distance.
        if v0 is not None and v1 is not None and v0 >= stationary and v1 >= stationary:
            ff = g.seg_free_flow_kmh
            share = 0.5 * (v0 / ff[sa] + v1 / ff[sb])
            speeds = [v0, *(share * ff[s] for s in middle), v1]
            times = [d / v for d, v in zip(parts, speeds, strict=True)]
        else:
            times = list(parts)
        total = sum(times)
        if total <= 0.0:
            return tuple(Piece(g.seg_ids[s], 0.0, dt / len(route)) for s in route)
        scale = dt / total
        return tuple(Piece(g.seg_ids[s], d, tt * scale)
                     for s, d, tt in zip(route, parts, times, strict=True))

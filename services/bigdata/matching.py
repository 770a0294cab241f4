"""Online hidden-Markov-model map matching, one small state per vehicle.

Emission: Gaussian in the distance from the fix to the candidate segment (σ ≈ GPS noise), plus a
penalty when a moving vehicle's heading disagrees with the segment's direction. Transition:
exponential in |route distance − great-circle distance| (Newson & Krumm 2009). The matcher is
online with lag 0: each fix is decided when it arrives, and the route between the previous and the
new decision gives the distance the vehicle drove on each segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.geo import haversine_m
from shared.roadnet import Candidate, RoadNetwork


@dataclass(frozen=True, slots=True)
class MatchParams:
    """Tuning of the matcher (metres, seconds, km/h)."""

    search_radius_m: float = 50.0
    max_candidates: int = 8
    sigma_m: float = 10.0
    beta_m: float = 30.0
    heading_weight: float = 2.0
    min_heading_speed_kmh: float = 5.0
    max_gap_s: float = 120.0
    max_speed_kmh: float = 200.0


@dataclass(slots=True)
class _State:
    t: float
    lon: float
    lat: float
    candidates: list[Candidate]
    scores: list[float]
    best: int


@dataclass(frozen=True, slots=True)
class Piece:
    """Distance a vehicle drove on one segment between two fixes, and the time it took."""

    segment_id: str
    distance_m: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The segment a fix was matched to and the driven pieces since the previous fix."""

    candidate: Candidate | None
    pieces: tuple[Piece, ...] = ()


@dataclass(slots=True)
class OnlineMatcher:
    """Map-matches a stream of fixes of one vehicle."""

    network: RoadNetwork
    params: MatchParams = field(default_factory=MatchParams)
    state: _State | None = None

    def _emission(self, c: Candidate, heading: float | None, speed_kmh: float | None) -> float:
        p = self.params
        score = -0.5 * (c.distance_m / p.sigma_m) ** 2
        if heading is not None and speed_kmh is not None and speed_kmh >= p.min_heading_speed_kmh:
            diff = abs((heading - c.bearing_deg + 180.0) % 360.0 - 180.0)
            score -= p.heading_weight * (diff / 45.0) ** 2
        return score

    def _route(self, a: Candidate, b: Candidate, limit_m: float) -> tuple[list[str], float] | None:
        """Segments driven from candidate a to b (inclusive) and the route distance."""
        if a.segment_id == b.segment_id and b.offset_m >= a.offset_m - 3.0:
            return [a.segment_id], max(0.0, b.offset_m - a.offset_m)
        seg_a = self.network.get_segment(a.segment_id)
        rest = seg_a.length_m - a.offset_m
        if rest > limit_m:
            return None
        found = self.network.shortest_path(a.segment_id, b.segment_id,
                                           max_length_m=limit_m - rest)
        if found is None:
            return None
        path, between = found
        route = path if path and path[0] == a.segment_id else [a.segment_id, *path]
        if route[-1] != b.segment_id:
            route.append(b.segment_id)
        return route, rest + between + b.offset_m

    def update(self, t: float, lon: float, lat: float, *, heading: float | None = None,
               speed_kmh: float | None = None) -> MatchResult:
        """Match one fix at time ``t`` (seconds); returns its segment and driven pieces."""
        p = self.params
        cands = self.network.nearest(lon, lat, radius_m=p.search_radius_m, k=p.max_candidates)
        if not cands:
            # Off the network (parking lot, GPS jump): forget the chain rather than guess.
            self.state = None
            return MatchResult(None)
        emissions = [self._emission(c, heading, speed_kmh) for c in cands]
        prev = self.state
        dt = 0.0 if prev is None else t - prev.t
        if prev is None or dt <= 0 or dt > p.max_gap_s:
            best = max(range(len(cands)), key=emissions.__getitem__)
            self.state = _State(t, lon, lat, cands, emissions, best)
            return MatchResult(cands[best])
        gc = haversine_m(prev.lon, prev.lat, lon, lat)
        limit = max(gc * 2.0 + 100.0, p.max_speed_kmh / 3.6 * dt * 0.5)
        limit = min(limit, p.max_speed_kmh / 3.6 * dt + 100.0)
        scores: list[float] = []
        routes: list[tuple[int, list[str], float] | None] = []
        for c, em in zip(cands, emissions, strict=True):
            best_score = -math.inf
            best_route: tuple[int, list[str], float] | None = None
            for i, (pc, ps) in enumerate(zip(prev.candidates, prev.scores, strict=True)):
                if ps == -math.inf:
                    continue
                r = self._route(pc, c, limit)
                if r is None:
                    continue
                score = ps - abs(r[1] - gc) / p.beta_m
                if score > best_score:
                    best_score, best_route = score, (i, r[0], r[1])
            scores.append(best_score + em)
            routes.append(best_route)
        best = max(range(len(cands)), key=scores.__getitem__)
        if scores[best] == -math.inf:
            # No candidate is reachable from the last ones: the chain broke (tunnel, long jump).
            best = max(range(len(cands)), key=emissions.__getitem__)
            self.state = _State(t, lon, lat, cands, emissions, best)
            return MatchResult(cands[best])
        # Normalise so scores do not drift towards -inf over a long trip.
        top = scores[best]
        self.state = _State(t, lon, lat, cands, [s - top for s in scores], best)
        chosen = routes[best]
        assert chosen is not None
        i, route, dist = chosen
        return MatchResult(cands[best], self._pieces(prev.candidates[i], cands[best], route,
                                                      dist, dt))

    def _pieces(self, a: Candidate, b: Candidate, route: list[str], dist: float,
                dt: float) -> tuple[Piece, ...]:
        if dist / dt * 3.6 > self.params.max_speed_kmh:
            return ()
        if len(route) == 1:
            return (Piece(route[0], dist, dt),)
        lengths = [self.network.get_segment(s).length_m for s in route]
        parts = [max(0.0, lengths[0] - a.offset_m), *lengths[1:-1], b.offset_m]
        total = sum(parts)
        if total <= 0:
            return tuple(Piece(s, 0.0, dt / len(route)) for s in route)
        return tuple(Piece(s, d, dt * d / total) for s, d in zip(route, parts, strict=True))

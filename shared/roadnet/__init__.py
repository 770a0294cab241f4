"""The road network every service uses: directed segments, a graph, a spatial index, routing.

- `segments`: segment ids, OSM tag interpretation and splitting ways into directed segments;
- `index`: the grid spatial index behind `RoadNetwork.nearest` and `in_bbox`;
- `network`: `RoadNetwork`, immutable once built;
- `limits`: `speed_limit`, a segment's OSM limit or its statutory default (§45, §78);
- `search`: `ShortestPaths`, the one resumable, target-bounded Dijkstra (map matching,
  bounded shortest paths, the demo's bus routes);
- `routing`: `RoutingGraph`, exact fastest routes under live `Weights` (ALT), with snapping
  and alternatives.
"""

from shared.roadnet.limits import speed_limit
from shared.roadnet.network import RoadNetwork
from shared.roadnet.routing import NoRouteError, Route, RoutingGraph, Snap, Weights
from shared.roadnet.search import ShortestPaths
from shared.roadnet.segments import (
    DEFAULT_FREE_FLOW_KMH,
    ROUTABLE_HIGHWAYS,
    Candidate,
    OsmWay,
    RoadNetworkError,
    RoadSegment,
    UnknownSegmentError,
    build_segments,
    make_segment_id,
    parse_maxspeed,
    parse_segment_id,
)

__all__ = [
    "DEFAULT_FREE_FLOW_KMH",
    "ROUTABLE_HIGHWAYS",
    "Candidate",
    "NoRouteError",
    "OsmWay",
    "RoadNetwork",
    "RoadNetworkError",
    "RoadSegment",
    "Route",
    "RoutingGraph",
    "ShortestPaths",
    "Snap",
    "UnknownSegmentError",
    "Weights",
    "build_segments",
    "make_segment_id",
    "parse_maxspeed",
    "parse_segment_id",
    "speed_limit",
]

"""The warning service's copy of the road network, read from bigdata's HTTP API.

The warning service does not own the geodatabase: it asks bigdata for every segment (through
the one client in ``shared/clients``) and builds the one road graph, `RoadNetwork`, from them.
"""

from __future__ import annotations

import logging

from shared.clients.bigdata import BigdataClient, Segment
from shared.errors import TransientError
from shared.roadnet import RoadNetwork, RoadNetworkError, RoadSegment, parse_segment_id

log = logging.getLogger("tti.warning.network")


def road_segment(seg: Segment) -> RoadSegment:
    """bigdata's segment record → a `RoadSegment` (way and nodes from the segment id)."""
    way_id, from_node, to_node = parse_segment_id(seg.segment_id)
    return RoadSegment(
        segment_id=seg.segment_id, way_id=way_id, from_node=from_node, to_node=to_node,
        road_class=seg.road_class, name=seg.name, name_en=seg.name_en, ref=None,
        lanes=seg.lanes, speed_limit_kmh=seg.speed_limit_kmh, oneway=seg.oneway,
        bridge=seg.bridge, tunnel=seg.tunnel, coords=seg.coords, length_m=seg.length_m,
        free_flow_kmh=seg.free_flow_kmh)


async def load_network(client: BigdataClient) -> RoadNetwork:
    """Every segment bigdata holds, as a `RoadNetwork`; TransientError while it has none."""
    batch = await client.list_segments()
    segments = []
    bad = 0
    for seg in batch.segments:
        try:
            segments.append(road_segment(seg))
        except RoadNetworkError:
            bad += 1
    if bad or batch.rejected:
        log.warning("road network: %d segment records skipped as malformed",
                    bad + sum(batch.rejected.values()))
    if not segments:
        raise TransientError("bigdata has no road segments yet", code="network_loading")
    return RoadNetwork.from_segments(segments)

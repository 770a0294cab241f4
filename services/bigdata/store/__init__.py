"""The traffic geodatabase: one interface, an embedded SQLite backend and a PostGIS backend."""

from services.bigdata.store.base import (
    OSM_FEATURE_SOURCE,
    SCHEMA_VERSION,
    BBox,
    GeoStore,
    ImportRecord,
    NearbySegment,
    OsmImportOutcome,
    RegionInfo,
    SpeedRecord,
    store_from_url,
)
from services.bigdata.store.basemap import BASEMAP_LAYERS, BasemapItem
from services.bigdata.store.features import (
    FEATURE_KINDS,
    ROAD_KIND,
    AmbiguousIdError,
    Feature,
    FeatureError,
    NearbyFeature,
    SearchHit,
)
from services.bigdata.store.gtfs import (
    GtfsData,
    GtfsFeed,
    GtfsFrequency,
    GtfsRoute,
    GtfsShape,
    GtfsStop,
    GtfsStopTime,
    GtfsTrip,
)

__all__ = [
    "BASEMAP_LAYERS",
    "FEATURE_KINDS",
    "OSM_FEATURE_SOURCE",
    "ROAD_KIND",
    "SCHEMA_VERSION",
    "AmbiguousIdError",
    "BBox",
    "BasemapItem",
    "Feature",
    "FeatureError",
    "GeoStore",
    "GtfsData",
    "GtfsFeed",
    "GtfsFrequency",
    "GtfsRoute",
    "GtfsShape",
    "GtfsStop",
    "GtfsStopTime",
    "GtfsTrip",
    "ImportRecord",
    "NearbyFeature",
    "NearbySegment",
    "OsmImportOutcome",
    "RegionInfo",
    "SearchHit",
    "SpeedRecord",
    "store_from_url",
]

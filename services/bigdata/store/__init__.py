"""The traffic geodatabase: one interface, an embedded SQLite backend (and PostGIS later)."""

from services.bigdata.store.base import GeoStore, RegionInfo, SpeedRecord, store_from_url

__all__ = ["GeoStore", "RegionInfo", "SpeedRecord", "store_from_url"]

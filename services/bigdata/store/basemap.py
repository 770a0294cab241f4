"""The base map the geodatabase draws itself: water, green, land use and place labels from OSM.

The citizen page shows roads over a base map read from this table instead of a tile server: the
OSM import (:mod:`services.bigdata.osm_features`) extracts polygons of water, parks and land use,
river lines and named place points into :class:`BasemapItem` records, and
:mod:`services.bigdata.basemap` serves them simplified by zoom as GeoJSON.

Each backend keeps the table's SQL here (one migration and two functions each), so the backend
modules only wire it: SQLite stores WKB with an R*Tree on the extent, PostGIS a typed geometry
with a GiST index. Both order a box query the same way: places by rank, then the largest
``size_m`` first (so a limit drops the smallest shapes), then layer and id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import shapely
from shapely.geometry.base import BaseGeometry

from services.bigdata.store._geo import ewkb, wkb
from services.bigdata.store.features import FeatureError

BASEMAP_LAYERS: tuple[str, ...] = ("water", "green", "landuse", "place")
"""``water`` (polygons and river lines), ``green`` (parks, grass, forest), ``landuse``
(residential, commercial, industrial …) and ``place`` (named points: city … neighbourhood)."""

_GEOM_TYPES = {
    "water": frozenset({"Polygon", "MultiPolygon", "LineString", "MultiLineString"}),
    "green": frozenset({"Polygon", "MultiPolygon"}),
    "landuse": frozenset({"Polygon", "MultiPolygon"}),
    "place": frozenset({"Point"}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BasemapItem:
    """One base-map shape. ``item_id`` is OSM-style (``w12``, ``r3``, ``n7``), unique per layer.

    ``cls`` is the OSM value that put it there (``river``, ``park``, ``residential``, ``city``);
    ``rank`` orders places (1 city … 6 locality; 0 for shapes); ``size_m`` is the square root of
    a polygon's area or a line's length in metres (0 for a point): what "too small to see at this
    zoom" is measured by.
    """

    layer: str
    item_id: str
    cls: str
    geometry: BaseGeometry
    name: str | None = None
    name_en: str | None = None
    rank: int = 0
    size_m: float = 0.0


def validate_item(item: BasemapItem) -> None:
    """FeatureError for an unknown layer, an empty id or a geometry the layer cannot hold."""
    allowed = _GEOM_TYPES.get(item.layer)
    if allowed is None:
        raise FeatureError(f"base map item {item.item_id!r}: unknown layer {item.layer!r} "
                           f"(one of {', '.join(BASEMAP_LAYERS)})")
    if not item.item_id:
        raise FeatureError(f"base map item of layer {item.layer}: empty id")
    geom = item.geometry
    # Validity is the extractor's job (it repairs or drops a broken ring); an import must not
    # fail on one bad polygon of a province.
    if not isinstance(geom, BaseGeometry) or geom.geom_type not in allowed or geom.is_empty:
        raise FeatureError(f"base map item {item.layer}/{item.item_id}: geometry must be a "
                           f"{' or '.join(sorted(allowed))}")


def check_layers(layers: Iterable[str] | None) -> tuple[str, ...] | None:
    """Validate a layers filter (None = all); FeatureError naming the unknown ones."""
    if layers is None:
        return None
    out = tuple(dict.fromkeys(layers))
    unknown = [x for x in out if x not in BASEMAP_LAYERS]
    if unknown:
        raise FeatureError(f"unknown base map layer(s): {', '.join(unknown)}",
                           details={"known": list(BASEMAP_LAYERS)})
    return out


def _checked(items: Iterable[BasemapItem]) -> Iterable[BasemapItem]:
    seen: set[tuple[str, str]] = set()
    for item in items:
        validate_item(item)
        key = (item.layer, item.item_id)
        if key in seen:
            raise FeatureError(f"duplicate base map item {item.layer}/{item.item_id}")
        seen.add(key)
        yield item


# --- SQLite -----------------------------------------------------------------------------------

SQLITE_MIGRATION = """
    CREATE TABLE IF NOT EXISTS basemap (
        bid INTEGER PRIMARY KEY, layer TEXT NOT NULL, item_id TEXT NOT NULL,
        class TEXT NOT NULL, name TEXT, name_en TEXT, rank INTEGER NOT NULL,
        size_m REAL NOT NULL, geom BLOB NOT NULL, UNIQUE (layer, item_id)
    );
    CREATE VIRTUAL TABLE IF NOT EXISTS basemap_rtree USING rtree(
        bid, min_lon, max_lon, min_lat, max_lat
    )
"""

_COLS = "layer, item_id, class, name, name_en, rank, size_m, geom"


def sqlite_write_basemap(conn: sqlite3.Connection, items: Iterable[BasemapItem]) -> int:
    """Replace the whole base map (inside the caller's transaction); returns the count."""
    conn.execute("DELETE FROM basemap")
    conn.execute("DELETE FROM basemap_rtree")
    count = 0
    for item in _checked(items):
        count += 1
        conn.execute(f"INSERT INTO basemap (bid, {_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                     (count, item.layer, item.item_id, item.cls, item.name, item.name_en,
                      item.rank, item.size_m, wkb(item.geometry)))
        min_lon, min_lat, max_lon, max_lat = item.geometry.bounds
        conn.execute("INSERT INTO basemap_rtree VALUES (?,?,?,?,?)",
                     (count, min_lon, max_lon, min_lat, max_lat))
    return count


def sqlite_basemap_in_bbox(conn: sqlite3.Connection, bbox: tuple[float, float, float, float],
                           layers: Sequence[str] | None, min_size_m: float, max_rank: int,
                           limit: int) -> list[BasemapItem]:
    """Items whose extent meets ``bbox``, at least ``min_size_m`` big (places: rank at most
    ``max_rank``), in the common order, at most ``limit``."""
    min_lon, min_lat, max_lon, max_lat = bbox
    args: list[Any] = [min_lon, max_lon, min_lat, max_lat, min_size_m, max_rank]
    layer_sql = ""
    if layers is not None:
        layer_sql = f" AND layer IN ({','.join('?' * len(layers))})"
        args.extend(layers)
    args.append(limit)
    rows = conn.execute(
        f"SELECT {_COLS} FROM basemap WHERE bid IN (SELECT bid FROM basemap_rtree WHERE "
        "max_lon >= ? AND min_lon <= ? AND max_lat >= ? AND min_lat <= ?) "
        "AND ((layer <> 'place' AND size_m >= ?) OR (layer = 'place' AND rank <= ?))"
        f"{layer_sql} ORDER BY layer = 'place' DESC, rank, size_m DESC, layer, item_id "
        "LIMIT ?", args).fetchall()
    return [_row_to_item(r) for r in rows]


def _row_to_item(r: Sequence[Any]) -> BasemapItem:
    return BasemapItem(layer=r[0], item_id=r[1], cls=r[2], name=r[3], name_en=r[4],
                       rank=int(r[5]), size_m=float(r[6]), geometry=shapely.from_wkb(bytes(r[7])))


# --- PostGIS ----------------------------------------------------------------------------------

POSTGIS_MIGRATION = """
    CREATE TABLE IF NOT EXISTS basemap (
        layer text NOT NULL, item_id text NOT NULL, class text NOT NULL,
        name text, name_en text, rank integer NOT NULL, size_m double precision NOT NULL,
        geom geometry(Geometry, 4326) NOT NULL CHECK (GeometryType(geom) IN
            ('POINT', 'LINESTRING', 'MULTILINESTRING', 'POLYGON', 'MULTIPOLYGON')),
        PRIMARY KEY (layer, item_id)
    );
    CREATE INDEX IF NOT EXISTS basemap_geom ON basemap USING gist (geom);
"""


async def postgis_write_basemap(conn: asyncpg.Connection, items: Iterable[BasemapItem]) -> int:
    """Replace the whole base map (inside the caller's transaction) with COPY."""
    await conn.execute("DELETE FROM basemap")
    count = 0

    def records() -> Iterable[tuple[Any, ...]]:
        nonlocal count
        for item in _checked(items):
            count += 1
            yield (item.layer, item.item_id, item.cls, item.name, item.name_en, item.rank,
                   item.size_m, ewkb(item.geometry))

    await conn.copy_records_to_table(
        "basemap", records=records(),
        columns=["layer", "item_id", "class", "name", "name_en", "rank", "size_m", "geom"])
    return count


async def postgis_basemap_in_bbox(conn: asyncpg.Connection,
                                  bbox: tuple[float, float, float, float],
                                  layers: Sequence[str] | None, min_size_m: float,
                                  max_rank: int, limit: int) -> list[BasemapItem]:
    """As :func:`sqlite_basemap_in_bbox` (by extent, the same order)."""
    args: list[Any] = [*bbox, min_size_m, max_rank, limit]
    layer_sql = ""
    if layers is not None:
        args.append(list(layers))
        layer_sql = f" AND layer = ANY(${len(args)}::text[])"
    rows = await conn.fetch(
        f"SELECT {_COLS.replace('geom', 'ST_AsBinary(geom)')} FROM basemap "
        "WHERE geom && ST_MakeEnvelope($1, $2, $3, $4, 4326) "
        "AND ((layer <> 'place' AND size_m >= $5) OR (layer = 'place' AND rank <= $6))"
        f"{layer_sql} ORDER BY layer = 'place' DESC, rank, size_m DESC, layer COLLATE \"C\", "
        "item_id COLLATE \"C\" LIMIT $7", *args)
    return [_row_to_item(tuple(r)) for r in rows]

"""The grid spatial index over segment geometry: sub-edges in cells, queried with numpy.

A uniform grid over sub-edges (consecutive coordinate pairs) in a local metric frame: no native
spatial library is needed.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import numpy as np

from shared.geo import EARTH_RADIUS_M
from shared.roadnet.segments import RoadSegment

M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_CELL_M = 150.0
# Long sub-edges are registered piecewise so a diagonal motorway does not claim its whole bbox.
_PIECE_M = _CELL_M / 3.0
_PY_ROWS_MAX = 96


def _hit_key(hit: tuple[float, float, list[float]]) -> tuple[float, float]:
    # Distance, then segment index, so ties (a two-way road's directions) order stably.
    return hit[0], hit[2][4]


def _haversine_np(
    lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
) -> np.ndarray:
    phi1 = np.radians(lat1)
    phi2 = np.radians(lat2)
    h = (
        np.sin((phi2 - phi1) / 2.0) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin(np.radians(lon2 - lon1) / 2.0) ** 2
    )
    return np.asarray(2.0 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(h))))


def _bearing_np(
    lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
) -> np.ndarray:
    phi1 = np.radians(lat1)
    phi2 = np.radians(lat2)
    dlmb = np.radians(lon2 - lon1)
    y = np.sin(dlmb) * np.cos(phi2)
    x = np.cos(phi1) * np.sin(phi2) - np.sin(phi1) * np.cos(phi2) * np.cos(dlmb)
    return np.asarray(np.degrees(np.arctan2(y, x)) % 360.0)


class GridIndex:
    """Uniform lon/lat grid → contiguous blocks of sub-edge rows sorted by cell key."""

    def __init__(self, segments: Sequence[RoadSegment]) -> None:
        counts = np.fromiter((len(s.coords) for s in segments), dtype=np.int64, count=len(segments))
        flat = np.array([c for s in segments for c in s.coords], dtype=np.float64).reshape(-1, 2)
        seg_of_pt = np.repeat(np.arange(len(segments), dtype=np.int64), counts)
        same = seg_of_pt[:-1] == seg_of_pt[1:]
        a = flat[:-1][same]
        b = flat[1:][same]
        self.sub_seg = seg_of_pt[:-1][same]
        self.ax = np.ascontiguousarray(a[:, 0])
        self.ay = np.ascontiguousarray(a[:, 1])
        self.bx = np.ascontiguousarray(b[:, 0])
        self.by = np.ascontiguousarray(b[:, 1])
        self.sub_len = _haversine_np(self.ax, self.ay, self.bx, self.by)
        self.sub_bearing = _bearing_np(self.ax, self.ay, self.bx, self.by)
        # Offset of each sub-edge's start along its segment: cumulative length minus the
        # cumulative length at the segment's first sub-edge.
        cum = np.cumsum(self.sub_len) - self.sub_len
        first_sub = np.searchsorted(self.sub_seg, np.arange(len(segments)))
        self.sub_offset = cum - cum[np.minimum(first_sub, len(cum) - 1)][self.sub_seg]

        self.min_lon = float(flat[:, 0].min())
        self.min_lat = float(flat[:, 1].min())
        self.max_lon = float(flat[:, 0].max())
        self.max_lat = float(flat[:, 1].max())
        mid_lat = (self.min_lat + self.max_lat) / 2.0
        self.cell_lat = _CELL_M / M_PER_DEG
        self.cell_lon = _CELL_M / (M_PER_DEG * math.cos(math.radians(mid_lat)))
        self.nx = int((self.max_lon - self.min_lon) // self.cell_lon) + 1
        self.ny = int((self.max_lat - self.min_lat) // self.cell_lat) + 1

        # Register each sub-edge (piecewise for long ones) in every cell its pieces' bboxes touch.
        n_pieces = np.maximum(1, np.ceil(self.sub_len / _PIECE_M)).astype(np.int64)
        piece_sub = np.repeat(np.arange(len(self.ax), dtype=np.int64), n_pieces)
        starts = np.cumsum(n_pieces) - n_pieces
        k = np.arange(len(piece_sub), dtype=np.int64) - np.repeat(starts, n_pieces)
        npcs = n_pieces[piece_sub]
        t0 = k / npcs
        t1 = (k + 1) / npcs
        dlon = self.bx - self.ax
        dlat = self.by - self.ay
        lon0 = self.ax[piece_sub] + t0 * dlon[piece_sub]
        lon1 = self.ax[piece_sub] + t1 * dlon[piece_sub]
        lat0 = self.ay[piece_sub] + t0 * dlat[piece_sub]
        lat1 = self.ay[piece_sub] + t1 * dlat[piece_sub]
        cx_lo = self._cx(np.minimum(lon0, lon1))
        cx_hi = self._cx(np.maximum(lon0, lon1))
        cy_lo = self._cy(np.minimum(lat0, lat1))
        cy_hi = self._cy(np.maximum(lat0, lat1))
        keys = np.concatenate(
            [
                cx_lo * self.ny + cy_lo,
                cx_hi * self.ny + cy_lo,
                cx_lo * self.ny + cy_hi,
                cx_hi * self.ny + cy_hi,
            ]
        )
        subs = np.tile(piece_sub, 4)
        order = np.lexsort((subs, keys))
        keys = keys[order]
        subs = subs[order]
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = (keys[1:] != keys[:-1]) | (subs[1:] != subs[:-1])
        keys = keys[keep]
        subs = subs[keep]
        cell_keys, cell_first = np.unique(keys, return_index=True)
        # Python lists: bisect on them is cheaper per query than numpy searchsorted calls.
        self.cell_keys: list[int] = cell_keys.tolist()
        self.cell_starts: list[int] = [*cell_first.tolist(), len(keys)]
        self.cell_range: dict[int, tuple[int, int]] = {
            key: (self.cell_starts[m], self.cell_starts[m + 1])
            for m, key in enumerate(self.cell_keys)
        }
        self.reg_sub = subs
        # Rows in registration order so one cell range is one contiguous slice (no gathers):
        # ax, ay, dlon, dlat, segment index, sub-edge index (indices are exact in float64),
        # then the sub-edge's start offset along its segment, its length and bearing, so a
        # hit becomes a `Candidate` in plain float arithmetic (numpy scalars cost ~0.1 µs per
        # operation, and map matching makes millions of candidates).
        self.reg_rows = np.ascontiguousarray(
            np.stack(
                [
                    self.ax[subs],
                    self.ay[subs],
                    dlon[subs],
                    dlat[subs],
                    self.sub_seg[subs],
                    subs.astype(np.float64),
                    self.sub_offset[subs],
                    self.sub_len[subs],
                    self.sub_bearing[subs],
                ],
                axis=1,
            )
        )

    def _cx(self, lon: np.ndarray) -> np.ndarray:
        return np.clip(((lon - self.min_lon) // self.cell_lon).astype(np.int64), 0, self.nx - 1)

    def _cy(self, lat: np.ndarray) -> np.ndarray:
        return np.clip(((lat - self.min_lat) // self.cell_lat).astype(np.int64), 0, self.ny - 1)

    def ranges(
        self, min_lon: float, min_lat: float, max_lon: float, max_lat: float
    ) -> list[tuple[int, int]]:
        """Row ranges of the registrations in the cells covering a lon/lat box."""
        if (
            max_lon < self.min_lon
            or min_lon > self.max_lon
            or max_lat < self.min_lat
            or min_lat > self.max_lat
        ):
            return []
        cx0 = max(0, int((min_lon - self.min_lon) // self.cell_lon))
        cx1 = min(self.nx - 1, int((max_lon - self.min_lon) // self.cell_lon))
        cy0 = max(0, int((min_lat - self.min_lat) // self.cell_lat))
        cy1 = min(self.ny - 1, int((max_lat - self.min_lat) // self.cell_lat))
        out: list[tuple[int, int]] = []
        ny = self.ny
        if (cx1 - cx0 + 1) * (cy1 - cy0 + 1) <= 16:
            # Small boxes (every nearest() query): a dict probe per cell beats bisecting.
            cells = self.cell_range
            for cx in range(cx0, cx1 + 1):
                base = cx * ny
                for cy in range(cy0, cy1 + 1):
                    rng = cells.get(base + cy)
                    if rng is None:
                        continue
                    # Cells adjacent in key order are adjacent in rows: merge their slices.
                    if out and out[-1][1] == rng[0]:
                        out[-1] = (out[-1][0], rng[1])
                    else:
                        out.append(rng)
            return out
        keys = self.cell_keys
        starts = self.cell_starts
        for cx in range(cx0, cx1 + 1):
            base = cx * ny
            lo = bisect_left(keys, base + cy0)
            hi = bisect_right(keys, base + cy1, lo)
            if lo < hi:
                start, end = starts[lo], starts[hi]
                if out and out[-1][1] == start:
                    out[-1] = (out[-1][0], end)
                else:
                    out.append((start, end))
        return out


def scan_py(
    rows: list[list[float]], lon: float, lat: float, kx: float, r2: float
) -> list[tuple[float, float, list[float]]]:
    """Nearest hit per segment within sqrt(r2) metres: (d2, t, row)."""
    ky = M_PER_DEG
    best: dict[float, tuple[float, float, list[float]]] = {}
    for row in rows:
        # P - A and the sub-edge direction, in metres.
        px = (lon - row[0]) * kx
        py = (lat - row[1]) * ky
        dx = row[2] * kx
        dy = row[3] * ky
        dd = dx * dx + dy * dy
        t = (px * dx + py * dy) / dd if dd > 0.0 else 0.0
        if t < 0.0:
            t = 0.0
        elif t > 1.0:
            t = 1.0
        ex = px - t * dx
        ey = py - t * dy
        d2 = ex * ex + ey * ey
        if d2 <= r2:
            seg = row[4]
            prev = best.get(seg)
            if prev is None or d2 < prev[0]:
                best[seg] = (d2, t, row)
    return list(best.values())


def scan_np(
    block: np.ndarray, lon: float, lat: float, kx: float, r2: float
) -> list[tuple[float, float, list[float]]]:
    """Vectorized `scan_py` for large candidate sets."""
    scale = (kx, M_PER_DEG)
    a = block[:, :2] - (lon, lat)
    a *= scale
    d = block[:, 2:4] * scale
    dd = np.einsum("ij,ij->i", d, d)
    dd += 1e-300  # zero-length sub-edges: t becomes 0 instead of NaN
    t = np.einsum("ij,ij->i", a, d)
    t /= dd
    np.negative(t, out=t)
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    c = t[:, None] * d
    c += a
    d2 = np.einsum("ij,ij->i", c, c)
    hits = np.nonzero(d2 <= r2)[0]
    if hits.size == 0:
        return []
    # Order by segment, then distance: the first row of each segment is its nearest.
    order = np.lexsort((d2[hits], block[hits, 4]))
    hits = hits[order]
    seg = block[hits, 4]
    first = np.ones(len(hits), dtype=bool)
    first[1:] = seg[1:] != seg[:-1]
    hits = hits[first]
    return list(zip(d2[hits].tolist(), t[hits].tolist(), block[hits].tolist(), strict=True))


def nearest_hits(
    grid: GridIndex, lon: float, lat: float, radius_m: float
) -> list[tuple[float, float, list[float]]]:
    """The nearest sub-edge hit of each segment within radius_m: (d², t, row), nearest first."""
    kx = M_PER_DEG * math.cos(math.radians(lat))
    rlon = radius_m / kx
    rlat = radius_m / M_PER_DEG
    ranges = grid.ranges(lon - rlon, lat - rlat, lon + rlon, lat + rlat)
    if not ranges:
        return []
    rows = grid.reg_rows
    n_rows = sum(e - s for s, e in ranges)
    # numpy costs ~1-2 µs per call whatever the size, so a typical query (a few dozen
    # sub-edges) is faster as a plain loop; dense city centres take the vectorized path.
    if n_rows <= _PY_ROWS_MAX:
        block_rows = rows[ranges[0][0] : ranges[0][1]].tolist()
        for s, e in ranges[1:]:
            block_rows += rows[s:e].tolist()
        hits = scan_py(block_rows, lon, lat, kx, radius_m * radius_m)
    else:
        block = (
            rows[ranges[0][0] : ranges[0][1]]
            if len(ranges) == 1
            else np.concatenate([rows[s:e] for s, e in ranges])
        )
        hits = scan_np(block, lon, lat, kx, radius_m * radius_m)
    hits.sort(key=_hit_key)
    return hits

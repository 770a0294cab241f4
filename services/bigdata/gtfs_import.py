"""GTFS static import: read a feed with gtfs-kit, validate it, store it in the geodatabase.

gtfs-kit parses the files into typed tables (and gives its quality assessment); it no longer
ships a validator (release 10 deferred to MobilityData's Java validator), so :func:`validate`
applies the canonical validator's *error* rules that make a feed unusable for arrival times:
required files and columns, unique keys, references between tables, parsable times and dates,
times that never run backwards within a trip, timed first and last stops, valid coordinates,
route types and time zone. A feed with any error is rejected as a whole, with every reason;
warnings (unused stops, trips without stop times, untimed intermediate stops, no shapes …) are
reported and stored with the feed, and the feed is imported.

Stops also become searchable features: ``rail_station`` when a rail route (tram, subway, rail,
cable car, funicular, monorail) serves them, else ``bus_stop``; child platforms of a station are
left to their station so one station is one search result.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import re
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import shapely

from services.bigdata.osm_features import Progress, file_digest
from services.bigdata.store import Feature, GeoStore, GtfsData
from shared.errors import TtiError

IMPORTER_VERSION = 1
"""Part of a feed's digest: raising it re-imports unchanged files."""

_TIME_PATTERN = re.compile(r"^\s*(\d{1,3}):([0-5]\d):([0-5]\d)\s*$")
_MAX_EXAMPLES = 3
_MAX_REASONS = 12

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "agency": ("agency_name", "agency_url", "agency_timezone"),
    "stops": ("stop_id",),
    "routes": ("route_id", "route_type"),
    "trips": ("route_id", "service_id", "trip_id"),
    "stop_times": ("trip_id", "stop_id", "stop_sequence", "arrival_time", "departure_time"),
    "calendar": ("service_id", "monday", "tuesday", "wednesday", "thursday", "friday",
                 "saturday", "sunday", "start_date", "end_date"),
    "calendar_dates": ("service_id", "date", "exception_type"),
    "shapes": ("shape_id", "shape_pt_lat", "shape_pt_lon", "shape_pt_sequence"),
    "frequencies": ("trip_id", "start_time", "end_time", "headway_secs"),
}


class GtfsFeedError(TtiError):
    """A feed was rejected; ``details`` lists every error found."""

    code = "bad_gtfs"
    http_status = 400


@dataclass(frozen=True, slots=True)
class Validation:
    """Errors (the feed is rejected) and warnings (imported anyway)."""

    errors: list[str]
    warnings: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class GtfsImportSummary:
    """What a GTFS import found and changed."""

    path: Path
    feed_id: str
    counts: dict[str, int]
    warnings: list[str]
    changed: bool
    elapsed_s: float

    def describe(self) -> str:
        """One human line: feed, main counts, whether anything changed."""
        c = self.counts
        state = "imported" if self.changed else "already imported (unchanged)"
        return (f"{self.path}: feed {self.feed_id!r}: {c.get('routes', 0):,} routes, "
                f"{c.get('stops', 0):,} stops, {c.get('trips', 0):,} trips, "
                f"{c.get('stop_times', 0):,} stop times, {c.get('shapes', 0):,} shapes, "
                f"{len(self.warnings)} warnings — {state} in {self.elapsed_s:.1f} s")


def feed_id_for(path: Path) -> str:
    """Default feed id: the file name without extension, reduced to ``[A-Za-z0-9_.-]``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("_.") or "feed"


def _rail(route_type: int) -> bool:
    return (route_type in (0, 1, 2, 5, 7, 12) or 100 <= route_type < 200
            or 400 <= route_type < 500 or 900 <= route_type < 1000)


def _valid_route_type(route_type: int) -> bool:
    return 0 <= route_type <= 7 or route_type in (11, 12) or 100 <= route_type <= 1702


def _py(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _col(df: pd.DataFrame, name: str) -> list[Any]:
    """A column as Python values (None for missing), or all None when the column is absent."""
    if name not in df.columns:
        return [None] * len(df)
    return list(df[name].to_numpy(dtype=object, na_value=None).tolist())


def _values(series: pd.Series) -> list[Any]:
    return list(series.to_numpy(dtype=object, na_value=None).tolist())


def _int_col(df: pd.DataFrame, name: str) -> list[int | None]:
    return [None if v is None else int(v) for v in _col(df, name)]


def _float_col(df: pd.DataFrame, name: str) -> list[float | None]:
    return [None if v is None else float(v) for v in _col(df, name)]


def _seconds(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """GTFS ``H:MM:SS`` → seconds (nullable Int64), and a mask of present-but-invalid values."""
    # A timetable repeats the same few thousand times: parse each distinct string once.
    parsed: dict[Any, int | None] = {}
    for text in series.dropna().unique():
        m = _TIME_PATTERN.match(str(text))
        parsed[text] = None if m is None else (
            int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)))
    secs = series.map(parsed).astype("Int64")
    # read_csv already turned blank cells into NA, so "present" is simply "not NA".
    return secs, series.notna() & secs.isna()


def _dates(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series.astype("string").str.strip(), format="%Y%m%d",
                          errors="coerce")


def _examples(values: Sequence[Any] | pd.Series) -> str:
    vals = list(dict.fromkeys(str(v) for v in list(values)[:50]))[:_MAX_EXAMPLES]
    return ", ".join(repr(v) for v in vals)


def _read_translations(path: Path) -> dict[str, str]:
    """English stop names from translations.txt: stop_id → name (by record_id or value)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if Path(n).name == "translations.txt"), None)
            if name is None:
                return {}
            text = zf.read(name).decode("utf-8-sig")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        return {}
    by_id: dict[str, str] = {}
    by_value: dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if (row.get("table_name") != "stops" or row.get("field_name") != "stop_name"
                or not (row.get("language") or "").lower().startswith("en")):
            continue
        if row.get("record_id"):
            by_id[row["record_id"]] = row.get("translation") or ""
        elif row.get("field_value"):
            by_value[row["field_value"]] = row.get("translation") or ""
    return {"\x00id:" + k: v for k, v in by_id.items()} | {"\x00value:" + k: v
                                                           for k, v in by_value.items()}


def validate(feed: Any) -> Validation:
    """The error and warning rules (see module docstring) on a gtfs-kit Feed."""
    errors: list[str] = []
    warnings: list[str] = []
    tables = {t: getattr(feed, t, None) for t in REQUIRED_COLUMNS}
    for t in ("agency", "stops", "routes", "trips", "stop_times"):
        if tables[t] is None:
            errors.append(f"missing required file {t}.txt (or it is empty)")
    if tables["calendar"] is None and tables["calendar_dates"] is None:
        errors.append("missing calendar.txt and calendar_dates.txt: at least one is required")
    for t, cols in REQUIRED_COLUMNS.items():
        df = tables[t]
        if df is None:
            continue
        missing = [c for c in cols if c not in df.columns]
        if missing:
            errors.append(f"{t}.txt lacks required column(s) {', '.join(missing)}")
            tables[t] = None  # later rules would only repeat this
    if errors:
        return Validation(errors, warnings)

    agency, stops, routes = tables["agency"], tables["stops"], tables["routes"]
    trips, st = tables["trips"], tables["stop_times"]
    cal, cal_dates = tables["calendar"], tables["calendar_dates"]
    shapes, freqs = tables["shapes"], tables["frequencies"]
    assert agency is not None and stops is not None and routes is not None
    assert trips is not None and st is not None

    def unique(df: pd.DataFrame, cols: list[str], name: str) -> None:
        dup = df.duplicated(subset=cols, keep="first")
        if dup.any():
            errors.append(f"{name}: {int(dup.sum())} duplicate {'+'.join(cols)} "
                          f"(e.g. {_examples(df.loc[dup, cols[0]])})")

    def refs(values: pd.Series, known: set[Any], what: str) -> None:
        present = values.dropna()
        bad = present[~present.isin(known)]
        if len(bad):
            errors.append(f"{what}: {len(bad)} reference(s) to unknown ids "
                          f"(e.g. {_examples(bad)})")

    # Keys.
    if "agency_id" in agency.columns:
        unique(agency, ["agency_id"], "agency.txt")
    elif len(agency) > 1:
        errors.append("agency.txt: agency_id is required when there are several agencies")
    unique(stops, ["stop_id"], "stops.txt")
    unique(routes, ["route_id"], "routes.txt")
    unique(trips, ["trip_id"], "trips.txt")
    unique(st, ["trip_id", "stop_sequence"], "stop_times.txt")
    if cal is not None:
        unique(cal, ["service_id"], "calendar.txt")
    if cal_dates is not None:
        unique(cal_dates, ["service_id", "date"], "calendar_dates.txt")
    if shapes is not None:
        unique(shapes, ["shape_id", "shape_pt_sequence"], "shapes.txt")
    for df, name in ((stops, "stops.txt"), (routes, "routes.txt"), (trips, "trips.txt"),
                     (st, "stop_times.txt")):
        for c in [c for c in ("stop_id", "route_id", "trip_id") if c in df.columns]:
            if df[c].isna().any():
                errors.append(f"{name}: {int(df[c].isna().sum())} row(s) without {c}")

    # Time zone: every agency the same valid zone.
    zones = set(agency["agency_timezone"].dropna().astype(str).str.strip())
    if not zones:
        errors.append("agency.txt: agency_timezone is empty")
    elif len(zones) > 1:
        errors.append(f"agency.txt: agencies have different time zones {sorted(zones)}")
    for z in zones:
        try:
            ZoneInfo(z)
        except (ZoneInfoNotFoundError, ValueError):
            errors.append(f"agency.txt: unknown time zone {z!r}")

    # References.
    stop_ids = set(stops["stop_id"].dropna())
    trip_ids = set(trips["trip_id"].dropna())
    refs(st["trip_id"], trip_ids, "stop_times.txt trip_id")
    refs(st["stop_id"], stop_ids, "stop_times.txt stop_id")
    refs(trips["route_id"], set(routes["route_id"].dropna()), "trips.txt route_id")
    services: set[Any] = set()
    if cal is not None:
        services |= set(cal["service_id"].dropna())
    if cal_dates is not None:
        services |= set(cal_dates["service_id"].dropna())
    refs(trips["service_id"], services, "trips.txt service_id")
    if "shape_id" in trips.columns:
        known_shapes = set(shapes["shape_id"].dropna()) if shapes is not None else set()
        refs(trips["shape_id"], known_shapes, "trips.txt shape_id")
    if "agency_id" in routes.columns and "agency_id" in agency.columns:
        refs(routes["agency_id"], set(agency["agency_id"].dropna()), "routes.txt agency_id")
    if "parent_station" in stops.columns:
        refs(stops["parent_station"], stop_ids, "stops.txt parent_station")
    if freqs is not None:
        refs(freqs["trip_id"], trip_ids, "frequencies.txt trip_id")

    # Values.
    loc = (stops["location_type"].fillna(0) if "location_type" in stops.columns
           else pd.Series(0, index=stops.index))
    located = loc.isin([0, 1, 2])
    for c in ("stop_lat", "stop_lon", "stop_name"):
        if c not in stops.columns:
            if located.any():
                errors.append(f"stops.txt lacks {c}, required for stops and stations")
            continue
        missing = located & stops[c].isna()
        if missing.any():
            errors.append(f"stops.txt: {int(missing.sum())} stop(s) without {c} "
                          f"(e.g. {_examples(stops.loc[missing, 'stop_id'])})")
    if "stop_lat" in stops.columns and "stop_lon" in stops.columns:
        bad = (stops["stop_lat"].notna() & ~stops["stop_lat"].between(-90, 90)) | (
            stops["stop_lon"].notna() & ~stops["stop_lon"].between(-180, 180))
        if bad.any():
            errors.append(f"stops.txt: {int(bad.sum())} stop(s) with coordinates out of range")
    rt = routes["route_type"]
    bad_rt = rt.isna() | ~rt.fillna(-1).astype(int).map(_valid_route_type)
    if bad_rt.any():
        errors.append(f"routes.txt: {int(bad_rt.sum())} invalid route_type "
                      f"(e.g. {_examples(routes.loc[bad_rt, 'route_id'])})")
    names = routes.reindex(columns=["route_short_name", "route_long_name"])
    if (names.isna().all(axis=1)).any():
        errors.append("routes.txt: route(s) with neither route_short_name nor route_long_name")
    if st["stop_sequence"].isna().any() or (st["stop_sequence"].dropna() < 0).any():
        errors.append("stop_times.txt: stop_sequence missing or negative")
    for df, name, cols in ((cal, "calendar.txt", ("start_date", "end_date")),
                           (cal_dates, "calendar_dates.txt", ("date",))):
        if df is None:
            continue
        for c in cols:
            bad = _dates(df[c]).isna()
            if bad.any():
                errors.append(f"{name}: {int(bad.sum())} invalid {c} (YYYYMMDD expected, "
                              f"e.g. {_examples(df.loc[bad, c])})")
    if cal is not None:
        flags = cal.reindex(columns=["monday", "tuesday", "wednesday", "thursday", "friday",
                                     "saturday", "sunday"])
        if (~flags.isin([0, 1])).any(axis=None):
            errors.append("calendar.txt: weekday columns must be 0 or 1")
    if cal_dates is not None and (~cal_dates["exception_type"].isin([1, 2])).any():
        errors.append("calendar_dates.txt: exception_type must be 1 or 2")

    # Times.
    arr, bad_arr = _seconds(st["arrival_time"])
    dep, bad_dep = _seconds(st["departure_time"])
    if (bad_arr | bad_dep).any():
        sample = st.loc[bad_arr | bad_dep, "arrival_time"].fillna(
            st.loc[bad_arr | bad_dep, "departure_time"])
        errors.append(f"stop_times.txt: {int((bad_arr | bad_dep).sum())} unparsable time(s) "
                      f"(H:MM:SS expected, e.g. {_examples(sample)})")
    else:
        frame = pd.DataFrame({"trip": st["trip_id"], "seq": st["stop_sequence"],
                              "arr": arr, "dep": dep}).sort_values(["trip", "seq"])
        if (frame["dep"] < frame["arr"]).any():
            n = int((frame["dep"] < frame["arr"]).sum())
            errors.append(f"stop_times.txt: {n} stop time(s) depart before they arrive")
        groups = frame.groupby("trip", sort=False)
        first, last = groups.head(1), groups.tail(1)
        edge = pd.concat([first, last])
        untimed_edge = edge["arr"].isna() & edge["dep"].isna()
        if untimed_edge.any():
            sample = _examples(edge.loc[untimed_edge, "trip"])
            errors.append(f"stop_times.txt: {int(untimed_edge.sum())} trip(s) without a time at "
                          f"the first or last stop (e.g. {sample})")
        prev = frame["dep"].fillna(frame["arr"]).groupby(frame["trip"]).shift()
        prev = prev.groupby(frame["trip"]).ffill()
        back = frame["arr"].fillna(frame["dep"]) < prev
        if back.fillna(False).any():
            bad_trips = frame.loc[back.fillna(False), "trip"]
            errors.append(f"stop_times.txt: times run backwards in {bad_trips.nunique()} "
                          f"trip(s) (e.g. {_examples(bad_trips)})")
        untimed = int((frame["arr"].isna() & frame["dep"].isna()).sum())
        if untimed:
            warnings.append(f"{untimed} intermediate stop time(s) have no times (interpolate "
                            "between timepoints)")
    if freqs is not None:
        fs, fbad = _seconds(freqs["start_time"])
        fe, febad = _seconds(freqs["end_time"])
        if (fbad | febad).any() or fs.isna().any() or fe.isna().any():
            errors.append("frequencies.txt: start_time/end_time missing or not H:MM:SS")
        elif (fe <= fs).any():
            errors.append("frequencies.txt: end_time must be after start_time")
        if (freqs["headway_secs"].isna() | (freqs["headway_secs"] <= 0)).any():
            errors.append("frequencies.txt: headway_secs must be positive")

    # Warnings: usable, but worth knowing.
    no_times = trip_ids - set(st["trip_id"].dropna())
    if no_times:
        warnings.append(f"{len(no_times)} trip(s) have no stop times "
                        f"(e.g. {_examples(sorted(no_times))})")
    served = set(st["stop_id"].dropna())
    unused = stops.loc[(loc == 0) & ~stops["stop_id"].isin(served), "stop_id"]
    if len(unused):
        warnings.append(f"{len(unused)} stop(s) are not served by any trip "
                        f"(e.g. {_examples(unused)})")
    idle_routes = set(routes["route_id"].dropna()) - set(trips["route_id"].dropna())
    if idle_routes:
        warnings.append(f"{len(idle_routes)} route(s) have no trips "
                        f"(e.g. {_examples(sorted(idle_routes))})")
    if "shape_id" not in trips.columns or trips["shape_id"].isna().all():
        warnings.append("no trip has a shape: positions are projected on straight lines "
                        "between stops")
    elif trips["shape_id"].isna().any():
        warnings.append(f"{int(trips['shape_id'].isna().sum())} trip(s) have no shape")
    if cal is not None and not errors:
        end = _dates(cal["end_date"]).max()
        if cal_dates is not None:
            end = max(end, _dates(cal_dates["date"]).max())
        if pd.notna(end) and end.date() < date.today():
            warnings.append(f"service ended on {end.date().isoformat()}: no trip runs today")
    return Validation(errors, warnings)


def read_gtfs(path: str | Path, *, feed_id: str | None = None, digest: str | None = None
              ) -> GtfsData:
    """Read and validate a GTFS zip into rows ready to store; GtfsFeedError when rejected."""
    import gtfs_kit

    file = Path(path)
    fid = feed_id or feed_id_for(file)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", fid):
        raise GtfsFeedError(f"feed id {fid!r} may only use letters, digits, '_', '.', '-'")
    if not file.is_file():
        raise GtfsFeedError(f"GTFS file not found: {file}")
    if not zipfile.is_zipfile(file):
        raise GtfsFeedError(f"{file} is not a GTFS feed (not a zip archive)")
    try:
        feed = gtfs_kit.read_feed(file, dist_units="km")
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile,
            pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GtfsFeedError(f"{file}: cannot read GTFS tables: {exc}") from exc
    check = validate(feed)
    if check.errors:
        shown = check.errors[:_MAX_REASONS]
        more = len(check.errors) - len(shown)
        raise GtfsFeedError(
            f"GTFS feed {file.name} rejected: " + "; ".join(shown)
            + (f"; and {more} more" if more else ""), details={"errors": check.errors,
                                                               "warnings": check.warnings})
    return _to_rows(feed, file, fid, digest or "", check.warnings)


def _to_rows(feed: Any, file: Path, feed_id: str, digest: str, warnings: list[str]
             ) -> GtfsData:
    import gtfs_kit

    agency, stops, routes, trips = feed.agency, feed.stops, feed.routes, feed.trips
    st = feed.stop_times.sort_values(["trip_id", "stop_sequence"], kind="stable")
    translations = _read_translations(file)

    tables: dict[str, list[tuple[Any, ...]]] = {}
    tz = str(agency["agency_timezone"].dropna().iloc[0]).strip()
    agency_ids = _col(agency, "agency_id")
    tables["gtfs_agencies"] = [
        (aid or "", name, url, (atz or tz).strip(), lang, phone)
        for aid, name, url, atz, lang, phone in zip(
            agency_ids, _col(agency, "agency_name"), _col(agency, "agency_url"),
            _col(agency, "agency_timezone"), _col(agency, "agency_lang"),
            _col(agency, "agency_phone"), strict=True)]
    default_agency = agency_ids[0] if len(agency) == 1 else None
    tables["gtfs_routes"] = [
        (rid, aid if aid is not None else default_agency, short, long_, desc,
         int(rtype), color, text_color, sort)
        for rid, aid, short, long_, desc, rtype, color, text_color, sort in zip(
            _col(routes, "route_id"), _col(routes, "agency_id"),
            _col(routes, "route_short_name"), _col(routes, "route_long_name"),
            _col(routes, "route_desc"), _int_col(routes, "route_type"),
            _col(routes, "route_color"), _col(routes, "route_text_color"),
            _int_col(routes, "route_sort_order"), strict=True)]

    stop_names = _col(stops, "stop_name")
    stop_ids = _col(stops, "stop_id")
    names_en = [translations.get("\x00id:" + sid) or (
        translations.get("\x00value:" + name) if name else None) or None
        for sid, name in zip(stop_ids, stop_names, strict=True)]
    loc_types = [0 if v is None else v for v in _int_col(stops, "location_type")]
    lats, lons = _float_col(stops, "stop_lat"), _float_col(stops, "stop_lon")
    parents = _col(stops, "parent_station")
    codes = _col(stops, "stop_code")
    tables["gtfs_stops"] = list(zip(
        stop_ids, codes, stop_names, names_en, _col(stops, "stop_desc"), lats, lons,
        _col(stops, "zone_id"), loc_types, parents, _int_col(stops, "wheelchair_boarding"),
        _col(stops, "platform_code"), strict=True))

    tables["gtfs_trips"] = list(zip(
        _col(trips, "trip_id"), _col(trips, "route_id"), _col(trips, "service_id"),
        _col(trips, "trip_headsign"), _col(trips, "trip_short_name"),
        _int_col(trips, "direction_id"), _col(trips, "block_id"), _col(trips, "shape_id"),
        _int_col(trips, "wheelchair_accessible"), strict=True))

    arr, _ = _seconds(st["arrival_time"])
    dep, _ = _seconds(st["departure_time"])
    tables["gtfs_stop_times"] = list(zip(
        _col(st, "trip_id"), _int_col(st, "stop_sequence"), _col(st, "stop_id"),
        _values(arr), _values(dep),
        _col(st, "stop_headsign"), _int_col(st, "pickup_type"), _int_col(st, "drop_off_type"),
        _float_col(st, "shape_dist_traveled"), _int_col(st, "timepoint"), strict=True))

    cal = feed.calendar
    if cal is not None:
        starts = [d.date() for d in _dates(cal["start_date"])]
        ends = [d.date() for d in _dates(cal["end_date"])]
        days = [_int_col(cal, d) for d in ("monday", "tuesday", "wednesday", "thursday",
                                           "friday", "saturday", "sunday")]
        tables["gtfs_calendar"] = [
            (sid, *(int(d[i] or 0) for d in days), starts[i], ends[i])
            for i, sid in enumerate(_col(cal, "service_id"))]
    else:
        tables["gtfs_calendar"] = []
    cd = feed.calendar_dates
    tables["gtfs_calendar_dates"] = [] if cd is None else [
        (sid, d.date(), kind) for sid, d, kind in zip(
            _col(cd, "service_id"), _dates(cd["date"]), _int_col(cd, "exception_type"),
            strict=True)]
    fq = feed.frequencies
    if fq is not None:
        fs, _ = _seconds(fq["start_time"])
        fe, _ = _seconds(fq["end_time"])
        tables["gtfs_frequencies"] = list(zip(
            _col(fq, "trip_id"), [int(v) for v in fs.tolist()], [int(v) for v in fe.tolist()],
            _int_col(fq, "headway_secs"), _int_col(fq, "exact_times"), strict=True))
    else:
        tables["gtfs_frequencies"] = []

    shapes_rows: list[tuple[str, tuple[tuple[float, float], ...], tuple[float, ...] | None]] = []
    if feed.shapes is not None:
        sh = feed.shapes.sort_values(["shape_id", "shape_pt_sequence"], kind="stable")
        has_dist = "shape_dist_traveled" in sh.columns
        for sid, grp in sh.groupby("shape_id", sort=True):
            coords = tuple(zip(grp["shape_pt_lon"].astype(float).tolist(),
                               grp["shape_pt_lat"].astype(float).tolist(), strict=True))
            if len(coords) < 2:
                warnings.append(f"shape {sid!r} has fewer than 2 points: not stored")
                continue
            dists = None
            if has_dist and grp["shape_dist_traveled"].notna().all():
                dists = tuple(float(v) for v in grp["shape_dist_traveled"].tolist())
            shapes_rows.append((str(sid), coords, dists))

    features = _stop_features(feed_id, tables, st)
    feed_info: dict[str, Any] = {}
    if feed.feed_info is not None and len(feed.feed_info):
        feed_info = {k: v for k, v in zip(
            feed.feed_info.columns, (_py(v) for v in feed.feed_info.iloc[0].tolist()),
            strict=True) if v is not None}
    try:
        quality = gtfs_kit.assess_quality(feed)
        feed_info["gtfs_kit_assessment"] = str(
            quality.set_index("indicator").loc["assessment", "value"])
    except (KeyError, ValueError, TypeError, AttributeError):  # advisory only
        pass
    return GtfsData(feed_id=feed_id, source=str(file), digest=digest, agency_timezone=tz,
                    feed_info=feed_info, warnings=tuple(warnings), tables=tables,
                    shapes=shapes_rows, stop_features=features)


def _stop_features(feed_id: str, tables: dict[str, list[tuple[Any, ...]]],
                   st: pd.DataFrame) -> list[Feature]:
    """Stops and stations as features; a platform inside a station is left to the station."""
    route_type = {r[0]: r[5] for r in tables["gtfs_routes"]}
    route_label = {r[0]: r[2] or r[3] or r[0] for r in tables["gtfs_routes"]}
    trip_route = {t[0]: t[1] for t in tables["gtfs_trips"]}
    pairs = pd.DataFrame({"stop": st["stop_id"], "trip": st["trip_id"]}).drop_duplicates()
    stop_routes: dict[str, set[str]] = defaultdict(set)
    for stop, trip in zip(pairs["stop"].tolist(), pairs["trip"].tolist(), strict=True):
        rid = trip_route.get(trip)
        if rid is not None:
            stop_routes[stop].add(rid)
    for row in tables["gtfs_stops"]:
        if row[9]:  # a child's routes count for its parent station
            stop_routes[row[9]] |= stop_routes.get(row[0], set())
    modes = Counter(_rail(t) for t in route_type.values())
    default_rail = modes[True] > modes[False]
    out: list[Feature] = []
    for (stop_id, code, name, name_en, desc, lat, lon, _zone, loc, parent, _wc,
         _platform) in tables["gtfs_stops"]:
        if lat is None or lon is None or loc not in (0, 1) or (parent and loc == 0):
            continue
        rids = sorted(stop_routes.get(stop_id, ()))
        rail = any(_rail(route_type[r]) for r in rids) if rids else default_rail
        out.append(Feature(
            kind="rail_station" if rail else "bus_stop",
            feature_id=f"{feed_id}:{stop_id}".replace("/", "%2F"),
            geometry=shapely.Point(lon, lat), name=name, name_en=name_en, ref=code,
            attrs={"feed_id": feed_id, "stop_id": stop_id, "location_type": loc,
                   "routes": [route_label[r] for r in rids][:50], **(
                       {"desc": desc} if desc else {})}))
    return out


async def import_gtfs_file(store: GeoStore, path: str | Path, *, feed_id: str | None = None,
                           progress: Progress | None = None) -> GtfsImportSummary:
    """Validate and import one GTFS zip; a no-op when this feed was imported from the same file.

    A rejected feed raises :class:`GtfsFeedError` with every reason; nothing is written.
    """
    started = time.monotonic()
    say: Callable[[str], None] = progress or (lambda _msg: None)
    file = Path(path)
    fid = feed_id or feed_id_for(file)

    def digest_of() -> str:
        if not file.is_file():
            raise GtfsFeedError(f"GTFS file not found: {file}")
        return file_digest(file)

    digest = f"{await asyncio.to_thread(digest_of)}:gtfs-v{IMPORTER_VERSION}"
    prior = await store.find_import(f"gtfs:{fid}")
    if prior is not None and prior.digest == digest:
        feeds = {f.feed_id: f for f in await store.list_feeds()}
        feed = feeds.get(fid)
        return GtfsImportSummary(path=file, feed_id=fid,
                                 counts=dict(feed.counts) if feed else {},
                                 warnings=list(feed.warnings) if feed else [], changed=False,
                                 elapsed_s=time.monotonic() - started)
    say(f"gtfs: reading and validating {file.name}")
    data = await asyncio.to_thread(read_gtfs, file, feed_id=fid, digest=digest)
    counts = data.counts()
    say(f"gtfs: writing {counts['stop_times']:,} stop times of {counts['trips']:,} trips")
    changed = await store.import_gtfs(data)
    return GtfsImportSummary(path=file, feed_id=fid, counts=counts,
                             warnings=list(data.warnings), changed=changed,
                             elapsed_s=time.monotonic() - started)

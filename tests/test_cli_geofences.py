"""``tti import-geofences FILE``: good features stored, bad ones named, an unusable file refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import mapping

from services import cli
from services.bigdata.geofences import GeofenceRecord
from services.bigdata.store import store_from_url
from shared.demo import DemoRegion, generate_demo_region


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``tti …`` in-process, without installing uvloop or replacing pytest's log handlers."""
    monkeypatch.setattr(cli, "_install_uvloop", lambda: None)
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    yield cli.main


def fences_in(url: str) -> list[GeofenceRecord]:
    async def q() -> list[GeofenceRecord]:
        s = store_from_url(url)
        await s.open()
        try:
            return await s.list_geofences()
        finally:
            await s.close()
    return asyncio.run(q())


def write(path: Path, features: list[Any]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features},
                               ensure_ascii=False), encoding="utf-8")
    return path


def zone(gid: str, center: tuple[float, float]) -> dict[str, Any]:
    return {"type": "Feature", "id": gid,
            "geometry": mapping(shapely.Point(center).buffer(0.003)),
            "properties": {"name": "化工园区周边", "kind": "restricted_zone",
                           "vehicle_classes": ["dangerous_goods"],
                           "time_windows": ["07:00-09:00", "17:00-19:00"]}}


def test_import_geofences_good_bad_and_empty(run_cli: Any, demo: DemoRegion, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'geo.db'}"
    assert run_cli(["import-osm", str(demo.osm_path), "--db-url", url]) == 0
    capsys.readouterr()
    tunnel = demo.tunnels[0]
    good = write(tmp_path / "good.geojson", [
        zone("zone-1", demo.center),
        {"type": "Feature", "id": "tunnel", "geometry": None,
         "properties": {"name": tunnel.name, "name_en": tunnel.name_en,
                        "kind": "restricted_road", "vehicle_classes": ["dangerous_goods"],
                        "segment_ids": list(tunnel.segment_ids)}},
    ])
    assert run_cli(["import-geofences", str(good), "--db-url", url]) == 0
    assert "geofences: 2 of 2 features imported" in capsys.readouterr().out
    assert [f.geofence_id for f in fences_in(url)] == ["tunnel", "zone-1"]

    mixed = write(tmp_path / "mixed.geojson", [
        zone("zone-2", demo.center),
        {"type": "Feature", "id": "nowhere", "geometry": None,
         "properties": {"name": "不存在", "kind": "restricted_road",
                        "vehicle_classes": ["dangerous_goods"], "segment_ids": ["9:9:9"]}},
        {"type": "Feature", "id": "no-kind", "geometry": None, "properties": {"name": "x"}},
        "not a feature",
        zone("zone-2", demo.center),
    ])
    assert run_cli(["import-geofences", str(mixed), "--db-url", url]) == 0
    out, err = capsys.readouterr()
    assert "geofences: 1 of 5 features imported" in out
    skipped = [line.strip() for line in err.splitlines() if "skipped" in line]
    assert [s.split(":")[1].strip() for s in skipped] == [
        "feature 1 (nowhere)", "feature 2 (no-kind)", "feature 3", "feature 4 (zone-2)"]
    assert "unknown segment_ids 9:9:9" in err and "duplicate" in err
    # Another file's fences stay; re-importing the first without the zone drops only that one.
    assert [f.geofence_id for f in fences_in(url)] == ["tunnel", "zone-1", "zone-2"]
    write(good, [json.loads(good.read_text(encoding="utf-8"))["features"][1]])
    assert run_cli(["import-geofences", str(good), "--db-url", url]) == 0
    assert [f.geofence_id for f in fences_in(url)] == ["tunnel", "zone-2"]
    capsys.readouterr()

    empty = write(tmp_path / "empty.geojson", [])
    assert run_cli(["import-geofences", str(empty), "--db-url", url]) == 2
    assert "no usable feature" in capsys.readouterr().err
    useless = write(tmp_path / "useless.geojson", [{"type": "Feature", "properties": {}}])
    assert run_cli(["import-geofences", str(useless), "--db-url", url]) == 2
    err = capsys.readouterr().err
    assert "no usable feature" in err and "feature 0" in err
    for bad, message in [(tmp_path / "nope.geojson", "not found"),
                         (tmp_path / "broken.geojson", "not JSON"),
                         (tmp_path / "list.geojson", "FeatureCollection")]:
        if bad.name == "broken.geojson":
            bad.write_text("{", encoding="utf-8")
        elif bad.name == "list.geojson":
            bad.write_text("[]", encoding="utf-8")
        assert run_cli(["import-geofences", str(bad), "--db-url", url]) == 2
        assert message in capsys.readouterr().err
    assert [f.geofence_id for f in fences_in(url)] == ["tunnel", "zone-2"]


def test_without_db_url_the_geofences_go_to_the_regions_database(
        run_cli: Any, demo: DemoRegion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TTI_DB_URL", raising=False)
    path = write(tmp_path / "zones.geojson", [zone("zone-1", demo.center)])
    var = tmp_path / "var"
    assert run_cli(["import-geofences", str(path), "--var-dir", str(var)]) == 0
    assert "1 of 1" in capsys.readouterr().out
    assert [f.geofence_id for f in fences_in(f"sqlite:///{var / 'demo-1' / 'tti.db'}")] == [
        "zone-1"]

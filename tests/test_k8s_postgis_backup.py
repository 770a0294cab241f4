"""The PostGIS backup CronJob's script (infra/k8s/base/postgis/backup.sh), run as the CronJob
runs it against the real PostgreSQL/PostGIS: the dump restores into a fresh database with its
geometries, old dumps are forgotten, and a failed run leaves no file and exits non-zero."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.conftest import PG_DSN, REPO, fresh_pg_database, unavailable

SCRIPT = REPO / "infra/k8s/base/postgis/backup.sh"


def _libpq_env(dsn: str, backup_dir: Path) -> dict[str, str]:
    parts = urlsplit(dsn)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGHOST": parts.hostname or "",
            "PGPORT": str(parts.port or 5432), "PGUSER": parts.username or "postgres",
            "PGDATABASE": parts.path.lstrip("/"), "BACKUP_DIR": str(backup_dir),
            "BACKUP_KEEP_DAYS": "14"}


def _tools() -> None:
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found (Debian's postgresql-client)")


async def test_a_nightly_dump_restores_with_its_geometries_and_old_dumps_go(
        tmp_path: Path, unique_name: str) -> None:
    _tools()
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / f"{unique_name}-20200101T023000Z.dump"
    recent = backups / f"{unique_name}-20991231T023000Z.dump"
    unrelated = backups / "notes.txt"
    for f in (old, recent, unrelated):
        f.write_bytes(b"x")
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(unrelated, (month_ago, month_ago))

    async with fresh_pg_database(unique_name) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            await conn.execute("CREATE TABLE road_segments (segment_id text PRIMARY KEY, "
                               "geom geometry(LineString, 4326))")
            await conn.execute(
                "INSERT INTO road_segments VALUES ('1:2:3', ST_GeomFromText("
                "'LINESTRING(114.30 30.59, 114.31 30.60)', 4326)), ('4:5:6', "
                "ST_GeomFromText('LINESTRING(114.40 30.50, 114.41 30.52)', 4326))")
        finally:
            await conn.close()
        run = await asyncio.to_thread(
            subprocess.run, ["/bin/sh", str(SCRIPT)], env=_libpq_env(dsn, backups),
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    # The source database is gone: what follows reads the dump alone.
    dumps = sorted(backups.glob(f"{unique_name}-*.dump"))
    made = [d for d in dumps if d not in (recent,)]
    assert len(made) == 1 and not old.exists() and recent.exists() and unrelated.exists()
    assert not list(backups.glob("*.partial"))
    assert "backup written" in run.stdout

    async with fresh_pg_database(unique_name + "r") as restored:
        parts = urlsplit(restored)
        env = _libpq_env(restored, backups)
        proc = await asyncio.to_thread(
            subprocess.run, ["pg_restore", "--no-owner", "-d", parts.path.lstrip("/"),
                             str(made[0])], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        conn = await asyncpg.connect(restored)
        try:
            rows = await conn.fetch("SELECT segment_id, ST_AsText(geom) AS wkt, ST_SRID(geom) "
                                    "AS srid FROM road_segments ORDER BY segment_id")
        finally:
            await conn.close()
    assert [(r["segment_id"], r["wkt"], r["srid"]) for r in rows] == [
        ("1:2:3", "LINESTRING(114.3 30.59,114.31 30.6)", 4326),
        ("4:5:6", "LINESTRING(114.4 30.5,114.41 30.52)", 4326)]


def test_a_failed_dump_leaves_nothing_and_fails_the_job(tmp_path: Path, unique_name: str) -> None:
    _tools()
    backups = tmp_path / "backups"
    env = _libpq_env(PG_DSN, backups)
    env["PGDATABASE"] = unique_name  # no such database
    run = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert unique_name in run.stderr
    assert list(backups.iterdir()) == []

"""The ``make fuzz`` HTTP run at test-suite size: mutated sensor bodies against the collector."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.run import fuzz_bodies


async def test_mutated_sensor_bodies_get_json_2xx_or_4xx_and_are_counted(tmp_path: Path) -> None:
    report = await fuzz_bodies(1_000, seed=808, workdir=tmp_path)  # raises on a broken invariant
    assert report.inputs == 1_000 and report.accepted > 0 and report.rejected > 0
    assert report.counted >= report.rejected

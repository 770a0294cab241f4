"""Vehicle registry (plate/terminal → class, operator, route) loaded from CSV.

Columns: ``terminal_phone,plate,vehicle_class,operator,route_id`` (header row required). The
simulator writes one for its fleet; departments export theirs in the same form. A terminal not in
the registry is ``other`` (JT/T 808 registration carries no vehicle class).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from shared.errors import TtiError
from shared.events import VEHICLE_CLASSES

log = logging.getLogger("tti.collector.registry")


@dataclass(frozen=True, slots=True)
class VehicleInfo:
    """What the registry knows of one vehicle."""

    vehicle_id: str
    plate: str
    vehicle_class: str
    operator: str = ""
    route_id: str | None = None


class VehicleRegistry:
    """Lookup by vehicle id (terminal phone without leading zeros)."""

    def __init__(self, vehicles: dict[str, VehicleInfo] | None = None) -> None:
        self._by_id = vehicles or {}

    def __len__(self) -> int:
        return len(self._by_id)

    def find(self, vehicle_id: str) -> VehicleInfo | None:
        """The vehicle's record, or None."""
        return self._by_id.get(vehicle_id)

    def vehicle_class(self, vehicle_id: str) -> str:
        """The registered class, ``other`` when unknown."""
        info = self._by_id.get(vehicle_id)
        return info.vehicle_class if info else "other"

    @classmethod
    def from_csv(cls, path: str | Path) -> VehicleRegistry:
        """Load a registry CSV; rows with an unknown class or no terminal are skipped, counted."""
        vehicles: dict[str, VehicleInfo] = {}
        bad = 0
        try:
            with Path(path).open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"terminal_phone", "vehicle_class"} - set(reader.fieldnames or ())
                if missing:
                    raise TtiError(f"vehicle registry {path}: missing columns {sorted(missing)}",
                                   code="bad_input")
                for row in reader:
                    vid = (row.get("terminal_phone") or "").strip().lstrip("0")
                    cls_ = (row.get("vehicle_class") or "").strip()
                    if not vid or cls_ not in VEHICLE_CLASSES:
                        bad += 1
                        continue
                    vehicles[vid] = VehicleInfo(vid, (row.get("plate") or "").strip(), cls_,
                                                (row.get("operator") or "").strip(),
                                                (row.get("route_id") or "").strip() or None)
        except OSError as exc:
            raise TtiError(f"cannot read vehicle registry {path}: {exc}", code="bad_input") from exc
        if bad:
            log.warning("vehicle registry %s: %d rows skipped (no terminal or unknown class)",
                        path, bad)
        return cls(vehicles)


def write_registry_csv(path: Path, rows: list[VehicleInfo], phones: dict[str, str]) -> None:
    """Write a registry CSV (``phones`` maps vehicle id → terminal phone as the device sends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["terminal_phone", "plate", "vehicle_class", "operator", "route_id"])
        for r in rows:
            w.writerow([phones.get(r.vehicle_id, r.vehicle_id), r.plate, r.vehicle_class,
                        r.operator, r.route_id or ""])

"""Configuration as one frozen dataclass, read once from ``TTI_*`` environment variables.

Every setting has a default that works for the embedded run (``tti run``). The CLI accepts the
same names as flags (``TTI_SPEED_WINDOW_S`` ↔ ``--speed-window-s``); flags win over environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.clock import Clock
from shared.errors import ConfigError

SERVICE_PORTS = {"publisher": 8080, "collector": 8081, "bigdata": 8082, "warning": 8083}
"""HTTP port of each service under ``tti serve`` (health, metrics, its API)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """All settings of every service; each field maps to ``TTI_<FIELD>``."""

    bus_url: str = "memory://"
    bus_stream: str = "TTI"
    bus_prefix: str = "tti"
    db_url: str = "sqlite:///var/tti.db"
    var_dir: str = "var"
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    bigdata_url: str = "http://127.0.0.1:8080/bigdata"
    warning_url: str = "http://127.0.0.1:8080/warning"
    partitions: int = 16
    lease_ttl_s: float = 15.0
    """A replica that holds a lease (the active warning replica) and stops renewing it is
    replaced after this long (plus a poll): standbys take over within 30 s by default."""
    replica_index: int = 0
    replica_count: int = 1
    speed_window_s: float = 60.0
    clock_rate: float = 1.0
    """Speed of the one clock every service reads (shared/clock.py): 10 runs ten times faster."""
    clock_start: str = ""
    """ISO 8601 time the clock starts at (a replay); empty: now."""
    osm: str = ""
    gtfs: str = ""
    demo_size: int = 1
    jt808_host: str = "0.0.0.0"
    jt808_port: int = 6808
    jt808_heartbeat_s: float = 60.0
    jt808_idle_factor: float = 3.0
    jt808_max_connections: int = 20_000
    jt808_open_registration: bool = True
    jt808_max_frames_per_s: float = 100.0  # per connection; reading pauses beyond (burst 2 s)
    jt808_max_write_buffer: int = 65_536  # bytes of unsent replies before reading pauses
    jt808_resend_after_s: float = 10.0  # a split message stalled this long gets 0x8003
    jt808_max_registrations_per_s: float = 50.0  # gateway-wide 0x0100 budget (burst 3 s)
    sim_vehicles: int = 120
    sim_interval_s: float = 5.0
    sim_seed: int = 1
    sim_incidents: tuple[str, ...] = ()
    sim_truth: str = ""
    sim_host: str = "127.0.0.1"
    sim_noise_m: float = 5.0
    vehicle_registry: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    department_tokens: tuple[str, ...] = field(default_factory=tuple)
    sensor_tokens: tuple[str, ...] = ()
    """Bearer tokens roadside sensors present on the collector's HTTP inputs (empty: open, for
    the embedded run on one machine; set them in production)."""
    # Bus feeds and roadside detectors (services/collector/gtfs_rt.py, detectors.py).
    gtfs_rt_urls: tuple[str, ...] = ()  # "name=url" entries (a bare url is named after its host)
    gtfs_rt_poll_s: float = 15.0
    gtfs_rt_stale_s: float = 120.0  # no new data for this long = stale (also the startup grace)
    gtfs_rt_timeout_s: float = 10.0
    gtfs_rt_max_bytes: int = 10_000_000
    detector_max_body: int = 1_048_576  # bytes of one HTTP body or MQTT message
    detector_max_items: int = 500  # records in one body or message
    mqtt_url: str = ""  # mqtt://[user:pass@]host[:port] or mqtts://…; empty = MQTT input off
    mqtt_topic_prefix: str = "tti/detectors"
    # Live feature state over MQTT: <prefix>/<kind>/<feature_id>/state
    mqtt_features_prefix: str = "tti/features"
    mqtt_share_group: str = "tti-collector"  # $share group so replicas split messages; "" = off
    mqtt_client_id: str = ""  # set (per replica) for a persistent session; empty = clean session

    @property
    def var_path(self) -> Path:
        """The folder for embedded data (SQLite, generated demo files, simulator truth)."""
        return Path(self.var_dir)

    def owned_partitions(self) -> list[int]:
        """Partitions this replica consumes: p ≡ replica_index (mod replica_count)."""
        return [p for p in range(self.partitions) if p % self.replica_count == self.replica_index]

    def make_clock(self) -> Clock:
        """The clock these settings describe (build it once, at composition)."""
        return Clock.from_settings(self.clock_rate, self.clock_start)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"TTI_{name.upper()}: {exc}") from exc
    return raw


def _replica_index(raw: str) -> str:
    """``auto`` takes the StatefulSet ordinal from the host name (``bigdata-3`` → 3)."""
    if raw != "auto":
        return raw
    m = re.search(r"-(\d+)$", socket.gethostname())
    return m.group(1) if m else "0"


def load_config(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the configuration from ``TTI_*`` variables, then keyword overrides."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in dataclasses.fields(Config):
        key = f"TTI_{f.name.upper()}"
        if key in env:
            raw = env[key]
            if f.name == "replica_index":
                raw = _replica_index(raw)
            default = f.default if f.default is not dataclasses.MISSING else ()
            values[f.name] = _convert(f.name, raw, default)
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = Config(**values)  # type: ignore[arg-type]
    if not 0 <= cfg.replica_index < cfg.replica_count:
        raise ConfigError("TTI_REPLICA_INDEX must be in [0, TTI_REPLICA_COUNT)")
    if cfg.partitions < 1 or cfg.speed_window_s <= 0:
        raise ConfigError("TTI_PARTITIONS and TTI_SPEED_WINDOW_S must be positive")
    cfg.make_clock()  # a bad TTI_CLOCK_RATE or TTI_CLOCK_START fails here, with its name
    return cfg

"""Configuration as one frozen dataclass, read once from ``TTI_*`` environment variables.

Every setting has a default that works for the embedded run (``tti run``). The CLI accepts the
same names as flags (``TTI_SPEED_WINDOW_S`` ↔ ``--speed-window-s``); flags win over environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared.clock import Clock
from shared.errors import ConfigError

T = TypeVar("T")

SERVICE_PORTS = {"publisher": 8080, "collector": 8081, "bigdata": 8082, "warning": 8083}
"""HTTP port of each service under ``tti serve`` (health, metrics, its API)."""

GENERAL, COLLECTOR, BIGDATA, WARNING, PUBLISHER, SIMULATOR = (
    "general", "collector", "bigdata", "warning", "publisher", "simulator")
GROUPS: dict[str, str] = {
    GENERAL: "general (bus, database, HTTP, replicas, clock, logs)",
    COLLECTOR: "collector (JT/T 808 gateway, GTFS-rt feeds, roadside sensors, MQTT)",
    BIGDATA: "bigdata (geodatabase and speeds)",
    WARNING: "warning (congestion, incidents, warnings)",
    PUBLISHER: "publisher (citizen API and web page)",
    SIMULATOR: "simulator (demo city and virtual fleet: tti run, tti simulate)",
}
"""Setting groups in the order ``--help`` shows them, with their headings."""


def setting(default: T, group: str, text: str, *, also: tuple[str, ...] = (),
            show_default: bool = True, secret: bool = False) -> T:
    """A Config field with its group (the service that reads it) and one sentence of help.

    ``also`` names other groups whose commands read it too (``tti serve <service> --help``
    lists a setting of its own group, of ``general``, or naming the service in ``also``);
    ``show_default=False`` when the help sentence says what happens by default; ``secret``
    keeps the value out of the Config's repr (so it is never logged with it).
    """
    return field(default=default, repr=not secret,
                 metadata={"group": group, "help": text, "also": also,
                           "show_default": show_default, "secret": secret})


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """All settings of every service; each field maps to ``TTI_<FIELD>`` and ``--<field>``.

    Each field's metadata holds its group and one sentence of help (``--help``, the README).
    """

    # --- general: bus, database, HTTP, replicas, clock, logs ---
    bus_url: str = setting(
        "memory://", GENERAL,
        "Event bus: memory:// inside one process, or nats://HOST:4222 (NATS JetStream).")
    bus_stream: str = setting("TTI", GENERAL, "JetStream stream that holds every subject.")
    bus_prefix: str = setting("tti", GENERAL, "Prefix of every bus subject (tti.position.<p>, …).")
    bus_replicas: int = setting(
        1, GENERAL,
        "Copies NATS keeps of the stream and the key-value buckets: 1, or 3 on a three-node "
        "cluster; every service sets it on the stream when it starts.")
    bus_stream_max_bytes: int = setting(
        1 << 30, GENERAL,
        "Bytes the JetStream stream keeps, the oldest dropped beyond: size it for how far "
        "behind a consumer may fall (a position is about 840 bytes there: 2,000 a second fill "
        "a GiB in 11 min); every service sets it on the stream when it starts.")
    db_url: str = setting(
        "sqlite:///var/tti.db", GENERAL,
        "Geodatabase, sqlite:///FILE or postgresql://…; unset, tti run and the imports use "
        "<var_dir>/<region>/tti.db (one file per region) and tti serve var/tti.db.",
        show_default=False)
    var_dir: str = setting(
        "var", GENERAL,
        "Folder for embedded data: per-region SQLite files, the demo city, simulator output.")
    http_host: str = setting(
        "127.0.0.1", GENERAL,
        "Address the HTTP server listens on: 127.0.0.1 keeps it on this machine, 0.0.0.0 "
        "opens it to the network (in a pod).")
    http_port: int = setting(
        8080, GENERAL,
        "HTTP port (API, web page, /healthz, /readyz, /metrics); tti serve defaults to 8080 "
        "publisher, 8081 collector, 8082 bigdata, 8083 warning.")
    bigdata_url: str = setting(
        "http://127.0.0.1:8080/bigdata", GENERAL,
        "Base URL of bigdata's HTTP API, queried by the warning service and the publisher.")
    partitions: int = setting(
        16, GENERAL, "Per-vehicle bus partitions (tti.position.<p>); the same in every service.")
    replica_index: int = setting(
        0, GENERAL,
        "This replica's number, 0 to TTI_REPLICA_COUNT-1; TTI_REPLICA_INDEX=auto takes the "
        "StatefulSet ordinal from the host name.")
    replica_count: int = setting(1, GENERAL, "How many replicas of this service run.")
    clock_rate: float = setting(
        1.0, GENERAL,
        "Speed of the one clock every service reads: 10 runs ten times faster (replays, "
        "benchmarks).")
    clock_start: str = setting(
        "", GENERAL, "ISO 8601 time the clock starts at (a replay); empty: now.")
    log_level: str = setting("INFO", GENERAL, "Log level: DEBUG, INFO, WARNING or ERROR.")
    log_format: str = setting(
        "json", GENERAL, "Log format on stderr: json (one object a line) or text.")

    # --- collector ---
    jt808_host: str = setting(
        "127.0.0.1", COLLECTOR,
        "Address the JT/T 808 gateway listens on: 0.0.0.0 for terminals on the network.")
    jt808_port: int = setting(
        6808, COLLECTOR, "TCP port of the JT/T 808 gateway (tti simulate connects to it).",
        also=(SIMULATOR,))
    jt808_heartbeat_s: float = setting(
        60.0, COLLECTOR, "Heartbeat interval the gateway expects from terminals, in seconds.")
    jt808_idle_factor: float = setting(
        3.0, COLLECTOR, "A link silent for this many heartbeat intervals is closed.")
    jt808_max_connections: int = setting(
        20_000, COLLECTOR, "Terminal connections one gateway accepts at most.")
    jt808_open_registration: bool = setting(
        True, COLLECTOR,
        "Register any terminal that asks (0x0100); false admits only terminals already "
        "known; tti serve refuses true unless TTI_ALLOW_OPEN_REGISTRATION=true.")
    jt808_max_frames_per_s: float = setting(
        100.0, COLLECTOR,
        "Frames per second one connection may send; reading pauses beyond (burst 2 s).")
    jt808_max_write_buffer: int = setting(
        65_536, COLLECTOR, "Bytes of unsent replies to one terminal before reading pauses.")
    jt808_resend_after_s: float = setting(
        10.0, COLLECTOR, "A split message stalled this long is asked to resend (0x8003).")
    jt808_max_registrations_per_s: float = setting(
        50.0, COLLECTOR, "Registrations (0x0100) per second the whole gateway accepts (burst 3 s).")
    jt808_command_timeout_s: float = setting(
        30.0, COLLECTOR,
        "Seconds a terminal has to answer a platform command (0x8300, 0x8201, 0x8203) before "
        "its outcome is failed (no reply).")
    jt808_drain_s: float = setting(
        30.0, COLLECTOR,
        "On shutdown, seconds over which terminal connections are closed in even batches "
        "(readiness 503, no new connections meanwhile); 0 closes them all at once.")
    vehicle_registry: str = setting(
        "", COLLECTOR,
        "CSV of vehicles (plate, terminal, class, operator, bus route); tti run writes the "
        "simulated fleet's.", also=(BIGDATA,))
    sensor_tokens: tuple[str, ...] = setting(
        (), COLLECTOR,
        "Bearer tokens roadside sensors present on the collector's HTTP inputs; tti serve "
        "refuses to start without any unless TTI_ALLOW_OPEN_SENSORS=true.")
    allow_open_sensors: bool = setting(
        False, COLLECTOR,
        "Let tti serve collector start without TTI_SENSOR_TOKENS: anyone who reaches the "
        "port may post sensor data.")
    allow_open_registration: bool = setting(
        False, COLLECTOR,
        "Let tti serve collector start with TTI_JT808_OPEN_REGISTRATION=true: any terminal "
        "may register.")
    gtfs_rt_urls: tuple[str, ...] = setting(
        (), COLLECTOR,
        "GTFS-realtime vehicle-position feeds to poll, name=url (a bare url is named after "
        "its host).")
    gtfs_rt_poll_s: float = setting(15.0, COLLECTOR, "Seconds between polls of each GTFS-rt feed.")
    gtfs_rt_stale_s: float = setting(
        120.0, COLLECTOR,
        "A feed without new data for this long is stale (also the grace period at startup).")
    gtfs_rt_timeout_s: float = setting(10.0, COLLECTOR, "Timeout of one GTFS-rt fetch, seconds.")
    gtfs_rt_max_bytes: int = setting(
        10_000_000, COLLECTOR, "Largest GTFS-rt response accepted, in bytes.")
    detector_max_body: int = setting(
        1_048_576, COLLECTOR, "Largest sensor HTTP body or MQTT message accepted, in bytes.")
    detector_max_items: int = setting(
        500, COLLECTOR, "Most records in one sensor HTTP body or MQTT message.")
    mqtt_url: str = setting(
        "", COLLECTOR,
        "MQTT broker for detector and feature-state messages, mqtt://[user:pass@]host[:port] "
        "or mqtts://…; empty: MQTT input off.")
    mqtt_topic_prefix: str = setting(
        "tti/detectors", COLLECTOR, "Topic prefix of detector readings.")
    mqtt_features_prefix: str = setting(
        "tti/features", COLLECTOR,
        "Topic prefix of live feature state (<prefix>/<kind>/<feature_id>/state).")
    mqtt_share_group: str = setting(
        "tti-collector", COLLECTOR,
        "MQTT $share group so replicas split the messages; empty: every replica gets all.")
    mqtt_client_id: str = setting(
        "", COLLECTOR,
        "MQTT client id, one per replica, for a persistent session; empty: a clean session.")

    # --- bigdata ---
    osm: str = setting(
        "", BIGDATA,
        "OpenStreetMap file (.osm/.osm.pbf) of the region; tti run without it generates the "
        "demo city; the warning service indexes its administrative boundaries as districts.",
        also=(SIMULATOR, WARNING))
    gtfs: str = setting(
        "", BIGDATA, "GTFS static feed (.zip) imported at startup (tti run: the demo city's).")
    speed_window_s: float = setting(
        60.0, BIGDATA, "Length of one segment-speed window, in seconds.", also=(WARNING,))
    speed_history_days: int = setting(
        90, BIGDATA,
        "Days of segment speed history kept; older whole days (Beijing days) are dropped "
        "hourly; 0 also means 90; the profiles read the last 28.")
    geofence_tokens: tuple[str, ...] = setting(
        (), BIGDATA,
        "Bearer tokens that may create, replace and delete geofences through bigdata's API "
        "(PUT/DELETE /v1/geofences/{id}); empty: those writes are refused (403).")

    # --- warning ---
    lease_ttl_s: float = setting(
        15.0, WARNING,
        "A standby warning replica takes over this many seconds (plus a poll) after the "
        "active one stops renewing its lease.")
    speeding_tolerance_kmh: float = setting(
        5.0, WARNING,
        "Speeding rule: km/h over the binding limit that a 两客一危 vehicle may go before it "
        "counts as speeding.")
    speeding_tolerance_s: float = setting(
        30.0, WARNING,
        "Speeding rule: seconds a vehicle must stay over limit + tolerance before an alarm is "
        "raised (and within it before the alarm ends).")
    match_min_confidence: float = setting(
        0.6, WARNING,
        "Matching confidence (0-1) a fix needs before the speeding and geofence rules take "
        "its road's limit or fence as certain (elevated roads over their ground roads).")
    coach_routes: str = setting(
        "", WARNING,
        "CSV of long-distance coach routes, route_id,length_km: routes under 100 km are "
        "exempt from the 02:00-05:00 rule; empty: no route is known (none exempt).",
        show_default=False)
    index_areas: str = setting(
        "", WARNING,
        "GeoJSON FeatureCollection of the districts and corridors of the traffic index "
        "(properties kind, id, name, name_en, road_names, way_ids, segment_ids; a Polygon or "
        "null geometry); empty: none beyond the map's own.", show_default=False)
    driver_text_ttl_s: float = setting(
        600.0, WARNING,
        "A JT/T 808 text to the driver about an alarm that cannot be delivered within this "
        "many seconds expires (it would be stale).")

    # --- publisher ---
    warning_url: str = setting(
        "http://127.0.0.1:8080/warning", PUBLISHER,
        "Base URL of the warning service's HTTP API (routes, index, incidents).")
    public_id_key: str = setting(
        "", PUBLISHER,
        "Secret key of the public vehicle labels (HMAC of the vehicle id, so a terminal's "
        "phone number cannot be recovered from them); give every publisher replica the same "
        "one. Empty: a random key per process (labels change at restart).")
    wechat_token: str = setting(
        "", PUBLISHER,
        "Token of the WeChat official account's callback (/wechat/callback signatures); "
        "empty: the WeChat channel is off.", secret=True)
    wechat_app_id: str = setting(
        "", PUBLISHER, "AppID of the WeChat official account (checked in AES mode).")
    wechat_app_secret: str = setting(
        "", PUBLISHER,
        "AppSecret of the WeChat official account, for the access token (customer-service "
        "and template messages); empty: passive replies only.", secret=True)
    wechat_aes_key: str = setting(
        "", PUBLISHER,
        "EncodingAESKey (43 characters) of the WeChat callback's safe mode; empty: plain "
        "mode.", secret=True)
    wechat_api_url: str = setting(
        "https://api.weixin.qq.com", PUBLISHER, "Base URL of the WeChat API.")
    wechat_template_id: str = setting(
        "", PUBLISHER,
        "Template message id for warnings to subscribers (fields first, keyword1-3, remark); "
        "empty: no template messages.")
    public_url: str = setting(
        "", PUBLISHER,
        "Public base URL of the citizen page (https://…), for links in WeChat messages; "
        "empty: messages carry no link.")
    weibo_access_token: str = setting(
        "", PUBLISHER,
        "Access token of the Weibo account that posts significant warnings and their "
        "clearance (statuses/share); empty: the Weibo channel is off.", secret=True)
    weibo_api_url: str = setting(
        "https://api.weibo.com", PUBLISHER, "Base URL of the Weibo API.")
    weibo_link_url: str = setting(
        "", PUBLISHER,
        "Link every Weibo post carries, on the domain bound to the Weibo app ({warning_id} "
        "is replaced by the warning's id); empty: TTI_PUBLIC_URL.")
    weibo_min_interval_s: float = setting(
        30.0, PUBLISHER,
        "At most one request to Weibo per this many seconds, across the publisher replicas.")

    # --- simulator ---
    demo_size: int = setting(
        1, SIMULATOR,
        "Size of the generated demo city: about 2,100 directed road segments per unit.")
    sim_vehicles: int = setting(120, SIMULATOR, "Simulated vehicles (also --vehicles).")
    sim_interval_s: float = setting(
        5.0, SIMULATOR, "Seconds between two position reports of one simulated vehicle.")
    sim_seed: int = setting(1, SIMULATOR, "Random seed of the simulated fleet.")
    sim_incidents: tuple[str, ...] = setting(
        (), SIMULATOR,
        "Slowdowns to simulate, SEGMENT_ID@START+DURATION:SPEED_KMH or demo (also --incident).")
    sim_truth: str = setting(
        "", SIMULATOR,
        "JSON-lines file of the fleet's true positions (accuracy checks); empty: "
        "sim/truth.jsonl under TTI_VAR_DIR.")
    sim_host: str = setting(
        "127.0.0.1", SIMULATOR, "Host of the collector's JT/T 808 gateway the fleet connects to.")
    sim_noise_m: float = setting(
        5.0, SIMULATOR, "Standard deviation of the simulated GPS noise, in metres.")

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

    def region_key(self, osm: str | None = None) -> str:
        """Name of the region ``osm`` (default: TTI_OSM) covers, for its folder under var_dir.

        ``demo-<size>`` for the generated demo city; for a real map the file's name and a digest
        of its absolute path (``osm-wuhan-1f3a9c02``), so two maps never share a folder and
        an updated file of the same region keeps its data.
        """
        osm = self.osm if osm is None else osm
        if not osm:
            return f"demo-{self.demo_size}"
        path = Path(osm).resolve()
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name.split(".")[0]).strip("-") or "map"
        return f"osm-{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"

    def region_db_url(self, osm: str | None = None) -> str:
        """The embedded database of one region: ``sqlite:///<var_dir>/<region_key>/tti.db``."""
        return f"sqlite:///{self.var_path / self.region_key(osm) / 'tti.db'}"

    def production_problems(self, service: str) -> list[str]:
        """What makes these settings unsafe for ``tti serve <service>``, one sentence each.

        Production refuses to start on any of them; each names the setting to change.
        """
        problems: list[str] = []
        if service == COLLECTOR:
            if not self.sensor_tokens and not self.allow_open_sensors:
                problems.append("TTI_SENSOR_TOKENS is empty: sensors could post without "
                                "credentials; set it, or TTI_ALLOW_OPEN_SENSORS=true to allow that")
            if self.jt808_open_registration and not self.allow_open_registration:
                problems.append("TTI_JT808_OPEN_REGISTRATION is true: any terminal could "
                                "register; set it to false, or TTI_ALLOW_OPEN_REGISTRATION=true "
                                "to allow that")
        return problems


def setting_group(f: dataclasses.Field[Any]) -> str:
    """The group a Config field belongs to (``general`` when it declares none)."""
    return str(f.metadata.get("group", GENERAL))


def setting_help(f: dataclasses.Field[Any]) -> str:
    """The field's sentence of help (empty when it declares none)."""
    return str(f.metadata.get("help", ""))


def settings_for(groups: Sequence[str]) -> list[dataclasses.Field[Any]]:
    """Config fields a command of these groups reads: their own, or naming them in ``also``."""
    wanted = set(groups)
    return [f for f in dataclasses.fields(Config)
            if setting_group(f) in wanted or wanted & set(f.metadata.get("also", ()))]


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
    if not 1 <= cfg.bus_replicas <= 5:
        raise ConfigError("TTI_BUS_REPLICAS must be 1 to 5 (JetStream's limit)")
    if cfg.speed_history_days < 0:
        raise ConfigError("TTI_SPEED_HISTORY_DAYS must be 0 (the default, 90) or more")
    if cfg.partitions < 1 or cfg.speed_window_s <= 0:
        raise ConfigError("TTI_PARTITIONS and TTI_SPEED_WINDOW_S must be positive")
    cfg.make_clock()  # a bad TTI_CLOCK_RATE or TTI_CLOCK_START fails here, with its name
    return cfg

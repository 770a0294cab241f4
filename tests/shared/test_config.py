"""Configuration from TTI_* variables: types, defaults, partitions per replica, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.config import GROUPS, Config, load_config, setting_group, setting_help, settings_for
from shared.errors import ConfigError


def test_defaults_work_for_the_embedded_run() -> None:
    cfg = load_config({})
    assert cfg.bus_url == "memory://" and cfg.db_url.startswith("sqlite:///")
    assert cfg.http_port == 8080 and cfg.jt808_port == 6808 and cfg.partitions == 16


def test_environment_is_typed() -> None:
    cfg = load_config({"TTI_SPEED_WINDOW_S": "5", "TTI_PARTITIONS": "8",
                       "TTI_JT808_OPEN_REGISTRATION": "false",
                       "TTI_SIM_INCIDENTS": "demo, 1:2:3@0+60:5"})
    assert cfg.speed_window_s == 5.0 and cfg.partitions == 8
    assert cfg.jt808_open_registration is False
    assert cfg.sim_incidents == ("demo", "1:2:3@0+60:5")


def test_overrides_win_over_environment() -> None:
    assert load_config({"TTI_HTTP_PORT": "9000"}, http_port=9001).http_port == 9001


@pytest.mark.parametrize("env", [{"TTI_PARTITIONS": "many"}, {"TTI_REPLICA_INDEX": "2"},
                                 {"TTI_SPEED_WINDOW_S": "0"},
                                 {"TTI_JT808_OPEN_REGISTRATION": "perhaps"}])
def test_bad_settings_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(env)


def test_replicas_split_partitions_without_overlap() -> None:
    owned = [Config(partitions=16, replica_index=i, replica_count=3).owned_partitions()
             for i in range(3)]
    assert sorted(p for ps in owned for p in ps) == list(range(16))
    assert owned[1] == [1, 4, 7, 10, 13]


def test_listeners_are_closed_by_default() -> None:
    cfg = load_config({})
    assert cfg.http_host == "127.0.0.1" and cfg.jt808_host == "127.0.0.1"


def test_every_setting_has_a_group_and_one_sentence_of_help() -> None:
    for f in dataclasses.fields(Config):
        assert setting_group(f) in GROUPS, f.name
        text = setting_help(f)
        assert text and text.endswith(".") and "\n" not in text, f.name


def test_serve_settings_are_the_service_and_general_ones() -> None:
    names = {f.name for f in settings_for(["general", "collector"])}
    assert {"bus_url", "http_port", "jt808_port", "sensor_tokens"} <= names
    assert not any(n.startswith("sim_") for n in names)
    # speed_window_s belongs to bigdata, and the warning service reads it too.
    assert "speed_window_s" in {f.name for f in settings_for(["general", "warning"])}


def test_production_collector_needs_tokens_and_closed_registration() -> None:
    problems = Config().production_problems("collector")
    assert len(problems) == 2
    assert problems[0].startswith("TTI_SENSOR_TOKENS is empty") and "TTI_ALLOW_OPEN_SENSORS" in \
        problems[0]
    assert problems[1].startswith("TTI_JT808_OPEN_REGISTRATION") and \
        "TTI_ALLOW_OPEN_REGISTRATION" in problems[1]
    assert Config(sensor_tokens=("s3cret",), jt808_open_registration=False
                  ).production_problems("collector") == []
    allowed = load_config({"TTI_ALLOW_OPEN_SENSORS": "true", "TTI_ALLOW_OPEN_REGISTRATION": "1"})
    assert allowed.production_problems("collector") == []
    assert Config().production_problems("bigdata") == []


def test_each_region_has_its_own_embedded_database(tmp_path: Path) -> None:
    cfg = Config(var_dir=str(tmp_path))
    assert cfg.region_db_url() == f"sqlite:///{tmp_path}/demo-1/tti.db"
    assert Config(var_dir=str(tmp_path), demo_size=4).region_key() == "demo-4"
    wuhan = cfg.region_key(str(tmp_path / "a" / "wuhan.osm.pbf"))
    assert wuhan.startswith("osm-wuhan-")
    assert wuhan != cfg.region_key(str(tmp_path / "b" / "wuhan.osm.pbf"))
    assert cfg.replace(osm=str(tmp_path / "a" / "wuhan.osm.pbf")).region_key() == wuhan

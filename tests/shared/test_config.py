"""Configuration from TTI_* variables: types, defaults, partitions per replica, clear errors."""

from __future__ import annotations

import pytest

from shared.config import Config, load_config
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

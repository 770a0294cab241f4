"""The ``tti`` command line: help grouped by service, production refusals, one line per failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services import cli
from shared.config import GROUPS

TTI = str(Path(sys.executable).with_name("tti"))


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_run_help_shows_every_group_with_a_sentence_per_setting(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["run"], capsys)
    for title in GROUPS.values():
        assert f"\n{title}:\n" in out
    flat = " ".join(out.split())
    assert "--http-port N HTTP port (API, web page" in flat
    assert "[TTI_HTTP_PORT, default 8080]" in flat
    assert "--sim-vehicles" in out and "--incident" in out and "--sensor-tokens" in out
    # The simulator's settings come under the simulator's heading.
    assert out.index("--sim-vehicles") > out.index(GROUPS["simulator"])


def test_serve_collector_help_shows_general_and_collector_settings_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["serve", "collector"], capsys)
    assert GROUPS["general"] in out and GROUPS["collector"] in out
    assert GROUPS["simulator"] not in out and GROUPS["warning"] not in out
    assert "--sensor-tokens" in out and "--allow-open-sensors" in out and "--bus-url" in out
    assert "--sim-" not in out and "--lease-ttl-s" not in out and "--demo-size" not in out
    warning = _help(["serve", "warning"], capsys)
    assert "--lease-ttl-s" in warning and "--speed-window-s" in warning
    assert "--jt808-port" not in warning


def test_settings_of_another_service_are_not_flags_of_serve() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "collector", "--sim-vehicles", "3"])


def test_run_keeps_each_region_in_its_own_database(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTI_DB_URL", raising=False)
    parse = cli.build_parser().parse_args
    demo = cli._config_from_args(parse(["run", "--var-dir", str(tmp_path)]), region_db=True)
    assert demo.db_url == f"sqlite:///{tmp_path}/demo-1/tti.db"
    osm = str(tmp_path / "wuhan.osm.pbf")
    real = cli._config_from_args(parse(["run", "--var-dir", str(tmp_path), "--osm", osm]),
                                 region_db=True)
    assert real.db_url != demo.db_url and "/osm-wuhan-" in real.db_url
    # An explicit setting wins, as a flag or a variable.
    explicit = cli._config_from_args(parse(["run", "--db-url", "sqlite:///x.db"]),
                                     region_db=True)
    assert explicit.db_url == "sqlite:///x.db"
    monkeypatch.setenv("TTI_DB_URL", "sqlite:///y.db")
    assert cli._config_from_args(parse(["run"]), region_db=True).db_url == "sqlite:///y.db"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTI_")}
    return {**env, "TTI_VAR_DIR": str(tmp_path / "var"), "TTI_LOG_FORMAT": "text",
            "TTI_DB_URL": f"sqlite:///{tmp_path}/tti.db", **extra}


def test_serve_collector_refuses_open_inputs_naming_the_setting(tmp_path: Path) -> None:
    done = subprocess.run([TTI, "serve", "collector"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines == [
        "tti: error: TTI_SENSOR_TOKENS is empty: sensors could post without credentials; "
        "set it, or TTI_ALLOW_OPEN_SENSORS=true to allow that",
        "tti: error: TTI_JT808_OPEN_REGISTRATION is true: any terminal could register; set it "
        "to false, or TTI_ALLOW_OPEN_REGISTRATION=true to allow that"]


def _taken_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_http_port_in_use_is_one_line(tmp_path: Path) -> None:
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([TTI, "serve", "publisher", "--http-port", str(port)],
                              env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"tti: error: 127.0.0.1:{port} is already in use (another tti?); choose another port "
        "with TTI_HTTP_PORT"]


def test_jt808_port_in_use_is_the_last_line_and_nothing_leaks(tmp_path: Path) -> None:
    # The collector binds JT/T 808 during startup: what it opened before is closed again.
    with _taken_port() as taken, socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        http_port = free.getsockname()[1]
        free.close()
        env = _env(tmp_path, TTI_SENSOR_TOKENS="t0ken", TTI_JT808_OPEN_REGISTRATION="false",
                   TTI_JT808_PORT=str(taken.getsockname()[1]), TTI_HTTP_PORT=str(http_port))
        done = subprocess.run([TTI, "serve", "collector"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("tti: error: ") and "address already in use" in lines[-1]
    assert "TTI_JT808_PORT" in lines[-1]
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr
    assert not any(" ERROR " in line for line in lines)

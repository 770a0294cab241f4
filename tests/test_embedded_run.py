"""The foundation's acceptance scenario: ``tti run`` end to end, as a user starts it.

One real process (the console script), real TCP terminals from the built-in simulator, the real
HTTP API. Short speed windows keep it quick; nothing here mocks a service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError

import orjson
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _wait(what: str, fn: object, timeout: float, proc: subprocess.Popen[bytes]) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tti run exited with {proc.returncode} while waiting for {what}")
        try:
            last = fn()  # type: ignore[operator]
        except OSError:
            last = None
        if last:
            return last
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


class Embedded:
    """A running ``tti run`` and its addresses."""

    def __init__(self, proc: subprocess.Popen[bytes], http: int, jt808: int, log: Path) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{http}"
        self.jt808 = jt808
        self.log = log


def start_embedded(work: Path, *args: str) -> Iterator[Embedded]:
    """``tti run`` in ``work`` on free ports with ``args``; stopped (SIGTERM) afterwards."""
    http, jt808 = _free_port(), _free_port()
    tti = Path(sys.executable).with_name("tti")
    env = {**os.environ, "TTI_LOG_FORMAT": "text"}
    log = work / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(tti), "run", "--http-port", str(http), "--jt808-port", str(jt808),
             "--var-dir", str(work / "var"), *args],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    inst = Embedded(proc, http, jt808, log)
    try:
        yield inst
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    yield from start_embedded(
        tmp_path_factory.mktemp("embedded"), "--speed-window-s", "5", "--sim-interval-s", "1",
        "--vehicles", "300", "--incident", "demo@4+300:4")


def test_ready_within_60_seconds(embedded: Embedded) -> None:
    _wait("/readyz 200", lambda: _get(embedded.base + "/readyz")[0] == 200, 60, embedded.proc)
    status, _ = _get(embedded.base + "/healthz")
    assert status == 200


def test_roads_carry_probe_speeds_from_simulated_terminals(embedded: Embedded) -> None:
    def probe_roads() -> list[dict[str, object]]:
        status, body = _get(embedded.base + "/api/v1/roads")
        assert status == 200
        return [f["properties"] for f in body["features"]  # type: ignore[index]
                if f["properties"]["source"] == "probe"]

    live = _wait("segments with probe speeds", probe_roads, 60, embedded.proc)
    for p in live:  # type: ignore[attr-defined]
        assert p["sample_count"] >= 1 and p["observed_at"] and p["speed_kmh"] is not None
        assert 1 <= p["level"] <= 5
    _, body = _get(embedded.base + "/api/v1/roads")
    silent = [f for f in body["features"] if f["properties"]["source"] == "none"]  # type: ignore
    assert all(f["properties"]["speed_kmh"] is None and f["properties"]["sample_count"] == 0
               for f in silent), "a segment without data must not pretend free flow"


def test_injected_incident_becomes_severe_level_and_warning(embedded: Embedded) -> None:
    _, sim = _get(embedded.base + "/api/v1/sim")
    segment = sim["demo_incident_segment"]  # type: ignore[index]

    def warned() -> object:
        _, body = _get(embedded.base + "/api/v1/warnings")
        return [w for w in body["warnings"]  # type: ignore[index]
                if segment in w["segment_ids"]]

    warnings = _wait("a warning on the incident segment", warned, 150, embedded.proc)
    w = warnings[0]  # type: ignore[index]
    assert w["active"] and w["status"] in ("raised", "updated")
    assert w["severity"] == "Severe" and w["msg_type"] in ("Alert", "Update")
    assert w["area"]["polygon"] and w["headline"]

    def incident() -> object:
        # The queue ends at the slowed segment with free road past it: a suspected incident,
        # once the road past it has a live window (at once, or at a later update).
        found = [x for x in warned() if x["kind"] == "incident"]  # type: ignore[attr-defined]
        return found[0] if found and found[0]["detour"] else None

    w = _wait("an incident warning with its detour", incident, 150, embedded.proc)
    assert w["cause"] == "suspected_incident" and w["warning_id"] == warnings[0]["warning_id"]
    assert len(warned()) == 1  # type: ignore[arg-type]
    assert w["detour"]["segment_ids"] and w["impact"] is not None  # type: ignore[index]
    _, body = _get(embedded.base + "/api/v1/incidents")
    assert [i["warning_id"] for i in body["incidents"]  # type: ignore[index]
            if segment in i["segment_ids"]] == [w["warning_id"]]  # type: ignore[index]

    def severe() -> object:
        # Road status and warnings reach the publisher on two subscriptions: the status may
        # arrive a moment after the warning.
        status, road = _get(f"{embedded.base}/api/v1/roads/{segment}")
        assert status == 200
        level = road["properties"]["level"]  # type: ignore[index]
        return level is not None and level >= 4

    _wait("the incident segment at level 4 or 5", severe, 60, embedded.proc)


def test_incident_can_be_posted_while_running(embedded: Embedded) -> None:
    req = urllib.request.Request(
        embedded.base + "/api/v1/sim/incidents", method="POST",
        data=orjson.dumps({"segment_id": "no-such-segment", "duration_s": 60, "speed_kmh": 5}),
        headers={"Content-Type": "application/json"})
    with pytest.raises(HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
    assert orjson.loads(err.value.read())["error"]["code"] == "bad_request"
    _, sim = _get(embedded.base + "/api/v1/sim")
    req = urllib.request.Request(
        embedded.base + "/api/v1/sim/incidents", method="POST",
        data=orjson.dumps({"segment_id": sim["demo_incident_segment"],  # type: ignore[index]
                           "duration_s": 30, "speed_kmh": 5}),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201


def test_parking_free_spaces_posted_to_the_collector_are_served(embedded: Embedded) -> None:
    # A parking guidance system reports free spaces; the geodatabase serves them as live state.
    _, region = _get(embedded.base + "/bigdata/v1/region")
    w, s, e, n = region["bbox"]  # type: ignore[index]
    status, near = _get(embedded.base + f"/bigdata/v1/features/nearest?lon={(w + e) / 2}"
                        f"&lat={(s + n) / 2}&kinds=parking&max_distance_m=5000")
    assert status == 200, near
    lot = near["features"][0]  # type: ignore[index]
    assert lot["attrs"]["capacity"] > 0
    url = f"/collector/api/v1/features/parking/{lot['id']}/state"
    req = urllib.request.Request(embedded.base + url, method="POST",
                                 data=orjson.dumps({"values": {"free_spaces": 17}}),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
    one = f"/bigdata/v1/features/parking/{lot['id']}"
    body = _wait("the live state", lambda: (lambda b: b if b[1].get("live") else None)(
        _get(embedded.base + one)), 20, embedded.proc)
    assert body[1]["live"] == {"free_spaces": 17}  # type: ignore[index]
    # More free spaces than the lot has is refused at the edge, with the reason, and changes
    # nothing.
    req = urllib.request.Request(embedded.base + url, method="POST",
                                 data=orjson.dumps({"values": {"free_spaces": 10_000}}),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 422
    assert orjson.loads(refused.value.read())["error"]["code"] == "implausible_value"
    assert _get(embedded.base + one)[1]["live"] == {"free_spaces": 17}  # type: ignore[index]


def test_garbage_on_jt808_port_closes_only_that_connection(embedded: Embedded) -> None:
    _, before = _get(embedded.base + "/api/v1/sim")
    with socket.create_connection(("127.0.0.1", embedded.jt808), timeout=5) as s:
        s.sendall(os.urandom(4096) + b"\x7e" + os.urandom(3000) + b"\x7e")
        s.settimeout(10)
        while s.recv(4096):  # the gateway closes it: recv returns b""
            pass
    time.sleep(3)
    _, after = _get(embedded.base + "/api/v1/sim")
    assert after["reports_acked"] > before["reports_acked"]  # type: ignore[index]
    assert after["connected"] == before["connected"]  # type: ignore[index]
    assert _get(embedded.base + "/readyz")[0] == 200


@pytest.mark.parametrize("query", ["bbox=1,2,3", "bbox=a,b,c,d", "bbox=10,10,0,0",
                                   "bbox=0,0,1,nan", "min_level=9"])
def test_bad_query_gets_400_json(embedded: Embedded, query: str) -> None:
    status, body = _get(f"{embedded.base}/api/v1/roads?{query}")
    assert status == 400
    assert body["error"]["code"] == "bad_request"  # type: ignore[index]


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) listening on TCP ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, _, hexport = local.partition(":")
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    found.add(addr)
    return found


def test_embedded_run_listens_on_loopback_only(embedded: Embedded) -> None:
    _wait("/readyz 200", lambda: _get(embedded.base + "/readyz")[0] == 200, 60, embedded.proc)
    http = int(embedded.base.rsplit(":", 1)[1])
    for port in (http, embedded.jt808):
        # 127.0.0.1 (IPv4, little-endian hex) or ::1; never 0.0.0.0 / :: (every interface).
        assert _listening(port) and _listening(port) <= {
            "0100007F", "00000000000000000000000001000000"}, (port, _listening(port))


def test_openapi_and_web_page_are_served(embedded: Embedded) -> None:
    status, spec = _get(embedded.base + "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")  # type: ignore[index]
    with urllib.request.urlopen(embedded.base + "/", timeout=10) as resp:
        html = resp.read().decode()
    assert '<div id="map">' in html and "/static/vendor/leaflet/leaflet.js" in html
    with urllib.request.urlopen(embedded.base + "/static/vendor/leaflet/leaflet.js",
                                timeout=10) as resp:
        assert resp.status == 200 and b"Leaflet" in resp.read(2000)


def test_sigterm_drains_and_exits_cleanly(embedded: Embedded) -> None:
    embedded.proc.send_signal(signal.SIGTERM)
    assert embedded.proc.wait(30) == 0, embedded.log.read_text()[-3000:]


def test_run_on_real_osm_file(tmp_path: Path) -> None:
    """``tti run --osm`` on the real Wuhan extract: ready, and roads get probe speeds."""
    from tests.conftest import shared_dir

    osm = shared_dir() / "data" / "osm" / "wuhan_optics_valley.osm"
    http, jt808 = _free_port(), _free_port()
    tti = Path(sys.executable).with_name("tti")
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(tti), "run", "--osm", str(osm), "--http-port", str(http),
             "--jt808-port", str(jt808), "--var-dir", str(tmp_path / "var"),
             "--speed-window-s", "3", "--sim-interval-s", "1", "--vehicles", "40"],
            cwd=tmp_path, env={**os.environ, "TTI_LOG_FORMAT": "text"}, stdout=out,
            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        _wait("/readyz 200", lambda: _get(base + "/readyz")[0] == 200, 60, proc)
        _, region = _get(base + "/api/v1/region")
        assert region["segment_count"] > 400  # type: ignore[index]

        def probe() -> object:
            _, body = _get(base + "/api/v1/roads")
            return [f for f in body["features"]  # type: ignore[index]
                    if f["properties"]["source"] == "probe"]

        live = _wait("probe speeds on the Wuhan network", probe, 60, proc)
        names = {f["properties"]["name"] for f in live}  # type: ignore[attr-defined]
        assert names - {None}, "real roads carry their OSM names"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]

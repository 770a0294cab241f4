"""Detectors over MQTT against the real Mosquitto: readings arrive, garbage is counted, reconnects.

Each test uses its own topic prefix and shared-subscription group, so tests (and other users of
the broker) never see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import orjson
import pytest
from prometheus_client import REGISTRY

from services.collector.detectors import (
    DetectorIntake,
    MqttDetectorInput,
    MqttTarget,
    RateLimitedLog,
    parse_mqtt_url,
)
from services.collector.feature_state import FeatureCatalogueView
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.errors import ConfigError
from shared.events import (
    DETECTED_EVENT,
    DETECTOR_READING,
    FEATURE_KINDS,
    FEATURE_STATE,
    CatalogueEntry,
    DetectedEvent,
    DetectorReading,
    FeatureCatalogue,
    FeatureState,
)
from tests.conftest import MQTT_HOST, MQTT_PORT, FlakyBus, require_server

pytestmark = pytest.mark.integration


def iso(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


def reading(count: int = 9) -> dict[str, Any]:
    return {"observed_at": iso(-20), "interval_s": 30, "vehicle_count": count,
            "mean_speed_kmh": 37.0}


class Sink:
    """Detector records delivered on a real MemoryBus."""

    def __init__(self) -> None:
        self.readings: list[DetectorReading] = []
        self.events: list[DetectedEvent] = []

    async def on_reading(self, env: Envelope[DetectorReading]) -> None:
        self.readings.append(env.payload)

    async def on_event(self, env: Envelope[DetectedEvent]) -> None:
        self.events.append(env.payload)


async def wait_for(what: str, cond: Callable[[], object], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def rejected(reason: str, record: str = "reading") -> float:
    return REGISTRY.get_sample_value("tti_detector_rejected_total", {
        "transport": "mqtt", "record": record, "reason": reason}) or 0.0


@pytest.fixture
def broker() -> tuple[str, int]:
    require_server(MQTT_HOST, MQTT_PORT, "Mosquitto")
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
async def bus_sink() -> AsyncIterator[tuple[FlakyBus, Sink]]:
    bus = FlakyBus()
    await bus.start()
    sink = Sink()
    await bus.subscribe(DETECTOR_READING, sink.on_reading, durable="t")
    await bus.subscribe(DETECTED_EVENT, sink.on_event, durable="t")
    yield bus, sink
    await bus.close()


@contextlib.asynccontextmanager
async def running(inp: MqttDetectorInput) -> AsyncIterator[MqttDetectorInput]:
    await inp.start()
    try:
        await wait_for("MQTT subscription", lambda: inp.connected)
        yield inp
    finally:
        await inp.stop()


async def test_a_reading_published_over_mqtt_arrives_on_the_bus(
        broker: tuple[str, int], bus_sink: tuple[FlakyBus, Sink], unique_name: str) -> None:
    bus, sink = bus_sink
    host, port = broker
    prefix = f"test/{unique_name}/detectors"
    inp = MqttDetectorInput(DetectorIntake(bus), MqttTarget(host, port), prefix=prefix,
                            share_group=unique_name)
    async with running(inp):
        ready, detail = inp.readiness()
        assert ready and "connected" in detail
        async with aiomqtt.Client(host, port) as pub:
            await pub.publish(f"{prefix}/loop-07/readings", orjson.dumps(reading(12)), qos=1)
            await pub.publish(f"{prefix}/cam-3/events", orjson.dumps(
                {"kind": "accident", "observed_at": iso(-2), "event_id": "a-1"}), qos=1)
        await wait_for("reading and event", lambda: sink.readings and sink.events)
    [r] = sink.readings
    assert (r.detector_id, r.vehicle_count, r.mean_speed_kmh, r.interval_s, r.source) == (
        "loop-07", 12, 37.0, 30.0, "mqtt")
    [e] = sink.events
    assert (e.detector_id, e.kind, e.event_id, e.source) == ("cam-3", "accident", "a-1", "mqtt")


async def test_garbage_is_counted_and_the_next_good_message_still_arrives(
        broker: tuple[str, int], bus_sink: tuple[FlakyBus, Sink], unique_name: str) -> None:
    bus, sink = bus_sink
    host, port = broker
    prefix = f"test/{unique_name}/detectors"
    inp = MqttDetectorInput(DetectorIntake(bus, max_body=4096), MqttTarget(host, port),
                            prefix=prefix, share_group=unique_name)
    reasons = ("bad_json", "bad_time", "too_large", "retained", "no_measurement",
               "bad_detector_id")
    before = {r: rejected(r) for r in reasons}
    before_kind = rejected("bad_kind", "event")
    async with running(inp):
        async with aiomqtt.Client(host, port) as pub:
            topic = f"{prefix}/loop-1/readings"
            await pub.publish(topic, b"\x00\x01 not json", qos=1)
            await pub.publish(topic, orjson.dumps({**reading(), "observed_at": "noon"}), qos=1)
            await pub.publish(topic, b"[" + b" " * 5000 + b"]", qos=1)
            await pub.publish(topic, orjson.dumps([reading(1), {"observed_at": iso(-1),
                                                                "interval_s": 60}]), qos=1)
            await pub.publish(f"{prefix}/bad id!/readings", orjson.dumps(reading()), qos=1)
            await pub.publish(f"{prefix}/cam-1/events", orjson.dumps(
                {"kind": "ufo", "observed_at": iso()}), qos=1)
            await pub.publish(f"{prefix}/loop-1/readings", orjson.dumps(reading(5)), qos=1)
        await wait_for("the good readings", lambda: len(sink.readings) >= 2)
        # Published with the retain flag: live subscribers get it as a normal message…
        async with aiomqtt.Client(host, port) as pub:
            await pub.publish(f"{prefix}/loop-2/readings", orjson.dumps(reading(77)), qos=1,
                              retain=True)
        await wait_for("the live copy", lambda: len(sink.readings) >= 3)
        # …but a plain (non-shared) subscription made later gets the retained copy, which
        # every resubscription would replay: skipped, not published. (Brokers never send
        # retained messages to shared subscriptions.)
        inp2 = MqttDetectorInput(DetectorIntake(bus), MqttTarget(host, port), prefix=prefix,
                                 share_group="")
        async with running(inp2):
            await wait_for("the retained message", lambda: rejected("retained") > before[
                "retained"])
    async with aiomqtt.Client(host, port) as pub:  # clear the retained message
        await pub.publish(f"{prefix}/loop-2/readings", b"", qos=1, retain=True)
    assert sorted(r.vehicle_count or 0 for r in sink.readings) == [1, 5, 77]
    assert rejected("retained") == before["retained"] + 1
    for reason, n in {"bad_json": 1, "bad_time": 1, "too_large": 1, "no_measurement": 1,
                      "bad_detector_id": 1}.items():
        assert rejected(reason) == before[reason] + n, reason
    assert rejected("bad_kind", "event") == before_kind + 1
    assert inp.messages >= 7


class TcpProxy:
    """A TCP forwarder in front of the broker that the test can cut and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every connection (the broker 'goes away')."""
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        tasks = {asyncio.create_task(pipe(reader, up_w)), asyncio.create_task(pipe(up_r, writer))}
        self._tasks |= tasks
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks -= tasks
        self._writers -= {writer, up_w}


async def test_the_input_reconnects_when_the_broker_goes_away(
        broker: tuple[str, int], bus_sink: tuple[FlakyBus, Sink], unique_name: str,
        caplog: pytest.LogCaptureFixture) -> None:
    bus, sink = bus_sink
    host, port = broker
    proxy = TcpProxy((host, port))
    await proxy.start()
    prefix = f"test/{unique_name}/detectors"
    inp = MqttDetectorInput(DetectorIntake(bus), MqttTarget("127.0.0.1", proxy.port),
                            prefix=prefix, share_group=unique_name, max_backoff_s=0.3)
    caplog.set_level(logging.INFO, logger="tti.collector.detectors")
    async with running(inp):
        await proxy.cut()
        await wait_for("the input to notice", lambda: not inp.connected)
        await asyncio.sleep(1.0)  # several failed reconnects: still one warning
        ready, detail = inp.readiness()
        assert ready and "disconnected" in detail  # an outage after priming is detail only
        await proxy.start()  # same port
        await wait_for("reconnection", lambda: inp.connected)
        async with aiomqtt.Client(host, port) as pub:
            await pub.publish(f"{prefix}/loop-9/readings", orjson.dumps(reading(3)), qos=1)
        await wait_for("a reading after reconnecting", lambda: sink.readings)
    await proxy.cut()
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, m in msgs if "down" in m] == [logging.WARNING]
    assert [lvl for lvl, m in msgs if "reconnected" in m] == [logging.INFO]
    assert sink.readings[0].detector_id == "loop-9"


# ---- without a broker -----------------------------------------------------------------------


async def test_records_wait_for_the_bus_instead_of_being_dropped(
        bus_sink: tuple[FlakyBus, Sink]) -> None:
    bus, sink = bus_sink
    inp = MqttDetectorInput(DetectorIntake(bus), MqttTarget("127.0.0.1", 1))
    bus.down = True
    task = asyncio.create_task(inp.handle("tti/detectors/d1/readings",
                                          orjson.dumps(reading(4))))
    await asyncio.sleep(0.8)
    assert not task.done()  # held (and, on a broker, not acknowledged)
    bus.down = False
    result = await asyncio.wait_for(task, 15)
    assert result is not None and result.accepted == 1
    await wait_for("the reading", lambda: sink.readings)


async def test_topics_that_are_not_ours_are_counted(bus_sink: tuple[FlakyBus, Sink]) -> None:
    bus, _ = bus_sink
    inp = MqttDetectorInput(DetectorIntake(bus), MqttTarget("127.0.0.1", 1))
    before = rejected("bad_topic")
    assert await inp.handle("tti/detectors/d1/x/readings", b"{}") is None
    assert await inp.handle("other/d1/readings", b"{}") is None
    assert rejected("bad_topic") == before + 2


def test_configuration() -> None:
    assert parse_mqtt_url("mqtt://127.0.0.1") == MqttTarget("127.0.0.1", 1883)
    assert parse_mqtt_url("mqtts://u%40x:p%3Aw@broker.example.cn") == MqttTarget(
        "broker.example.cn", 8883, "u@x", "p:w", True)
    for bad in ("http://x", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(ConfigError):
            parse_mqtt_url(bad)
    inp = MqttDetectorInput.from_config(Config(mqtt_url="mqtt://h:1884"),
                                        intake=DetectorIntake(MemoryBus()))
    assert inp.topic_filters() == ["$share/tti-collector/tti/detectors/+/readings",
                                   "$share/tti-collector/tti/detectors/+/events",
                                   "$share/tti-collector/tti/features/+/+/state"]
    plain = MqttDetectorInput(DetectorIntake(MemoryBus()), MqttTarget("h", 1), share_group="",
                              prefix="/x/y/", features_prefix="f/")
    assert plain.topic_filters() == ["x/y/+/readings", "x/y/+/events", "f/+/+/state"]
    with pytest.raises(ConfigError):
        MqttDetectorInput(DetectorIntake(MemoryBus()), MqttTarget("h", 1), prefix="a/#")
    with pytest.raises(ConfigError):
        MqttDetectorInput(DetectorIntake(MemoryBus()), MqttTarget("h", 1), features_prefix="+")
    ready, detail = plain.readiness()
    assert not ready and "not connected" in detail


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    limited = RateLimitedLog(logging.getLogger("tti.test.rl"), 60, monotonic=lambda: t[0])
    caplog.set_level(logging.WARNING, logger="tti.test.rl")
    assert limited.warning("bad_json", "bad %s", 1)
    for i in range(5):
        assert not limited.warning("bad_json", "bad %s", i)
    assert limited.warning("bad_time", "other kind")  # separate keys, separate limits
    t[0] = 61
    assert limited.warning("bad_json", "bad %s", 9)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad 1", "other kind", "bad 9 (5 more like it since the last report)"]


def feature_catalogue() -> FeatureCatalogueView:
    """The catalogue as the collector assembles it from bigdata's chunks."""
    view = FeatureCatalogueView()
    features = {"parking": (CatalogueEntry(feature_id="w7", capacity=40),),
                "weather_station": (CatalogueEntry(feature_id="n3"),)}
    for kind in FEATURE_KINDS:
        view.add(FeatureCatalogue(kind=kind, version=f"v-{kind}", published_at=datetime.now(UTC),
                                  chunk=0, chunks=1, features=features.get(kind, ())))
    return view


def refused(reason: str, kind: str = "parking") -> float:
    return REGISTRY.get_sample_value("tti_feature_state_rejected_total", {
        "transport": "mqtt", "kind": kind, "reason": reason}) or 0.0


async def test_feature_states_over_mqtt_arrive_and_bad_ones_are_counted(
        broker: tuple[str, int], unique_name: str) -> None:
    host, port = broker
    bus = MemoryBus()
    await bus.start()
    got: list[FeatureState] = []

    async def on_state(env: Envelope[FeatureState]) -> None:
        got.append(env.payload)

    await bus.subscribe(FEATURE_STATE, on_state, durable="t")
    before = {("bad_topic", "unknown"): refused("bad_topic", "unknown"),
              ("bad_values", "parking"): refused("bad_values"),
              ("bad_kind", "unknown"): refused("bad_kind", "unknown")}
    prefix = f"test/{unique_name}"
    inp = MqttDetectorInput(DetectorIntake(bus), MqttTarget(host, port),
                            prefix=f"{prefix}/detectors", features_prefix=f"{prefix}/features",
                            share_group=unique_name, catalogue=feature_catalogue())
    assert f"$share/{unique_name}/{prefix}/features/+/+/state" in inp.topic_filters()
    try:
        async with running(inp):
            async with aiomqtt.Client(host, port) as pub:
                await pub.publish(f"{prefix}/features/parking/w7/state", orjson.dumps(
                    {"observed_at": iso(-10), "values": {"free_spaces": 12}}), qos=1)
                # Not a state topic: not subscribed, never delivered.
                await pub.publish(f"{prefix}/features/parking/w7/status", b"{}", qos=1)
                await pub.publish(f"{prefix}/features/parking/w7/state",
                                  orjson.dumps({"values": {"free_spaces": [1]}}), qos=1)
                await pub.publish(f"{prefix}/features/castle/w1/state",
                                  orjson.dumps({"values": {"open": True}}), qos=1)
                await pub.publish(f"{prefix}/features/weather_station/n3/state", orjson.dumps(
                    {"values": {"temperature_c": 3.5, "road_surface": "wet"}}), qos=1)
            await wait_for("two states", lambda: len(got) >= 2)
            await wait_for("two refusals", lambda: sum(
                refused(r, k) - before[(r, k)] for r, k in before) >= 2)
        # A topic under the features prefix that is not <kind>/<id>/state, as a broker with
        # a wider subscription would deliver it: refused, counted.
        assert await inp.handle(f"{prefix}/features/parking/state", b"{}") is None
    finally:
        await bus.close()
    assert [(s.kind, s.feature_id, s.values, s.source) for s in got] == [
        ("parking", "w7", {"free_spaces": 12}, "mqtt"),
        ("weather_station", "n3", {"temperature_c": 3.5, "road_surface": "wet"}, "mqtt")]
    assert {key: refused(*key) - n for key, n in before.items()} == {
        ("bad_topic", "unknown"): 1, ("bad_values", "parking"): 1, ("bad_kind", "unknown"): 1}


async def test_a_refused_feature_state_is_answered_on_rejected_counted_and_logged_once(
        broker: tuple[str, int], unique_name: str, caplog: pytest.LogCaptureFixture) -> None:
    host, port = broker
    bus = MemoryBus()
    await bus.start()
    got: list[FeatureState] = []

    async def on_state(env: Envelope[FeatureState]) -> None:
        got.append(env.payload)

    await bus.subscribe(FEATURE_STATE, on_state, durable="t")
    prefix = f"test/{unique_name}"
    inp = MqttDetectorInput(DetectorIntake(bus), MqttTarget(host, port),
                            prefix=f"{prefix}/detectors", features_prefix=f"{prefix}/features",
                            share_group=unique_name, catalogue=feature_catalogue())
    before = {"implausible_value": refused("implausible_value"),
              "unknown_feature": refused("unknown_feature")}
    answers: list[tuple[str, dict[str, Any]]] = []
    caplog.set_level(logging.INFO, logger="tti.collector")
    try:
        async with running(inp), aiomqtt.Client(host, port) as sub:
            await sub.subscribe(f"{prefix}/features/+/+/state/rejected", qos=1)

            async def listen() -> None:
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    answers.append((message.topic.value, orjson.loads(message.payload)))

            listener = asyncio.create_task(listen())
            async with aiomqtt.Client(host, port) as pub:
                # A misconfigured sensor, sending the same impossible count again and again.
                for _ in range(3):
                    await pub.publish(f"{prefix}/features/parking/w7/state",
                                      orjson.dumps({"values": {"free_spaces": -5}}), qos=1)
                await pub.publish(f"{prefix}/features/parking/w404/state",
                                  orjson.dumps({"values": {"free_spaces": 5}}), qos=1)
                await pub.publish(f"{prefix}/features/parking/w7/state",
                                  orjson.dumps({"values": {"free_spaces": 41}}), qos=1)
                await pub.publish(f"{prefix}/features/parking/w7/state",
                                  orjson.dumps({"values": {"free_spaces": 40}}), qos=1)
                await wait_for("five answers and one state",
                               lambda: len(answers) >= 5 and len(got) >= 1)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    finally:
        await bus.close()
    assert [s.values for s in got] == [{"free_spaces": 40}]
    w7 = f"{prefix}/features/parking/w7/state/rejected"
    assert [(t, a["code"]) for t, a in answers] == [
        (w7, "implausible_value")] * 3 + [
        (f"{prefix}/features/parking/w404/state/rejected", "unknown_feature"),
        (w7, "implausible_value")]
    assert "free_spaces -5 is below 0" in answers[0][1]["reason"]
    assert "capacity of 40" in answers[4][1]["reason"]
    assert datetime.fromisoformat(answers[0][1]["received_at"]).tzinfo is not None
    assert {r: refused(r) - n for r, n in before.items()} == {
        "implausible_value": 4, "unknown_feature": 1}
    refusals = [r for r in caplog.records if "feature state refused" in r.getMessage()]
    # Once per sensor: w7 (four refusals), w404; never at ERROR anywhere.
    assert [r.feature_id for r in refusals] == ["w7", "w404"]  # type: ignore[attr-defined]
    assert {r.levelno for r in refusals} == {logging.WARNING}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("accepted again after 4 refused" in r.getMessage() for r in caplog.records)

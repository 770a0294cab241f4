"""TTI in this process, as ``tti run`` wires it (``services/runtime.py``) without its fleet.

The four services on the memory bus and an embedded SQLite database in the scenario's folder,
serving HTTP and the JT/T 808 gateway on free local ports, on one clock. The harness taps the
bus as one more consumer group: every segment speed, warning and incident TTI publishes is
kept with the clock time it arrived, and so is every bus arrival prediction and stop event.

A detector registry (``detectors``: the CSV ``tti import-detectors`` reads) is imported once the
host is ready, through the geodatabase store bigdata holds (the roads it is checked against are
in it by then), and bigdata reloads its registry at once (``Bigdata.load_detectors``, what its
flush loop does every minute). The warning service reads detector sites from bigdata at start
and every 5 minutes; it needs them for detected events, which the harness does not send. A host
on the database of an earlier one (``fresh=False``) finds the registry there from the start.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.bigdata.app import BIGDATA
from services.bigdata.store.features import DetectorImport, import_detectors_csv
from services.runtime import build_embedded, make_bus
from shared.bus import EventBus
from shared.clock import Clock
from shared.codec import Envelope
from shared.config import Config, load_config
from shared.events import (
    ARRIVAL_PREDICTION,
    BUS_ARRIVAL,
    INCIDENT,
    SEGMENT_SPEED,
    WARNING,
    ArrivalPrediction,
    BusArrival,
    Incident,
    SegmentSpeed,
    Warning,
)
from shared.service import listen_socket, make_runner

__all__ = ["Tap", "TtiHost", "free_port"]


def free_port() -> int:
    """A free local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Tap:
    """What TTI published, each with the clock time it arrived."""

    speeds: list[tuple[datetime, SegmentSpeed]] = field(default_factory=list)
    warnings: list[tuple[datetime, Warning]] = field(default_factory=list)
    incidents: list[tuple[datetime, Incident]] = field(default_factory=list)
    predictions: list[tuple[datetime, ArrivalPrediction]] = field(default_factory=list)
    """``tti.bus.prediction``: what riders were told, from when it was published."""
    stop_events: list[tuple[datetime, BusArrival]] = field(default_factory=list)
    """``tti.bus.arrival``: the arrivals and departures TTI detected."""


class TtiHost:
    """``async with TtiHost(...) as tti``: TTI serving until the block ends."""

    def __init__(self, osm: Path, work: Path, *, clock_rate: float, clock_start: str,
                 speed_window_s: float = 60.0, fresh: bool = True,
                 detectors: Path | None = None, **settings: Any) -> None:
        http, jt808 = free_port(), free_port()
        work.mkdir(parents=True, exist_ok=True)
        db = work / "tti.db"
        for suffix in ("", "-wal", "-shm"):
            if fresh:  # else the database of an earlier host goes on (its speed history)
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        self.config: Config = load_config(
            osm=str(osm), http_port=http, jt808_port=jt808, var_dir=str(work / "var"),
            db_url=f"sqlite:///{db}", clock_rate=clock_rate, clock_start=clock_start,
            speed_window_s=speed_window_s, sim_vehicles=0,
            bigdata_url=f"http://127.0.0.1:{http}/bigdata",
            warning_url=f"http://127.0.0.1:{http}/warning", **settings)
        self.clock: Clock = self.config.make_clock()
        self.tap = Tap()
        self.detectors = detectors
        self.detector_import: DetectorImport | None = None
        self.detectors_loaded = 0
        """Detectors bigdata knows watch a segment, after the import."""
        self._bus: EventBus | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def jt808_port(self) -> int:
        return self.config.jt808_port

    async def __aenter__(self) -> TtiHost:
        bus = self._bus = make_bus(self.config, self.clock)
        await bus.start()
        tap, clock = self.tap, self.clock

        async def on_speed(env: Envelope[SegmentSpeed]) -> None:
            tap.speeds.append((clock.now(), env.payload))

        async def on_warning(env: Envelope[Warning]) -> None:
            tap.warnings.append((clock.now(), env.payload))

        async def on_incident(env: Envelope[Incident]) -> None:
            tap.incidents.append((clock.now(), env.payload))

        await bus.subscribe(SEGMENT_SPEED, on_speed, durable="sumo-harness")
        await bus.subscribe(WARNING, on_warning, durable="sumo-harness")
        await bus.subscribe(INCIDENT, on_incident, durable="sumo-harness")

        async def on_prediction(env: Envelope[ArrivalPrediction]) -> None:
            tap.predictions.append((clock.now(), env.payload))

        async def on_stop_event(env: Envelope[BusArrival]) -> None:
            tap.stop_events.append((clock.now(), env.payload))

        await bus.subscribe(ARRIVAL_PREDICTION, on_prediction, durable="sumo-harness")
        await bus.subscribe(BUS_ARRIVAL, on_stop_event, durable="sumo-harness")
        root, subapps = build_embedded(self.config, bus, self.clock)
        self._runner = make_runner(root)
        await self._runner.setup()
        sock = listen_socket(self.config.http_host, self.config.http_port)
        await web.SockSite(self._runner, sock).start()
        await self.wait_ready()
        if self.detectors is not None:
            bigdata = subapps["bigdata"][BIGDATA]
            self.detector_import = await import_detectors_csv(bigdata.store, self.detectors)
            await bigdata.load_detectors()
            self.detectors_loaded = len(bigdata.detectors)
        return self

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until ``/readyz`` answers 200 (real seconds): the roads are loaded, inputs primed."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(self.base_url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        raise TimeoutError(f"TTI not ready within {timeout_s} s")

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._bus is not None:
            await self._bus.close()

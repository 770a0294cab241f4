"""Scale-down drain: on shutdown the collector says it is not ready, refuses new terminals and
closes the open connections in even batches over ``TTI_JT808_DRAIN_S`` (clock seconds), each
only after the frames in hand are answered, so terminals move to the other replicas a few at
a time and no acknowledged report is lost. Real gateway, real TCP terminals, a hand-moved
clock: batches are asserted by the clock, never by wall-clock time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.collector.app import GATEWAY, create_app
from services.collector.commands import replica_subject
from services.collector.jt808_gateway import Jt808Gateway
from services.collector.terminals import SqliteTerminalStore
from shared.bus.memory import MemoryBus
from shared.config import Config
from shared.errors import ConfigError
from shared.events import Subject
from shared.jt808 import RESULT_OK, MsgId
from shared.service import listen_socket, make_runner
from tests.collector.jt808_support import (
    Harness,
    Terminal,
    command_cluster,
    metric,
    report_at,
    running_gateway,
    text_command,
)
from tests.conftest import ManualClock


def _open(gw: Jt808Gateway) -> int:
    """Connections the gateway has not begun to close."""
    return sum(1 for c in gw.connections if not c.closing)


async def _fleet(h: Harness, n: int) -> list[Terminal]:
    """``n`` authenticated terminals, each with one report acknowledged."""
    out = []
    for i in range(n):
        t = await h.terminal(f"1390000{i:04d}")
        await t.login()
        await t.send(MsgId.T_LOCATION, report_at())
        assert (await t.reply()).result == RESULT_OK
        out.append(t)
    await h.wait_positions(n)
    return out


async def _closed(terminals: list[Terminal]) -> int:
    """How many of ``terminals`` the gateway has closed (their read ends with EOF)."""
    got = await asyncio.gather(*(t.closed_by_peer(wait_s=0.05) for t in terminals))
    return sum(got)


async def _refused(port: int) -> bool:
    try:
        t = await Terminal("13999999999").connect(port)
    except OSError:
        return True
    closed = await t.closed_by_peer()
    await t.close()
    return closed


async def test_connections_close_in_even_batches_over_the_drain_period(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    async with running_gateway(tmp_path, clock=clock) as h:
        gw = h.gateway
        terminals = await _fleet(h, 12)
        port = gw.port
        drained = metric("tti_jt808_drained_connections_total")
        # 0.3 s at ten batches a second at most: three batches 0.1 s apart, four each.
        drain = asyncio.create_task(gw.drain(0.3))
        await h.wait_for(lambda: _open(gw) == 8)
        assert gw.readiness()[0] is False
        assert gw.readiness()[1].startswith("draining: 8 of 12 connections left")
        assert metric("tti_jt808_drain_connections_left") == 8
        assert metric("tti_jt808_drained_connections_total") == drained + 4
        assert await _refused(port)  # the listener is gone: the balancer's retry goes elsewhere
        # Real time passing does not close more: only the clock does.
        await asyncio.sleep(0.1)
        assert _open(gw) == 8 and not drain.done()
        clock.advance(0.101)  # a hair over: float sums of epoch seconds
        await h.wait_for(lambda: _open(gw) == 4)
        await asyncio.sleep(0.05)
        assert _open(gw) == 4
        clock.advance(0.101)
        await asyncio.wait_for(drain, 5)
        assert not gw.connections
        assert await _closed(terminals) == 12
        assert metric("tti_jt808_drained_connections_total") == drained + 12
        assert metric("tti_jt808_drain_connections_left") == 0
        assert gw.readiness() == (False, "stopped")


async def test_zero_drain_closes_every_connection_at_once(tmp_path: Path) -> None:
    clock = ManualClock(time.time())  # never moved: nothing may wait for it
    async with running_gateway(tmp_path, clock=clock) as h:
        terminals = await _fleet(h, 5)
        await asyncio.wait_for(h.gateway.drain(0), 5)
        assert not h.gateway.connections
        assert await _closed(terminals) == 5


async def test_terminals_leaving_on_their_own_end_the_drain_early(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    async with running_gateway(tmp_path, clock=clock) as h:
        terminals = await _fleet(h, 3)
        drain = asyncio.create_task(h.gateway.drain(30.0))  # one every 10 s
        await h.wait_for(lambda: _open(h.gateway) == 2)
        for t in terminals:
            await t.close()
        await asyncio.wait_for(drain, 5)  # the clock never moved
        assert not h.gateway.connections


class GatedBus(MemoryBus):
    """A memory bus whose publishes wait until the test opens the gate (a slow JetStream)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def publish(self, subject: Subject[Any], payload: Any, **kwargs: Any) -> Any:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().publish(subject, payload, **kwargs)


async def test_frames_in_hand_are_answered_and_published_before_the_close(
        tmp_path: Path) -> None:
    bus = GatedBus(partitions=4)
    async with running_gateway(tmp_path, bus=bus, clock=ManualClock(time.time())) as h:
        bus.gate.set()
        t = await h.terminal()
        await t.login()
        bus.gate.clear()
        # Five reports in one write: the first waits for the bus, four queue behind it.
        frames = b"".join(t.frame(MsgId.T_LOCATION, report_at(speed_0_1kmh=100 * i))
                          for i in range(5))
        await t.send_raw(frames)
        await h.wait_for(lambda: bus.waiting == 1)
        drain = asyncio.create_task(h.gateway.drain(0))
        await asyncio.sleep(0.05)
        assert not drain.done()  # the connection waits for its frames
        bus.gate.set()
        acked = [(await t.reply()).result for _ in range(5)]
        assert acked == [RESULT_OK] * 5
        assert await t.closed_by_peer()
        await asyncio.wait_for(drain, 5)
        speeds = sorted(p.speed_kmh for p in await h.wait_positions(5))
        assert speeds == [0.0, 10.0, 20.0, 30.0, 40.0]


async def test_every_report_acknowledged_during_a_drain_reaches_the_bus(
        tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    async with running_gateway(tmp_path, clock=clock) as h:
        terminals = await _fleet(h, 6)
        acked: list[float] = []
        stop = asyncio.Event()

        async def keep_reporting(t: Terminal, n: int) -> None:
            # Until its connection closes, as a moving vehicle does (unique speeds per report).
            i = 0
            with contextlib.suppress(ConnectionError, TimeoutError):
                while not stop.is_set():
                    speed = n * 1000 + i
                    await t.send(MsgId.T_LOCATION, report_at(speed_0_1kmh=speed))
                    if (await t.reply()).result == RESULT_OK:
                        acked.append(speed / 10)
                    i += 1

        reporters = [asyncio.create_task(keep_reporting(t, n))
                     for n, t in enumerate(terminals)]
        await h.wait_for(lambda: len(acked) >= 30)
        drain = asyncio.create_task(h.gateway.drain(0.3))  # 3 batches of 2
        for _ in range(3):
            await asyncio.sleep(0.05)
            clock.advance(0.101)
        await asyncio.wait_for(drain, 5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*reporters), 10)
        published = {p.speed_kmh for p in await h.wait_positions(6)}
        assert set(acked) <= published
        assert len(acked) > 30  # reports kept flowing while the drain went on


async def test_a_waiting_command_follows_its_terminal_to_another_replica(
        tmp_path: Path) -> None:
    async with command_cluster(tmp_path, replicas=2) as cl:
        draining, other = cl.replicas
        t = Terminal("13912345678")
        await t.connect(draining.port)
        code = await t.login()
        await t.close()
        await draining.wait_for(lambda: not draining.gateway.sessions)
        # Offline: the command waits in the replica about to be scaled away.
        await cl.bus.publish(replica_subject(0), text_command("13912345678"),
                             event_id="fwd-1")
        await cl.outcome("cmd-1", "offline_waiting")
        await draining.gateway.drain(0)  # its router keeps running until the drain is over
        # The terminal comes back through the balancer, to the other replica.
        await t.connect(other.port)
        assert (await t.authenticate(code)).result == RESULT_OK
        msg = await t.command()
        assert msg.msg_id == MsgId.P_TEXT_MESSAGE
        await cl.outcome("cmd-1", "sent")
        await t.close()
        assert "failed" not in cl.statuses("cmd-1")


# ---- the collector service: readiness, and the drain under its runner ---------------------

@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, clock: ManualClock, drain_s: float
                   ) -> AsyncIterator[tuple[web.AppRunner, str, Jt808Gateway]]:
    bus = MemoryBus(partitions=4)
    await bus.start()
    config = Config(db_url=f"sqlite:///{tmp_path / 'c.db'}", jt808_host="127.0.0.1",
                    jt808_port=0, jt808_drain_s=drain_s)
    app = create_app(config, bus=bus, terminals=SqliteTerminalStore(str(tmp_path / "t.db")),
                     clock=clock)
    runner = make_runner(app)
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        yield runner, f"http://127.0.0.1:{port}", app[GATEWAY]
    finally:
        if runner.server is not None:  # not cleaned up by the test already
            await runner.cleanup()
        sock.close()
        await bus.close()


async def _readyz(session: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{base}/readyz") as resp:
        return resp.status, json.loads(await resp.text())


async def test_shutdown_reports_draining_on_readyz_while_terminals_move_away(
        tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    async with _serving(tmp_path, clock, drain_s=1.0) as (runner, base, gw), \
            aiohttp.ClientSession() as session:
        port = gw.port
        terminals = [await Terminal(f"1390000{i:04d}").connect(port) for i in range(2)]
        for t in terminals:
            await t.login()
        _, body = await _readyz(session, base)
        assert body["checks"]["jt808"] == {"ready": True, "detail": "listening"}
        # SIGTERM: `tti serve` cleans its runner up; the drain comes first.
        shutdown = asyncio.create_task(runner.cleanup())
        async with asyncio.timeout(5):
            while _open(gw) != 1:  # noqa: ASYNC110 - the first batch of two (0.5 s apart)
                await asyncio.sleep(0.005)
        status, body = await _readyz(session, base)
        assert status == 503 and body["ready"] is False
        check = body["checks"]["jt808"]
        assert check["ready"] is False and check["detail"].startswith("draining: 1 of 2")
        assert await _refused(port)
        assert await _closed(terminals) == 1
        clock.advance(0.501)
        await asyncio.wait_for(shutdown, 10)
        assert await _closed(terminals) == 2
        for t in terminals:
            await t.close()


async def test_a_negative_drain_is_refused_at_start(tmp_path: Path) -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="TTI_JT808_DRAIN_S"):
            create_app(Config(db_url=f"sqlite:///{tmp_path / 'c.db'}", jt808_drain_s=bad),
                       bus=MemoryBus())

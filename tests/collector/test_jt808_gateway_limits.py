"""Per-connection bounds: frames per second; replies piling up for a terminal that never reads."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from services.collector.jt808_gateway import _PAUSE_RATE, _PAUSE_WRITE
from shared.jt808 import RESULT_OK, Heartbeat, MsgId
from tests.collector.jt808_support import Terminal, metric, report_at, running_gateway


async def test_rate_limit_pauses_reading_but_answers_everything(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_frames_per_s=100) as h:  # burst: 200 frames
        t = await h.terminal()
        before = metric("tti_jt808_errors_total", kind="rate_limited")
        await t.send_raw(b"".join(t.frame(MsgId.T_HEARTBEAT, Heartbeat()) for _ in range(300)))
        for _ in range(300):  # what was read is still answered...
            assert (await t.reply()).result == RESULT_OK
        (conn,) = h.gateway.connections
        assert conn.paused & _PAUSE_RATE  # ...but no more is read until the budget refills
        assert metric("tti_jt808_errors_total", kind="rate_limited") == before + 1
        await t.send(MsgId.T_HEARTBEAT, Heartbeat())
        assert (await t.reply(3.0)).result == RESULT_OK  # read once the budget refilled


async def _non_reading_terminal(port: int) -> tuple[Terminal, socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    t = Terminal("13800000000")
    t.reader, t.writer = await asyncio.open_connection(sock=sock)
    return t, sock


async def test_terminal_that_does_not_read_is_paused_then_dropped(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_write_buffer=1024, max_frames_per_s=1e6,
                               heartbeat_s=0.2, idle_factor=2.0) as h:
        good = await h.terminal()
        await good.login()

        async def keep_alive() -> None:  # the other terminal heartbeats as it should
            while True:
                await good.send(MsgId.T_HEARTBEAT, Heartbeat())
                assert (await good.reply()).result == RESULT_OK
                await asyncio.sleep(0.05)

        alive = asyncio.create_task(keep_alive())
        t, _ = await _non_reading_terminal(h.port)
        await h.wait_for(lambda: len(h.gateway.connections) == 2)
        conn = next(c for c in h.gateway.connections if c.phone is None)
        assert conn.transport is not None
        # A small kernel send buffer, so the transport's own buffer is what fills.
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                           4096)
        before = metric("tti_jt808_errors_total", kind="write_paused")
        burst = b"".join(t.frame(MsgId.T_HEARTBEAT, Heartbeat()) for _ in range(40))
        for _ in range(200):
            await t.send_raw(burst)
            await asyncio.sleep(0.002)
            if conn.paused & _PAUSE_WRITE:
                break
        assert conn.paused & _PAUSE_WRITE, "reading should pause once replies pile up"
        assert metric("tti_jt808_errors_total", kind="write_paused") == before + 1
        assert conn.transport.get_write_buffer_size() <= 4 * 1024
        # It does not read, so it goes silent to us: dropped at the idle timeout.
        await h.wait_for(lambda: conn not in h.gateway.connections, 3.0)
        assert not alive.done()
        alive.cancel()
        await asyncio.gather(alive, return_exceptions=True)
        await good.send(MsgId.T_LOCATION, report_at())
        assert (await good.reply()).result == RESULT_OK


async def test_flood_without_reading_is_cut_off(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_write_buffer=1024, max_frames_per_s=1e6) as h:
        t, _ = await _non_reading_terminal(h.port)
        await h.wait_for(lambda: len(h.gateway.connections) == 1)
        (conn,) = h.gateway.connections
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                           4096)
        before = metric("tti_jt808_errors_total", kind="write_buffer_overflow")
        # One read of 1,000 frames makes 20 KB of replies at once: over four times the limit.
        await t.send_raw(b"".join(t.frame(MsgId.T_HEARTBEAT, Heartbeat()) for _ in range(1000)))
        await h.wait_for(lambda: not h.gateway.connections)
        assert metric("tti_jt808_errors_total", kind="write_buffer_overflow") == before + 1

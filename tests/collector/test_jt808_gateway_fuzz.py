"""Property tests: random or mutated bytes never crash the gateway or another terminal's session.

One gateway serves every example of a test (that is the point: it must survive them all); a
sentinel terminal, authenticated before the first example, must still be answered after each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.jt808 import (
    BATCH_BLIND_ZONE,
    RESULT_OK,
    BatchLocationUpload,
    Heartbeat,
    MsgId,
    TerminalAuth,
    encode_subpackets,
)
from tests.collector.jt808_support import Harness, Terminal, metric, report_at, running_gateway

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path, max_frames_per_s=1e6) as harness:
        yield harness


@pytest.fixture
async def sentinel(h: Harness) -> Terminal:
    t = await h.terminal("13700000000")
    await t.login()
    return t


def _valid_frames() -> list[bytes]:
    t13 = Terminal("013912345678")
    t19 = Terminal("00000000013912345678", version=2019, protocol_version=1)
    frames = []
    for t in (t13, t19):
        frames += [
            t.frame(MsgId.T_REGISTER, t.register_body()),
            t.frame(MsgId.T_AUTH, TerminalAuth("0123456789ABCDEF", "860000000000001", "1.0")
                    if t.version == 2019 else TerminalAuth("0123456789ABCDEF")),
            t.frame(MsgId.T_HEARTBEAT, Heartbeat()),
            t.frame(MsgId.T_LOCATION, report_at(alarm=1, lat_e6=0x01D17E7D)),
            t.frame(MsgId.T_BATCH_LOCATION, BatchLocationUpload(
                BATCH_BLIND_ZONE, (report_at(), report_at(speed_0_1kmh=0x7E7D)))),
        ]
        frames += encode_subpackets(
            MsgId.T_BATCH_LOCATION, BatchLocationUpload(0, tuple(report_at() for _ in range(4))),
            phone_bcd=t.phone, first_serial=7, version=t.version, packet_size=50)
    return frames


VALID = _valid_frames()


@st.composite
def mutated_stream(draw: st.DrawFn) -> list[bytes]:
    """Valid frames, mutated (flipped, dropped, inserted bytes; cuts), as a list of writes."""
    frames = draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=8))
    data = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "drop", "insert", "flag", "escape"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "drop" and data:
            del data[pos]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "flag":
            data[pos:pos] = b"\x7e"
        else:
            data[pos:pos] = b"\x7d" + bytes([draw(st.integers(0, 255))])
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces, last = [], 0
    for c in [*cuts, len(data)]:
        pieces.append(bytes(data[last:c]))
        last = c
    return [p for p in pieces if p]


async def _throw(h: Harness, writes: list[bytes]) -> None:
    """Send ``writes`` on a fresh connection, half-close, and read until the gateway closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        for w in writes:
            writer.write(w)
            await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass  # the gateway may reset a connection it closed with unread data
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _still_served(h: Harness, sentinel: Terminal) -> None:
    await sentinel.send(MsgId.T_HEARTBEAT, Heartbeat())
    assert (await sentinel.reply()).result == RESULT_OK


@FUZZ
@given(writes=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4))
async def test_random_bytes_never_hurt_the_gateway(h: Harness, sentinel: Terminal,
                                                   writes: list[bytes]) -> None:
    internal = metric("tti_jt808_errors_total", kind="internal")
    await _throw(h, writes)
    await _still_served(h, sentinel)
    assert metric("tti_jt808_errors_total", kind="internal") == internal


@FUZZ
@given(writes=mutated_stream())
async def test_mutated_frames_never_hurt_the_gateway(h: Harness, sentinel: Terminal,
                                                     writes: list[bytes]) -> None:
    internal = metric("tti_jt808_errors_total", kind="internal")
    await _throw(h, writes)
    await _still_served(h, sentinel)
    assert metric("tti_jt808_errors_total", kind="internal") == internal
    assert len(h.gateway.connections) == 1  # every fuzz connection was closed


async def test_after_the_storm_positions_still_flow(h: Harness, sentinel: Terminal) -> None:
    for frame in VALID:
        await _throw(h, [frame[: len(frame) // 2], frame[len(frame) // 2 :] + b"\x7e\x00"])
    await sentinel.send(MsgId.T_LOCATION, report_at())
    assert (await sentinel.reply()).result == RESULT_OK
    assert (await h.wait_positions(1))[0].vehicle_id == "13700000000"


async def test_ten_thousand_mutated_real_frames_through_the_gateway(tmp_path: Path) -> None:
    """The ``make fuzz`` gateway run (``tests/fuzz/run.py``) at 10⁴ inputs: no internal error,
    every frame not accepted counted, memory bounded, no connection left (it raises if not)."""
    from tests.fuzz.run import fuzz_gateway
    from tests.shared.jt808 import all_vectors

    all_vectors()  # skip (or fail in CI) without the reference frames
    report = await fuzz_gateway(10_000, seed=808, workdir=tmp_path)
    assert report.inputs == 10_000 and report.accepted > 0 and report.rejected > 0
    assert report.counted >= report.rejected

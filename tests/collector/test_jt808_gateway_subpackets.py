"""Split messages over real TCP: reassembly by packet index, 0x8003 resend requests on stalls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.jt808 import (
    BATCH_BLIND_ZONE,
    RESULT_FAILURE,
    RESULT_OK,
    RESULT_UNSUPPORTED,
    BatchLocationUpload,
    MsgId,
    ResendRequest,
    Version,
    encode_subpackets,
)
from tests.collector.jt808_support import Harness, Terminal, hours_ago, report_at, running_gateway


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path, resend_after_s=0.1) as harness:
        yield harness


def split_batch(t: Terminal, n_items: int = 6, packet_size: int = 60) -> list[bytes]:
    """A blind-zone batch of ``n_items`` reports split into packets; advances ``t.serial``."""
    items = tuple(report_at(hours_ago(10 + i)) for i in range(n_items))
    frames = encode_subpackets(MsgId.T_BATCH_LOCATION, BatchLocationUpload(BATCH_BLIND_ZONE, items),
                               phone_bcd=t.phone, first_serial=t.serial, version=t.version,
                               protocol_version=t.protocol_version, packet_size=packet_size)
    t.serial = (t.serial + len(frames)) & 0xFFFF
    return frames


async def test_packets_out_of_order_are_reassembled_by_index(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    frames = split_batch(t)
    assert len(frames) == 4
    first_serial = t.serial - 4
    for index in (3, 1, 4):
        await t.send_raw(frames[index - 1])
        ack = await t.reply()
        assert (ack.reply_serial, ack.result) == (first_serial + index - 1, RESULT_OK)
    assert h.positions == []
    await t.send_raw(frames[1])  # packet 2 completes the message: acked after the bus took it
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (first_serial + 1, 0x0704, 0)
    positions = await h.wait_positions(6)
    assert [p.observed_at for p in positions] == [hours_ago(10 + i) for i in range(6)]


@pytest.mark.parametrize("version", [2013, 2019])
async def test_stall_triggers_resend_request_and_resent_packet_completes(
        h: Harness, version: Version) -> None:
    phone = "013912345678" if version == 2013 else "00000000013912345678"
    t = await h.terminal(phone, version=version)
    await t.login()
    frames = split_batch(t)
    first_serial = t.serial - 4
    for index in (1, 3):
        await t.send_raw(frames[index - 1])
        assert (await t.reply()).result == RESULT_OK
    msg = await t.recv(2.0)  # nothing more arrives: the gateway asks
    assert msg.msg_id == MsgId.P_RESEND_REQUEST
    assert msg.header.phone_bcd == phone and msg.header.is_2019 == (version == 2019)
    assert msg.body == ResendRequest(first_serial, (2, 4))
    for index in (2, 4):  # resent byte for byte
        await t.send_raw(frames[index - 1])
    assert (await t.reply()).result == RESULT_OK
    ack = await t.reply()
    assert (ack.reply_serial, ack.result) == (first_serial + 3, RESULT_OK)
    assert len(await h.wait_positions(6)) == 6


async def test_missing_first_packet_is_requested_by_counting_back(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    frames = split_batch(t)
    first_serial = t.serial - 4
    for index in (2, 3, 4):
        await t.send_raw(frames[index - 1])
        assert (await t.reply()).result == RESULT_OK
    msg = await t.recv(2.0)
    assert msg.body == ResendRequest(first_serial, (1,))
    await t.send_raw(frames[0])
    assert (await t.reply()).result == RESULT_OK
    assert len(await h.wait_positions(6)) == 6


async def test_a_stalled_message_is_given_up_after_three_requests(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, resend_after_s=0.05) as h:
        t = await h.terminal()
        await t.login()
        frames = split_batch(t)
        await t.send_raw(frames[0])
        assert (await t.reply()).result == RESULT_OK
        for _ in range(3):
            assert (await t.recv(2.0)).msg_id == MsgId.P_RESEND_REQUEST
        await t.expect_silence(0.3)
        conn = h.gateway.sessions[t.phone]
        assert conn.assembler is not None and len(conn.assembler) == 0


async def test_split_locations_need_authentication(h: Harness) -> None:
    t = await h.terminal()
    frames = split_batch(t)
    await t.send_raw(frames[0])
    assert (await t.reply()).result == RESULT_FAILURE
    assert h.gateway.connections.pop().assembler is None  # nothing was stored


async def test_split_message_we_do_not_handle_is_unsupported_and_not_stored(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    frames = encode_subpackets(0x0801, bytes(300), phone_bcd=t.phone, first_serial=t.serial,
                               version=2013, packet_size=100)
    for frame in frames:
        await t.send_raw(frame)
        ack = await t.reply()
        assert (ack.reply_msg_id, ack.result) == (0x0801, RESULT_UNSUPPORTED)
    assert h.gateway.sessions[t.phone].assembler is None

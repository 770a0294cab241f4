"""Platform → terminal commands over real TCP: 0x8300 text (2013 and 2019 layouts), 0x8201 →
0x0201, 0x8203; offline terminals, expiry, no reply; and a command crossing replicas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.collector.commands import command_body
from shared.events import TerminalCommand, partition_of
from shared.jt808 import (
    AlarmConfirm,
    MsgId,
    PositionQuery,
    TextMessage,
)
from tests.collector.jt808_support import (
    WUHAN_LAT_E6,
    WUHAN_LON_E6,
    command_cluster,
    metric,
    report_at,
    text_command,
)


@pytest.mark.parametrize("version", [2013, 2019])
async def test_text_reaches_the_terminal_and_its_reply_is_the_outcome(
        tmp_path: Path, version: int) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal("13912345678", version=version)  # type: ignore[arg-type]
        await t.login()
        await c.publish(text_command("13912345678"))
        msg = await t.command()
        assert msg.msg_id == MsgId.P_TEXT_MESSAGE
        assert isinstance(msg.body, TextMessage)
        assert msg.body.text == "您已连续驾驶4小时，请立即休息"  # GBK on the wire
        assert msg.body_bytes[-2:] == "息".encode("gbk")
        assert msg.body.flags == ["display", "tts"]
        # A 2013 terminal gets flag + text; a 2019 one the text type byte too (1, notice).
        assert msg.version == version
        assert msg.body.text_type == (1 if version == 2019 else None)
        assert msg.header.phone_bcd == "13912345678".rjust(20 if version == 2019 else 12, "0")
        sent = await c.outcome("cmd-1", "sent")
        assert sent.replica == 0 and sent.correlation == "w-1"
        await t.answer(msg, result=0)
        done = await c.outcome("cmd-1", "acknowledged")
        assert (done.result, done.result_text) == (0, "success")
        assert c.statuses("cmd-1") == ["sent", "acknowledged"]


async def test_terminal_result_codes_become_failed_or_unsupported(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        await c.publish(text_command(t.phone, "a"))
        await t.answer(await t.command(), result=3)
        unsupported = await c.outcome("a", "unsupported")
        assert (unsupported.result, unsupported.result_text) == (3, "unsupported")
        await c.publish(text_command(t.phone, "b"))
        await t.answer(await t.command(), result=1)
        assert (await c.outcome("b", "failed")).result == 1


async def test_position_query_outcome_carries_the_position(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal(version=2019)
        await t.login()
        await c.publish(text_command(t.phone, "q-1", kind="position_query", text="", flags=()))
        query = await t.command()
        assert query.msg_id == MsgId.P_POSITION_QUERY and isinstance(query.body, PositionQuery)
        assert query.body_bytes == b""
        await c.outcome("q-1", "sent")
        # An early 0x0001 success is not the answer; the 0x0201 is.
        await t.answer(query, result=0)
        await t.answer_position(query, report_at())
        done = await c.outcome("q-1", "acknowledged")
        assert done.position is not None
        assert done.position.vehicle_id == t.phone
        assert done.position.lat == pytest.approx(WUHAN_LAT_E6 / 1e6)
        assert done.position.lon == pytest.approx(WUHAN_LON_E6 / 1e6)
        assert c.statuses("q-1") == ["sent", "acknowledged"]


async def test_alarm_confirmation(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        await c.publish(text_command(t.phone, "ack-1", kind="alarm_confirm", text="", flags=(),
                                     alarm_serial=77, alarm_type=1 << 0 | 1 << 3))
        msg = await t.command()
        assert msg.msg_id == MsgId.P_ALARM_CONFIRM
        assert msg.body == AlarmConfirm(77, 0b1001)
        await t.answer(msg)
        assert (await c.outcome("ack-1", "acknowledged")).result == 0


async def test_offline_command_waits_and_is_delivered_after_authentication(
        tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        await c.publish(text_command("13900000001", "late"))
        waiting = await c.outcome("late", "offline_waiting")
        assert "authenticates" in waiting.detail
        t = await c.replicas[0].terminal("13900000001")
        await t.login()  # the auth reply comes first, then the command
        msg = await t.command()
        assert isinstance(msg.body, TextMessage)
        await t.answer(msg)
        await c.outcome("late", "acknowledged")
        assert c.statuses("late") == ["offline_waiting", "sent", "acknowledged"]


async def test_offline_command_expires(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        await c.publish(text_command("13900000002", "gone", ttl_s=0.2))
        await c.outcome("gone", "offline_waiting")
        expired = await c.outcome("gone", "expired")
        assert expired.detail == "terminal did not connect in time"
        # Connecting afterwards brings nothing.
        t = await c.replicas[0].terminal("13900000002")
        await t.login()
        await t.expect_silence(0.2)


async def test_already_expired_command_is_not_sent(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        past = datetime.now(UTC) - timedelta(seconds=1)
        await c.publish(text_command(t.phone, "old", expires_at=past))
        await c.outcome("old", "expired")
        await t.expect_silence(0.2)


async def test_terminal_that_never_answers_fails(tmp_path: Path) -> None:
    async with command_cluster(tmp_path, timeout_s=0.2) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        await c.publish(text_command(t.phone, "silent"))
        await t.command()
        failed = await c.outcome("silent", "failed")
        assert failed.detail == "no reply within 0.2 s" and failed.result is None
        assert c.statuses("silent") == ["sent", "failed"]


async def test_connection_lost_before_the_answer_fails(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        await c.publish(text_command(t.phone, "cut"))
        await t.command()
        await t.close()
        failed = await c.outcome("cut", "failed")
        assert "connection closed" in failed.detail


async def test_a_command_is_sent_once_however_often_it_arrives(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        cmd = text_command(t.phone, "dup")
        await c.publish(cmd)
        await c.publish(cmd)
        msg = await t.command()
        await t.answer(msg)
        await c.outcome("dup", "acknowledged")
        await t.expect_silence(0.2)
        assert c.statuses("dup") == ["sent", "acknowledged"]


async def test_unknown_kind_and_bad_flag_are_refused_visibly(tmp_path: Path) -> None:
    async with command_cluster(tmp_path) as c:
        t = await c.replicas[0].terminal()
        await t.login()
        await c.publish(text_command(t.phone, "k", kind="reboot"))
        assert "unknown command kind" in (await c.outcome("k", "unsupported")).detail
        await c.publish(text_command(t.phone, "f", flags=("blink",)))
        assert "unknown text flag" in (await c.outcome("f", "failed")).detail
        await c.publish(text_command(t.phone, "long", text="长" * 600))  # 1200 GBK bytes
        assert "cannot encode" in (await c.outcome("long", "failed")).detail
        await t.expect_silence(0.2)


async def test_command_crosses_to_the_replica_holding_the_connection(tmp_path: Path) -> None:
    async with command_cluster(tmp_path, replicas=2) as c:
        # Every replica consumes every partition; the memory bus hands a partition's first
        # command to its first subscriber, replica 0.
        phone = "13900000007"
        forwarded = metric("tti_jt808_commands_forwarded_total")
        t = await c.replicas[1].terminal(phone)
        await t.login()
        await c.publish(text_command(phone, "x"))
        msg = await t.command()
        assert isinstance(msg.body, TextMessage)
        await t.answer(msg)
        done = await c.outcome("x", "acknowledged")
        assert done.replica == 1 and (await c.outcome("x", "sent")).replica == 1
        assert metric("tti_jt808_commands_forwarded_total") == forwarded + 1


async def test_every_partition_is_served_by_fewer_replicas_than_the_ceiling(
        tmp_path: Path) -> None:
    # An autoscaler runs 1 of at most 4 replicas (TTI_REPLICA_COUNT=4): commands of every
    # partition still reach their terminals, none waits for a replica that does not run.
    async with command_cluster(tmp_path, replicas=1, replica_count=4) as c:
        phones = [f"1390000{n:04d}" for n in range(12)]
        assert {partition_of(p, c.bus.partitions) for p in phones} == {0, 1, 2, 3}
        for i, phone in enumerate(phones):
            t = await c.replicas[0].terminal(phone)
            await t.login()
            await c.publish(text_command(phone, f"p{i}"))
            await t.answer(await t.command())
            assert (await c.outcome(f"p{i}", "acknowledged")).replica == 0


async def test_waiting_command_follows_the_terminal_to_another_replica(tmp_path: Path) -> None:
    async with command_cluster(tmp_path, replicas=2) as c:
        # Every replica consumes every partition; the memory bus hands a partition's first
        # command to its first subscriber, replica 0.
        phone = "13900000007"
        await c.publish(text_command(phone, "w"))
        assert (await c.outcome("w", "offline_waiting")).replica == 0
        t = await c.replicas[1].terminal(phone)  # not the replica that holds the command
        await t.login()
        msg = await t.command()
        await t.answer(msg)
        assert (await c.outcome("w", "acknowledged")).replica == 1


def test_2013_and_2019_bodies_of_a_text_command() -> None:
    cmd = TerminalCommand(command_id="c", vehicle_id="1", kind="text",
                          requested_at=datetime.now(UTC), expires_at=datetime.now(UTC),
                          requested_by="t", text="请休息", flags=("emergency", "tts"),
                          text_type=2)
    assert command_body(cmd, False) == (MsgId.P_TEXT_MESSAGE, TextMessage(0x09, "请休息"))
    assert command_body(cmd, True) == (MsgId.P_TEXT_MESSAGE, TextMessage(0x09, "请休息", 2))

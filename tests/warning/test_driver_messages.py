"""Texts to drivers: the one builder, the command log on both backends, and the outcomes of a real
collector and terminal recorded once on the alarm they concern."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.warning.driver_messages import (
    MAX_TEXT_CHARS,
    BadText,
    DriverMessages,
    command_id_for,
    summary,
    text_command,
)
from services.warning.workflow.store import AuditNote, WorkflowStore
from shared.bus.memory import MemoryBus
from shared.db import database_from_url
from shared.events import COMMAND_OUTCOME, CommandOutcome
from shared.jt808 import MsgId, TextMessage
from tests.collector.jt808_support import command_cluster
from tests.conftest import fresh_pg_database
from tests.publisher import wait_for
from tests.warning.support import T0

TEXT = "您已连续驾驶4小时，请立即休息"


# --- the builder ---------------------------------------------------------------------------------


def test_a_rule_text_has_a_deterministic_id_and_a_lifetime() -> None:
    a = text_command("13800000001", TEXT, correlation="va-1", requested_by="rule:fatigue",
                     now=T0, ttl_s=300)
    b = text_command("13800000001", f" {TEXT} ", correlation="va-1",
                     requested_by="rule:fatigue", now=T0 + timedelta(seconds=9), ttl_s=300)
    assert a.command_id == b.command_id == command_id_for("13800000001", "va-1", "", TEXT)
    assert (a.kind, a.text, a.flags, a.correlation) == ("text", TEXT, ("display", "tts"), "va-1")
    assert a.expires_at - a.requested_at == timedelta(seconds=300)
    others = {text_command("13800000001", TEXT, correlation="va-2", requested_by="r",
                           now=T0).command_id,
              text_command("13800000002", TEXT, correlation="va-1", requested_by="r",
                           now=T0).command_id,
              text_command("13800000001", TEXT, correlation="va-1", requested_by="r", now=T0,
                           key="v2").command_id}
    assert len(others) == 3 and a.command_id not in others


@pytest.mark.parametrize(("text", "flags", "code"), [
    ("", ("tts",), "empty_text"),
    (None, ("tts",), "empty_text"),
    ("快" * (MAX_TEXT_CHARS + 1), ("tts",), "text_too_long"),
    ("前方事故😀", ("tts",), "text_not_gbk"),
    ("tab\tbell", ("tts",), "text_control_chars"),
    (TEXT, ("tts", "loud"), "bad_flags"),
    (TEXT, "tts", "bad_flags"),
    (TEXT, [1], "bad_flags"),
])
def test_a_text_no_terminal_can_take_says_why(text: object, flags: object, code: str) -> None:
    with pytest.raises(BadText) as info:
        text_command("1", text, correlation="", requested_by="x", now=T0,  # type: ignore[arg-type]
                     flags=flags)  # type: ignore[arg-type]
    assert info.value.code == code and info.value.http_status == 422


def test_outcomes_read_as_what_happened() -> None:
    def o(status: str, **kw: object) -> CommandOutcome:
        return CommandOutcome(command_id="c", vehicle_id="1", kind="text", status=status, at=T0,
                              replica=0, **kw)  # type: ignore[arg-type]

    assert summary(o("sent"))[1] == "text sent"
    assert summary(o("acknowledged", result=0))[1] == "terminal acknowledged (0x0001 result 0)"
    assert summary(o("failed", detail="no reply within 30 s"))[1] == \
        "failed: no reply within 30 s"
    assert summary(o("failed", result=1))[0] == "失败（0x0001 结果 1）"


# --- the command log, on SQLite and PostgreSQL -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
                ) -> AsyncIterator[WorkflowStore]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path}/tti.db"
        else:
            url = await stack.enter_async_context(fresh_pg_database(unique_name))
        s = WorkflowStore(database_from_url(url))
        await s.open()
        stack.push_async_callback(s.close)
        yield s


def _outcome(cmd_id: str, status: str, seconds: float, **kw: object) -> CommandOutcome:
    return CommandOutcome(command_id=cmd_id, vehicle_id="13800000001", kind="text",
                          status=status, at=T0 + timedelta(seconds=seconds), replica=0,
                          correlation="va-1", **kw)  # type: ignore[arg-type]


def _note(outcome: str) -> AuditNote:
    return AuditNote(user="terminal 13800000001", role="jt808", action="driver_text",
                     warning_id="va-1", outcome=outcome, details={"summary": outcome})


async def test_the_command_log_records_each_step_once_and_only_moves_forward(
        store: WorkflowStore) -> None:
    cmd = text_command("13800000001", TEXT, correlation="va-1", requested_by="rule:fatigue",
                       now=T0)
    # The outcome subject is consumed apart from the command subject: a step may come first.
    assert await store.record_outcome(_outcome(cmd.command_id, "sent", 1), note=_note("sent"))
    assert await store.record_command(cmd, note=_note("requested"))
    assert not await store.record_command(cmd, note=_note("requested"))
    record = await store.find_command(cmd.command_id)
    assert record is not None and record.status == "sent" and record.command == cmd
    assert await store.record_outcome(_outcome(cmd.command_id, "acknowledged", 2, result=0),
                                      note=_note("acknowledged"))
    # Redelivered: nothing; a late "offline_waiting" never hides the answer.
    assert not await store.record_outcome(_outcome(cmd.command_id, "acknowledged", 2, result=0),
                                          note=_note("acknowledged"))
    assert await store.record_outcome(_outcome(cmd.command_id, "offline_waiting", 3),
                                      note=None)
    [record] = await store.commands_of("13800000001")
    assert record.status == "acknowledged" and record.status_at == T0 + timedelta(seconds=2)
    assert [o.status for o in record.outcomes] == ["sent", "acknowledged", "offline_waiting"]
    assert record.latest is not None and record.latest.result == 0
    audit = await store.audit_of("va-1")
    assert [e.outcome for e in audit] == ["sent", "requested", "acknowledged"]
    assert all(e.user == "terminal 13800000001" for e in audit)
    # Newest first per vehicle; requests found by their key; retention prunes both tables.
    later = text_command("13800000001", "请减速", correlation="", requested_by="safety-1",
                         now=T0 + timedelta(minutes=5))
    assert await store.record_command(later, request_key="k1")
    assert [r.command.command_id for r in await store.commands_of("13800000001")] == [
        later.command_id, cmd.command_id]
    found = await store.find_command_for_request("13800000001", "k1")
    assert found is not None and found.command == later and found.status == "requested"
    assert await store.find_command_for_request("13800000002", "k1") is None
    assert await store.commands_of("13800000002") == []
    assert await store.prune(T0 + timedelta(days=180, seconds=10)) >= 4
    assert [r.command.command_id for r in await store.commands_of("13800000001")] == [
        later.command_id]


# --- a rule's text through a real collector and terminal --------------------------------------


async def test_a_rules_text_and_the_terminals_answer_are_recorded_on_its_alarm(
        tmp_path: Path) -> None:
    bus = MemoryBus(partitions=4)
    await bus.start()
    store = WorkflowStore(database_from_url(f"sqlite:///{tmp_path}/tti.db"))
    await store.open()
    messages = DriverMessages(bus, store, durable="warning")
    await messages.subscribe()
    try:
        async with command_cluster(tmp_path, buses=[bus]) as cluster:
            terminal = await cluster.replicas[0].terminal("13912345678")
            await terminal.login()
            # What a rule does: build the text with text_command and publish it on the bus.
            now = cluster.replicas[0].gateway.clock.now()
            cmd = text_command("13912345678", TEXT, correlation="va-fatigue-1",
                               requested_by="rule:fatigue", now=now)
            await cluster.publish(cmd)
            frame = await terminal.command()
            assert frame.msg_id == MsgId.P_TEXT_MESSAGE and isinstance(frame.body, TextMessage)
            assert frame.body.text == TEXT and set(frame.body.flags) == {"display", "tts"}
            await terminal.answer(frame, 0)

            async def answered() -> bool:
                record = await store.find_command(cmd.command_id)
                return record is not None and record.status == "acknowledged"

            await wait_for(answered)
            audit = [(e.user, e.role, e.outcome) for e in await store.audit_of("va-fatigue-1")]
            assert audit == [("rule:fatigue", "rule", "requested"),
                             ("terminal 13912345678", "jt808", "sent"),
                             ("terminal 13912345678", "jt808", "acknowledged")]
            # A redelivered command and outcome are recorded once.
            repeats = _heard_again("acknowledged")
            await cluster.publish(cmd)
            acknowledged = await cluster.outcome(cmd.command_id, "acknowledged")
            await bus.publish(COMMAND_OUTCOME, acknowledged, key=acknowledged.vehicle_id)
            await wait_for(lambda: _heard_again("acknowledged") == repeats + 1)
            await terminal.expect_silence()
            assert len(await store.audit_of("va-fatigue-1")) == 3
            [record] = await store.commands_of("13912345678")
            assert record.command.requested_by == "rule:fatigue"
            assert [o.status for o in record.outcomes] == ["sent", "acknowledged"]
    finally:
        await messages.unsubscribe()
        await store.close()
        await bus.close()


async def test_a_terminal_that_never_answers_or_never_comes_fails_visibly(
        tmp_path: Path) -> None:
    bus = MemoryBus(partitions=4)
    await bus.start()
    store = WorkflowStore(database_from_url(f"sqlite:///{tmp_path}/tti.db"))
    await store.open()
    messages = DriverMessages(bus, store, durable="warning")
    await messages.subscribe()
    try:
        async with command_cluster(tmp_path, buses=[bus], timeout_s=0.3) as cluster:
            now = cluster.replicas[0].gateway.clock.now()
            silent = await cluster.replicas[0].terminal("13912345678")
            await silent.login()
            unanswered = text_command("13912345678", "请减速", correlation="va-2",
                                      requested_by="rule:speeding", now=now)
            away = text_command("13900000009", "请减速", correlation="va-3",
                                requested_by="rule:speeding", now=now, ttl_s=0.3)
            await cluster.publish(unanswered)
            await cluster.publish(away)
            await silent.command()  # received, never answered

            async def ended(command_id: str, status: str) -> bool:
                record = await store.find_command(command_id)
                return record is not None and record.status == status

            await wait_for(lambda: ended(unanswered.command_id, "failed"))
            await wait_for(lambda: ended(away.command_id, "expired"))
            notes = [e.details["summary_en"] for e in await store.audit_of("va-2")]
            assert notes[-2:] == ["text sent", "failed: no reply within 0.3 s"]
            notes = [e.details["summary_en"] for e in await store.audit_of("va-3")]
            assert notes[-2:] == ["terminal offline: waiting", "expired before it could be sent"]
    finally:
        await messages.unsubscribe()
        await store.close()
        await bus.close()


def _heard_again(status: str) -> float:
    return REGISTRY.get_sample_value("tti_warning_command_outcomes_total",
                                     {"status": status, "new": "no"}) or 0.0

"""Texts to drivers, the one way the warning service talks to a terminal (JT/T 808 0x8300).

Every text the service sends — a department's (``POST /v1/dept/vehicles/{id}/messages``) or a
safety rule's — is built here (`text_command`: checked, GBK, deterministic ``command_id``) and
travels as a ``TerminalCommand`` on ``tti.terminal.command.<p>``; the collector replica holding
the terminal's connection sends it and publishes each step as a ``CommandOutcome``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from shared.errors import TtiError
from shared.events import TEXT_FLAGS, TerminalCommand

MAX_TEXT_CHARS = 200
"""At most this many characters in a text to a driver (a TTS terminal reads ~4 a second)."""

MAX_TEXT_GBK_BYTES = 1021
"""What one 0x8300 frame carries (1023-byte body less the flag and 2019 type bytes)."""

DEFAULT_FLAGS: tuple[str, ...] = ("display", "tts")
DEFAULT_TTL_S = 600.0


class BadText(TtiError):
    """A text a terminal cannot be sent (HTTP 422): empty, too long, not GBK, a bad flag."""

    code = "bad_text"
    http_status = 422


def check_text(text: object, flags: object = DEFAULT_FLAGS) -> tuple[str, tuple[str, ...]]:
    """The text (stripped) and flags (deduplicated, in order), or :class:`BadText` saying why."""
    if not isinstance(text, str) or not text.strip():
        raise BadText("text must be a non-empty string", code="empty_text")
    text = text.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise BadText(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}",
                      code="text_too_long")
    bad = sorted({c for c in text if not c.isprintable() and c != "\n"})
    if bad:
        raise BadText("text has control characters: " + ", ".join(f"U+{ord(c):04X}" for c in bad),
                      code="text_control_chars")
    try:
        encoded = text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise BadText(f"text cannot be written in GBK (the terminal's encoding): "
                      f"{text[exc.start:exc.end]!r} at character {exc.start + 1}",
                      code="text_not_gbk") from None
    if len(encoded) > MAX_TEXT_GBK_BYTES:
        raise BadText(f"text is {len(encoded)} GBK bytes; one message carries at most "
                      f"{MAX_TEXT_GBK_BYTES}", code="text_too_long")
    if isinstance(flags, str) or not isinstance(flags, Iterable):
        raise BadText("flags must be a list of " + ", ".join(TEXT_FLAGS), code="bad_flags")
    items = tuple(flags)
    if not all(isinstance(f, str) for f in items):
        raise BadText("flags must be a list of strings", code="bad_flags")
    names: tuple[str, ...] = tuple(dict.fromkeys(items))
    unknown = [f for f in names if f not in TEXT_FLAGS]
    if unknown:
        raise BadText(f"unknown flags {unknown!r}; use any of " + ", ".join(TEXT_FLAGS),
                      code="bad_flags")
    return text, names


def command_id_for(vehicle_id: str, *parts: str) -> str:
    """A deterministic command id: the same vehicle and parts always make the same id."""
    digest = hashlib.blake2b("\x1f".join((vehicle_id, *parts)).encode(), digest_size=12)
    return "txt-" + digest.hexdigest()


def text_command(vehicle_id: str, text: str, *, correlation: str, requested_by: str,
                 now: datetime, flags: Iterable[str] = DEFAULT_FLAGS,
                 ttl_s: float = DEFAULT_TTL_S, key: str = "", text_type: int = 1
                 ) -> TerminalCommand:
    """A 0x8300 text for ``vehicle_id``'s driver, checked (:class:`BadText` if it cannot go).

    ``correlation`` is the warning the text is about (the alarm's id; empty for none): every
    outcome is recorded on that warning. ``requested_by`` says who asks (``rule:<name>`` for a
    rule, the user's name for a department). The ``command_id`` is deterministic from the
    vehicle, ``correlation``, ``key`` and the text, so a rule that decides the same text for the
    same alarm again (a replay, another replica) makes the same command, which the collector
    sends once; pass a different ``key`` (e.g. the alarm's version) to send it again on purpose.
    ``ttl_s`` is how long it may wait for an offline terminal (``TTI_DRIVER_TEXT_TTL_S``).
    """
    body, names = check_text(text, tuple(flags))
    if not vehicle_id:
        raise BadText("vehicle_id must not be empty", code="bad_vehicle")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    return TerminalCommand(
        command_id=command_id_for(vehicle_id, correlation, key, body), vehicle_id=vehicle_id,
        kind="text", requested_at=now, expires_at=now + timedelta(seconds=ttl_s),
        requested_by=requested_by, text=body, flags=names, text_type=text_type,
        correlation=correlation)

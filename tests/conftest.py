"""Shared fixtures: real servers for integration tests, reference data beside the repository."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.errors import BusError

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str) -> NoReturn:
    """Something a test needs is missing: fail in CI (``CI=true``), skip on a developer machine."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def shared_dir() -> Path:
    """``../shared`` beside the repository, or ``TTI_SHARED_DIR``; fails in CI when missing."""
    path = Path(os.environ.get("TTI_SHARED_DIR") or REPO.parent / "shared")
    if not (path / "data").is_dir():
        unavailable(f"reference data folder {path}/data not found (set TTI_SHARED_DIR)")
    return path


def missing_reference(what: str) -> NoReturn:
    """A reference file is not where it should be (skip locally, fail in CI)."""
    unavailable(f"{what} not found (reference data beside the repository, or set TTI_SHARED_DIR)")


def reference_file(*parts: str) -> Path:
    """A file under the reference data folder (``../shared/data/...``); skip/fail if absent."""
    path = Path(os.environ.get("TTI_SHARED_DIR") or REPO.parent / "shared").joinpath(
        "data", *parts)
    if not path.is_file():
        missing_reference(str(path))
    return path


def require_server(host: str, port: int, what: str) -> None:
    """Skip (locally) or fail (CI) when a server the test needs is not listening."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        unavailable(f"{what} not reachable at {host}:{port}: {exc}")


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's headless Chromium through Playwright (no downloaded browser): the one launch
    every page test uses. Locally a missing browser skips; in CI it fails."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    if not shutil.which("chromium"):
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


NATS_URL = os.environ.get("TTI_TEST_NATS_URL", "nats://127.0.0.1:4222")
PG_DSN = os.environ.get("TTI_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


@pytest.fixture
def shared_data() -> Path:
    """The reference data folder (``../shared/data``)."""
    return shared_dir() / "data"


@pytest.fixture
def nats_url() -> str:
    """URL of the real NATS JetStream server (fails in CI when down)."""
    hostport = NATS_URL.split("://", 1)[1].split(",")[0]
    host, port = hostport.rsplit(":", 1)
    require_server(host, int(port), "NATS")
    return NATS_URL


@pytest.fixture
def unique_name() -> str:
    """A fresh name per test (stream, database, prefix)."""
    return "t" + uuid.uuid4().hex[:12]


class FlakyBus(MemoryBus):
    """A MemoryBus that refuses publishes while ``down`` (the bus being away)."""

    down = False

    async def publish(self, subject: Any, payload: Any, **kwargs: Any) -> str:
        if self.down:
            raise BusError("bus away")
        return await super().publish(subject, payload, **kwargs)


class ManualClock(Clock):
    """A :class:`~shared.clock.Clock` the test moves by hand: ``at`` is its epoch time.

    ``monotonic`` reads the same value; ``sleep`` returns once the test has moved the clock
    past its deadline (``sleep(0)`` just yields).
    """

    def __init__(self, at: float = 1_700_000_000.0) -> None:
        super().__init__()
        self._at = at
        self._moved = asyncio.Event()

    @property
    def at(self) -> float:
        """The clock's time, epoch seconds; setting it wakes the sleepers it concerns."""
        return self._at

    @at.setter
    def at(self, value: float) -> None:
        self._at = value
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    @property
    def realtime(self) -> bool:
        return False

    def time(self) -> float:
        return self._at

    def monotonic(self) -> float:
        return self._at

    async def sleep(self, seconds: float) -> None:
        deadline = self._at + max(0.0, seconds)
        await asyncio.sleep(0)
        while self._at < deadline:
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``."""
        self.at = self._at + seconds


@contextlib.asynccontextmanager
async def fresh_pg_database(name: str) -> AsyncIterator[str]:
    """DSN of a fresh, empty PostgreSQL database, dropped afterwards (fails in CI when down)."""
    import asyncpg

    parts = urlsplit(PG_DSN)
    require_server(parts.hostname or "127.0.0.1", parts.port or 5432, "PostgreSQL")
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(PG_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pg_dsn(unique_name: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test."""
    async with fresh_pg_database(unique_name) as dsn:
        yield dsn

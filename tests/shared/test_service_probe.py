"""Readiness of a dependency through a probe (``add_probe_check``): ``/readyz`` says when it is
away, and why, and recovers by itself; each change is logged once."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared.config import Config
from shared.errors import TransientError
from shared.service import add_probe_check, create_base_app


class Dependency:
    """Something the service depends on, which the test takes away and brings back."""

    def __init__(self) -> None:
        self.down = False
        self.hang = False
        self.calls = 0

    async def ping(self) -> int:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.down:
            raise TransientError("postgresql: [Errno 111] Connection refused")
        return 1


async def _check(client: TestClient, status: int, wait_s: float = 5.0) -> dict[str, object]:
    """The ``database`` check once ``/readyz`` answers ``status``."""
    async with asyncio.timeout(wait_s):
        while True:
            resp = await client.get("/readyz")
            body = await resp.json()
            if resp.status == status:
                return body["checks"]["database"]
            await asyncio.sleep(0.02)


async def test_readyz_follows_the_probe(caplog: pytest.LogCaptureFixture) -> None:
    dep = Dependency()
    dep.down = True
    app = create_base_app("test", Config())
    add_probe_check(app, "database", dep.ping, interval_s=0.05, timeout_s=0.2)
    caplog.set_level(logging.WARNING, "tti.service")
    async with TestClient(TestServer(app)) as client:
        check = await _check(client, 503)
        assert check["ready"] is False
        assert check["detail"] in ("not checked yet",
                                   "unreachable: postgresql: [Errno 111] Connection refused")
        await asyncio.sleep(0.3)  # several failed probes: logged once
        check = await _check(client, 503)
        assert check["detail"] == "unreachable: postgresql: [Errno 111] Connection refused"

        dep.down = False
        assert await _check(client, 200) == {"ready": True, "detail": "reachable"}

        dep.hang = True  # a probe that does not answer counts as a failure too
        check = await _check(client, 503)
        assert check["detail"] == "unreachable: TimeoutError"
        dep.hang = False
        await _check(client, 200)
    messages = [r.getMessage() for r in caplog.records if r.name == "tti.service"]
    assert messages == ["database unreachable: postgresql: [Errno 111] Connection refused",
                        "database reachable again", "database unreachable: TimeoutError",
                        "database reachable again"]
    assert dep.calls > 5

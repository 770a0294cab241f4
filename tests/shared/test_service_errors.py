"""Malformed requests against a real server: a JSON 400 like every other error, no ERROR log.

aiohttp's HTTP parser rejects some requests before any middleware runs; the service runner
(:func:`shared.service.make_runner`) answers those too. Raw sockets, because HTTP clients
refuse to send such requests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from shared.config import Config
from shared.errors import BadRequest, ConfigError
from shared.service import create_base_app, listen_socket, make_runner


async def _boom(request: web.Request) -> web.Response:
    raise BadRequest("bbox must be four numbers")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = create_base_app("test", Config())
    app.router.add_get("/boom", _boom)
    runner = make_runner(app)
    await runner.setup()
    sock = listen_socket("127.0.0.1", 0)
    await web.SockSite(runner, sock).start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes) -> tuple[int, str, dict[str, object]]:
    """Send raw bytes, read the whole answer: status, content type, JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers["Content-Type"], orjson.loads(body)


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not loud, [r.getMessage() for r in loud]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize(("raw", "says"), [
    # Raw UTF-8 in the query (curl -g 'http://…/api/v1/roads?bbox=中').
    (b"GET /api/v1/roads?bbox=\xe4\xb8\xad HTTP/1.1\r\nHost: x\r\n\r\n", "percent-encode"),
    # A 20 KB header.
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
     "longer than 8190 bytes"),
    # A 20 KB URL.
    (b"GET /healthz?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "longer than"),
    # Not HTTP at all (a TLS hello on the HTTP port).
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "not an HTTP request"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", ""),
])
async def test_malformed_requests_get_a_json_400_and_no_error_log(
        port: int, raw: bytes, says: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, content_type, body = await _exchange(port, raw)
    assert status == 400 and content_type.startswith("application/json")
    error = body["error"]
    assert isinstance(error, dict) and error["code"] == "bad_request"
    assert says in str(error["message"]) and "\n" not in str(error["message"])
    _no_errors(caplog)
    assert any("malformed request" in r.getMessage() for r in caplog.records)


async def test_well_formed_errors_are_json_as_before(port: int,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    status, _, body = await _exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n")
    assert (status, body) == (400, {"error": {"code": "bad_request",
                                              "message": "bbox must be four numbers"}})
    status, _, body = await _exchange(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n")
    assert status == 404 and body["error"]["code"] == "not_found"  # type: ignore[index]
    _no_errors(caplog)


async def test_a_port_in_use_is_one_clear_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is already in use.*"
                                              "TTI_HTTP_PORT"):
            listen_socket("127.0.0.1", port)


def test_an_unknown_host_names_its_setting() -> None:
    with pytest.raises(ConfigError, match="TTI_HTTP_HOST"):
        listen_socket("no-such-host.invalid", 8080)

"""The JSON-over-HTTP plumbing every internal client shares: session, errors, timeouts."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.errors import BadRequest, NotFound, TransientError


class JsonClient:
    """GETs JSON from one service's base URL; ``start``/``close`` own the HTTP session.

    A 404 is :class:`NotFound`, another 4xx :class:`BadRequest` carrying the service's own error
    code and message, anything else that fails :class:`TransientError` (``<service>_unavailable``).
    """

    service = "service"

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session (idempotent)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=5.0),
                headers={"Accept": "application/json"},
            )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, params: dict[str, str] | None = None, *,
                   headers: dict[str, str] | None = None) -> Any:
        unavailable = f"{self.service}_unavailable"
        if self._session is None:
            raise TransientError(f"{self.service} client is not started", code=unavailable)
        url = self.base_url + path
        try:
            async with self._session.get(url, params=params, headers=headers) as resp:
                if resp.status == 200:
                    return await resp.json(content_type=None)
                if 400 <= resp.status < 500:
                    code, message = await _error_of(resp)
                    if resp.status == 404:
                        raise NotFound(message or f"{self.service} has no {path}",
                                       code=code or "not_found")
                    raise BadRequest(message or f"{self.service} refused {path}",
                                     code=code or "bad_request")
                raise TransientError(f"{self.service} answered HTTP {resp.status} for {path}",
                                     code=unavailable)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TransientError(
                f"{self.service} unreachable at {url}: {exc or type(exc).__name__}",
                code=unavailable) from exc


async def _error_of(resp: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    """The ``{"error": {"code", "message"}}`` body of a refusal, when there is one."""
    try:
        body = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (code if isinstance(code, str) else None,
            message if isinstance(message, str) else None)

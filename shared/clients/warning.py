"""The client of the warning service's HTTP API: routes, warnings, incidents, the area index,
citizen reports' status and who holds a department credential.

Answers are handed over as the warning service's JSON (its OpenAPI document describes them);
errors keep the warning service's own code (``no_route``, ``network_loading`` …).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from shared.clients.http import JsonClient


class WarningClient(JsonClient):
    """Reads the warning service's ``/v1`` API."""

    service = "warning"

    async def route(self, origin: tuple[float, float], destination: tuple[float, float], *,
                    alternatives: int = 0) -> dict[str, Any]:
        """``GET /v1/route``: the fastest route and up to ``alternatives`` others."""
        return dict(await self._get("/v1/route", {
            "from": f"{origin[0]!r},{origin[1]!r}", "to": f"{destination[0]!r},{destination[1]!r}",
            "alternatives": str(alternatives)}))

    async def list_warnings(self, status: str = "active") -> dict[str, Any]:
        """``GET /v1/warnings``."""
        return dict(await self._get("/v1/warnings", {"status": status}))

    async def list_incidents(self, status: str = "active") -> dict[str, Any]:
        """``GET /v1/incidents``."""
        return dict(await self._get("/v1/incidents", {"status": status}))

    async def get_index(self) -> dict[str, Any]:
        """``GET /v1/index``: the network's and every area's TPI."""
        return dict(await self._get("/v1/index"))

    async def report(self, number: str) -> dict[str, Any]:
        """``GET /v1/reports/{number}``: a citizen report's (or hotline ticket's) public status.

        :class:`~shared.errors.NotFound` when the warning service has no such report (yet).
        """
        return dict(await self._get(f"/v1/reports/{quote(number, safe='')}"))

    async def whoami(self, authorization: str) -> dict[str, Any]:
        """``GET /v1/dept/me`` with a caller's ``Authorization`` header: ``user`` and ``role``.

        A missing, wrong or expired credential is :class:`~shared.errors.BadRequest` with the
        warning service's code (``unauthorized``); callers answer it as their own 401.
        """
        return dict(await self._get("/v1/dept/me", headers={"Authorization": authorization}))

"""Service base: health, readiness, metrics, JSON errors, structured logs, tracked tasks.

Every service's ``create_app`` starts from :func:`create_base_app`, which wires ``/healthz``
(the process is alive), ``/readyz`` (every registered input is primed; details per check),
``/metrics`` (Prometheus text) and one middleware mapping :class:`~shared.errors.TtiError` to a
JSON body with a stable ``code``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from shared.config import Config
from shared.errors import TtiError

log = logging.getLogger("tti.service")

ReadinessCheck = Callable[[], tuple[bool, str]]

CONFIG = web.AppKey("config", Config)
SERVICE_NAME = web.AppKey("service_name", str)
READINESS = web.AppKey("readiness", dict)
TASKS = web.AppKey("tasks", set)

HTTP_ERRORS = Counter("tti_http_errors_total", "HTTP error responses", ["service", "code"])


def json_error(status: int, code: str, message: str, details: object = None) -> web.Response:
    """An error response with a JSON body ``{"error": {"code", "message"[, "details"]}}``."""
    body: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


def error_middleware(service: str) -> Any:
    """Map TtiError and aiohttp HTTP errors to JSON; log and hide unexpected exceptions."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request],
                                                                 Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        try:
            return await handler(request)
        except TtiError as exc:
            HTTP_ERRORS.labels(service, exc.code).inc()
            return json_error(exc.http_status, exc.code, exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
                exc.status, "http_error")
            HTTP_ERRORS.labels(service, code).inc()
            return json_error(exc.status, code, exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            HTTP_ERRORS.labels(service, "internal").inc()
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_error(500, "internal", "internal error")

    return middleware


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[SERVICE_NAME]})


def readiness_report(app: web.Application) -> tuple[bool, dict[str, dict[str, object]]]:
    """Run every readiness check registered on ``app``."""
    checks: dict[str, ReadinessCheck] = app[READINESS]
    report: dict[str, dict[str, object]] = {}
    ok_all = True
    for name, check in checks.items():
        try:
            ok, detail = check()
        except Exception as exc:  # a broken check means not ready, not a 500
            ok, detail = False, f"check failed: {exc}"
        report[name] = {"ready": ok, "detail": detail}
        ok_all = ok_all and ok
    return ok_all, report


async def _readyz(request: web.Request) -> web.Response:
    ok, report = readiness_report(request.app)
    return web.json_response({"ready": ok, "service": request.app[SERVICE_NAME],
                              "checks": report}, status=200 if ok else 503)


async def _metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def create_base_app(name: str, config: Config, *, client_max_size: int = 1 << 20
                    ) -> web.Application:
    """An aiohttp app with the health/readiness/metrics endpoints and JSON errors."""
    app = web.Application(middlewares=[error_middleware(name)], client_max_size=client_max_size)
    app[SERVICE_NAME] = name
    app[CONFIG] = config
    app[READINESS] = {}
    app[TASKS] = set()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.on_shutdown.append(_cancel_tasks)
    return app


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    """Register a readiness check (``/readyz`` is 200 only when all pass)."""
    app[READINESS][name] = check


def spawn(app: web.Application, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
    """Start a background task the app keeps, logs if it dies, and cancels on shutdown."""
    task = asyncio.create_task(coro, name=name)
    tasks: set[asyncio.Task[Any]] = app[TASKS]
    tasks.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %s died", t.get_name(), exc_info=t.exception())

    task.add_done_callback(done)
    return task


async def _cancel_tasks(app: web.Application) -> None:
    tasks: set[asyncio.Task[Any]] = app[TASKS]
    for t in list(tasks):
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._skip:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Structured (JSON lines) or plain logs on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

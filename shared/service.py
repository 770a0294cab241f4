"""Service base: health, readiness, metrics, JSON errors, structured logs, tracked tasks.

Every service's ``create_app`` starts from :func:`create_base_app`, which wires ``/healthz``
(the process is alive), ``/readyz`` (every registered input is primed; details per check),
``/metrics`` (Prometheus text) and one middleware mapping :class:`~shared.errors.TtiError` to a
JSON body with a stable ``code``. :func:`make_runner` serves such an app so that even requests
aiohttp's HTTP parser rejects (before any middleware runs) get the same JSON errors, and
:func:`listen_socket` binds a port up front with one clear error when it is taken.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from shared.config import Config
from shared.errors import ConfigError, TtiError

log = logging.getLogger("tti.service")

ReadinessCheck = Callable[[], tuple[bool, str]]

CONFIG = web.AppKey("config", Config)
SERVICE_NAME = web.AppKey("service_name", str)
READINESS = web.AppKey("readiness", dict)
TASKS = web.AppKey("tasks", set)
DRAIN_STEPS = web.AppKey("drain_steps", list)

HTTP_ERRORS = Counter("tti_http_errors_total", "HTTP error responses", ["service", "code"])


def json_error(status: int, code: str, message: str, details: object = None) -> web.Response:
    """An error response with a JSON body ``{"error": {"code", "message"[, "details"]}}``."""
    body: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


Finish = Callable[[web.Request, web.StreamResponse], web.StreamResponse]
"""Post-processing of a handler's response (e.g. the publisher's ETags)."""
Observe = Callable[[web.Request, int, float], None]
"""Called once per request with its final status and seconds taken (request metrics)."""


def error_middleware(service: str, *, finish: Finish | None = None,
                     observe: Observe | None = None) -> Any:
    """Map TtiError and aiohttp HTTP errors to JSON; log and hide unexpected exceptions.

    ``finish`` rewrites a handler's response; ``observe`` sees every request's final status
    (after the mapping) and duration. One middleware does all three: each layer of aiohttp
    middleware costs a coroutine and a partial on every request of a hot endpoint.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request],
                                                                 Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        started = time.perf_counter() if observe is not None else 0.0
        try:
            response = await handler(request)
            if finish is not None:
                response = finish(request, response)
        except TtiError as exc:
            HTTP_ERRORS.labels(service, exc.code).inc()
            response = json_error(exc.http_status, exc.code, exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                if observe is not None:
                    observe(request, exc.status, time.perf_counter() - started)
                raise
            code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                    413: "too_large"}.get(exc.status, "http_error")
            HTTP_ERRORS.labels(service, code).inc()
            response = json_error(exc.status, code, exc.reason)
        except asyncio.CancelledError:
            if observe is not None:
                observe(request, 499, time.perf_counter() - started)  # the client went away
            raise
        except Exception:
            HTTP_ERRORS.labels(service, "internal").inc()
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = json_error(500, "internal", "internal error")
        if observe is not None:
            observe(request, response.status, time.perf_counter() - started)
        return response

    return middleware


def _client_error_text(exc: BaseException | None, message: str | None) -> str:
    """A short sentence for a request the HTTP parser rejected (its own text quotes the bytes)."""
    if isinstance(exc, LineTooLong):
        return f"the request line or a header is longer than {exc.args[1]} bytes"
    if isinstance(exc, InvalidURLError):
        return "invalid character in the URL: percent-encode non-ASCII text (UTF-8)"
    if isinstance(exc, BadHttpMethod):
        return "not an HTTP request (HTTPS, or another protocol, on an HTTP port?)"
    text = exc.message if isinstance(exc, HttpProcessingError) else message
    first = str(text or "bad request").strip().splitlines()[0].rstrip(":")
    return first[:200]


class _JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, answering what its parser rejects with our JSON errors.

    aiohttp writes those answers in ``handle_error`` (text/plain) and logs each at ERROR with a
    traceback, before any middleware runs; it has no hook for them (aio-libs/aiohttp#3287), so
    this overrides that one method. A client's mistake is one INFO line; our own faults (500,
    504) stay at ERROR.
    """

    __slots__ = ("service",)
    service: str  # the metrics label, set by the server that makes this handler

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # too late for another response: aiohttp raises
            return super().handle_error(request, status, exc, message)
        if 400 <= status < 500:
            code, text = "bad_request", _client_error_text(exc, message)
            # Scanners and TLS clients on the HTTP port are noise, not news.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
            log.log(level, "rejected a malformed request from %s: %s", request.remote, text,
                    extra={"status": status})
        else:
            code = "timeout" if status == 504 else "internal"
            text = "request timed out" if status == 504 else "internal error"
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        HTTP_ERRORS.labels(self.service, code).inc()
        resp = json_error(status, code, text)
        resp.force_close()  # the parser's state is unknown after a bad message
        return resp


class _JsonErrorServer(web.Server):
    """The protocol factory of :class:`ServiceRunner`: one handler per connection."""

    def __init__(self, *args: Any, service: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service

    def __call__(self) -> web.RequestHandler:
        handler = _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.service = self.service
        return handler


class ServiceRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed requests with JSON errors, and which
    runs the app's drain steps (:func:`add_drain_step`) before its sites stop."""

    async def cleanup(self) -> None:
        if self.server is not None:  # set up: the sites still answer while the steps run
            for step in self.app.get(DRAIN_STEPS, []):
                try:
                    await step()
                except Exception:
                    log.exception("drain step failed; shutting down anyway")
        await super().cleanup()

    async def _make_server(self) -> web.Server:
        # AppRunner starts the app and builds aiohttp's Server; we keep its settings (handler,
        # request factory, handler_args) and swap only the protocol class.
        server = await super()._make_server()
        return _JsonErrorServer(server.request_handler, request_factory=server.request_factory,
                                handler_cancellation=server.handler_cancellation,
                                loop=asyncio.get_running_loop(),
                                service=self.app.get(SERVICE_NAME, "http"), **server._kwargs)


def make_runner(app: web.Application) -> ServiceRunner:
    """The runner every service is served with (signals and access log are ours)."""
    return ServiceRunner(app, handle_signals=False, access_log=None)


def listen_socket(host: str, port: int, *, host_setting: str = "TTI_HTTP_HOST",
                  port_setting: str = "TTI_HTTP_PORT") -> socket.socket:
    """A TCP socket bound to ``host:port`` (for :class:`aiohttp.web.SockSite`).

    Binding before the app starts means a port in use fails at once, before any import or
    connection, with one line naming the setting to change (a :class:`ConfigError`).
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"{host_setting}={host!r} is not an address here: {exc.strerror}"
                          ) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart despite TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{host}:{port} is already in use (another tti?); choose another "
                              f"port with {port_setting}") from exc
        raise ConfigError(f"cannot listen on {host}:{port} ({host_setting}, {port_setting}): "
                          f"{exc.strerror}") from exc
    sock.setblocking(False)
    return sock


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


def create_base_app(name: str, config: Config, *, client_max_size: int = 1 << 20,
                    finish: Finish | None = None, observe: Observe | None = None
                    ) -> web.Application:
    """An aiohttp app with the health/readiness/metrics endpoints and JSON errors
    (``finish`` and ``observe``: see :func:`error_middleware`)."""
    app = web.Application(middlewares=[error_middleware(name, finish=finish, observe=observe)],
                          client_max_size=client_max_size)
    app[SERVICE_NAME] = name
    app[CONFIG] = config
    app[READINESS] = {}
    app[TASKS] = set()
    app[DRAIN_STEPS] = []
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.on_shutdown.append(_cancel_tasks)
    return app


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    """Register a readiness check (``/readyz`` is 200 only when all pass)."""
    app[READINESS][name] = check


def add_drain_step(app: web.Application, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` first on shutdown, while the HTTP port still answers (``/readyz`` can say
    why the service is not ready), before the sites stop and ``on_shutdown``/``cleanup_ctx`` run.

    Only :func:`make_runner`'s runner runs them, and only for the app it serves (not a mounted
    subapp's): the service must also finish the work in its ``cleanup_ctx`` when they did not run.
    """
    app[DRAIN_STEPS].append(step)


def add_probe_check(app: web.Application, name: str, probe: Callable[[], Awaitable[object]], *,
                    interval_s: float = 2.0, timeout_s: float = 3.0) -> None:
    """A readiness check for a dependency the service's own traffic may not touch for a while
    (its database): ``probe`` (a cheap query) runs every ``interval_s`` from app start-up on.

    Add it after the ``cleanup_ctx`` that opens the dependency. Not ready until the first
    probe answers; a probe that raises or takes longer than ``timeout_s`` makes the check
    fail with the error in its detail. Logged once when it starts failing, once on recovery.
    """
    state: list[tuple[bool, str]] = [(False, "not checked yet")]

    async def watch() -> None:
        failing = False
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    await probe()
            except Exception as exc:
                text = (str(exc) or type(exc).__name__).splitlines()[0][:200]
                if not failing:
                    log.warning("%s unreachable: %s", name, text)
                failing = True
                state[0] = (False, f"unreachable: {text}")
            else:
                if failing:
                    log.warning("%s reachable again", name)
                failing = False
                state[0] = (True, "reachable")
            await asyncio.sleep(interval_s)

    async def running(app: web.Application) -> AsyncIterator[None]:
        spawn(app, watch(), name=f"probe:{name}")
        yield

    app.cleanup_ctx.append(running)
    add_readiness_check(app, name, lambda: state[0])


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

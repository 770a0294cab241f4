"""``python -m services.publisher``: run the publisher alone, as ``tti serve publisher`` does.

Reads ``TTI_*`` settings once; the bus is started and closed here because in this mode the
publisher owns it (in the embedded run the composition root shares one bus among services).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.publisher.app import create_app
from shared.bus.base import EventBus, bus_from_url
from shared.config import Config, load_config
from shared.service import configure_logging


def make_bus(config: Config) -> EventBus:
    """The bus the settings name (``stream`` applies to NATS JetStream only)."""
    kwargs: dict[str, Any] = {"partitions": config.partitions, "prefix": config.bus_prefix}
    if config.bus_url.startswith(("nats://", "tls://")):
        kwargs["stream"] = config.bus_stream
    return bus_from_url(config.bus_url, **kwargs)


def build_app(config: Config) -> web.Application:
    """The publisher app with a bus it starts before its consumers and closes after them."""
    bus = make_bus(config)
    app = create_app(config, bus=bus)

    async def bus_ctx(_app: web.Application) -> AsyncIterator[None]:
        await bus.start()
        yield
        await bus.close()

    # First, so the bus is up before the publisher subscribes and closed after it stops.
    app.cleanup_ctx.insert(0, bus_ctx)
    return app


def main() -> None:
    """Entry point: read the settings, run the HTTP server until SIGINT/SIGTERM."""
    config = load_config()
    configure_logging(config.log_level, config.log_format)
    web.run_app(build_app(config), host=config.http_host, port=config.http_port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()

"""The WeChat official account (微信公众号) channel of the publisher.

``/wechat/callback`` (:mod:`.callback`, protocol in :mod:`.protocol`) answers followers from the
one text-query resolver (:mod:`services.publisher.channels.query`, rendered by :mod:`.replies`,
commands in :mod:`.conversation`); subscriptions and last locations live in the deployment's
database (:mod:`.store`); warnings that hit a subscription go out as template messages
(:mod:`.notify`) through the WeChat API (:mod:`.client`). State the replicas share — messages
being answered, the access token, "this template was sent" — is in :mod:`shared.bus.kv`.

Without ``TTI_WECHAT_TOKEN`` the channel is off: the callback answers 503 ``wechat_disabled``
and the start log says so.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from services.publisher.channels.wechat.callback import MSG_TTL_S, WechatChannel
from services.publisher.channels.wechat.client import WechatClient
from services.publisher.channels.wechat.conversation import Conversation
from services.publisher.channels.wechat.notify import Notifier
from services.publisher.channels.wechat.protocol import Cipher
from services.publisher.channels.wechat.store import WechatStore
from shared.bus.kv import kv_for_bus
from shared.db import Database, database_from_url
from shared.errors import TransientError
from shared.service import spawn

if TYPE_CHECKING:
    from services.publisher.answers import Answers
    from services.publisher.state import Publisher

log = logging.getLogger("tti.publisher.wechat")

CALLBACK_PATH = "/wechat/callback"
SENT_TTL_S = 7 * 86_400.0
"""How long "sent to this follower for this warning version" is remembered."""

WECHAT = web.AppKey("wechat", WechatChannel)
WECHAT_NOTIFIER = web.AppKey("wechat_notifier", Notifier)


def add_wechat_routes(app: web.Application, answers: Answers, publisher: Publisher, *,
                      db: Database | None = None) -> WechatChannel | None:
    """Wire the channel (no I/O here); returns it, or None when TTI_WECHAT_TOKEN is not set."""
    config = publisher.config
    if not config.wechat_token:
        app.router.add_get(CALLBACK_PATH, _disabled)
        app.router.add_post(CALLBACK_PATH, _disabled)
        app.on_startup.append(_say_disabled)
        return None
    cipher = (Cipher(config.wechat_token, config.wechat_aes_key, config.wechat_app_id)
              if config.wechat_aes_key else None)
    store = WechatStore(db or database_from_url(config.db_url))
    client = None
    if config.wechat_app_id and config.wechat_app_secret:
        client = WechatClient(config.wechat_api_url, config.wechat_app_id,
                              config.wechat_app_secret,
                              kv_for_bus(publisher.bus, "wechat_token"))
    channel = WechatChannel(token=config.wechat_token,
                            conversation=Conversation(answers, store),
                            messages=kv_for_bus(publisher.bus, "wechat_msgs", ttl_s=MSG_TTL_S),
                            cipher=cipher, client=client)
    app[WECHAT] = channel
    if client is not None and config.wechat_template_id:
        app[WECHAT_NOTIFIER] = Notifier(
            publisher, store, client, config.wechat_template_id,
            kv_for_bus(publisher.bus, "wechat_sent", ttl_s=SENT_TTL_S),
            public_url=config.public_url)
    app.router.add_get(CALLBACK_PATH, channel.verify)
    app.router.add_post(CALLBACK_PATH, channel.receive)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        if client is not None:
            await client.start()
            spawn(app, client.keep_token(), name="wechat-token")
        notifier = app.get(WECHAT_NOTIFIER)
        if notifier is not None:
            publisher.warning_listeners.append(notifier.offer)
            spawn(app, notifier.run(), name="wechat-notifier")
        log.info("WeChat channel on at %s (%s mode; customer-service and template messages "
                 "%s)", CALLBACK_PATH, "safe (AES)" if cipher else "plain",
                 "on" if notifier is not None else
                 "customer-service only, no TTI_WECHAT_TEMPLATE_ID" if client is not None else
                 "off: no TTI_WECHAT_APP_ID/TTI_WECHAT_APP_SECRET")
        yield
        if notifier is not None:
            publisher.warning_listeners.remove(notifier.offer)
        await channel.close()
        if client is not None:
            await client.close()
        await store.close()

    app.cleanup_ctx.append(ctx)
    return channel


async def _disabled(request: web.Request) -> web.Response:
    raise TransientError("the WeChat channel is off: TTI_WECHAT_TOKEN is not set",
                         code="wechat_disabled")


async def _say_disabled(app: web.Application) -> None:
    log.info("WeChat channel off: TTI_WECHAT_TOKEN is not set (%s answers 503)", CALLBACK_PATH)

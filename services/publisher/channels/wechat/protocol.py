"""The WeChat official-account callback protocol: signatures, safe XML, AES mode, replies.

WeChat signs every callback request: ``signature`` is the SHA-1 of the sorted token, timestamp
and nonce (``wechatpy.utils.check_signature``). In safe mode (``encrypt_type=aes``) the body is
``<xml><Encrypt>…</Encrypt></xml>``, ``msg_signature`` is the SHA-1 of the sorted token,
timestamp, nonce and ``Encrypt``, and ``Encrypt`` is AES-256-CBC under the EncodingAESKey of
``random(16) + length(4) + message + app id`` (``wechatpy.crypto.WeChatCrypto``; the app id in it
must be ours). A passive reply is XML too, encrypted the same way in safe mode.

XML is parsed by ``defusedxml`` (no DTD, no entities, no external references) from a body of at
most :data:`MAX_BODY_BYTES`; a message is a flat ``<xml>`` of at most :data:`MAX_FIELDS` fields.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import check_signature

from shared.errors import BadRequest, ConfigError, Forbidden

MAX_BODY_BYTES = 64 << 10
"""Largest callback body read (WeChat's messages are a few KiB)."""
MAX_FIELDS = 64
MAX_FIELD_CHARS = 8192
MAX_SKEW_S = 300.0
"""A signed request whose timestamp is further than this from our clock is stale (replayed)."""
MAX_REPLY_BYTES = 2000
"""A text reply's content is cut to this many UTF-8 bytes (WeChat's limit is 2048)."""


@dataclass(frozen=True, slots=True)
class Signed:
    """The signature parameters of one callback request (its query string)."""

    signature: str
    timestamp: str
    nonce: str
    msg_signature: str = ""
    encrypt_type: str = ""

    @classmethod
    def from_query(cls, query: Any) -> Signed:
        """From the request's query; a missing or oversized parameter is a forged request."""
        values = {}
        for name in ("signature", "timestamp", "nonce", "msg_signature", "encrypt_type"):
            raw = query.get(name, "")
            if not isinstance(raw, str) or len(raw) > 128:
                raise Forbidden("malformed signature parameters", code="bad_signature")
            values[name] = raw
        if not (values["signature"] and values["timestamp"] and values["nonce"]):
            raise Forbidden("signature, timestamp and nonce are required", code="bad_signature")
        return cls(**values)

    @property
    def safe_mode(self) -> bool:
        """Whether the body is encrypted (``encrypt_type=aes``)."""
        return self.encrypt_type == "aes"


def check_request(token: str, signed: Signed, *, now: float | None = None) -> None:
    """Raise :class:`Forbidden` unless ``signature`` is right and the timestamp is fresh."""
    try:
        check_signature(token, signed.signature, signed.timestamp, signed.nonce)
    except InvalidSignatureException:
        raise Forbidden("the signature does not match", code="bad_signature") from None
    check_fresh(signed.timestamp, now=now)


def check_fresh(timestamp: str, *, now: float | None = None) -> None:
    """Raise :class:`Forbidden` for a timestamp more than :data:`MAX_SKEW_S` from ``now``."""
    try:
        at = int(timestamp)
    except ValueError:
        raise Forbidden("the timestamp is not a number", code="bad_signature") from None
    now = time.time() if now is None else now
    if abs(now - at) > MAX_SKEW_S:
        raise Forbidden(f"the signature is stale (timestamp {at}, {now - at:+.0f} s off)",
                        code="stale_signature")


def parse_xml(body: bytes | str) -> dict[str, str]:
    """A flat ``<xml>`` message → its fields (text of each child; nested ones flattened).

    :class:`BadRequest` for malformed, oversized or dangerous XML (DTDs, entities).
    """
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"the XML is larger than {MAX_BODY_BYTES} bytes", code="too_large")
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise BadRequest(f"malformed XML: {exc}", code="bad_xml") from None
    if root.tag != "xml":
        raise BadRequest(f"the root element is <{root.tag}>, not <xml>", code="bad_xml")
    fields: dict[str, str] = {}
    for child in root.iter():
        if child is root or len(child):
            continue  # containers (ScanCodeInfo, SendLocationInfo…): their leaves count
        if len(fields) >= MAX_FIELDS:
            raise BadRequest(f"more than {MAX_FIELDS} fields", code="bad_xml")
        text = (child.text or "").strip()
        if len(text) > MAX_FIELD_CHARS:
            raise BadRequest(f"field {child.tag} is longer than {MAX_FIELD_CHARS} characters",
                             code="bad_xml")
        fields.setdefault(child.tag, text)
    return fields


class Cipher:
    """Safe mode for one account: decrypt requests, encrypt replies (wechatpy's AES)."""

    def __init__(self, token: str, aes_key: str, app_id: str) -> None:
        if len(aes_key) != 43:
            raise ConfigError("TTI_WECHAT_AES_KEY must be the 43-character EncodingAESKey")
        if not app_id:
            raise ConfigError("TTI_WECHAT_APP_ID is required with TTI_WECHAT_AES_KEY")
        try:
            self._crypto = WeChatCrypto(token, aes_key, app_id)
        except (ValueError, AssertionError):
            raise ConfigError("TTI_WECHAT_AES_KEY is not a valid EncodingAESKey") from None

    def decrypt(self, signed: Signed, fields: dict[str, str]) -> str:
        """The plain message XML of an encrypted body; :class:`Forbidden` for a forged one."""
        encrypt = fields.get("Encrypt")
        if not encrypt:
            raise BadRequest("safe mode: the body has no <Encrypt>", code="bad_xml")
        if not signed.msg_signature:
            raise Forbidden("safe mode: msg_signature is required", code="bad_signature")
        try:
            return str(self._crypto.decrypt_message({"Encrypt": encrypt}, signed.msg_signature,
                                                    signed.timestamp, signed.nonce))
        except InvalidSignatureException:
            raise Forbidden("the message signature does not match",
                            code="bad_signature") from None
        except InvalidAppIdException:
            raise Forbidden("the message is for another app id", code="bad_signature") from None
        except (ValueError, TypeError, IndexError, UnicodeDecodeError, OverflowError) as exc:
            # Signed with our token but not decryptable: a broken sender, not a forgery.
            raise BadRequest(f"cannot decrypt the message: {type(exc).__name__}",
                             code="bad_encryption") from None

    def encrypt(self, reply_xml: str, nonce: str, timestamp: str) -> str:
        """The encrypted envelope of a passive reply."""
        return str(self._crypto.encrypt_message(reply_xml, nonce, timestamp))


def cdata(text: str) -> str:
    """``text`` as a CDATA section (a ``]]>`` inside is split across two sections)."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def cut(text: str, limit: int = MAX_REPLY_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes at a line or character boundary."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    head = raw[:limit - 4].decode("utf-8", "ignore")
    line = head.rfind("\n")
    return (head[:line] if line > len(head) // 2 else head) + "\n…"


def text_reply(to_user: str, from_user: str, content: str, *, now: float | None = None) -> str:
    """A passive text reply (``content`` cut to :data:`MAX_REPLY_BYTES`)."""
    created = int(time.time() if now is None else now)
    return (f"<xml><ToUserName>{cdata(to_user)}</ToUserName>"
            f"<FromUserName>{cdata(from_user)}</FromUserName>"
            f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{cdata(cut(content))}</Content></xml>")


@dataclass(frozen=True, slots=True, kw_only=True)
class Inbound:
    """One message or event from a follower, as the callback's XML carries it."""

    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    msg_id: str = ""
    content: str = ""
    event: str = ""
    event_key: str = ""
    lon: float | None = None
    lat: float | None = None
    label: str = ""
    recognition: str = ""

    @property
    def dedup_key(self) -> str:
        """What identifies a retry: MsgId, or for events the sender and CreateTime."""
        if self.msg_id:
            return f"{self.from_user}:{self.msg_id}"
        return f"{self.from_user}:{self.create_time}:{self.event}:{self.event_key}"


def _coordinate(raw: str, low: float, high: float) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if low <= value <= high else None


def inbound(fields: dict[str, str]) -> Inbound:
    """The fields of a plain message → :class:`Inbound`; :class:`BadRequest` when unusable."""
    to_user, from_user = fields.get("ToUserName", ""), fields.get("FromUserName", "")
    msg_type = fields.get("MsgType", "").lower()
    if not (to_user and from_user and msg_type):
        raise BadRequest("a message needs ToUserName, FromUserName and MsgType",
                         code="bad_message")
    if len(from_user) > 64 or len(to_user) > 64 or len(msg_type) > 32:
        raise BadRequest("oversized message header fields", code="bad_message")
    try:
        created = int(fields.get("CreateTime") or 0)
    except ValueError:
        raise BadRequest("CreateTime is not a number", code="bad_message") from None
    lon = lat = None
    if msg_type == "location":
        lat = _coordinate(fields.get("Location_X", ""), -90.0, 90.0)
        lon = _coordinate(fields.get("Location_Y", ""), -180.0, 180.0)
    elif fields.get("Event", "").upper() == "LOCATION":
        lat = _coordinate(fields.get("Latitude", ""), -90.0, 90.0)
        lon = _coordinate(fields.get("Longitude", ""), -180.0, 180.0)
    if lon is None or lat is None:
        lon = lat = None
    return Inbound(to_user=to_user, from_user=from_user, create_time=created,
                   msg_type=msg_type, msg_id=fields.get("MsgId", "")[:32],
                   content=fields.get("Content", ""), event=fields.get("Event", "").upper(),
                   event_key=fields.get("EventKey", "")[:128], lon=lon, lat=lat,
                   label=fields.get("Label", "")[:200],
                   recognition=fields.get("Recognition", ""))

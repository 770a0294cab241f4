"""One root exception with a subclass per boundary; each carries a stable ``code``."""

from __future__ import annotations


class TtiError(Exception):
    """Root of every error TTI raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None, details: object = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class ConfigError(TtiError):
    """A setting is missing or malformed."""

    code = "bad_config"


class BadRequest(TtiError):
    """A client sent a request we cannot serve (HTTP 400)."""

    code = "bad_request"
    http_status = 400


class NotFound(TtiError):
    """The requested object does not exist (HTTP 404)."""

    code = "not_found"
    http_status = 404


class Unauthorized(TtiError):
    """Credentials are missing or wrong (HTTP 401)."""

    code = "unauthorized"
    http_status = 401


class DecodeError(TtiError):
    """A message on the bus or at an edge cannot be decoded; retrying will not help."""

    code = "decode_error"
    http_status = 400


class TransientError(TtiError):
    """A handler failed for a reason that may pass (a database away); redeliver later."""

    code = "transient"
    http_status = 503


class BusError(TtiError):
    """The event bus refused or lost a publish."""

    code = "bus_error"
    http_status = 503


class Conflict(TtiError):
    """The request conflicts with the current state (a closed warning acknowledged: HTTP 409)."""

    code = "conflict"
    http_status = 409


class Forbidden(TtiError):
    """Authenticated, but this role may not do that (HTTP 403)."""

    code = "forbidden"
    http_status = 403

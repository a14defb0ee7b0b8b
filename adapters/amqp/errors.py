"""AMQP 0-9-1 reply codes and :class:`FrameError`, the adapter's protocol error (the codec,
the framer and the session raise it; the connection contract answers it with
``connection.close``)."""

from __future__ import annotations

from polymq.core.errors import ProtocolError

__all__ = [
    "REPLY_SUCCESS",
    "CONTENT_TOO_LARGE",
    "NO_ROUTE",
    "NO_CONSUMERS",
    "CONNECTION_FORCED",
    "INVALID_PATH",
    "ACCESS_REFUSED",
    "NOT_FOUND",
    "RESOURCE_LOCKED",
    "PRECONDITION_FAILED",
    "FRAME_ERROR",
    "SYNTAX_ERROR",
    "COMMAND_INVALID",
    "CHANNEL_ERROR",
    "UNEXPECTED_FRAME",
    "RESOURCE_ERROR",
    "NOT_ALLOWED",
    "NOT_IMPLEMENTED",
    "INTERNAL_ERROR",
    "REPLY_NAMES",
    "CHANNEL_ERRORS",
    "FrameError",
]
# reply codes
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

REPLY_NAMES = {
    200: "REPLY_SUCCESS",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}
CHANNEL_ERRORS = frozenset((311, 312, 313, 403, 404, 405, 406))


class FrameError(ProtocolError):
    """A malformed frame or method: ``code`` is the AMQP reply code to close with, ``class_id``
    and ``method_id`` the method that caused it (0 when none)."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text, code)
        self.class_id = class_id
        self.method_id = method_id

"""The AMQP 0-9-1 framer, sans I/O (an :class:`~polymq.core.connection.IFramer`).

A connection starts with the 8-byte protocol header, then carries frames of type (1 byte),
channel (2), payload size (4), payload and the frame-end octet ``0xCE``. There is no length
prefix of the whole frame, so :class:`~polymq.core.framing.LengthPrefixedFramer` does not fit.

:meth:`AMQPFramer.feed` returns ``(type, channel, payload)`` tuples, the header first as a
frame of type :data:`HEADER`. Like the length-prefixed framer it keeps one buffer for the frame
in progress and the number of bytes that frame needs: a frame arriving over many reads is
appended once per read and copied out once, and its announced size is checked against
:attr:`~AMQPFramer.max_length` (the negotiated ``frame_max``) before any of its bytes are kept.
"""

from __future__ import annotations

from zope.interface import implementer

from polymq.core.connection import IFramer
from polymq.core.errors import ProtocolError

from .codec import FRAME_ERROR, PROTOCOL_HEADER, FrameError, _unpack_frame_head

__all__ = ["HEADER", "AMQPFramer", "BadProtocolHeader"]

HEADER = -1
"""Frame type of the protocol header (no wire frame type is negative)."""

_HEADER_FRAME = (HEADER, 0, PROTOCOL_HEADER)
_FRAME_END = 0xCE


class BadProtocolHeader(ProtocolError):
    """The connection did not start with the AMQP 0-9-1 protocol header; the answer is ours
    (the specification's way of saying which version the server speaks)."""


@implementer(IFramer)
class AMQPFramer:
    """Splits one AMQP 0-9-1 connection's bytes into ``(type, channel, payload)`` frames.

    ``max_length`` is the largest whole frame (header, payload and frame-end: AMQP's
    ``frame_max``); the session lowers it once ``connection.tune-ok`` is negotiated. A frame over
    it, or without its frame-end octet, sets :attr:`error` (a
    :class:`~polymq.adapters.amqp.codec.FrameError`, reply code 501) after the frames before it.
    """

    __slots__ = ("max_length", "error", "_buf", "_need", "_header")

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.error: ProtocolError | None = None
        self._buf = bytearray()
        self._need = 0  # bytes the buffered frame needs in all (0: its head is incomplete)
        self._header = True  # the protocol header is still to come

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list:
        if self.error is not None:
            return []
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []  # the rest of a frame still to come: no copy of what is there
            data = bytes(buf)
            buf.clear()
            self._need = 0
        frames: list = []
        pos = 0
        n = len(data)
        if self._header:
            if n < 8:
                buf += data
                return frames
            if data[:8] != PROTOCOL_HEADER:
                raise BadProtocolHeader(f"unsupported protocol header {bytes(data[:8])!r}")
            self._header = False
            frames.append(_HEADER_FRAME)
            pos = 8
        limit = self.max_length - 8
        unpack = _unpack_frame_head
        while n - pos >= 7:
            ftype, ch, size = unpack(data, pos)
            if size > limit:
                self.error = FrameError(
                    FRAME_ERROR, f"frame size {size} exceeds frame_max {self.max_length}"
                )
                return frames
            end = pos + 7 + size
            if end >= n:
                self._need = end + 1 - pos
                break
            if data[end] != _FRAME_END:
                self.error = FrameError(FRAME_ERROR, f"bad frame end byte {data[end]:#x}")
                return frames
            frames.append((ftype, ch, data[pos + 7 : end]))
            pos = end + 1
        if pos < n:
            buf += data[pos:] if pos else data
        return frames

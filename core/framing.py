"""Sans-I/O framers shared by the adapters (see :class:`polymq.core.connection.IFramer`).

Each keeps one buffer for the frame in progress and the length it waits for, so a large frame
arriving over many reads is appended once per read and copied out once, and its announced
length is checked before any of its bytes are kept (the model is Twisted's
``IntNStringReceiver``).
"""

from __future__ import annotations

import struct

from zope.interface import implementer

from .connection import IFramer
from .errors import FrameTooLarge, ProtocolError

__all__ = ["LengthPrefixedFramer"]


@implementer(IFramer)
class LengthPrefixedFramer:
    """Frames that start with a big-endian length of what follows (Kafka, OpenWire ...).

    ``feed`` returns the frames without their prefix, as ``bytes`` (or ``memoryview`` slices of
    one buffer with ``views=True``, cheaper when the session decodes them at once). A length
    below ``min_length`` or above ``max_length`` raises :class:`FrameTooLarge` /
    :class:`ProtocolError`.
    """

    __slots__ = (
        "max_length",
        "min_length",
        "error",
        "buffered",
        "_buf",
        "_need",
        "_hsize",
        "_unpack",
        "_views",
    )

    def __init__(
        self, max_length: int, prefix: str = ">i", min_length: int = 0, views: bool = False
    ) -> None:
        self.max_length = max_length
        self.min_length = min_length
        self.error: ProtocolError | None = None
        self._buf = bytearray()
        self._need = 0  # bytes the buffered frame needs in all (0: its header is incomplete)
        header = struct.Struct(prefix)
        self._hsize = header.size
        self._unpack = header.unpack_from
        self._views = views
        self.buffered = 0  # bytes held for the frame in progress (always len(_buf))

    def feed(self, data: bytes) -> list:
        buf = self._buf
        hsize = self._hsize
        unpack = self._unpack
        if buf:
            buf += data
            if len(buf) < self._need:
                self.buffered = len(buf)
                return []  # the rest of a frame still to come: no copy of what is there
            if self._views:
                # the frames are views of the buffer: hand it over rather than copy it
                data = buf
                self._buf = buf = bytearray()
            else:
                data = bytes(buf)
                buf.clear()
            self._need = 0
        else:
            n = len(data)
            if n > hsize:
                # a read of exactly one whole frame (the usual one when each request waits
                # for its answer): no loop, nothing buffered
                (size,) = unpack(data, 0)
                if size == n - hsize and self.min_length <= size <= self.max_length:
                    return [memoryview(data)[hsize:] if self._views else data[hsize:]]
        lo, hi = self.min_length, self.max_length
        src = memoryview(data) if self._views else data
        frames: list = []
        append = frames.append
        pos = 0
        n = len(data)
        last = n - hsize  # the last place a whole header can start
        while pos <= last:
            (size,) = unpack(data, pos)
            if size > hi or size < lo:
                if size > hi:
                    raise FrameTooLarge(f"frame length {size} over the maximum {hi}")
                raise ProtocolError(f"frame length {size} under the minimum {lo}")
            start = pos + hsize
            end = start + size
            if end > n:
                self._need = end - pos
                break
            append(src[start:end])
            pos = end
        if pos < n:
            buf += src[pos:]
        self.buffered = len(buf)
        return frames


def starts_as(head: bytes, prefix: bytes) -> bool | None:
    """Whether ``head`` (the first bytes of a connection) starts with ``prefix``: None while
    too few bytes have arrived to tell (the shape of an adapter's ``looks_like``)."""
    n = min(len(head), len(prefix))
    if head[:n] != prefix[:n]:
        return False
    return True if n == len(prefix) else None

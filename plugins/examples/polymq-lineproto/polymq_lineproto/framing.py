"""Splitting the byte stream into lines, without I/O (an ``IFramer`` of the adapter contract)."""

from __future__ import annotations

from zope.interface import implementer

from polymq.core.connection import IFramer
from polymq.core.errors import FrameTooLarge


@implementer(IFramer)
class LineFramer:
    """Lines ended by ``\\n`` (a ``\\r`` before it is dropped), each at most ``max_length``
    bytes. The line in progress is kept in one buffer; a line that would grow past the
    maximum is refused before its bytes are kept (``error`` is set, the lines before it are
    returned), so a client cannot make the broker hold more than ``max_length`` for it."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.error: FrameTooLarge | None = None
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        buf = self._buf
        limit = self.max_length
        start = 0  # offset of the first byte of data not yet in a line
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if len(buf) + end - start > limit:
                self.error = FrameTooLarge(f"line longer than {limit} bytes")
                return lines
            if buf:
                buf += data[start:end]
                line = bytes(buf)
                buf.clear()
            else:
                line = data[start:end]
            lines.append(line[:-1] if line.endswith(b"\r") else line)
            start = end + 1
        if start < len(data):
            if len(buf) + len(data) - start > limit:
                self.error = FrameTooLarge(f"line longer than {limit} bytes")
                return lines
            buf += data[start:]
        return lines

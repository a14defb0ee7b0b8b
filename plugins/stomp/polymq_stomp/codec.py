"""STOMP frames, sans-I/O: the framer (an ``IFramer`` of the adapter contract) and the encoder.

A frame is a command line, header lines ``name:value``, an empty line, the body and a NUL.
Line ends are ``\\n`` or (1.2) ``\\r\\n``; end-of-lines between frames are heart-beats. With a
``content-length`` header the body is exactly that many bytes (it may hold NULs) and a NUL
must follow it; without one the body ends at the first NUL.

Header values are escaped in 1.1 and 1.2 (``\\\\``, ``\\n``, ``\\c`` and in 1.2 ``\\r``), except
in CONNECT and CONNECTED frames; 1.0 has no escaping. The framer reads one frame at a time
until the session has chosen the version (``one_at_a_time``), so that the frames after
CONNECT are decoded with the negotiated rules.

Every limit is checked before bytes are kept: the header block (``max_header_bytes``, and
``max_headers`` lines), the body (``max_length``, checked against ``content-length`` before
the body is buffered, and against the bytes held while no NUL has come).
"""

from __future__ import annotations

from zope.interface import implementer

from polymq.core.connection import IFramer
from polymq.core.errors import FrameTooLarge, ProtocolError

V10, V11, V12 = "1.0", "1.1", "1.2"
VERSIONS = (V10, V11, V12)

# client frames, and the frames a server sends (a client sending those is refused too)
CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)


class StompError(ProtocolError):
    """Bad input, answered with an ERROR frame whose ``message`` header is ``text``."""


class Frame:
    """One decoded frame: ``command``, ``headers`` (first occurrence of a name wins) and
    ``body``."""

    __slots__ = ("command", "headers", "body")

    def __init__(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        self.command = command
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Frame({self.command!r}, {self.headers!r}, {self.body[:32]!r})"


_UNESCAPE_11 = {"\\": "\\", "n": "\n", "c": ":"}
_UNESCAPE_12 = {"\\": "\\", "n": "\n", "c": ":", "r": "\r"}


def unescape(text: str, version: str) -> str:
    """A header name or value as sent, with the version's escapes undone; an undefined escape
    is a protocol error (1.2 spec: "MUST be treated as a fatal protocol error")."""
    if "\\" not in text:
        return text
    table = _UNESCAPE_12 if version == V12 else _UNESCAPE_11
    out = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1] if i + 1 < n else ""
            rep = table.get(nxt)
            if rep is None:
                raise StompError(f"undefined escape sequence \\{nxt} in a header")
            out.append(rep)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def escape(text: str, version: str) -> str:
    """A header name or value escaped for ``version`` (1.0: line ends replaced by spaces, the
    only way to keep the frame intact). A NUL, which no version can carry in a header (it ends
    the frame), becomes U+FFFD, as MQTT strings do."""
    if "\0" in text:
        text = text.replace("\0", "\ufffd")
    if version == V10:
        if "\n" in text or "\r" in text:
            return text.replace("\r", " ").replace("\n", " ")
        return text
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if ":" in text:
        text = text.replace(":", "\\c")
    if "\r" in text:
        text = text.replace("\r", "\\r") if version == V12 else text.replace("\r", " ")
    return text


def encode_frame(
    command: str,
    headers: list[tuple[str, str]] | tuple = (),
    body: bytes = b"",
    version: str = V12,
    raw: bool = False,
) -> bytes:
    """The bytes of one frame. ``raw``: headers are not escaped (CONNECTED)."""
    lines = [command]
    for name, value in headers:
        if raw:
            lines.append(f"{name}:{value}")
        else:
            lines.append(f"{escape(name, version)}:{escape(value, version)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body + b"\0"


@implementer(IFramer)
class StompFramer:
    """Frames of one connection. ``version`` (None until CONNECT was answered) chooses the
    header escaping; ``one_at_a_time`` makes :meth:`feed` return at most one frame and keep
    the rest buffered until the session clears it."""

    def __init__(self, max_length: int, max_header_bytes: int = 65536, max_headers: int = 1000):
        self.max_length = max_length
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.error: ProtocolError | None = None
        self.version: str | None = None
        self.one_at_a_time = True
        # frames seen while one_at_a_time: CONNECT/STOMP frames are never unescaped
        self._buf = bytearray()
        self._pos = 0  # start of the frame in progress in _buf
        self.heartbeats = 0  # end-of-lines received between frames (tests read it)

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        if data:
            buf += data
        frames: list[Frame] = []
        if self.error is not None:
            return frames
        try:
            while True:
                frame = self._next()
                if frame is None:
                    break
                frames.append(frame)
                if self.one_at_a_time:
                    break
        except ProtocolError as e:
            self.error = e
        # drop what was consumed (one move per read, not per frame)
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        return frames

    def _next(self) -> Frame | None:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        # heart-beats: end-of-lines between frames
        while pos < end and buf[pos] in (10, 13):
            if buf[pos] == 13:
                if pos + 1 >= end:
                    break
                if buf[pos + 1] != 10:
                    raise StompError("a carriage return not followed by a line feed")
                pos += 1
            pos += 1
            self.heartbeats += 1
        self._pos = pos
        if pos >= end:
            return None
        # the header block ends with an empty line
        limit = pos + self.max_header_bytes + 3
        head_end = buf.find(b"\n\n", pos, limit)
        # a CRLF empty line can only end the headers before the first LF LF
        crlf = buf.find(b"\n\r\n", pos, head_end + 2 if head_end >= 0 else limit)
        if head_end < 0 and crlf < 0:
            if end - pos > self.max_header_bytes:
                raise FrameTooLarge(f"frame headers longer than {self.max_header_bytes} bytes")
            return None
        if crlf >= 0 and (head_end < 0 or crlf < head_end):
            body_start = crlf + 3
            head_end = crlf
        else:
            body_start = head_end + 2
        try:
            head = buf[pos:head_end].decode("utf-8")
        except UnicodeDecodeError:
            raise StompError("frame headers are not valid UTF-8") from None
        lines = head.split("\n")
        command = lines[0].rstrip("\r")
        if command not in CLIENT_COMMANDS:
            raise StompError(f"unknown command {command[:40]!r}")
        if len(lines) - 1 > self.max_headers:
            raise FrameTooLarge(f"more than {self.max_headers} headers")
        version = self.version
        decode = version is not None and version != V10 and command not in ("CONNECT", "STOMP")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line.endswith("\r"):
                line = line[:-1]
            name, sep, value = line.partition(":")
            if not sep:
                raise StompError(f"header line without a colon: {line[:40]!r}")
            if decode:
                name = unescape(name, version)
                value = unescape(value, version)
            elif version == V10 or version is None:
                # 1.0 and CONNECT: leading/trailing spaces are not part of the value in 1.0;
                # keep values as sent (clients send none)
                pass
            if name not in headers:
                headers[name] = value
        length_text = headers.get("content-length")
        if length_text is not None:
            length_text = length_text.strip()
            if not length_text.isdigit():
                raise StompError(f"content-length is not a number: {length_text[:20]!r}")
            length = int(length_text)
            if length > self.max_length:
                raise FrameTooLarge(
                    f"content-length {length} is over the maximum of {self.max_length} bytes"
                )
            if end < body_start + length + 1:
                return None
            if buf[body_start + length] != 0:
                raise StompError("the body is not followed by NUL after content-length bytes")
            body = bytes(buf[body_start : body_start + length])
            self._pos = body_start + length + 1
        else:
            nul = buf.find(b"\0", body_start, body_start + self.max_length + 1)
            if nul < 0:
                if end - body_start > self.max_length:
                    raise FrameTooLarge(f"body longer than {self.max_length} bytes")
                return None
            body = bytes(buf[body_start:nul])
            self._pos = nul + 1
        return Frame(command, headers, body)

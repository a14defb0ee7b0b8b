"""Helpers for the STOMP tests: stomp.py connections that collect what arrives, and a raw
socket client for frames stomp.py would never send."""

from __future__ import annotations

import queue
import socket
import time

import stomp

CLASSES = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


class Collector(stomp.ConnectionListener):
    """Everything a stomp.py connection receives, in order, waited for with a timeout."""

    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.errors: list = []
        self.receipts: list[str] = []
        self.heartbeats = 0
        self.disconnected = False

    def on_message(self, frame) -> None:
        self.messages.put(frame)

    def on_error(self, frame) -> None:
        self.errors.append(frame)

    def on_receipt(self, frame) -> None:
        self.receipts.append(frame.headers["receipt-id"])

    def on_heartbeat(self) -> None:
        self.heartbeats += 1

    def on_disconnected(self) -> None:
        self.disconnected = True

    def get(self, timeout: float = 10.0):
        return self.messages.get(timeout=timeout)

    def take(self, n: int, timeout: float = 10.0) -> list:
        return [self.get(timeout) for _ in range(n)]

    def none(self, wait: float = 0.5) -> bool:
        """Nothing more arrives within ``wait`` seconds."""
        try:
            frame = self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        self.messages.put(frame)
        return False

    def wait_receipt(self, receipt: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while receipt not in self.receipts:
            if time.monotonic() > deadline:
                raise AssertionError(f"no RECEIPT {receipt!r}; got {self.receipts}")
            time.sleep(0.01)


def connect(port: int, version: str = "1.2", client_id: str | None = None, **kwargs):
    """A connected stomp.py connection and its collector."""
    conn = CLASSES[version]([("127.0.0.1", port)], **kwargs)
    collector = Collector()
    conn.set_listener("c", collector)
    headers = {"client-id": client_id} if client_id else {}
    conn.connect("guest", "guest", wait=True, headers=headers)
    return conn, collector


def disconnect(conn, collector: Collector, timeout: float = 10.0) -> None:
    """DISCONNECT and wait until the server closed the socket (stomp.py returns before its
    RECEIPT arrives, and a subscription is live until then)."""
    conn.disconnect()
    deadline = time.monotonic() + timeout
    while not collector.disconnected:
        if time.monotonic() > deadline:
            raise AssertionError("the server did not close the connection after DISCONNECT")
        time.sleep(0.01)


def ack_args(frame, version: str) -> tuple:
    """The arguments of ``conn.ack`` / ``conn.nack`` for a received MESSAGE frame."""
    h = frame.headers
    if version == "1.2":
        return (h["ack"],)
    if version == "1.1":
        return (h["message-id"], h["subscription"])
    return (h["message-id"],)


class RawStomp:
    """A plain socket speaking whatever bytes a test gives it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, timeout: float = 10.0) -> tuple[str, dict, bytes] | None:
        """The next frame (heart-beat EOLs skipped), or None once the server closed."""
        self.sock.settimeout(timeout)
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            head_end = self.buf.find(b"\n\n")
            if head_end >= 0:
                head = self.buf[:head_end].decode()
                lines = head.split("\n")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k, v)
                start = head_end + 2
                if "content-length" in headers:
                    end = start + int(headers["content-length"])
                else:
                    end = self.buf.find(b"\0", start)
                if end >= 0 and len(self.buf) > end:
                    body = self.buf[start:end]
                    self.buf = self.buf[end + 1 :]
                    return lines[0], headers, body
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def closed(self, timeout: float = 10.0) -> bool:
        """The server closes the connection (after any frames, which are dropped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def connect_frame(version: str = "1.2", **headers: str) -> bytes:
    lines = ["CONNECT", f"accept-version:{version}", "host:/", "login:guest", "passcode:guest"]
    lines += [f"{k.replace('_', '-')}:{v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + b"\0"


class StompInterop:
    """stomp.py behind the interface of tests/interop/clients.py: ``subscribe(key)``,
    ``publish(key, out)`` and ``receive(handle, n)`` on ``/topic/<amq.topic key>``, with every
    standard field carried in the header STOMP uses for it (docs/mapping.md)."""

    def __init__(self, port: int) -> None:
        self.conn, self.got = connect(port, auto_decode=False)
        self.inbox: dict[str, list] = {}
        self.n = 0

    def subscribe(self, key: str, destination: str | None = None) -> str:
        self.n += 1
        handle = f"s{self.n}"
        self.conn.subscribe(destination or f"/topic/{key}", id=handle, receipt=f"sub-{handle}")
        self.got.wait_receipt(f"sub-{handle}")
        self.inbox[handle] = []
        return handle

    def publish(self, key: str, out, destination: str | None = None) -> None:
        h = {k: str(v) for k, v in out.headers.items()}
        for name, value in (
            ("content-type", out.content_type),
            ("content-encoding", out.content_encoding),
            ("amqp-message-id", out.message_id),
            ("correlation-id", out.correlation_id),
            ("reply-to", out.reply_to),
            ("type", out.type),
            ("priority", out.priority),
            ("timestamp", out.timestamp_ms),
            ("expiration", out.ttl_ms),
        ):
            if value is not None:
                h[name] = str(value)
        if out.user_id is not None:
            h["user-id"] = out.user_id
        if out.key is not None:
            h["x-kafka-key"] = out.key.decode("utf-8")
        h["persistent"] = "true" if out.durable else "false"
        self.n += 1
        self.conn.send(destination or f"/topic/{key}", out.body, headers=h, receipt=f"p{self.n}")
        self.got.wait_receipt(f"p{self.n}")

    def receive(self, handle: str, n: int, timeout: float = 10.0) -> list:
        from clients import Got

        deadline = time.monotonic() + timeout
        while len(self.inbox[handle]) < n and time.monotonic() < deadline:
            try:
                frame = self.got.get(max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            h = {k: v.decode() if isinstance(v, bytes) else v for k, v in frame.headers.items()}
            own = {
                "subscription", "message-id", "ack", "destination", "content-length",
                "content-type", "content-encoding", "amqp-message-id", "correlation-id",
                "reply-to", "type", "user-id", "timestamp", "expires", "priority",
                "persistent", "redelivered",
            }  # fmt: skip
            expires = int(h["expires"]) if "expires" in h else None
            key = h.get("x-kafka-key")
            got = Got(
                frame.body if isinstance(frame.body, bytes) else frame.body.encode(),
                content_type=h.get("content-type"),
                content_encoding=h.get("content-encoding"),
                message_id=h.get("amqp-message-id"),
                correlation_id=h.get("correlation-id"),
                reply_to=h.get("reply-to"),
                user_id=h.get("user-id"),
                type=h.get("type"),
                timestamp_ms=int(h["timestamp"]) if "timestamp" in h else None,
                ttl_left_ms=expires - int(time.time() * 1000) if expires else None,
                priority=int(h["priority"]) if "priority" in h else None,
                durable=h.get("persistent") == "true",
                headers={k: v for k, v in h.items() if k not in own},
                key=key.encode() if key is not None else None,
                topic=h.get("destination"),
            )
            self.inbox[h["subscription"]].append(got)
        got, self.inbox[handle] = self.inbox[handle][:n], self.inbox[handle][n:]
        return got

    def done(self, handle: str) -> None:
        self.conn.unsubscribe(handle)

    def close(self) -> None:
        self.conn.disconnect()

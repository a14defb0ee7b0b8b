"""STOMP 1.2 load client: raw sockets, SEND frames pre-encoded with content-length and patched
in place, batched writes. Fan-out = ``/topic/<topic>`` with one subscription per consumer;
queue = ``/queue/<topic>`` with competing subscriptions. At-least-once: every SEND asks for a
RECEIPT (the broker's confirm), a window of them in flight, and consumers acknowledge
cumulatively (``ack:client``) once per read. Persistent: ``persistent:true`` and, for fan-out,
durable subscriptions (RabbitMQ's ``durable`` and ActiveMQ's ``activemq.subscriptionName``
headers both sent). The same frames work against polymq, RabbitMQ and ActiveMQ."""

from __future__ import annotations

import os
import socket
import threading

from ..common import Budget, Pacer, Tally, now_ns, read_answers, stamp
from ..side import (
    DriverError,
    SideContext,
    consumer_result,
    run_consumer_threads,
    run_producer_threads,
)


def _frame(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = command + "\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n"
    return head.encode() + body + b"\0"


class Conn:
    def __init__(self, ctx: SideContext, client_id: str, timeout: float = 10.0) -> None:
        t = ctx.target
        self.sock = socket.create_connection((t.host, t.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        headers = {
            "accept-version": "1.2",
            "host": t.vhost,
            "heart-beat": "0,0",
            "client-id": client_id,
            "login": t.username or "guest",
            "passcode": t.password or "guest",
        }
        self.sock.sendall(_frame("CONNECT", headers))
        try:
            command, h, _ = self.read_frame()
        except DriverError:
            raise DriverError(
                f"stomp: {t.url} closed the connection instead of answering CONNECT "
                "(not a STOMP broker?)"
            ) from None
        if command != "CONNECTED":
            raise DriverError(f"stomp: connection refused by {t.url}: {h.get('message', command)}")
        self.sock.settimeout(0.2)

    def read_frame(self) -> tuple[str, dict[str, str], bytes]:
        while True:
            got = _parse(self.buf, 0)
            if got is not None:
                command, headers, start, end, nxt = got
                body = bytes(self.buf[start:end])
                del self.buf[:nxt]
                return command, headers, body
            data = self.sock.recv(65536)
            if not data:
                raise DriverError("stomp: broker closed the connection")
            self.buf += data

    def close(self) -> None:
        try:
            self.sock.settimeout(2)
            self.sock.sendall(_frame("DISCONNECT", {}))
            self.sock.close()
        except OSError:
            pass


def _parse(buf, pos: int) -> tuple[str, dict[str, str], int, int, int] | None:
    """(command, headers, body start, body end, next frame) of the frame at ``pos`` (leading
    end-of-lines skipped), or None if incomplete."""
    n = len(buf)
    while pos < n and buf[pos] in (10, 13):
        pos += 1
    head_end = buf.find(b"\n\n", pos)
    if head_end < 0:
        return None
    lines = bytes(buf[pos:head_end]).decode("utf-8", "replace").split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.rstrip("\r").partition(":")
        headers.setdefault(k, v)
    start = head_end + 2
    length = headers.get("content-length")
    if length is not None:
        end = start + int(length)
        if end >= n:
            return None
    else:
        end = buf.find(b"\0", start)
        if end < 0:
            return None
    return lines[0].rstrip("\r"), headers, start, end, end + 1


def _destination(ctx: SideContext) -> str:
    kind = "topic" if ctx.wl.pattern == "fanout" else "queue"
    return f"/{kind}/{ctx.topic}"


# ---------------------------------------------------------------------------------------------
# consumers
# ---------------------------------------------------------------------------------------------


def _consume(ctx: SideContext, conn: Conn, tally: Tally, stop: threading.Event, acks: bool) -> None:
    sock = conn.sock
    buf = conn.buf
    add = tally.add
    try:
        while not stop.is_set():
            try:
                data = sock.recv(262144)
            except TimeoutError:
                continue
            if not data:
                ctx.error("stomp consumer: broker closed the connection")
                return
            now = now_ns()
            buf += data
            pos = 0
            last_ack = None
            while True:
                got = _parse(buf, pos)
                if got is None:
                    break
                command, headers, start, end, nxt = got
                if command == "MESSAGE":
                    add(buf[start:end], now)
                    last_ack = headers.get("ack")
                elif command == "ERROR":
                    ctx.error(f"stomp consumer: ERROR {headers.get('message', '')}")
                    return
                pos = nxt
            del buf[:pos]
            if acks and last_ack is not None:
                sock.sendall(_frame("ACK", {"id": last_ack}))  # cumulative (ack:client)
    except OSError as e:
        if not stop.is_set():
            ctx.error(f"stomp consumer: {e}")


def run_consumers(ctx: SideContext) -> dict:
    wl = ctx.wl
    acks = wl.guarantee != "at-most-once"
    durable = wl.guarantee == "persistent" and wl.pattern == "fanout"
    dest = _destination(ctx)
    conns = []
    for i in range(wl.consumers):
        c = Conn(ctx, f"cmp-{ctx.run}-c{i}")
        headers = {
            "id": f"s{i}",
            "destination": dest,
            "ack": "client" if acks else "auto",
            "receipt": "subscribed",
        }
        if acks:  # the window of unacknowledged messages, in each broker's words
            headers["prefetch-count"] = str(wl.window)
            headers["activemq.prefetchSize"] = str(wl.window)
        if durable:
            headers.update(
                {"durable": "true", "auto-delete": "false", "activemq.subscriptionName": f"s{i}"}
            )
        c.sock.settimeout(10)
        c.sock.sendall(_frame("SUBSCRIBE", headers))
        command, h, _ = c.read_frame()
        if command != "RECEIPT":
            raise DriverError(f"stomp: subscription to {dest!r} refused: {h.get('message')}")
        c.sock.settimeout(0.2)
        conns.append(c)
    tallies, wire, cpu0 = run_consumer_threads(ctx, conns, _consume, acks)
    for i, c in enumerate(conns):
        if durable:  # drop the durable subscription again
            try:
                c.sock.sendall(
                    _frame(
                        "UNSUBSCRIBE",
                        {"id": f"s{i}", "durable": "true", "activemq.subscriptionName": f"s{i}"},
                    )
                )
            except OSError:
                pass
        c.close()
    return consumer_result(ctx, tallies, wire, cpu0)


# ---------------------------------------------------------------------------------------------
# producers
# ---------------------------------------------------------------------------------------------


def _produce(ctx: SideContext, index: int, conn: Conn, out: dict) -> None:
    wl = ctx.wl
    confirm = wl.guarantee != "at-most-once"
    headers = {"destination": _destination(ctx), "content-length": str(wl.size)}
    if wl.guarantee == "persistent":
        # only when true: RabbitMQ also reads `persistent` as the durability of the queue it
        # declares for /queue/, and false would clash with the consumers' declaration
        headers["persistent"] = "true"
    if confirm:
        headers["receipt"] = "0" * 10  # patched: the sequence number, fixed width
    one = _frame("SEND", headers, os.urandom(wl.size))
    flen = len(one)
    body_off = flen - 1 - wl.size
    receipt_off = one.find(b"receipt:") + len("receipt:") if confirm else -1
    batch = 64 if wl.rate is None else 16
    buf = bytearray(one * batch)
    view = memoryview(buf)
    pacer = Pacer(wl.rate, batch)
    budget = Budget(wl.count, wl.duration)
    sock = conn.sock
    rbuf = conn.buf
    sent = acked = 0
    counter = ctx.shared.sent
    first = 0
    try:
        while not ctx.aborted():
            left = budget.left(sent)
            if left <= 0:
                break
            n = min(pacer.due(sent), left)
            if confirm:
                n = min(n, wl.window - (sent - acked))
            if n > 0:
                if not first:
                    first = now_ns()
                for k in range(n):
                    off = k * flen
                    if confirm:
                        buf[off + receipt_off : off + receipt_off + 10] = b"%010d" % (sent + k)
                    stamp(buf, off + body_off, index, sent + k)
                sock.settimeout(30)  # a broker that reads slowly is waited for
                sock.sendall(view[: n * flen])
                sent += n
                counter.value += n
            if confirm:
                acked += _read_receipts(sock, rbuf, block=sent - acked >= wl.window)
        while confirm and acked < sent and not ctx.aborted():
            acked += _read_receipts(sock, rbuf, block=True)
    except OSError as e:
        ctx.error(f"stomp producer {index}: {e}")
    out.update(sent=sent, confirmed=acked if confirm else sent, first_ns=first, last_ns=now_ns())


def _read_receipts(sock: socket.socket, buf: bytearray, block: bool) -> int:
    if not read_answers(sock, buf, block, "stomp producer"):
        return 0
    pos = n = 0
    while True:
        got = _parse(buf, pos)
        if got is None:
            break
        command, headers = got[0], got[1]
        if command == "RECEIPT":
            n += 1
        elif command == "ERROR":
            raise DriverError(f"stomp producer: ERROR {headers.get('message', '')}")
        pos = got[4]
    del buf[:pos]
    return n


def run_producers(ctx: SideContext) -> dict:
    return run_producer_threads(ctx, lambda i: Conn(ctx, f"cmp-{ctx.run}-p{i}"), _produce)

"""AMQP 0-9-1 load client: raw sockets; the rare methods are built and parsed with polymq's
AMQP codec (its construct declarations), publishes are one pre-encoded frame set patched in
place and written in batches; deliveries are parsed by hand and acknowledged with one
``basic.ack(multiple)`` per read. Fan-out = one queue per consumer bound to ``amq.topic``;
queue = one shared queue on the default exchange. At-least-once = publisher confirms + manual
acks; persistent = durable queues, delivery mode 2, confirms."""

from __future__ import annotations

import os
import socket
import struct
import threading

from polymq.adapters.amqp import codec as amqp

from ..common import Budget, Pacer, Tally, now_ns, read_answers, stamp
from ..side import (
    DriverError,
    SideContext,
    consumer_result,
    run_consumer_threads,
    run_producer_threads,
)

_HEAD = struct.Struct(">BHI")
_Q = struct.Struct(">Q")
_HH = struct.Struct(">HH")
PREFETCH = 1000


class Conn:
    def __init__(self, ctx: SideContext, timeout: float = 10.0) -> None:
        t = ctx.target
        self.ctx = ctx
        self.sock = socket.create_connection((t.host, t.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        name, _ = self.expect("connection.start")
        user, password = t.username or "guest", t.password or "guest"
        self.send(
            0,
            "connection.start-ok",
            client_properties={"product": "polymq-compare"},
            mechanism="PLAIN",
            response=f"\0{user}\0{password}".encode(),
            locale="en_US",
        )
        _, tune = self.expect("connection.tune")
        self.frame_max = tune.get("frame_max") or 131072
        self.send(
            0,
            "connection.tune-ok",
            channel_max=tune.get("channel_max") or 1,
            frame_max=self.frame_max,
            heartbeat=0,
        )
        self.send(0, "connection.open", virtual_host=t.vhost)
        self.expect("connection.open-ok")
        self.send(1, "channel.open")
        self.expect("channel.open-ok")

    def send(self, channel: int, name: str, **args) -> None:
        self.sock.sendall(amqp.method_frame(channel, name, **args))

    def read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 7:
                ftype, ch, size = _HEAD.unpack_from(self.buf)
                if len(self.buf) >= size + 8:
                    payload = bytes(self.buf[7 : 7 + size])
                    del self.buf[: size + 8]
                    return ftype, ch, payload
            if self.buf[:4] == b"AMQP":
                raise DriverError(
                    "amqp: the broker does not speak AMQP 0-9-1 (protocol header returned)"
                )
            data = self.sock.recv(65536)
            if not data:
                raise DriverError(
                    f"amqp: {self.ctx.target.url} closed the connection (login "
                    "refused or protocol error)"
                )
            self.buf += data

    def expect(self, name: str) -> tuple[str, dict]:
        while True:
            ftype, _ch, payload = self.read_frame()
            if ftype != 1:
                continue
            spec, args = amqp.decode_method(payload)
            if spec.name in ("connection.close", "channel.close"):
                raise DriverError(
                    f"amqp: {spec.name} {args.get('reply_code')} {args.get('reply_text')}"
                )
            if spec.name == name:
                return spec.name, args

    def close(self) -> None:
        try:
            self.sock.settimeout(2)
            self.send(
                0, "connection.close", reply_code=200, reply_text="bye", class_id=0, method_id=0
            )
            self.expect("connection.close-ok")
        except (OSError, DriverError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _names(ctx: SideContext) -> tuple[str, str]:
    """(exchange, routing key) producers publish to."""
    if ctx.wl.pattern == "fanout":
        return "amq.topic", ctx.topic
    return "", f"polymq-compare-{ctx.run}"


# ---------------------------------------------------------------------------------------------
# consumers
# ---------------------------------------------------------------------------------------------


def _consume(
    ctx: SideContext, conn: Conn, tally: Tally, stop: threading.Event, no_ack: bool
) -> None:
    sock = conn.sock
    buf = conn.buf
    add = tally.add
    head = _HEAD.unpack_from
    body_left = -1  # bytes of the current message still to come (-1: expecting a method)
    parts: list[bytes] = []
    try:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data = sock.recv(262144)
            except TimeoutError:
                continue
            if not data:
                ctx.error("amqp consumer: broker closed the connection")
                return
            now = now_ns()
            buf += data
            pos = 0
            blen = len(buf)
            last_tag = 0
            while blen - pos >= 7:
                ftype, _ch, size = head(buf, pos)
                end = pos + 7 + size
                if end + 1 > blen:
                    break
                if ftype == 3:
                    parts.append(bytes(buf[pos + 7 : end]))
                    body_left -= size
                    if body_left <= 0:
                        add(parts[0] if len(parts) == 1 else b"".join(parts), now)
                        parts = []
                        body_left = -1
                elif ftype == 2:
                    body_left = _Q.unpack_from(buf, pos + 11)[0]
                    if body_left == 0:
                        add(b"", now)
                        body_left = -1
                elif ftype == 1:
                    cid, mid = _HH.unpack_from(buf, pos + 7)
                    if cid == 60 and mid == 60:
                        n = buf[pos + 11]
                        last_tag = _Q.unpack_from(buf, pos + 12 + n)[0]
                    elif (cid, mid) in ((20, 40), (10, 50)):
                        _, args = amqp.decode_method(bytes(buf[pos + 7 : end]))
                        ctx.error(
                            f"amqp consumer: broker closed: {args.get('reply_code')} "
                            f"{args.get('reply_text')}"
                        )
                        return
                pos = end + 1
            del buf[:pos]
            if last_tag and not no_ack:
                sock.sendall(amqp.frame(1, 1, b"\x00\x3c\x00\x50" + _Q.pack(last_tag) + b"\x01"))
    except OSError as e:
        if not stop.is_set():
            ctx.error(f"amqp consumer: {e}")


def run_consumers(ctx: SideContext) -> dict:
    wl = ctx.wl
    no_ack = wl.guarantee == "at-most-once"
    durable = wl.guarantee == "persistent"
    exchange, key = _names(ctx)
    conns = []
    queues = []
    for i in range(wl.consumers):
        c = Conn(ctx)
        if not no_ack:
            c.send(1, "basic.qos", prefetch_size=0, prefetch_count=PREFETCH, global_=False)
            c.expect("basic.qos-ok")
        if wl.pattern == "fanout":
            q = f"polymq-compare-{ctx.run}-{i}"
            c.send(
                1,
                "queue.declare",
                queue=q,
                durable=durable,
                exclusive=not durable,
                auto_delete=True,
            )
            c.expect("queue.declare-ok")
            c.send(1, "queue.bind", queue=q, exchange=exchange, routing_key=key)
            c.expect("queue.bind-ok")
        else:
            q = key
            c.send(1, "queue.declare", queue=q, durable=True)
            c.expect("queue.declare-ok")
        queues.append(q)
        c.send(1, "basic.consume", queue=q, consumer_tag=f"c{i}", no_ack=no_ack)
        c.expect("basic.consume-ok")
        conns.append(c)
    tallies, wire, cpu0 = run_consumer_threads(ctx, conns, _consume, no_ack)
    for c in conns:
        c.close()
    if durable or wl.pattern == "queue":  # leave nothing behind
        try:
            c = Conn(ctx)
            for q in sorted(set(queues)):
                c.send(1, "queue.delete", queue=q)
                c.expect("queue.delete-ok")
            c.close()
        except (OSError, DriverError):
            pass
    return consumer_result(ctx, tallies, wire, cpu0)


# ---------------------------------------------------------------------------------------------
# producers
# ---------------------------------------------------------------------------------------------


def _produce(ctx: SideContext, index: int, conn: Conn, out: dict) -> None:
    wl = ctx.wl
    confirms = wl.guarantee != "at-most-once"
    exchange, key = _names(ctx)
    mode = 2 if wl.guarantee == "persistent" else 1
    if confirms:
        conn.send(1, "confirm.select")
        conn.expect("confirm.select-ok")
    method = amqp.method_frame(1, "basic.publish", exchange=exchange, routing_key=key)
    props = amqp.encode_properties({"delivery_mode": mode})
    body = os.urandom(wl.size)
    content = amqp.content_frames(1, props, body, conn.frame_max)
    one = method + content
    flen = len(one)
    # the body starts right after the method frame, the header frame and a body frame head
    body_off = len(method) + (len(amqp.content_frames(1, props, b"", conn.frame_max))) + 7
    batch = 64 if wl.rate is None else 16
    buf = bytearray(one * batch)
    view = memoryview(buf)
    pacer = Pacer(wl.rate, batch)
    budget = Budget(wl.count, wl.duration)
    sock = conn.sock
    sent = acked = nacked = 0
    counter = ctx.shared.sent
    first = 0
    state = {"acked": 0, "nacked": 0}
    try:
        while not ctx.aborted():
            left = budget.left(sent)
            if left <= 0:
                break
            n = min(pacer.due(sent), left)
            if confirms:
                n = min(n, wl.window - (sent - acked - nacked))
            if n > 0:
                if not first:
                    first = now_ns()
                for k in range(n):
                    stamp(buf, k * flen + body_off, index, sent + k)
                sock.sendall(view[: n * flen])
                sent += n
                counter.value += n
            if confirms:
                _read_confirms(ctx, conn, state, block=sent - acked - nacked >= wl.window)
                acked, nacked = state["acked"], state["nacked"]
        while confirms and acked + nacked < sent and not ctx.aborted():
            _read_confirms(ctx, conn, state, block=True)
            acked, nacked = state["acked"], state["nacked"]
    except OSError as e:
        ctx.error(f"amqp producer {index}: {e}")
    if nacked:
        ctx.error(f"amqp producer {index}: {nacked} publishes nacked by the broker")
    out.update(sent=sent, confirmed=acked if confirms else sent, first_ns=first, last_ns=now_ns())


def _read_confirms(ctx: SideContext, conn: Conn, state: dict, block: bool) -> None:
    buf = conn.buf
    if not read_answers(conn.sock, buf, block, "amqp producer"):
        return
    pos = 0
    blen = len(buf)
    done = state["acked"] + state["nacked"]
    while blen - pos >= 7:
        ftype, _ch, size = _HEAD.unpack_from(buf, pos)
        end = pos + 7 + size
        if end + 1 > blen:
            break
        if ftype == 1:
            cid, mid = _HH.unpack_from(buf, pos + 7)
            if cid == 60 and mid in (80, 120):
                tag = _Q.unpack_from(buf, pos + 11)[0]
                multiple = buf[pos + 19] & 1
                n = tag - done if multiple else 1
                if n > 0:
                    state["nacked" if mid == 120 else "acked"] += n
                    done += n
            elif (cid, mid) in ((20, 40), (10, 50)):
                _, args = amqp.decode_method(bytes(buf[pos + 7 : end]))
                raise DriverError(
                    f"amqp producer: broker closed: {args.get('reply_code')} "
                    f"{args.get('reply_text')}"
                )
        pos = end + 1
    del buf[:pos]


def run_producers(ctx: SideContext) -> dict:
    return run_producer_threads(ctx, lambda i: Conn(ctx), _produce)

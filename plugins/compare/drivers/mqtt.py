"""MQTT 3.1.1 / 5.0 load client: raw sockets, pre-encoded PUBLISH frames patched in place,
batched writes, PUBACKs batched per read. Fan-out = one topic, N subscribers; queue = MQTT 5
shared subscription ``$share/compare/<topic>``. Persistent = QoS 1 with persistent sessions."""

from __future__ import annotations

import os
import socket
import struct
import threading

from ..common import Budget, Pacer, Tally, now_ns, read_answers, stamp
from ..side import (
    DriverError,
    SideContext,
    consumer_result,
    run_consumer_threads,
    run_producer_threads,
)

_H = struct.Struct(">H")
CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x84: "unsupported protocol version",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x85: "client id rejected",
}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _s(text: str) -> bytes:
    b = text.encode()
    return _H.pack(len(b)) + b


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


class Conn:
    def __init__(self, ctx: SideContext, client_id: str, clean: bool, timeout: float = 10.0):
        t = ctx.target
        self.v5 = ctx.wl.mqtt_version == 5
        self.sock = socket.create_connection((t.host, t.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        flags = 0x02 if clean else 0
        payload = _s(client_id)
        if t.username:
            flags |= 0x80
            payload += _s(t.username)
            if t.password is not None:
                flags |= 0x40
                payload += _s(t.password)
        props = b""
        if self.v5:
            p = b"" if clean else b"\x11" + struct.pack(">I", 600)  # session expiry
            props = varint(len(p)) + p
        head = _s("MQTT") + bytes((5 if self.v5 else 4, flags)) + _H.pack(0) + props
        self.sock.sendall(frame(0x10, head + payload))
        try:
            first, body = self.read_frame()
        except DriverError:
            raise DriverError(
                f"mqtt: {t.url} closed the connection instead of answering CONNECT (MQTT "
                f"{'5.0' if self.v5 else '3.1.1'} not supported, or not an MQTT broker?)"
            ) from None
        if first >> 4 != 2 or len(body) < 2:
            raise DriverError(f"mqtt: expected CONNACK, got packet type {first >> 4}")
        if body[1]:
            why = CONNACK_CODES.get(body[1], f"code {body[1]}")
            raise DriverError(f"mqtt: connection refused by {t.url}: {why}")
        self.receive_max = 65535
        if self.v5:
            n, pos = _varint_at(body, 2)
            end = pos + n
            while pos < end:
                pid = body[pos]
                if pid == 0x21:
                    self.receive_max = _H.unpack_from(body, pos + 1)[0]
                    pos += 3
                else:
                    break  # only receive maximum matters here
        self.sock.settimeout(0.2)

    def read_frame(self) -> tuple[int, bytes]:
        while True:
            got = _parse(self.buf, 0)
            if got is not None:
                first, start, end = got
                body = bytes(self.buf[start:end])
                del self.buf[:end]
                return first, body
            data = self.sock.recv(65536)
            if not data:
                raise DriverError("mqtt: broker closed the connection")
            self.buf += data

    def close(self) -> None:
        try:
            self.sock.settimeout(2)
            self.sock.sendall(b"\xe0\x00")
            self.sock.close()
        except OSError:
            pass


def _varint_at(buf, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift > 21:
            raise DriverError("mqtt: malformed remaining length from broker")


def _parse(buf, pos: int) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the frame at pos, or None if incomplete."""
    blen = len(buf)
    if blen - pos < 2:
        return None
    n = shift = 0
    i = pos + 1
    while True:
        if i >= blen:
            return None
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise DriverError("mqtt: malformed remaining length from broker")
    if i + n > blen:
        return None
    return buf[pos], i, i + n


def _qos(ctx: SideContext) -> int:
    return 0 if ctx.wl.guarantee == "at-most-once" else 1


def _topic(ctx: SideContext) -> str:
    return f"polymq-compare/{ctx.run}"


# ---------------------------------------------------------------------------------------------
# consumers
# ---------------------------------------------------------------------------------------------


def _consume(ctx: SideContext, conn: Conn, tally: Tally, stop: threading.Event) -> None:
    v5 = conn.v5
    sock = conn.sock
    buf = conn.buf
    add = tally.add
    unpack_h = _H.unpack_from
    try:
        while not stop.is_set():
            try:
                data = sock.recv(262144)
            except TimeoutError:
                continue
            if not data:
                ctx.error("mqtt consumer: broker closed the connection")
                return
            now = now_ns()
            buf += data
            pos = 0
            acks = []
            while True:
                got = _parse(buf, pos)
                if got is None:
                    break
                first, start, end = got
                if first >> 4 == 3:
                    tlen = unpack_h(buf, start)[0]
                    p = start + 2 + tlen
                    if first & 0x06:
                        acks.append(b"\x40\x02" + buf[p : p + 2])
                        p += 2
                    if v5:
                        plen, p = _varint_at(buf, p)
                        p += plen
                    add(buf[p:end], now)
                pos = end
            del buf[:pos]
            if acks:
                sock.sendall(b"".join(acks))
    except OSError as e:
        if not stop.is_set():
            ctx.error(f"mqtt consumer: {e}")


def run_consumers(ctx: SideContext) -> dict:
    wl = ctx.wl
    qos = _qos(ctx)
    persistent = wl.guarantee == "persistent"
    flt = _topic(ctx) if wl.pattern == "fanout" else f"$share/compare/{_topic(ctx)}"
    conns = []
    for i in range(wl.consumers):
        c = Conn(ctx, f"cmp-{ctx.run}-c{i}", clean=not persistent)
        props = b"\x00" if c.v5 else b""
        c.sock.settimeout(10)
        c.sock.sendall(frame(0x82, _H.pack(1) + props + _s(flt) + bytes((qos,))))
        first, body = c.read_frame()
        codes = body[2:]
        if c.v5:
            n, p = _varint_at(body, 2)
            codes = body[p + n :]
        if first >> 4 != 9 or not codes or codes[0] >= 0x80:
            raise DriverError(f"mqtt: subscription to {flt!r} refused")
        c.sock.settimeout(0.2)
        conns.append(c)
    tallies, wire, cpu0 = run_consumer_threads(ctx, conns, _consume)
    for c in conns:
        c.close()
    if persistent:  # drop the persistent sessions again
        for i in range(wl.consumers):
            try:
                Conn(ctx, f"cmp-{ctx.run}-c{i}", clean=True).close()
            except (OSError, DriverError):
                pass
    return consumer_result(ctx, tallies, wire, cpu0)


# ---------------------------------------------------------------------------------------------
# producers
# ---------------------------------------------------------------------------------------------


def _produce(ctx: SideContext, index: int, conn: Conn, out: dict) -> None:
    wl = ctx.wl
    qos = _qos(ctx)
    topic = _s(_topic(ctx))
    props = b"\x00" if conn.v5 else b""
    pid_len = 2 if qos else 0
    rest = len(topic) + pid_len + len(props) + wl.size
    head = bytes((0x30 | (qos << 1),)) + varint(rest) + topic
    one = head + b"\x00" * pid_len + props + os.urandom(wl.size)
    flen = len(one)
    pid_off = len(head)
    body_off = pid_off + pid_len + len(props)
    batch = 64 if wl.rate is None else 16
    window = max(1, min(wl.window, conn.receive_max))
    buf = bytearray(one * batch)
    view = memoryview(buf)
    pacer = Pacer(wl.rate, batch)
    budget = Budget(wl.count, wl.duration)
    sock = conn.sock
    rbuf = conn.buf
    sent = acked = 0
    packet_id = 0
    counter = ctx.shared.sent
    first = 0
    try:
        while not ctx.aborted():
            left = budget.left(sent)
            if left <= 0:
                break
            n = min(pacer.due(sent), left)
            if qos:
                n = min(n, window - (sent - acked))
            if n > 0:
                if not first:
                    first = now_ns()
                for k in range(n):
                    off = k * flen
                    if qos:
                        packet_id = packet_id % 65535 + 1
                        buf[off + pid_off] = packet_id >> 8
                        buf[off + pid_off + 1] = packet_id & 0xFF
                    stamp(buf, off + body_off, index, sent + k)
                sock.sendall(view[: n * flen])
                sent += n
                counter.value += n
            if qos:
                acked += _read_acks(sock, rbuf, block=sent - acked >= window)
        while qos and acked < sent and not ctx.aborted():
            acked += _read_acks(sock, rbuf, block=True)
    except OSError as e:
        ctx.error(f"mqtt producer {index}: {e}")
    out.update(sent=sent, confirmed=acked if qos else sent, first_ns=first, last_ns=now_ns())


def _read_acks(sock: socket.socket, buf: bytearray, block: bool) -> int:
    if not read_answers(sock, buf, block, "mqtt producer"):
        return 0
    pos = n = 0
    while True:
        got = _parse(buf, pos)
        if got is None:
            break
        if got[0] >> 4 == 4:
            n += 1
        pos = got[2]
    del buf[:pos]
    return n


def run_producers(ctx: SideContext) -> dict:
    return run_producer_threads(
        ctx, lambda i: Conn(ctx, f"cmp-{ctx.run}-p{i}", clean=True), _produce
    )

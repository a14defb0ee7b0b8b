"""Twisted transport for OpenWire: framing, WireFormatInfo negotiation, inactivity
monitoring and back-pressure. Decoding lives in codec.py, behaviour in session.py."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from polymq.core import output

from . import codec as c
from .codec import Obj
from .session import Connection, OpenWireHub, ProtocolError

log = Logger(namespace="polymq.openwire")

_SIZE = struct.Struct(">i")
_reading = output.reading()
_ACK, _WIREFORMAT = c.MESSAGE_ACK, c.WIREFORMAT_INFO
PROTOCOL_VERSION = 12
MIN_VERSION = 9
_WF_TYPES = {
    "MaxInactivityDuration": "long",
    "MaxInactivityDurationInitalDelay": "long",
    "MaxFrameSize": "long",
}


class OpenWireProtocol(protocol.Protocol):
    def __init__(self, factory: OpenWireFactory) -> None:
        self.factory = factory
        self.hub = factory.hub
        self.max_frame = factory.max_frame_size
        self._buf = bytearray()
        self.conn: Connection | None = None
        self.negotiated = False
        self._handshake_timer: Any = None
        self._keepalive: LoopingCall | None = None
        self._readcheck: LoopingCall | None = None
        self._start_timer: Any = None
        self._received = False
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)  # we offer TcpNoDelayEnabled
        self.out = output.SocketWriter(self.transport, self.hub.broker.clock)
        self.conn = Connection(self.hub, self.out.write, self.close,
                               peer=self.transport.getPeer())
        props = {
            "TightEncodingEnabled": False,
            "CacheEnabled": self.factory.cache_size > 0,
            "StackTraceEnabled": False,
            "TcpNoDelayEnabled": True,
            "SizePrefixDisabled": False,
            "CacheSize": self.factory.cache_size,
            "MaxInactivityDuration": self.factory.max_inactivity_ms,
            "MaxInactivityDurationInitalDelay": self.factory.initial_delay_ms,
            "MaxFrameSize": self.max_frame,
        }
        self.out.write(c.encode_wireformat(PROTOCOL_VERSION, props, _WF_TYPES))
        clock = self.hub.broker.clock
        self._handshake_timer = clock.callLater(self.factory.handshake_timeout, self._no_hello)

    def _no_hello(self) -> None:
        self._handshake_timer = None
        if not self.negotiated:
            log.info("openwire: no WireFormatInfo from {peer}, closing", peer=self._peer())
            self.close()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.out.flush()
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        for t in (self._handshake_timer, self._start_timer):
            if t is not None and t.active():
                t.cancel()
        for lc in (self._keepalive, self._readcheck):
            if lc is not None and lc.running:
                lc.stop()
        if self.conn is not None:
            self.conn.connection_closed()

    def _peer(self) -> str:
        p = self.transport.getPeer()
        return f"{getattr(p, 'host', '?')}:{getattr(p, 'port', '?')}"

    # -- back-pressure -----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self.conn is not None:
            self.conn.pause()

    def resumeProducing(self) -> None:
        if self.conn is not None:
            self.conn.resume()

    def stopProducing(self) -> None:
        pass

    # -- input -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        with _reading:
            self._data_received(data)

    def _data_received(self, data: bytes) -> None:
        self._received = True
        buf = self._buf
        max_frame = self.max_frame
        unpack = _SIZE.unpack_from
        if buf:
            buf += data
            if len(buf) < 4:
                return
            size = unpack(buf, 0)[0]
            if 0 < size <= max_frame and len(buf) < 4 + size:
                return  # the rest of a frame still to come (no copy of what is there)
            data = bytes(buf)
            del buf[:]
        # frames are sliced straight out of ``data`` (one copy each); a partial frame at the
        # end waits in ``_buf``
        pos = 0
        n = len(data)
        conn = self.conn
        handle, decode, ack_fields = conn.handle, c.decode_command, c.ack_fields
        uc = conn.ucache
        try:
            while n - pos >= 4:
                size = unpack(data, pos)[0]
                if size <= 0 or size > max_frame:
                    raise ProtocolError(f"frame size {size} outside 1..{max_frame}")
                end = pos + 4 + size
                if end > n:
                    break
                frame = data[pos + 4 : end]
                pos = end
                # (the body of _frame, inlined: this loop runs for every frame)
                if not self.negotiated:
                    self._hello(frame)
                    uc = conn.ucache
                else:
                    t = frame[0]
                    if t == _ACK and uc is not None:
                        # the common ack is settled from a few fields, without decoding it
                        fields = ack_fields(frame, uc)
                        if fields is None or not conn.standard_ack(fields):
                            handle(decode(frame, uc))
                    elif t != _WIREFORMAT:  # a repeated WireFormatInfo changes nothing
                        handle(decode(frame, uc))
                if self._closing:
                    return
        except (c.DecodeError, ProtocolError) as e:
            log.info("openwire: protocol error from {peer}: {err}", peer=self._peer(), err=e)
            if self.negotiated and self.conn is not None:
                self.conn.fatal("java.io.IOException", str(e))
            self.close()
            return
        if pos < n:
            buf += data[pos:]

    def _hello(self, frame: bytes) -> None:
        version, props = c.decode_wireformat(frame, 64)
        if version < MIN_VERSION:
            raise ProtocolError(f"OpenWire version {version} is not supported")
        self.negotiated = True
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        # the marshalling cache: on when both sides enable it, of the smaller size
        theirs_cache = props.get("CacheSize")
        if (self.factory.cache_size > 0 and props.get("CacheEnabled") is True
                and isinstance(theirs_cache, int) and theirs_cache > 0):
            self.conn.enable_cache(min(theirs_cache, self.factory.cache_size))
        self.conn.send(self.conn.broker_info())
        theirs = props.get("MaxInactivityDuration", 0)
        ours = self.factory.max_inactivity_ms
        interval = min(theirs, ours) if theirs > 0 and ours > 0 else 0
        if interval > 0:
            # both sides use the smaller initial delay (as they do the smaller period)
            delay = self.factory.initial_delay_ms
            theirs_delay = props.get("MaxInactivityDurationInitalDelay")
            if isinstance(theirs_delay, int) and 0 <= theirs_delay < delay:
                delay = theirs_delay
            self._start_timer = self.hub.broker.clock.callLater(
                delay / 1000.0, self._start_monitor, interval
            )

    def _start_monitor(self, interval_ms: int) -> None:
        self._start_timer = None
        clock = self.hub.broker.clock
        self._keepalive = LoopingCall(self._send_keepalive)
        self._keepalive.clock = clock
        self._keepalive.start(interval_ms / 3000.0, now=False)
        self._received = False
        self._readcheck = LoopingCall(self._check_read)
        self._readcheck.clock = clock
        self._readcheck.start(interval_ms / 1000.0, now=False)

    def _send_keepalive(self) -> None:
        if self.conn is not None and not self._closing:
            self.conn.send(Obj(c.KEEP_ALIVE_INFO))

    def _check_read(self) -> None:
        if not self._received:
            log.info("openwire: {peer} inactive, closing", peer=self._peer())
            self.close()
        self._received = False


class OpenWireFactory(protocol.ServerFactory):
    def __init__(self, broker: Any, section: dict) -> None:
        self.broker = broker
        self.hub = OpenWireHub(broker, section)
        mfs = int(section.get("max_frame_size") or 0)
        if mfs <= 0:
            mfs = broker.max_message_size + 1024 * 1024
        self.max_frame_size = mfs
        self.max_inactivity_ms = int(section.get("max_inactivity_ms", 30000))
        self.initial_delay_ms = int(section.get("inactivity_initial_delay_ms", 10000))
        self.handshake_timeout = float(section.get("handshake_timeout", 10.0))
        # entries of the marshalling cache offered to clients (0: no cache)
        self.cache_size = max(0, min(int(section.get("cache_size", 1024)), 32767))

    def buildProtocol(self, addr: Any) -> OpenWireProtocol:
        return OpenWireProtocol(self)

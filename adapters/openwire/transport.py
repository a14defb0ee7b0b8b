"""The OpenWire listener on the adapter contract: frames are int32 length-prefixed, the
WireFormatInfo handshake and everything after it is the session's (session.py), decoding is
the codec's (codec.py)."""

from __future__ import annotations

from typing import Any

from polymq.core.connection import ConnectionFactory, ProtocolConnection
from polymq.core.framing import LengthPrefixedFramer

from .hub import OpenWireHub
from .session import OpenWireSession


class OpenWireFactory(ConnectionFactory):
    protocol_name = "openwire"

    def __init__(self, broker: Any, section: dict) -> None:
        super().__init__(broker, section)
        section = self.section
        self.hub = OpenWireHub(broker, section)
        mfs = int(section.get("max_frame_size") or 0)
        if mfs <= 0:
            mfs = broker.max_message_size + 1024 * 1024
        self.max_frame_size = mfs
        self.session_settings = {
            "max_frame_size": mfs,
            "max_inactivity_ms": int(section.get("max_inactivity_ms", 30000)),
            "initial_delay_ms": int(section.get("inactivity_initial_delay_ms", 10000)),
            # entries of the marshalling cache offered to clients (0: no cache)
            "cache_size": max(0, min(int(section.get("cache_size", 1024)), 32767)),
            "max_consumers": int(section.get("max_consumers_per_connection", 0) or 0),
        }

    def build_framer(self, conn: ProtocolConnection) -> LengthPrefixedFramer:
        # a frame holds at least its type byte
        return LengthPrefixedFramer(self.max_frame_size, min_length=1)

    def build_session(self, conn: ProtocolConnection) -> OpenWireSession:
        return OpenWireSession(conn, self.hub, self.session_settings)

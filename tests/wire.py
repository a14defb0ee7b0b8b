"""Raw-socket helpers shared by the bad-input tests of every protocol."""

from __future__ import annotations

import socket
import time


def peer_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closes the connection (reading whatever it still sends first)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False

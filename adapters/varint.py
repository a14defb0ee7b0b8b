"""Unsigned base-128 varints (7 bits a byte, low group first, high bit = more follows).

MQTT's remaining length and property lengths and Kafka's flexible-version lengths share
this encoding; each protocol applies its own bound when decoding.
"""

from __future__ import annotations


def encode_uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

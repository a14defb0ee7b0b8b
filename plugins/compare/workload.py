"""Workload model, presets, targets (broker URLs) and the message body format."""

from __future__ import annotations

import dataclasses
import socket
import struct
import uuid
from urllib.parse import unquote, urlsplit

PROTOCOLS = ("mqtt", "amqp", "kafka", "openwire", "stomp")
# protocols of adapter plugins not enabled by default: run only when named
PLUGIN_PROTOCOLS = ("rocketmq",)
GUARANTEES = ("at-most-once", "at-least-once", "persistent")
PATTERNS = ("fanout", "queue")

# polymq's standard ports
DEFAULT_URLS = {
    "mqtt": "mqtt://127.0.0.1:1883",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "kafka": "kafka://127.0.0.1:9092",
    "openwire": "tcp://127.0.0.1:61616",
    "rocketmq": "rocketmq://127.0.0.1:9876",
    "stomp": "stomp://127.0.0.1:61613",
}
SCHEMES = {
    "mqtt": ("mqtt", "tcp"),
    "amqp": ("amqp",),
    "kafka": ("kafka", "tcp", ""),
    "openwire": ("tcp", "openwire"),
    "rocketmq": ("rocketmq", "tcp", ""),
    "stomp": ("stomp", "tcp"),
}
DEFAULT_PORTS = {
    "mqtt": 1883,
    "amqp": 5672,
    "kafka": 9092,
    "openwire": 61616,
    "rocketmq": 9876,
    "stomp": 61613,
}

# body: producer id (u32), sequence (u32), send time (u64, CLOCK_MONOTONIC ns), then padding
HEADER = struct.Struct(">IIQ")
HEADER_SIZE = HEADER.size


class CompareError(Exception):
    """A user-facing error: printed as one line, non-zero exit."""


@dataclasses.dataclass
class Workload:
    name: str = "custom"
    producers: int = 1
    consumers: int = 1
    size: int = 1024
    count: int | None = 10000  # messages per producer (None: run for ``duration``)
    duration: float | None = None  # seconds of producing
    rate: float | None = None  # messages/s per producer (None: as fast as possible)
    guarantee: str = "at-least-once"
    pattern: str = "fanout"
    mqtt_version: int = 4  # 4 = 3.1.1, 5 = 5.0 (queue pattern forces 5: shared subscriptions)
    window: int = 1000  # unconfirmed publishes in flight per producer
    drain_timeout: float = 10.0  # seconds without a delivery after producers finish

    def validate(self) -> None:
        if self.producers < 1 or self.consumers < 1:
            raise CompareError("--producers and --consumers must be at least 1")
        if self.size < HEADER_SIZE:
            raise CompareError(f"--size must be at least {HEADER_SIZE} bytes (header)")
        if self.guarantee not in GUARANTEES:
            raise CompareError(f"--guarantee must be one of {', '.join(GUARANTEES)}")
        if self.pattern not in PATTERNS:
            raise CompareError(f"--pattern must be one of {', '.join(PATTERNS)}")
        if (self.count is None) == (self.duration is None):
            raise CompareError("give exactly one of --count or --duration")
        if self.count is not None and self.count < 1:
            raise CompareError("--count must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise CompareError("--rate must be positive")
        if self.window < 1:
            raise CompareError("--window must be at least 1")

    def expected(self, sent: int) -> int:
        """Deliveries expected for ``sent`` published messages."""
        return sent * self.consumers if self.pattern == "fanout" else sent

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "smoke": dict(producers=1, consumers=1, size=128, count=500, guarantee="at-least-once"),
    "throughput": dict(producers=1, consumers=1, size=1024, count=100000, guarantee="at-most-once"),
    "latency": dict(
        producers=1,
        consumers=1,
        size=256,
        count=None,
        duration=5.0,
        rate=1000.0,
        guarantee="at-least-once",
    ),
    "fanout": dict(
        producers=1, consumers=4, size=512, count=20000, guarantee="at-least-once", pattern="fanout"
    ),
    "queue": dict(
        producers=2, consumers=4, size=1024, count=20000, guarantee="at-least-once", pattern="queue"
    ),
    "persistent": dict(producers=1, consumers=1, size=1024, count=10000, guarantee="persistent"),
}
PRESET_HELP = {
    "smoke": "1 producer, 1 consumer, 500 x 128 B, at-least-once (quick check)",
    "throughput": "1 -> 1, 100000 x 1 KiB, at-most-once, unlimited rate",
    "latency": "1 -> 1, 256 B at 1000 msg/s for 5 s, at-least-once",
    "fanout": "1 -> 4 subscribers of one topic, 20000 x 512 B, at-least-once",
    "queue": "2 producers -> 4 competing consumers, 20000 x 1 KiB each, at-least-once",
    "persistent": "1 -> 1, 10000 x 1 KiB, persistent with confirms (fsync before ack)",
}


DEFAULT_PRESET = "smoke"


def describe_workload(wl: dict) -> str:
    """``smoke: 1 producer -> 1 consumer, fanout, 500 messages of 128 B each, at-least-once``."""

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    amount = (
        f"{n(wl['count'], 'message')} of {wl['size']} B per producer"
        if wl.get("count")
        else f"{wl['size']} B messages for {wl['duration']:g} s"
    )
    parts = [
        f"{n(wl['producers'], 'producer')} -> {n(wl['consumers'], 'consumer')}",
        wl["pattern"],
        amount,
        wl["guarantee"],
        f"{wl['rate']:g} msg/s per producer" if wl.get("rate") else "unlimited rate",
    ]
    if wl.get("mqtt_version") == 5:
        parts.append("MQTT 5")
    return f"{wl['name']}: " + ", ".join(parts)


def make_workload(preset: str | None, **overrides) -> Workload:
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise CompareError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        values.update(PRESETS[preset])
        values["name"] = preset
    given = {k: v for k, v in overrides.items() if v is not None}
    if "duration" in given:
        values["count"] = None
    if "count" in given:
        values["duration"] = None
    values.update(given)
    if values.get("count") is None and values.get("duration") is None:
        values["count"] = Workload.count
    wl = Workload(**values)
    if wl.pattern == "queue":
        wl.mqtt_version = 5
    wl.validate()
    return wl


@dataclasses.dataclass
class Target:
    protocol: str
    url: str
    label: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    vhost: str = "/"

    @property
    def local(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    def as_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "url": self.url,
            "label": self.label,
            "host": self.host,
            "port": self.port,
        }


def parse_target(spec: str) -> Target:
    """``proto=URL`` or ``proto@label=URL`` (label defaults to host:port)."""
    if "=" not in spec:
        raise CompareError(
            f"--url {spec!r}: expected PROTOCOL=URL, e.g. mqtt=mqtt://127.0.0.1:1883"
        )
    left, url = spec.split("=", 1)
    proto, _, label = left.partition("@")
    proto = proto.strip().lower()
    if proto not in PROTOCOLS + PLUGIN_PROTOCOLS:
        known = ", ".join(PROTOCOLS + PLUGIN_PROTOCOLS)
        raise CompareError(f"--url {spec!r}: unknown protocol {proto!r} (known: {known})")
    return target_from_url(proto, url.strip(), label.strip() or None)


def target_from_url(proto: str, url: str, label: str | None = None) -> Target:
    bare = proto if proto in ("kafka", "rocketmq") else "?"  # host:port alone is enough
    raw = url if "://" in url else f"{bare}://{url}"
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES[proto]:
        raise CompareError(
            f"{proto} URL {url!r}: bad scheme {parts.scheme!r} "
            f"(expected {' or '.join(s + '://' for s in SCHEMES[proto] if s)})"
        )
    try:
        host = parts.hostname
        port = parts.port or DEFAULT_PORTS[proto]
    except ValueError as e:
        raise CompareError(f"{proto} URL {url!r}: {e}") from None
    if not host:
        raise CompareError(f"{proto} URL {url!r}: no host")
    vhost = "/"
    if proto in ("amqp", "stomp") and parts.path not in ("", "/"):
        vhost = unquote(parts.path[1:])
    return Target(
        protocol=proto,
        url=url,
        label=label or f"{host}:{port}",
        host=host,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        vhost=vhost,
    )


def check_reachable(target: Target, timeout: float = 3.0) -> None:
    try:
        socket.create_connection((target.host, target.port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise CompareError(
            f"{target.protocol} broker at {target.url} is not reachable: {reason}"
        ) from None


def run_id() -> str:
    return uuid.uuid4().hex[:8]

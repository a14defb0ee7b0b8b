"""Transport and session of the line protocol, on polymq's core API only.

The core API used: ``broker.authenticate`` (once per connection), ``broker.vhost()``,
``VirtualHost.declare_queue``, ``VirtualHost.publish`` through the default exchange ``""``,
``VirtualHost.get_queue`` and ``Queue.get(no_ack=True)``, ``polymq.core.message.Message`` and
``polymq.core.errors.BrokerError``.
"""

from __future__ import annotations

from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineOnlyReceiver

from polymq.core.auth import Refusal
from polymq.core.errors import BrokerError, NotFound
from polymq.core.message import Message

PROTOCOL = "lineproto"


class LineProtocol(LineOnlyReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        factory = self.factory
        self.broker = factory.broker
        self.vhost = self.broker.vhost()
        self.MAX_LENGTH = self.broker.max_message_size + 64
        identity = self.broker.authenticate(PROTOCOL, None, None, self.transport.getPeer())
        if isinstance(identity, Refusal):
            self.reply(f"ERR access refused: {identity.reason}")
            self.transport.loseConnection()
            return
        self.identity = identity
        self.reply(factory.section["greeting"])

    def reply(self, text: str) -> None:
        self.sendLine(text.encode("utf-8"))

    def lineLengthExceeded(self, line):
        self.reply("ERR line too long")
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        verb, _, rest = text.partition(" ")
        handler = getattr(self, "do_" + verb.upper(), None) if verb else None
        if handler is None:
            self.reply(f"ERR unknown command {verb!r}")
            return
        try:
            handler(rest)
        except BrokerError as exc:
            self.reply(f"ERR {exc.code} {exc.text}")

    def do_PING(self, rest: str) -> None:
        self.reply("PONG")

    def do_QUIT(self, rest: str) -> None:
        self.reply("BYE")
        self.transport.loseConnection()

    def do_PUB(self, rest: str) -> None:
        queue, sep, body = rest.partition(" ")
        if not queue or not sep:
            self.reply("ERR usage: PUB <queue> <text>")
            return
        durable = self.factory.section["durable"]
        self.vhost.declare_queue(queue, durable=durable)
        message = Message(body.encode("utf-8"), durable=durable, user_id=self.identity.user)
        routed, _refused = self.vhost.publish("", queue, message)
        if durable:
            # Confirm only once the message is on disk, as every real adapter does.
            self.broker.when_durable(lambda: self.reply(f"OK {routed}"))
        else:
            self.reply(f"OK {routed}")

    def do_GET(self, rest: str) -> None:
        queue = rest.strip()
        if not queue:
            self.reply("ERR usage: GET <queue>")
            return
        try:
            q = self.vhost.get_queue(queue)
        except NotFound:
            self.reply("EMPTY")
            return
        if q.kind != "queue":
            self.reply(f"ERR {queue} is a {q.kind}, not a queue")
            return
        delivery = q.get(no_ack=True)
        if delivery is None:
            self.reply("EMPTY")
        else:
            self.reply("MSG " + delivery.message.body.decode("utf-8", "replace"))


class LineFactory(ServerFactory):
    protocol = LineProtocol

    def __init__(self, broker, section: dict) -> None:
        self.broker = broker
        self.section = section

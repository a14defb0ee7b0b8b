"""The line protocol's session: its state machine on the adapter contract, no sockets.

One :class:`LineSession` per connection. The contract hands it the lines of each read
(:meth:`frames_received`) and it answers through its connection: ``conn.reply`` for answers
ready at once, ``conn.reply_after_durable`` for a ``PUB`` of a persistent message (answered once
the message is on disk; answers after it wait behind it), ``conn.write`` for deliveries, which
belong to no request.
"""

from __future__ import annotations

from typing import Any

from polymq.core.auth import Identity, Refusal
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import AccessRefused, BrokerError, FrameTooLarge
from polymq.core.message import Message
from polymq.core.queue import Consumer, Delivery
from polymq.core.settlement import DeliveryLedger

PROTOCOL = "lineproto"


class LineSession(SessionBase):
    def __init__(self, conn: ProtocolConnection, section: dict) -> None:
        super().__init__(conn)
        self.broker = conn.broker
        self.vhost = self.broker.vhost()
        self.durable = bool(section["durable"])
        self.greeting = str(section["greeting"])
        self.identity: Identity | None = None
        self.consumers: dict[str, Consumer] = {}  # queue name -> this connection's consumer
        # what was delivered and not yet settled, by delivery tag (one ledger for the
        # connection: tags are counted per connection, as on an AMQP channel)
        self.ledger = DeliveryLedger(ordered=True)
        self.next_tag = 1
        self.allowed: set[tuple[str, str]] = set()  # (action, queue) the authorizer allowed
        self.blocked = False

    # -- the contract's callbacks -----------------------------------------------------------

    def connection_made(self) -> None:
        # the answer may come later (an auth plugin working in a thread); lines sent meanwhile
        # wait in the contract and reach frames_received once it is in
        self.conn.login(None, None, self._logged_in)

    def _logged_in(self, result: Identity | Refusal) -> None:
        if isinstance(result, Refusal):
            raise AccessRefused(f"access refused: {result.reason}")
        self.identity = result
        # no handshake in this protocol: the connection is ready once authenticated
        self.conn.handshake_done(user=result.user, vhost=self.vhost.name)
        self.conn.write(self.greeting.encode("utf-8") + b"\n")

    def frames_received(self, frames: list) -> None:
        conn = self.conn
        for i, line in enumerate(frames):
            verb, _, rest = line.decode("utf-8", "replace").partition(" ")
            command = self.COMMANDS.get(verb.upper())
            if command is None:
                self.reply(f"ERR unknown command {verb!r}")
                continue
            try:
                command(self, rest)
            except BrokerError as exc:  # the broker refused the request: answer, carry on
                self.reply(f"ERR {exc.code} {exc.text}")
            if conn.closing:
                return
            if self.blocked and command is LineSession.do_pub:
                # the alarm holds this publisher: no more reading, the rest of the read waits
                conn.hold_publisher(frames[i + 1 :])
                return

    def protocol_error(self, error: Exception) -> None:
        # the contract closes the connection after this; nothing waits any more
        if isinstance(error, BrokerError):
            text = f"ERR {error.code} {error.text}"
        elif isinstance(error, FrameTooLarge):
            text = "ERR line too long"
        else:
            text = f"ERR {error}"
        self.conn.write(text.encode("utf-8") + b"\n")

    def internal_error(self, error: BaseException) -> None:
        self.conn.write(b"ERR 541 internal error\n")

    def connection_lost(self) -> None:
        # unsettled deliveries go back to their queues, for other consumers
        for consumer in self.consumers.values():
            if consumer.queue is not None:
                consumer.queue.remove_consumer(consumer, requeue=True)
        self.consumers.clear()
        self.ledger.close()
        self.vhost.connection_closed(self.conn)

    def pause(self) -> None:
        # the socket's buffer is full: the queues keep their messages until it drains
        for consumer in self.consumers.values():
            consumer.pause()

    def resume(self) -> None:
        for consumer in list(self.consumers.values()):
            consumer.resume()

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        # the broker is short of memory or disk: the next PUB holds this connection (above);
        # the contract reads it again, and hands over the rest, once the alarm clears
        self.blocked = blocked

    # -- helpers ----------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        self.conn.reply(text.encode("utf-8") + b"\n")

    def allow(self, action: str, queue: str) -> None:
        """The authorization check point, asked once per action and queue."""
        key = (action, queue)
        if key in self.allowed:
            return
        if not self.conn.authorize(action, "queue", queue):
            raise AccessRefused(f"{action} on queue '{queue}' refused")
        self.allowed.add(key)

    def deliver(self, delivery: Delivery) -> None:
        """Called by the queue for each message it pushes to one of our consumers."""
        tag = self.next_tag
        self.next_tag = tag + 1
        self.ledger.unsettled[tag] = delivery  # the ledger's hot-path record
        body = delivery.message.body.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
        self.conn.write(
            b"DELIVER %d %s %d %s\n"
            % (tag, delivery.queue.name.encode(), delivery.delivery_count, body)
        )
        self.conn.info.messages_out += 1

    def _tag(self, rest: str) -> int | None:
        text = rest.strip()
        if not text.isdigit():
            self.reply("ERR usage: ACK <tag> / NACK <tag>")
            return None
        return int(text)

    # -- commands ---------------------------------------------------------------------------

    def do_ping(self, rest: str) -> None:
        self.reply("PONG")

    def do_quit(self, rest: str) -> None:
        self.reply("BYE")
        # close once the answers before BYE have left: store callbacks run in order, and
        # the answers waiting for the store are released by an earlier one
        self.broker.when_durable(self.conn.close)

    def do_pub(self, rest: str) -> None:
        queue, sep, body = rest.partition(" ")
        if not queue or not sep:
            self.reply("ERR usage: PUB <queue> <text>")
            return
        self.allow("configure", queue)
        self.allow("write", queue)
        durable = self.durable
        self.vhost.declare_queue(queue, durable=durable)
        user = self.identity.user if self.identity is not None else None
        message = Message(body.encode("utf-8"), durable=durable, user_id=user)
        routed, _refused = self.vhost.publish("", queue, message)
        self.conn.info.messages_in += 1
        answer = f"OK {routed}\n".encode()
        if durable:
            self.conn.reply_after_durable(answer)
        else:
            self.conn.reply(answer)

    def do_get(self, rest: str) -> None:
        name = rest.strip()
        if not name:
            self.reply("ERR usage: GET <queue>")
            return
        self.allow("read", name)
        q = self.vhost.queues.get(name)
        if q is None:
            self.reply("EMPTY")
            return
        if q.kind != "queue":
            self.reply(f"ERR {name} is a {q.kind}, not a queue")
            return
        delivery = q.get(no_ack=True)
        if delivery is None:
            self.reply("EMPTY")
            return
        self.conn.info.messages_out += 1
        self.reply("MSG " + delivery.message.body.decode("utf-8", "replace"))

    def do_sub(self, rest: str) -> None:
        name, _, window = rest.strip().partition(" ")
        if not name or (window and not window.isdigit()):
            self.reply("ERR usage: SUB <queue> [<prefetch>]")
            return
        if name in self.consumers:
            self.reply(f"ERR already subscribed to {name}")
            return
        self.allow("read", name)
        q = self.vhost.get_queue(name)  # NotFound: "ERR 404 ..."
        if q.kind != "queue":
            self.reply(f"ERR {name} is a {q.kind}, not a queue")
            return
        consumer = Consumer(name, self.deliver, prefetch=int(window or 1), owner=self)
        self.reply("OK")
        self.consumers[name] = consumer
        q.add_consumer(consumer)  # pushes at once what the window allows

    def do_unsub(self, rest: str) -> None:
        name = rest.strip()
        consumer = self.consumers.pop(name, None)
        if consumer is None:
            self.reply(f"ERR not subscribed to {name}")
            return
        # its unsettled deliveries leave the ledger and go back with the consumer
        self.ledger.take_consumer(consumer)
        if consumer.queue is not None:
            consumer.queue.remove_consumer(consumer, requeue=True)
        self.reply("OK")

    def do_ack(self, rest: str) -> None:
        tag = self._tag(rest)
        if tag is None:
            return
        if self.ledger.ack_one(tag) is None:
            self.reply(f"ERR unknown delivery tag {tag}")
            return
        self.reply("OK")

    def do_nack(self, rest: str) -> None:
        tag = self._tag(rest)
        if tag is None:
            return
        delivery = self.ledger.take(tag)
        if delivery is None:
            self.reply(f"ERR unknown delivery tag {tag}")
            return
        self.ledger.nack([(tag, delivery)], requeue=True)
        self.reply("OK")

    def do_stats(self, rest: str) -> None:
        name = rest.strip()
        self.allow("read", name)
        q = self.vhost.get_queue(name)
        unacked = len(getattr(q, "unacked", ()))
        self.reply(f"STATS {q.message_count} {unacked} {q.consumer_count}")

    COMMANDS: dict[str, Any] = {
        "PING": do_ping,
        "QUIT": do_quit,
        "PUB": do_pub,
        "GET": do_get,
        "SUB": do_sub,
        "UNSUB": do_unsub,
        "ACK": do_ack,
        "NACK": do_nack,
        "STATS": do_stats,
    }

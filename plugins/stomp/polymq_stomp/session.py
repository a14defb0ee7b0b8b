"""The STOMP session: the protocol's state machine on polymq's adapter contract, no sockets.

Destinations (docs/stomp.md):

- ``/queue/Q`` (RabbitMQ and ActiveMQ), ``queue://Q``, a bare name: the queue Q, declared
  durable on first use; sent through the default exchange.
- ``/amq/queue/Q``: the existing queue Q (RabbitMQ: not declared; 404 if absent).
- ``/topic/K``, ``topic://K``: ``amq.topic`` with routing key K; a subscription gets its own
  queue bound with K, where ``*`` is one word and ``#`` or ActiveMQ's ``>`` is the rest.
  Durable (RabbitMQ ``durable:true``, ActiveMQ ``activemq.subscriptionName``) keeps that queue.
- ``/exchange/E/K``: exchange E with routing key (or binding pattern) K.

A core message's standard fields travel in the headers STOMP brokers use for them (the STOMP
column of docs/mapping.md); every other header is an application property (a string).
"""

from __future__ import annotations

import itertools
from typing import Any

from polymq.core import __version__ as polymq_version
from polymq.core.address import key_from_headers
from polymq.core.auth import Refusal
from polymq.core.connection import ProtocolConnection, SessionBase
from polymq.core.errors import AccessRefused, BrokerError, IdleTimeout, NotFound
from polymq.core.message import Message, now_ms
from polymq.core.queue import Consumer, Delivery
from polymq.core.settlement import RESTORE, DeliveryLedger
from polymq.core.tx import Transaction

from .codec import V10, V11, V12, VERSIONS, Frame, StompError, encode_frame, escape
from .destinations import after_prefix, header_text, reply_to_core, reply_to_stomp, topic_binding

PROTOCOL = "stomp"

# SEND headers that are the frame's own, or a core field: never application properties
_FRAME_HEADERS = frozenset(
    {
        "destination",
        "content-length",
        "transaction",
        "receipt",
        "content-type",
        "content-encoding",
        "amqp-message-id",
        "correlation-id",
        "reply-to",
        "persistent",
        "priority",
        "expires",
        "expiration",
        "type",
        "timestamp",
        "user-id",
    }
)

_session_ids = itertools.count(1)


class Subscription:
    """One SUBSCRIBE: its consumer, the queue it reads, and the ledger of its unacknowledged
    deliveries in delivery order (ack id -> delivery), which cumulative ``client`` acks walk."""

    __slots__ = ("id", "ack", "consumer", "queue_name", "destination", "head", "ledger", "temp")

    def __init__(self, sub_id: str, ack: str, destination: str, queue_name: str, temp: bool):
        self.id = sub_id
        self.ack = ack
        self.destination = destination
        self.queue_name = queue_name
        self.temp = temp  # a queue of this subscription's own (topic, exchange): deleted after
        self.consumer: Consumer | None = None
        self.head = b""  # the MESSAGE frame's first lines, the same for every delivery
        # STOMP's rule (RabbitMQ, ActiveMQ): an ABORT leaves the messages whose ACK / NACK it
        # discards unacknowledged, under the same ids
        self.ledger = DeliveryLedger(RESTORE)


class StompSession(SessionBase):
    def __init__(self, conn: ProtocolConnection, section: dict) -> None:
        super().__init__(conn)
        self.broker = conn.broker
        self.section = section
        self.framer = conn.framer
        self.state = 0  # 0: waiting for CONNECT, 1: connected, 2: closed
        self.version = V10
        self.vhost: Any = None
        self.user: str | None = None
        self.client_id = ""
        self.session_id = ""
        self.subs: dict[str, Subscription] = {}
        self.acks: dict[str, Subscription] = {}  # ack id -> subscription holding it
        self.next_ack = 1
        self.txs: dict[str, Transaction] = {}
        self.dest_cache: dict[str, tuple[str, str]] = {}  # SEND destination -> (exchange, key)
        self.temp_queues: dict[str, str] = {}  # /temp-queue/ name -> this connection's queue
        self.allowed: set[tuple[str, str, str]] = set()
        self.receipt: str | None = None  # of the frame being handled, for its ERROR
        self.blocked = False
        self.prefetch = int(section.get("prefetch", 0) or 0)

    # -- the contract's callbacks -------------------------------------------------------------

    def frames_received(self, frames: list) -> None:
        conn = self.conn
        for i, frame in enumerate(frames):
            if self.state != 1:
                if self.state == 2:
                    return
                self.on_connect(frame)  # the rest follows once the login is answered
                return
            self.receipt = frame.headers.get("receipt")
            handler = self.HANDLERS.get(frame.command)
            if handler is None:
                raise StompError(f"{frame.command} is not allowed after the connection is open")
            handler(self, frame)
            if conn.closing or self.state != 1:
                return
            if self.blocked and frame.command == "SEND":
                conn.hold_publisher(frames[i + 1 :])
                break
        self.receipt = None

    def protocol_error(self, error: Exception) -> None:
        if self.state == 2:
            return
        if isinstance(error, IdleTimeout):
            message = "heart-beat timeout"
        elif isinstance(error, BrokerError):
            message = error.text
        else:
            message = str(error)
        self.send_error(message.splitlines()[0][:200] if message else "error", message)

    def internal_error(self, error: BaseException) -> None:
        if self.state != 2:
            self.send_error("internal error", "the broker failed on this frame; see its log")

    def send_error(self, message: str, detail: str = "") -> None:
        headers = [("message", message), ("content-type", "text/plain")]
        if self.receipt is not None:
            headers.append(("receipt-id", self.receipt))
        body = (detail or message).encode("utf-8")
        headers.append(("content-length", str(len(body))))
        self.conn.reply(encode_frame("ERROR", headers, body, self.version))
        self.state = 2
        # the ERROR leaves after the receipts before it that wait for the disk: the
        # connection stays open (reading nothing more) until then
        self.conn.linger(10.0)
        self._close_after_replies()

    def _close_after_replies(self) -> None:
        """Close once every answer given so far has left (in order)."""
        conn = self.conn
        # a place in the reply order: every answer before it is registered for release
        # first, so this store callback runs after theirs
        done = conn.reply_later()

        def close() -> None:
            done()
            conn.close()

        self.broker.when_durable(close)

    def connection_lost(self) -> None:
        self.state = 2
        # uncommitted transactions are aborted; then what was delivered and not acknowledged
        # goes back to its queue
        for tx in self.txs.values():
            tx.rollback()
        self.txs.clear()
        for sub in list(self.subs.values()):
            self._drop_subscription(sub, requeue=True)
        self.subs.clear()
        self.acks.clear()
        if self.vhost is not None:
            self.vhost.connection_closed(self.conn)

    def pause(self) -> None:
        for sub in self.subs.values():
            if sub.consumer is not None:
                sub.consumer.pause()

    def resume(self) -> None:
        for sub in list(self.subs.values()):
            if sub.consumer is not None:
                sub.consumer.resume()

    def publishing_blocked(self, blocked: bool, reason: str) -> None:
        # STOMP has no way to say it: a SEND holds the connection unread until the alarm
        # clears (conn.hold_publisher); subscribers keep reading and acknowledging
        self.blocked = blocked

    def keepalive(self) -> None:
        self.conn.write(b"\n")

    # -- CONNECT ------------------------------------------------------------------------------

    def on_connect(self, frame: Frame) -> None:
        h = frame.headers
        if frame.command not in ("CONNECT", "STOMP"):
            raise StompError(f"the first frame must be CONNECT or STOMP, not {frame.command}")
        accepted = h.get("accept-version")
        if accepted is None:
            if frame.command == "STOMP":
                raise StompError("a STOMP frame needs accept-version (1.1 or later)")
            version = V10
        else:
            offered = {v.strip() for v in accepted.split(",")}
            common = [v for v in VERSIONS if v in offered]
            if not common:
                self.receipt = None
                self.conn.reply(
                    encode_frame(
                        "ERROR",
                        [
                            ("version", ",".join(VERSIONS)),
                            ("content-type", "text/plain"),
                            ("message", "Supported protocol versions are 1.0, 1.1, 1.2"),
                        ],
                        b"Supported protocol versions are 1.0, 1.1, 1.2",
                        V10,
                        raw=True,
                    )
                )
                self.state = 2
                self.conn.close()
                return
            version = common[-1]
        self.version = version
        host = h.get("host")
        vhosts = getattr(self.broker, "vhosts", {})
        # host names a vhost when one is called so (RabbitMQ); a host name does not
        self.vhost = self.broker.vhost(host if host in vhosts else None)
        login = h.get("login")
        # the password may be checked in a thread: the connection waits for the answer
        self.conn.login(
            login or None, h.get("passcode"), lambda result: self._logged_in(result, h, login)
        )

    def _logged_in(self, result: Any, h: dict, login: str | None) -> None:
        if self.state == 2:
            return
        if result is None or isinstance(result, Refusal):
            reason = getattr(result, "reason", "refused")
            raise AccessRefused(f"access refused for user '{login or ''}': {reason}")
        version = self.version
        self.user = result.user
        self.client_id = h.get("client-id", "")
        self.session_id = f"polymq-{next(_session_ids)}"
        headers = [
            ("session", self.session_id),
            ("server", f"polymq/{polymq_version}"),
        ]
        if version != V10:
            headers.insert(0, ("version", version))
            headers.append(("heart-beat", self._heart_beat(h.get("heart-beat", "0,0"))))
        self.framer.version = version
        self.state = 1
        self.conn.handshake_done(
            user=self.user, client_id=self.client_id or None, vhost=self.vhost.name
        )
        self.conn.reply(encode_frame("CONNECTED", headers, b"", version, raw=True))
        # what came with CONNECT is framed with the negotiated version
        framer = self.framer
        framer.one_at_a_time = False
        more = framer.feed(b"")
        if more:
            self.frames_received(more)

    def _heart_beat(self, text: str) -> str:
        """Negotiate heart-beating (STOMP 1.1): returns the CONNECTED header and arms the
        contract's liveness timer: a read deadline of twice the client's interval (a margin
        for timing, as the spec allows) and a keep-alive EOL when we were silent."""
        try:
            cx, cy = (int(x) for x in text.split(","))
        except ValueError:
            raise StompError(f"bad heart-beat header {text[:40]!r}") from None
        if cx < 0 or cy < 0:
            raise StompError(f"bad heart-beat header {text[:40]!r}")
        sx = int(self.section.get("heart_beat_send_ms", 10000) or 0)
        sy = int(self.section.get("heart_beat_receive_ms", 10000) or 0)
        outgoing = max(sx, cy) if sx and cy else 0
        incoming = max(cx, sy) if cx and sy else 0
        if outgoing or incoming:
            self.conn.set_liveness(2 * incoming / 1000.0, outgoing / 1000.0)
        return f"{sx},{sy}"

    # -- helpers ------------------------------------------------------------------------------

    def _receipt(self, durable: bool = False) -> None:
        receipt = self.receipt
        if receipt is None:
            return
        data = encode_frame("RECEIPT", [("receipt-id", receipt)], b"", self.version)
        if durable:
            self.conn.reply_after_durable(data)
        else:
            self.conn.reply(data)

    def _allow(self, action: str, kind: str, name: str) -> None:
        key = (action, kind, name)
        if key in self.allowed:
            return
        if not self.conn.authorize(action, kind, name):
            raise AccessRefused(f"{action} access to {kind} '{name}' refused")
        self.allowed.add(key)

    def _queue(self, name: str, declare: bool) -> Any:
        """The queue ``name``; declared durable first when ``declare`` (a /queue/
        destination) and it does not exist."""
        if not name:
            raise StompError("empty queue name in destination")
        q = self.vhost.queues.get(name)
        if q is None:
            if not declare:
                raise NotFound(f"no queue '{name}' in vhost '{self.vhost.name}'")
            self._allow("configure", "queue", name)
            q = self.vhost.declare_queue(name, durable=True)
        return q

    def _route(self, destination: str) -> tuple[str, str]:
        """(exchange, routing key) a SEND to ``destination`` publishes to."""
        found = self.dest_cache.get(destination)
        if found is not None:
            return found
        if destination.startswith("/queue/") or destination.startswith("queue://"):
            name = after_prefix(destination)
            self._queue(name, declare=True)
            route = ("", name)
        elif destination.startswith("/amq/queue/"):
            name = destination[len("/amq/queue/") :]
            self._queue(name, declare=False)
            route = ("", name)
        elif destination.startswith("/topic/"):
            route = ("amq.topic", destination[len("/topic/") :])
        elif destination.startswith("topic://"):
            route = ("amq.topic", destination[len("topic://") :])
        elif destination.startswith("/exchange/"):
            exchange, _, key = destination[len("/exchange/") :].partition("/")
            self.vhost.get_exchange(exchange)  # NotFound -> ERROR
            route = (exchange, key)
        elif destination.startswith("/temp-queue/"):
            route = ("", self._temp_queue(destination[len("/temp-queue/") :], subscribe=True))
        elif destination.startswith("/temp-topic/"):
            raise StompError(f"temporary topics are not supported: {destination}")
        elif destination.startswith("/"):
            raise StompError(f"unknown destination {destination[:100]!r}")
        else:
            self._queue(destination, declare=True)  # a bare name is a queue (Artemis)
            route = ("", destination)
        kind, name = ("exchange", route[0]) if route[0] else ("queue", route[1])
        self._allow("write", kind, name or "amq.default")
        if len(self.dest_cache) >= 1024:
            self.dest_cache.clear()
        self.dest_cache[destination] = route
        return route

    def _temp_queue(self, name: str, subscribe: bool) -> str:
        """The queue behind ``/temp-queue/<name>`` (RabbitMQ's temporary reply queues): this
        connection's own, deleted with it. Named in a SEND or a reply-to, it is subscribed at
        once (auto ack), with the destination as the subscription id, as RabbitMQ does."""
        if not name:
            raise StompError("empty name in a /temp-queue/ destination")
        qname = self.temp_queues.get(name)
        if qname is None:
            if len(self.temp_queues) >= 1024:
                raise StompError("too many temporary queues on one connection")
            qname = f"stomp-temp.{self.session_id}.{name}"
            self._allow("configure", "queue", qname)
            self.vhost.declare_queue(qname, exclusive_owner=self.conn)
            self.temp_queues[name] = qname
        dest = "/temp-queue/" + name
        if subscribe and dest not in self.subs:
            self._attach(dest, "auto", dest, qname, True, self.prefetch)
        return qname

    def _reply_to(self, value: str) -> str:
        if value.startswith("/temp-queue/"):
            return "queue://" + self._temp_queue(value[len("/temp-queue/") :], subscribe=True)
        return reply_to_core(value)

    def _message(self, frame: Frame) -> Message:
        h = frame.headers
        headers = {k: v for k, v in h.items() if k not in _FRAME_HEADERS}
        m = Message(
            frame.body,
            headers=headers,
            content_type=h.get("content-type"),
            content_encoding=h.get("content-encoding"),
            message_id=h.get("amqp-message-id"),
            correlation_id=h.get("correlation-id"),
            reply_to=self._reply_to(h["reply-to"]) if "reply-to" in h else None,
            type=h.get("type"),
            durable=h.get("persistent", "").lower() == "true",
            user_id=self.user if "user-id" in h else None,
        )
        priority = h.get("priority")
        if priority is not None:
            if not priority.isdigit():
                raise StompError(f"priority is not a number: {priority[:20]!r}")
            m.priority = min(int(priority), 255)
        stamp = h.get("timestamp")
        if stamp is not None and stamp.isdigit():
            m.timestamp = int(stamp)
        expires = h.get("expires")  # ActiveMQ: absolute ms, 0 = never
        if expires is not None and expires.isdigit() and int(expires):
            m.expiration = int(expires)
        ttl = h.get("expiration")  # RabbitMQ: relative ms, as AMQP's expiration
        if ttl is not None:
            if not ttl.isdigit():
                raise StompError(f"expiration is not a number of ms: {ttl[:20]!r}")
            m.expiration = now_ms() + int(ttl)
        if headers:
            key = key_from_headers(headers)
            if key is not None:
                m.key = key
        return m

    # -- frames -------------------------------------------------------------------------------

    def on_send(self, frame: Frame) -> None:
        destination = frame.headers.get("destination")
        if not destination:
            raise StompError("SEND without a destination header")
        exchange, key = self._route(destination)
        message = self._message(frame)
        self.conn.info.messages_in += 1
        tx_name = frame.headers.get("transaction")
        if tx_name is not None:
            self._tx(tx_name).publish(exchange, key, message)
            self._receipt()
            return
        self.vhost.publish(exchange, key, message)
        self._receipt(durable=message.durable)

    def on_subscribe(self, frame: Frame) -> None:
        h = frame.headers
        destination = h.get("destination")
        if not destination:
            raise StompError("SUBSCRIBE without a destination header")
        sub_id = h.get("id")
        if sub_id is None:
            if self.version != V10:
                raise StompError("SUBSCRIBE without an id header")
            sub_id = destination  # 1.0: the destination names the subscription
        if sub_id in self.subs:
            raise StompError(f"subscription id '{sub_id}' is already in use")
        ack = h.get("ack", "auto")
        if ack not in ("auto", "client", "client-individual"):
            raise StompError(f"unknown ack mode {ack[:40]!r}")
        prefetch = self.prefetch
        for name in ("prefetch-count", "activemq.prefetchSize"):
            if name in h:
                if not h[name].isdigit():
                    raise StompError(f"{name} is not a number")
                prefetch = int(h[name])
        selector = None
        if h.get("selector"):
            from polymq.core.selector import InvalidSelector, compile_selector

            try:
                selector = compile_selector(h["selector"])
            except InvalidSelector as e:
                raise StompError(f"invalid selector: {e.message}") from None
        queue_name, temp = self._subscription_queue(destination, sub_id, h)
        self._attach(sub_id, ack, destination, queue_name, temp, prefetch, selector, receipt=True)

    def _attach(
        self,
        sub_id: str,
        ack: str,
        destination: str,
        queue_name: str,
        temp: bool,
        prefetch: int,
        selector: Any = None,
        receipt: bool = False,
    ) -> None:
        """Subscribe ``sub_id`` to the queue ``queue_name`` (``temp``: this connection's own)."""
        self._allow("read", "queue", queue_name)
        q = self.vhost.get_queue(queue_name, self.conn if temp else None)
        if q.kind != "queue":
            raise StompError(f"'{queue_name}' is a {q.kind}; STOMP subscribes to queues only")
        sub = Subscription(sub_id, ack, destination, queue_name, temp)
        sub.head = ("MESSAGE\nsubscription:" + escape(sub_id, self.version) + "\n").encode()
        consumer = Consumer(
            f"stomp-{self.session_id}-{sub_id}",
            lambda d, s=sub: self.deliver(s, d),
            prefetch=prefetch,
            no_ack=ack == "auto",
            selector=selector,
            owner=self,
        )
        sub.consumer = consumer
        self.subs[sub_id] = sub
        if receipt:  # before the first MESSAGE
            self._receipt()
        q.add_consumer(consumer)

    def _subscription_queue(self, destination: str, sub_id: str, h: dict) -> tuple[str, bool]:
        """(queue name, whether it is the subscription's own) for a SUBSCRIBE."""
        if destination.startswith("/queue/") or destination.startswith("queue://"):
            name = after_prefix(destination)
            self._queue(name, declare=True)
            return name, False
        if destination.startswith("/amq/queue/"):
            name = destination[len("/amq/queue/") :]
            self._queue(name, declare=False)
            return name, False
        if destination.startswith("/temp-queue/"):
            return self._temp_queue(destination[len("/temp-queue/") :], subscribe=False), True
        if destination.startswith("/topic/") or destination.startswith("topic://"):
            exchange = "amq.topic"
            pattern = topic_binding(after_prefix(destination))
        elif destination.startswith("/exchange/"):
            exchange, _, pattern = destination[len("/exchange/") :].partition("/")
            self.vhost.get_exchange(exchange)
        elif destination.startswith("/"):
            raise StompError(f"unknown destination {destination[:100]!r}")
        else:
            self._queue(destination, declare=True)
            return destination, False
        self._allow("read", "exchange", exchange)
        durable_name = self._durable_name(sub_id, h)
        if durable_name is not None:
            self._allow("configure", "queue", durable_name)
            self.vhost.declare_queue(durable_name, durable=True)
            self.vhost.bind_queue(durable_name, exchange, pattern)
            return durable_name, False
        name = f"stomp-sub.{self.session_id}.{sub_id}"
        self.vhost.declare_queue(name, exclusive_owner=self.conn, auto_delete=False)
        self.vhost.bind_queue(name, exchange, pattern, owner=self.conn)
        return name, True

    def _durable_name(self, sub_id: str, h: dict) -> str | None:
        """The queue of a durable topic subscription: ActiveMQ's ``client-id`` +
        ``activemq.subscriptionName`` (the queue a JMS durable subscriber of the same names
        uses), or RabbitMQ's ``durable:true`` (or ``persistent:true``) with the ``id``."""
        name = h.get("activemq.subscriptionName") or h.get("durable-subscription-name")
        if name:
            if not self.client_id:
                raise StompError("a durable subscription needs client-id on CONNECT")
            return f"{self.client_id}.{name}"
        if h.get("durable", "").lower() == "true" or h.get("persistent", "").lower() == "true":
            prefix = self.client_id or "stomp-subscription"
            return f"{prefix}.{sub_id}"
        return None

    def on_unsubscribe(self, frame: Frame) -> None:
        h = frame.headers
        sub_id = h.get("id")
        if sub_id is None and self.version == V10:
            sub_id = h.get("destination")
        sub = self.subs.pop(sub_id, None) if sub_id is not None else None
        if sub is None:
            raise StompError(f"no subscription with id {sub_id!r}")
        self._drop_subscription(sub, requeue=True)
        durable_name = None
        if h.get("durable", "").lower() == "true" or h.get("activemq.subscriptionName"):
            durable_name = self._durable_name(sub_id, h)
        if durable_name is not None and durable_name == sub.queue_name:
            self.vhost.delete_queue(durable_name)
        self._receipt()

    def _drop_subscription(self, sub: Subscription, requeue: bool) -> None:
        consumer = sub.consumer
        if consumer is None:
            return
        sub.consumer = None
        for ack_id in sub.ledger.unsettled:
            self.acks.pop(ack_id, None)
        # settlements waiting in a transaction still apply: the ledger takes those deliveries
        # off the consumer, so that cancelling it does not requeue them
        sub.ledger.close()
        if consumer.queue is not None:
            consumer.queue.remove_consumer(consumer, requeue=requeue)
        if sub.temp and self.state != 2:
            self.vhost.delete_queue(sub.queue_name, owner=self.conn)
            for name, qname in list(self.temp_queues.items()):
                if qname == sub.queue_name:
                    del self.temp_queues[name]
                    self.dest_cache.clear()

    # -- deliveries ---------------------------------------------------------------------------

    def deliver(self, sub: Subscription, delivery: Delivery) -> None:
        """Called by the queue for each message it pushes to a subscription (the hot path)."""
        m = delivery.message
        version = self.version
        ack_id = str(self.next_ack)
        self.next_ack += 1
        lines = [f"message-id:{ack_id}"]
        if sub.ack != "auto":
            sub.ledger.unsettled[ack_id] = delivery
            self.acks[ack_id] = sub
            if version == V12:
                lines.append(f"ack:{ack_id}")
        if m.exchange == "amq.topic":
            dest = "/topic/" + m.routing_key
        elif m.exchange == "":
            dest = "/queue/" + (m.routing_key or sub.queue_name)
        else:
            dest = f"/exchange/{m.exchange}/{m.routing_key}"
        lines.append("destination:" + escape(dest, version))
        if m.content_type is not None:
            lines.append("content-type:" + escape(m.content_type, version))
        if m.content_encoding is not None:
            lines.append("content-encoding:" + escape(m.content_encoding, version))
        if m.message_id is not None:
            lines.append("amqp-message-id:" + escape(m.message_id, version))
        if m.correlation_id is not None:
            lines.append("correlation-id:" + escape(m.correlation_id, version))
        if m.reply_to is not None:
            lines.append("reply-to:" + escape(reply_to_stomp(m.reply_to), version))
        if m.type is not None:
            lines.append("type:" + escape(m.type, version))
        if m.user_id is not None:
            lines.append("user-id:" + escape(m.user_id, version))
        if m.timestamp is not None:
            lines.append(f"timestamp:{m.timestamp}")
        if m.expiration is not None:
            lines.append(f"expires:{m.expiration}")
        if m.priority is not None:
            lines.append(f"priority:{m.priority}")
        lines.append("persistent:true" if m.durable else "persistent:false")
        if delivery.delivery_count:
            lines.append("redelivered:true")
        headers = m.headers
        if m.key is not None and "x-kafka-key" not in headers:
            lines.append("x-kafka-key:" + escape(header_text(m.key), version))
        for k, v in headers.items():
            if k in _FRAME_HEADERS or k == "message-id" or k == "subscription":
                continue
            if version == V10 and ":" in k:
                continue
            lines.append(escape(k, version) + ":" + escape(header_text(v), version))
        body = m.body
        lines.append(f"content-length:{len(body)}\n\n")
        self.conn.write(sub.head + "\n".join(lines).encode("utf-8") + body + b"\0")
        self.conn.info.messages_out += 1

    # -- acknowledgements ---------------------------------------------------------------------

    def _settle(self, frame: Frame, ack: bool) -> None:
        h = frame.headers
        ack_id = h.get("id") if self.version == V12 else h.get("message-id")
        if ack_id is None:
            ack_id = h.get("message-id") or h.get("id")
        if ack_id is None:
            raise StompError(f"{frame.command} without an id header")
        sub = self.acks.get(ack_id)
        ledger = sub.ledger if sub is not None else None
        if ledger is None or ack_id not in ledger or ack_id in ledger.held:
            raise StompError(f"{frame.command} of an unknown message id {ack_id[:40]!r}")
        # client: cumulative, this message and every earlier one of the subscription
        tags = ledger.tags_up_to(ack_id) if sub.ack == "client" else [ack_id]
        tx_name = h.get("transaction")
        requeue = h.get("requeue", "true").lower() != "false"
        if tx_name is not None:
            ledger.settle_in(self._tx(tx_name), tags, ack, requeue)
            self._receipt()
            return
        acks = self.acks
        for aid in tags:
            del acks[aid]
        taken = ledger.take_tags(tags)
        if ack:
            ledger.ack(taken)
        else:
            ledger.nack(taken, requeue)
        self._receipt()

    def on_ack(self, frame: Frame) -> None:
        self._settle(frame, True)

    def on_nack(self, frame: Frame) -> None:
        if self.version == V10:
            raise StompError("NACK is a STOMP 1.1 frame")
        self._settle(frame, False)

    # -- transactions -------------------------------------------------------------------------

    def _tx(self, name: str) -> Transaction:
        tx = self.txs.get(name)
        if tx is None:
            raise StompError(f"unknown transaction {name[:60]!r}")
        return tx

    def _tx_name(self, frame: Frame) -> str:
        name = frame.headers.get("transaction")
        if not name:
            raise StompError(f"{frame.command} without a transaction header")
        return name

    def on_begin(self, frame: Frame) -> None:
        name = self._tx_name(frame)
        if name in self.txs:
            raise StompError(f"transaction {name[:60]!r} is already open")
        if len(self.txs) >= 1024:
            raise StompError("too many open transactions")
        self.txs[name] = Transaction(self.vhost)
        self._receipt()

    def on_commit(self, frame: Frame) -> None:
        name = self._tx_name(frame)
        tx = self._tx(name)
        del self.txs[name]
        for _ledger, aid in tx.settlements():
            self.acks.pop(aid, None)
        tx.commit()
        # the receipt leaves once what the transaction wrote is on disk
        self._receipt(durable=True)

    def on_abort(self, frame: Frame) -> None:
        name = self._tx_name(frame)
        tx = self._tx(name)
        del self.txs[name]
        # acks and nacks in the transaction are discarded: their messages are unacknowledged
        # again under the same ids (requeued when their subscription is gone)
        tx.rollback()
        self._receipt()

    def on_disconnect(self, frame: Frame) -> None:
        self.state = 2
        self._receipt(durable=True)
        # closed once the receipt (and every answer before it) has left
        self._close_after_replies()

    HANDLERS: dict[str, Any] = {
        "SEND": on_send,
        "SUBSCRIBE": on_subscribe,
        "UNSUBSCRIBE": on_unsubscribe,
        "ACK": on_ack,
        "NACK": on_nack,
        "BEGIN": on_begin,
        "COMMIT": on_commit,
        "ABORT": on_abort,
        "DISCONNECT": on_disconnect,
    }


__all__ = ["PROTOCOL", "StompSession", "V10", "V11", "V12"]

"""AMQP 0-9-1 channels: the state of one channel (consumers, unacknowledged deliveries,
confirms, transaction) and the handlers of the channel-level methods (exchange, queue, basic,
confirm, tx classes), each ``handler(session, channel, args)``.

The hot methods (basic.publish, basic.ack, content) are handled by the session itself
(:mod:`polymq.adapters.amqp.session`); everything here runs once per method frame.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polymq.core.errors import ProtocolError
from polymq.core.message import Message
from polymq.core.queue import Consumer, Limit
from polymq.core.settlement import RESTORE, DeliveryLedger
from polymq.core.tx import Transaction

from . import codec as C
from .mapping import PROPS_KEY, properties_for

if TYPE_CHECKING:
    from .session import AMQPSession


class ChannelError(ProtocolError):
    """A soft error: ``code`` closes the channel (channel.close), the connection stays up.
    Should one escape the session, the connection contract closes the connection with it."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text, code)
        self.class_id = class_id
        self.method_id = method_id


def reply_text(code: int, text: str) -> str:
    """``text`` prefixed with the reply code's name, cut to a short string (as RabbitMQ)."""
    name = C.REPLY_NAMES.get(code, "ERROR")
    out = text if text.startswith(name) else f"{name} - {text}"
    return out[:255]


class Channel:
    """One AMQP channel: its consumers, unacknowledged deliveries, confirms and transaction."""

    def __init__(self, session: AMQPSession, number: int) -> None:
        self.session = session
        self.number = number
        self.open = True
        self.closing = False
        self.consumers: dict[str, Consumer] = {}
        # AMQP's rollback rule: settlements a rolled-back transaction discards leave their
        # messages unacknowledged, under the same tags
        self.ledger = DeliveryLedger(RESTORE, ordered=True)
        self.unacked = self.ledger.unsettled  # the deliver hot path records here directly
        self.next_tag = 0
        self.prefetch_count = 0
        self.global_limit: Limit | None = None
        self.confirm = False
        self.publish_seq = 0
        self.confirmed_seq = 0
        self.confirm_out: list[tuple[int, bool]] = []
        self.confirm_durable = False
        self.confirm_waiting = 0
        self.tx: Transaction | None = None
        self.tx_returns: list[tuple[bool, Message, bytes | None]] = []
        self.flow_active = True
        # content being received: (publish args, props, raw props, body size, parts, received)
        self.pub: dict | None = None
        self.props: dict | None = None
        self.raw_props: bytes | None = None
        self.body_size = 0
        self.body_parts: list[bytes] = []
        self.body_received = 0
        # direct reply-to: the queue behind this channel's amq.rabbitmq.reply-to consumer
        self.reply_queue: str | None = None

    # -- teardown -------------------------------------------------------------------------

    def teardown(self) -> None:
        """Cancel every consumer and requeue every unacknowledged delivery."""
        self.open = False
        if self.tx is not None:
            # settlements not committed are discarded: those deliveries are unacked again
            self.tx.rollback()
            self.tx = None
        for consumer in list(self.consumers.values()):
            q = consumer.queue
            if q is not None:
                # unacknowledged deliveries are requeued below, all together and in order
                q.remove_consumer(consumer, requeue=False)
        self.consumers.clear()
        self.ledger.requeue_all()
        self.pub = None
        self.body_parts = []

    def requeue_all(self) -> None:
        self.ledger.requeue_all()

    # -- acknowledgements -----------------------------------------------------------------

    def _taken(self, tag: int, multiple: bool) -> list[tuple[int, Any]]:
        """Remove the (tag, delivery) pairs an ack/nack/reject outside a transaction settles."""
        ledger = self.ledger
        if not multiple:
            d = ledger.take(tag)
            taken = [] if d is None else [(tag, d)]
        elif tag == 0:
            return ledger.take_all()
        else:
            taken = ledger.take_up_to(tag)
        if not taken:
            raise ChannelError(C.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        return taken

    def _settle_in_tx(
        self, tx: Transaction, tag: int, multiple: bool, ack: bool, requeue: bool
    ) -> None:
        ledger = self.ledger
        if not multiple:
            tags = [tag]
        else:
            tags = ledger.tags_all() if tag == 0 else ledger.tags_up_to(tag)
        if not ledger.settle_in(tx, tags, ack, requeue) and (tag != 0 or not multiple):
            raise ChannelError(C.PRECONDITION_FAILED, f"unknown delivery tag {tag}")

    def ack(self, tag: int, multiple: bool) -> None:
        tx = self.tx
        if tx is not None:
            self._settle_in_tx(tx, tag, multiple, True, False)
        elif not multiple:
            if self.ledger.ack_one(tag) is None:
                raise ChannelError(C.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        else:
            self.ledger.ack(self._taken(tag, multiple))

    def nack(self, tag: int, multiple: bool, requeue: bool) -> None:
        tx = self.tx
        if tx is not None:
            self._settle_in_tx(tx, tag, multiple, False, requeue)
        else:
            self.ledger.nack(self._taken(tag, multiple), requeue)


# ---------------------------------------------------------------------------------------------
# channel method handlers
# ---------------------------------------------------------------------------------------------

_SERVER_ONLY = frozenset(
    name
    for name in C.BY_NAME
    if name.endswith("-ok")
    or name
    in (
        "basic.deliver",
        "basic.return",
        "basic.get-empty",
        "connection.start",
        "connection.tune",
        "connection.secure",
    )
)


def _channel_close(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.drop_channel(ch)
    session.send_method(ch.number, "channel.close-ok")


def _channel_close_ok(session: AMQPSession, ch: Channel, args: dict) -> None:
    pass


def _channel_open(session: AMQPSession, ch: Channel, args: dict) -> None:
    raise C.FrameError(C.CHANNEL_ERROR, f"channel {ch.number} is already open", 20, 10)


def _channel_flow(session: AMQPSession, ch: Channel, args: dict) -> None:
    active = args["active"]
    ch.flow_active = active
    for consumer in ch.consumers.values():
        if active and not session.paused:
            consumer.resume()
        elif not active:
            consumer.pause()
    session.send_method(ch.number, "channel.flow-ok", active=active)


def _channel_flow_ok(session: AMQPSession, ch: Channel, args: dict) -> None:
    pass


def _access_request(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.send_method(ch.number, "access.request-ok", ticket=1)


def _exchange_declare(session: AMQPSession, ch: Channel, args: dict) -> None:
    name = args["exchange"]
    if not args["passive"] and name == "":
        raise ChannelError(C.ACCESS_REFUSED, "operation not permitted on the default exchange")
    if not args["passive"]:
        session.require("configure", "exchange", name)
    session.vhost.declare_exchange(
        name,
        args["type"] or "direct",
        durable=args["durable"],
        auto_delete=args["auto_delete"],
        internal=args["internal"],
        arguments=args["arguments"],
        passive=args["passive"],
    )
    if not args["nowait"]:
        session.send_method(ch.number, "exchange.declare-ok")


def _exchange_delete(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.require("configure", "exchange", args["exchange"])
    session.vhost.delete_exchange(args["exchange"], if_unused=args["if_unused"])
    if not args["nowait"]:
        session.send_method(ch.number, "exchange.delete-ok")


def _exchange_bind(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.require("write", "exchange", args["destination"])
    session.require("read", "exchange", args["source"])
    session.vhost.bind_exchange(
        args["destination"], args["source"], args["routing_key"], args["arguments"]
    )
    if not args["nowait"]:
        session.send_method(ch.number, "exchange.bind-ok")


def _exchange_unbind(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.require("write", "exchange", args["destination"])
    session.require("read", "exchange", args["source"])
    session.vhost.unbind_exchange(
        args["destination"], args["source"], args["routing_key"], args["arguments"]
    )
    if not args["nowait"]:
        session.send_method(ch.number, "exchange.unbind-ok")


def _queue_declare(session: AMQPSession, ch: Channel, args: dict) -> None:
    passive = args["passive"]
    if not passive:
        session.require("configure", "queue", args["queue"])
    q = session.vhost.declare_queue(
        args["queue"],
        durable=args["durable"],
        exclusive_owner=session if (args["exclusive"] or passive) else None,
        auto_delete=args["auto_delete"],
        arguments=args["arguments"],
        passive=passive,
    )
    if not args["nowait"]:
        session.send_method(
            ch.number,
            "queue.declare-ok",
            queue=q.name,
            message_count=q.message_count,
            consumer_count=q.consumer_count,
        )


def _queue_bind(session: AMQPSession, ch: Channel, args: dict) -> None:
    # RabbitMQ's rule: write on the queue (it receives), read on the exchange (it is read from)
    session.require("write", "queue", args["queue"])
    session.require("read", "exchange", args["exchange"])
    session.vhost.bind_queue(
        args["queue"], args["exchange"], args["routing_key"], args["arguments"], owner=session
    )
    if not args["nowait"]:
        session.send_method(ch.number, "queue.bind-ok")


def _queue_unbind(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.require("write", "queue", args["queue"])
    session.require("read", "exchange", args["exchange"])
    session.vhost.unbind_queue(
        args["queue"], args["exchange"], args["routing_key"], args["arguments"], owner=session
    )
    session.send_method(ch.number, "queue.unbind-ok")


def _queue_purge(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.require("read", "queue", args["queue"])
    n = session.vhost.purge_queue(args["queue"], owner=session)
    if not args["nowait"]:
        session.send_method(ch.number, "queue.purge-ok", message_count=n)


def _queue_delete(session: AMQPSession, ch: Channel, args: dict) -> None:
    session.require("configure", "queue", args["queue"])
    n = session.vhost.delete_queue(
        args["queue"], if_unused=args["if_unused"], if_empty=args["if_empty"], owner=session
    )
    if not args["nowait"]:
        session.send_method(ch.number, "queue.delete-ok", message_count=n)


def _basic_qos(session: AMQPSession, ch: Channel, args: dict) -> None:
    count = args["prefetch_count"]
    if args["global_"]:
        if ch.global_limit is None:
            ch.global_limit = Limit(count)
        else:
            ch.global_limit.set_prefetch(count)
    else:
        ch.prefetch_count = count
    session.send_method(ch.number, "basic.qos-ok")


def _stream_offset(value: Any) -> Any:
    if value is None:
        return "next"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, C.Timestamp):
        return ("timestamp", int(value) * 1000)
    if isinstance(value, str):
        if value in ("first", "last", "next"):
            return value
        raise ChannelError(C.PRECONDITION_FAILED, f"invalid x-stream-offset {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ChannelError(C.PRECONDITION_FAILED, f"invalid x-stream-offset {value!r}")


def _consumer_priority(value: Any) -> int:
    """The x-priority consume argument (RabbitMQ: an integer, default 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChannelError(C.PRECONDITION_FAILED, f"invalid x-priority {value!r}")
    return value


DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def _direct_reply_queue(session: AMQPSession, ch: Channel, args: dict) -> Any:
    """RabbitMQ's direct reply-to: consuming from the pseudo-queue amq.rabbitmq.reply-to
    (no-ack only) gives the channel a private queue; messages it publishes with reply_to
    amq.rabbitmq.reply-to carry that queue's name instead, so replies come back to it."""
    if not args["no_ack"]:
        raise ChannelError(C.PRECONDITION_FAILED, "reply consumer cannot acknowledge")
    if ch.reply_queue is not None:
        raise ChannelError(C.PRECONDITION_FAILED, "reply consumer already set")
    q = session.vhost.declare_queue(
        "", exclusive_owner=session, auto_delete=True, name_prefix=DIRECT_REPLY_TO + "."
    )
    ch.reply_queue = q.name
    return q


def _basic_consume(session: AMQPSession, ch: Channel, args: dict) -> None:
    if args["queue"] == DIRECT_REPLY_TO:
        q = _direct_reply_queue(session, ch, args)
    else:
        q = session.vhost.get_queue(args["queue"], owner=session)
    session.require("read", "queue", q.name)
    tag = args["consumer_tag"] or "amq.ctag-" + secrets.token_urlsafe(16)
    if tag in ch.consumers:
        raise C.FrameError(C.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
    no_ack = args["no_ack"]
    arguments = args["arguments"] or {}
    if q.consumer_count and (args["exclusive"] or any(c.exclusive for c in q.consumers)):
        raise ChannelError(
            C.ACCESS_REFUSED, f"queue '{q.name}' in vhost '{session.vhost.name}' in exclusive use"
        )
    consumer = Consumer(
        tag,
        session.make_deliver(ch, tag, no_ack),
        prefetch=ch.prefetch_count,
        limit=ch.global_limit,
        no_ack=no_ack,
        exclusive=args["exclusive"],
        owner=session,
        arguments=arguments,
        priority=_consumer_priority(arguments.get("x-priority")),
    )
    consumer.on_cancel = lambda: _server_cancel(session, ch, tag)
    consumer.paused = True
    if q.kind == "stream":
        q.add_consumer(consumer, _stream_offset(arguments.get("x-stream-offset")))
    else:
        q.add_consumer(consumer)
    ch.consumers[tag] = consumer
    if not args["nowait"]:
        session.send_method(ch.number, "basic.consume-ok", consumer_tag=tag)
    if ch.flow_active and not session.paused:
        consumer.resume()


def _server_cancel(session: AMQPSession, ch: Channel, tag: str) -> None:
    if ch.consumers.pop(tag, None) is None or not ch.open:
        return
    if session.cancel_notify and session.state == "opened":
        session.send_method(ch.number, "basic.cancel", consumer_tag=tag, nowait=True)


def _basic_cancel(session: AMQPSession, ch: Channel, args: dict) -> None:
    tag = args["consumer_tag"]
    consumer = ch.consumers.pop(tag, None)
    if consumer is not None and consumer.queue is not None:
        if consumer.queue.name == ch.reply_queue:
            ch.reply_queue = None  # (its queue goes with it: auto-delete)
        consumer.queue.remove_consumer(consumer, requeue=False)
    if not args["nowait"]:
        session.send_method(ch.number, "basic.cancel-ok", consumer_tag=tag)


def _basic_get(session: AMQPSession, ch: Channel, args: dict) -> None:
    q = session.vhost.get_queue(args["queue"], owner=session)
    session.require("read", "queue", q.name)
    _get(session, ch, q, args["no_ack"])


def _get(session: AMQPSession, ch: Channel, q: Any, no_ack: bool) -> None:
    d = q.get(no_ack=no_ack)
    if d is None:
        # the queue's head may still be in the store (a paged backlog being read back): answer
        # once it is in, in this reply's place, rather than get-empty while messages exist
        answer: list = []

        def retry() -> None:
            if session.state != "opened" or session.channels.get(ch.number) is not ch:
                answer[0]()  # the channel went away: take nothing, answer nothing
                return
            again = q.get(no_ack=no_ack)
            if again is None and q.when_head_ready(retry):
                return
            answer[0](_get_answer(session, ch, q, again, no_ack))

        if q.when_head_ready(retry):
            answer.append(session.conn.reply_later())
            return
    session.write(_get_answer(session, ch, q, d, no_ack))


def _get_answer(session: AMQPSession, ch: Channel, q: Any, d: Any, no_ack: bool) -> bytes:
    if d is None:
        return C.method_frame(ch.number, "basic.get-empty")
    ch.next_tag = tag = ch.next_tag + 1
    if not no_ack:
        ch.unacked[tag] = d
    m = d.message
    raw = m.annotations.get(PROPS_KEY)
    if raw is None or m.expiration is not None:
        raw = properties_for(m, d.offset, session.broker)
    return C.method_frame(
        ch.number,
        "basic.get-ok",
        delivery_tag=tag,
        redelivered=d.delivery_count > 0,
        exchange=m.exchange,
        routing_key=m.routing_key,
        message_count=q.message_count,
    ) + C.content_frames(ch.number, raw, m.body, session.frame_max)


def _basic_reject(session: AMQPSession, ch: Channel, args: dict) -> None:
    ch.nack(args["delivery_tag"], False, args["requeue"])


def _basic_nack(session: AMQPSession, ch: Channel, args: dict) -> None:
    ch.nack(args["delivery_tag"], args["multiple"], args["requeue"])


def _basic_recover(session: AMQPSession, ch: Channel, args: dict) -> None:
    ch.requeue_all()
    session.send_method(ch.number, "basic.recover-ok")


def _basic_recover_async(session: AMQPSession, ch: Channel, args: dict) -> None:
    ch.requeue_all()


def _confirm_select(session: AMQPSession, ch: Channel, args: dict) -> None:
    if ch.tx is not None:
        raise ChannelError(C.PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
    ch.confirm = True
    if not args["nowait"]:
        session.send_method(ch.number, "confirm.select-ok")


def _tx_select(session: AMQPSession, ch: Channel, args: dict) -> None:
    if ch.confirm:
        raise ChannelError(C.PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
    if ch.tx is None:
        ch.tx = Transaction(session.vhost)
    session.send_method(ch.number, "tx.select-ok")


def _tx_commit(session: AMQPSession, ch: Channel, args: dict) -> None:
    tx = ch.tx
    if tx is None:
        raise ChannelError(C.PRECONDITION_FAILED, "channel is not transactional")
    returns, ch.tx_returns = ch.tx_returns, []
    number = ch.number

    def done() -> None:
        if ch.open and session.state == "opened":
            session.send_method(number, "tx.commit-ok")

    results = tx.commit(on_durable=done)
    for (mandatory, message, raw), (routed, refused) in zip(returns, results, strict=False):
        if mandatory and not routed and not refused:
            session.basic_return(ch, message, raw)


def _tx_rollback(session: AMQPSession, ch: Channel, args: dict) -> None:
    tx = ch.tx
    if tx is None:
        raise ChannelError(C.PRECONDITION_FAILED, "channel is not transactional")
    tx.rollback()  # (the ledger puts the discarded settlements back in tag order)
    ch.tx_returns = []
    session.send_method(ch.number, "tx.rollback-ok")


_CHANNEL_HANDLERS: dict[str, Callable[[AMQPSession, Channel, dict], None]] = {
    "channel.close": _channel_close,
    "channel.close-ok": _channel_close_ok,
    "channel.open": _channel_open,
    "channel.flow": _channel_flow,
    "channel.flow-ok": _channel_flow_ok,
    "access.request": _access_request,
    "exchange.declare": _exchange_declare,
    "exchange.delete": _exchange_delete,
    "exchange.bind": _exchange_bind,
    "exchange.unbind": _exchange_unbind,
    "queue.declare": _queue_declare,
    "queue.bind": _queue_bind,
    "queue.unbind": _queue_unbind,
    "queue.purge": _queue_purge,
    "queue.delete": _queue_delete,
    "basic.qos": _basic_qos,
    "basic.consume": _basic_consume,
    "basic.cancel": _basic_cancel,
    "basic.get": _basic_get,
    "basic.reject": _basic_reject,
    "basic.nack": _basic_nack,
    "basic.recover": _basic_recover,
    "basic.recover-async": _basic_recover_async,
    "confirm.select": _confirm_select,
    "tx.select": _tx_select,
    "tx.commit": _tx_commit,
    "tx.rollback": _tx_rollback,
}

"""What ends a queued message or a queue besides consumption: message TTL, the length limits
(``x-max-length``, ``x-overflow: drop-head``), dead-lettering (``x-dead-letter-exchange`` with
RabbitMQ's ``x-death`` headers) and queue expiry (``x-expires``).

:class:`QueueExpiry` is a mixin of :class:`polymq.core.queue.Queue`.
"""

from __future__ import annotations

from twisted.logger import Logger

from .delivery import Delivery
from .message import Message

log = Logger()


class QueueExpiry:
    """TTL and length limits, dead-lettering, and the idle timer of ``x-expires``."""

    def _expiry_for(self, message: Message, now: int) -> int | None:
        exp = message.expiration
        if self.message_ttl is not None:
            t = now + self.message_ttl
            exp = t if exp is None else min(exp, t)
        return exp

    def _over_limit(self, extra: int, extra_bytes: int) -> bool:
        if self.max_length is not None and self._count + extra > self.max_length:
            return True
        if self.max_length_bytes is not None and self._bytes + extra_bytes > self.max_length_bytes:
            return True
        return False

    def _drop_head_for(self, size: int, extra: int = 1) -> None:
        while self._count and self._over_limit(extra, size):
            d = self._pop_head()
            if d is None:  # the head is still in the store: dropped when it is read back
                return
            self.dropped += 1
            self._dead_letter(d, "maxlen")

    def _dead_letter(self, d: Delivery, reason: str) -> None:
        self._settle(d)
        self._dead_letter_message(d.message, reason)

    def _dead_letter_message(self, message: Message, reason: str) -> None:
        dlx = self.dead_letter_exchange
        if dlx is None:
            return
        deaths = list(message.headers.get("x-death") or [])
        # RabbitMQ's cycle rule: a message that only ever expired and comes back to a queue
        # it already died in is dropped, or it would circle forever.
        if reason != "rejected" and any(
            isinstance(x, dict) and x.get("queue") == self.name for x in deaths
        ):
            if all(isinstance(x, dict) and x.get("reason") != "rejected" for x in deaths):
                return
        for x in deaths:
            if isinstance(x, dict) and x.get("queue") == self.name and x.get("reason") == reason:
                x["count"] = int(x.get("count", 1)) + 1
                break
        else:
            deaths.insert(
                0,
                {
                    "count": 1,
                    "reason": reason,
                    "queue": self.name,
                    "time": self.vhost.now() // 1000,
                    "exchange": message.exchange,
                    "routing-keys": [message.routing_key],
                },
            )
        headers = dict(message.headers)
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", self.name)
        headers.setdefault("x-first-death-exchange", message.exchange)
        key = (
            self.dead_letter_routing_key
            if self.dead_letter_routing_key is not None
            else message.routing_key
        )
        dead = message.copy(headers=headers, expiration=None)
        if dlx not in self.vhost.exchanges:
            # as RabbitMQ does: a dead-letter exchange that does not exist drops the message;
            # neither the publisher nor the queue's expiry and overflow fail because of it
            self.dead_letters_dropped += 1
            if not self._dlx_missing_logged:
                self._dlx_missing_logged = True
                log.warn(
                    "queue {queue} in vhost {vhost}: dead-letter exchange {dlx!r} does not "
                    "exist; dead letters are dropped",
                    queue=self.name,
                    vhost=self.vhost.name,
                    dlx=dlx,
                )
            return
        self._dlx_missing_logged = False
        self.vhost.publish(dlx, key, dead)

    def _schedule_expiry(self) -> None:
        head = self._peek_head()
        if head is None or head.expires_at is None:
            return
        if self._expiry_at is not None and self._expiry_at <= head.expires_at:
            return
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        self._expiry_at = head.expires_at
        delay = max(0.0, (head.expires_at - self.vhost.now()) / 1000.0)
        self._expiry_timer = self.vhost.clock.callLater(delay, self._expire_head)

    def _expire_head(self) -> None:
        self._expiry_timer = None
        self._expiry_at = None
        if self.deleted:
            return
        now = self.vhost.now()
        while True:
            head = self._peek_head()
            if head is None or head.expires_at is None or head.expires_at > now:
                break
            self._dead_letter(self._pop_head(), "expired")
        self._schedule_expiry()

    # -- queue expiry (x-expires) and deletion ----------------------------------------------

    def _touch(self) -> None:
        if self.expires is None or self.consumers:
            return
        self._cancel_idle_timer()
        self._idle_timer = self.vhost.clock.callLater(self.expires / 1000.0, self._idle_expired)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if not self.consumers and not self.deleted:
            self.vhost.delete_queue(self.name)

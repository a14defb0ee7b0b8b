"""Queue browsers: the ready messages of a queue in delivery order, taking nothing.

:class:`QueueBrowsing` is a mixin of :class:`polymq.core.queue.Queue`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .delivery import Delivery
from .message import Message
from .queue_paging import MIN_READ_AHEAD


class QueueBrowsing:
    """Browse the messages in memory, or those and the ones paged out to the store."""

    def browse(
        self, limit: int, selector: Callable[[Message], bool] | None = None
    ) -> list[Delivery]:
        """Up to ``limit`` ready messages in delivery order, taking nothing (queue browsers).

        The deliveries returned are the queue's own: read them, never settle them. Only the
        messages in memory are browsed (:meth:`browse_all` reads paged-out ones too).
        """
        now = self.vhost.now()
        out: list[Delivery] = []
        for level in reversed(self._levels):
            _browse_into(out, level, now, limit, selector)
        return out

    def browse_all(
        self,
        limit: int,
        selector: Callable[[Message], bool] | None,
        callback: Callable[[list[Delivery]], None],
    ) -> None:
        """As :meth:`browse`, then on to the messages paged out to the store, read back for the
        browser only (the queue's memory is left as it is): ``callback(deliveries)`` on the
        reactor thread, at once when nothing is paged out."""
        now = self.vhost.now()
        out: list[Delivery] = []
        levels = list(range(len(self._levels) - 1, -1, -1))
        store = self.vhost.store

        def from_level(i: int) -> None:
            while i < len(levels) and len(out) < limit:
                level = levels[i]
                _browse_into(out, self._levels[level], now, limit, selector)
                if self._paged[level] and len(out) < limit and not self.deleted:
                    read_paged(i, self._cursor[level])
                    return
                i += 1
            callback(out)

        def read_paged(i: int, after: int) -> None:
            want = max(limit - len(out), MIN_READ_AHEAD)

            def rows_read(rows: list) -> None:
                paged = (
                    Delivery(self, seq, Message.from_bytes(data), delivery_count, expires_at)
                    for seq, data, delivery_count, expires_at in rows
                )
                _browse_into(out, paged, now, limit, selector)
                if len(out) < limit and len(rows) == want and not self.deleted:
                    read_paged(i, rows[-1][0])  # a selector skipped some: read on
                else:
                    from_level(i + 1)

            store.read_messages(self.vhost.name, self.name, levels[i], after, want, rows_read)

        from_level(0)


def _browse_into(
    out: list[Delivery],
    deliveries: Iterable[Delivery],
    now: int,
    limit: int,
    selector: Callable[[Message], bool] | None,
) -> None:
    """Append to ``out`` the unexpired ``deliveries`` the selector takes, up to ``limit`` in all
    (queue browsers: nothing is taken from the queue)."""
    for d in deliveries:
        if len(out) >= limit:
            return
        if d.expires_at is not None and d.expires_at <= now:
            continue
        if selector is None or selector(d.message):
            out.append(d)

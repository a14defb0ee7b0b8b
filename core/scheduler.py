"""Scheduled and delayed delivery: messages published now and routed later.

Every protocol reaches the same scheduler (ActiveMQ's ``AMQ_SCHEDULED_*`` properties, RabbitMQ's
``x-delayed-message`` exchange, an MQTT 5 user property). A scheduled message is a *job*: the
exchange and routing key it was published to, the message, and when to route it again (a
delay, then ``repeat`` more times every ``period`` ms, or on a cron expression).

Jobs are written to the store at once (whatever the message's persistence, as ActiveMQ's job
scheduler does), so they survive a restart and the publisher's confirm covers them. One timer
waits for the earliest due job, however many are pending. In memory the scheduler holds a
window of the earliest jobs in (due, id) order; with a store that pages (sqlite) the window is
bounded (``broker.scheduler_max_in_memory``) and the later jobs stay on disk, read back in due
order when the window runs low. Other stores keep every job in memory, as they keep queues.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgpack
from sortedcontainers import SortedDict
from twisted.logger import Logger

from .errors import BrokerError, NotFound
from .message import Message

if TYPE_CHECKING:
    from .broker import Broker
    from .store.interfaces import StoreSnapshot

log = Logger()

DEFAULT_MAX_IN_MEMORY = 100_000
# jobs routed per reactor turn before yielding to other work
_FIRE_BATCH = 2000
# annotations that identify a message to the JMS client's duplicate check: a repeated delivery
# must not carry them, or the client drops every delivery after the first as a duplicate
_ID_ANNOTATIONS = ("openwire.pid",)


class ScheduleError(ValueError):
    """A schedule that cannot be honoured (a negative period, an invalid cron expression)."""


def next_cron(expr: str, after_ms: int) -> int:
    """The first time (epoch ms, UTC) after ``after_ms`` that the cron expression matches."""
    from croniter import croniter

    try:
        it = croniter(expr, datetime.fromtimestamp(after_ms / 1000.0, UTC))
        return int(it.get_next(float) * 1000)
    except (ValueError, KeyError) as e:
        raise ScheduleError(f"invalid cron expression {expr!r}: {e}") from e


class _Job:
    """One scheduled message; ``record`` is its stored form (the message's bytes inside)."""

    __slots__ = ("id", "due", "record")

    def __init__(self, job_id: int, due: int, record: bytes) -> None:
        self.id = job_id
        self.due = due
        self.record = record


class Scheduler:
    """The broker's one scheduler (every virtual host): see the module docstring."""

    def __init__(self, broker: Broker, max_in_memory: int = DEFAULT_MAX_IN_MEMORY) -> None:
        self.broker = broker
        self.store = broker.store
        self.clock = broker.clock
        store = self.store
        if getattr(store, "put_scheduled", None) is None:
            # a backend written before scheduled delivery: jobs live in memory only
            log.warn(
                "store {name} cannot keep scheduled messages: they are lost on a restart",
                name=getattr(store, "name", store),
            )
            self._put_job: Callable[[int, int, bytes], None] = lambda i, due, rec: None
            self._delete_job: Callable[[int], None] = lambda i: None
        else:
            self._put_job = store.put_scheduled
            self._delete_job = store.delete_scheduled
        self.pages = bool(getattr(store, "pages", False)) and hasattr(store, "read_scheduled")
        self.max_in_memory = max(16, int(max_in_memory))
        # (due, id) -> job: every job whose key is below ``_horizon`` (all of them when None)
        self._window: SortedDict = SortedDict()
        self._horizon: tuple[int, int] | None = None
        self._next_id = 1
        self.pending = 0  # jobs in memory and on disk
        self.delivered = 0  # deliveries made (each repeat counts)
        self.dropped = 0  # deliveries whose exchange or vhost no longer existed
        self._warned: set[tuple[str, str]] = set()
        self._timer: Any = None
        self._timer_due: int | None = None
        # while a read of the store is out: jobs scheduled beyond the horizon meanwhile
        self._reading: list[_Job] | None = None
        # jobs fire from the start (a broker used without start() too); stop() ends that
        self.running = True

    # -- lifecycle --------------------------------------------------------------------------

    def restore(self, snap: StoreSnapshot) -> None:
        self._next_id = max(self._next_id, snap.scheduled_top_id + 1)
        self.pending = max(snap.scheduled_count, len(snap.scheduled))
        for job_id, due, record in snap.scheduled:
            self._window[(due, job_id)] = _Job(job_id, due, record)
        if self.pages and snap.scheduled_count > len(snap.scheduled):
            self._horizon = (-(2**62), 0)  # everything is on disk: read the first window

    def start(self) -> None:
        self.running = True
        if self._horizon is not None:
            self._read_more()
        self._arm()

    def stop(self) -> None:
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._timer_due = None

    # -- scheduling -------------------------------------------------------------------------

    def schedule(
        self,
        vhost: str,
        exchange: str,
        routing_key: str,
        message: Message,
        *,
        delay_ms: int = 0,
        period_ms: int = 0,
        repeat: int = 0,
        cron: str | None = None,
    ) -> int:
        """Route ``message`` through ``exchange`` with ``routing_key`` later; returns the job id.

        The first delivery is ``delay_ms`` from now (or at the cron expression's next time
        when there is one, plus ``delay_ms``); then ``repeat`` more, ``period_ms`` apart (with a
        cron expression: at its following times; ``repeat`` < 0 there means for ever).
        """
        if period_ms < 0 or delay_ms < 0:
            raise ScheduleError("a negative delay or period")
        now = self.broker.now()
        due = (next_cron(cron, now) if cron else now) + delay_ms
        if repeat and not cron and period_ms <= 0:
            raise ScheduleError("a repeat needs a period greater than zero")
        job_id = self._next_id
        self._next_id += 1
        message.exchange = exchange
        message.routing_key = routing_key
        # [vhost, exchange, key, message, period, repeat, cron, deliveries so far, delay]
        fields = [vhost, exchange, routing_key, message.to_bytes(), period_ms, repeat, cron]
        record = msgpack.packb(fields + [0, delay_ms], use_bin_type=True)
        self.pending += 1
        self._add(_Job(job_id, due, record))
        return job_id

    def _add(self, job: _Job, write: bool = True) -> None:
        if write:
            self._put_job(job.id, job.due, job.record)
        key = (job.due, job.id)
        horizon = self._horizon
        if horizon is not None and key >= horizon:
            if self._reading is not None:
                self._reading.append(job)
            return  # on disk only, read back when its turn comes
        window = self._window
        window[key] = job
        if self.pages and len(window) > self.max_in_memory:
            # the latest job leaves memory (it is in the store): the horizon moves down to it
            last, _ = window.popitem(-1)
            self._horizon = last
        if self._timer_due is None or job.due < self._timer_due:
            self._arm()

    def _read_more(self) -> None:
        if self._reading is not None or self._horizon is None:
            return
        self._reading = []
        due, job_id = self._horizon
        limit = max(1, self.max_in_memory - len(self._window))
        self.store.read_scheduled(due, job_id, limit, lambda rows: self._read_done(rows, limit))

    def _read_done(self, rows: list[tuple[int, int, bytes]], limit: int) -> None:
        later, self._reading = self._reading or [], None
        if len(rows) < limit:
            self._horizon = None  # the store held nothing else
        else:
            last_due, last_id = rows[-1][1], rows[-1][0]
            self._horizon = (last_due, last_id + 1)
        window = self._window
        for job_id, due, record in rows:
            window[(due, job_id)] = _Job(job_id, due, record)
        for job in later:  # scheduled while the read was out: the read did not see them
            self._add(job, write=False)
        while self.pages and len(window) > self.max_in_memory:
            self._horizon = window.popitem(-1)[0]
        self._arm()

    # -- firing -----------------------------------------------------------------------------

    def _arm(self) -> None:
        if not self.running:
            return
        window = self._window
        if not window:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = self._timer_due = None
            if self._horizon is not None:
                self._read_more()
            return
        due = window.peekitem(0)[0][0]
        if self._timer is not None and self._timer.active():
            if self._timer_due == due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.clock.callLater(max(0.0, (due - self.broker.now()) / 1000.0), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_due = None
        now = self.broker.now()
        window = self._window
        n = 0
        while window and n < _FIRE_BATCH:
            key, job = window.peekitem(0)
            if key[0] > now:
                break
            del window[key]
            n += 1
            try:
                self._deliver(job, now)
            except Exception:  # a bug in one job must not stop the others
                log.failure("scheduled job {id} failed; dropped", id=job.id)
                self._delete_job(job.id)
                self.pending -= 1
        if self.pages and self._horizon is not None and len(window) < self.max_in_memory // 2:
            self._read_more()
        if n >= _FIRE_BATCH:
            self._timer_due = now
            self._timer = self.clock.callLater(0, self._fire)
        else:
            self._arm()

    def _deliver(self, job: _Job, now: int) -> None:
        values = msgpack.unpackb(job.record, raw=False, strict_map_key=False)
        vhost_name, exchange, key, data, period, repeat, cron, count, delay = values[:9]
        message = Message.from_bytes(data)
        if count:
            message = _fresh_identity(message, job.id, count)
        if "x-delay" in message.headers:
            # delivered: a delayed exchange routes it on at once (RabbitMQ negates it too)
            d = message.headers["x-delay"]
            if isinstance(d, int) and d > 0:
                # (through copy: it drops an adapter's encoding of the old headers)
                message = message.copy(headers={**message.headers, "x-delay": -d})
        vhost = self.broker.vhosts.get(vhost_name)
        try:
            if vhost is None:
                raise NotFound(f"no vhost '{vhost_name}'")
            vhost.publish(exchange, key, message)
        except BrokerError as e:  # the exchange (or vhost) went away meanwhile
            self.dropped += 1
            where = (vhost_name, exchange)
            if where not in self._warned:  # once per destination, not once per message
                if len(self._warned) > 1000:
                    self._warned.clear()
                self._warned.add(where)
                log.warn(
                    "scheduled messages for {ex!r} in vhost {vh!r} are dropped: {e}",
                    ex=exchange,
                    vh=vhost_name,
                    e=e.text,
                )
        self.delivered += 1
        more = repeat < 0 or count < repeat
        if more:
            due = next_cron(cron, now) + delay if cron else now + period
            values[7] = count + 1
            job.record = msgpack.packb(values, use_bin_type=True)
            job.due = due
            self._put_job(job.id, due, job.record)
            self._add(job, write=False)
        else:
            self._delete_job(job.id)
            self.pending -= 1

    # -- inspection (management, tests) -----------------------------------------------------

    def in_memory(self) -> int:
        return len(self._window)

    def next_due(self) -> int | None:
        return self._window.peekitem(0)[0][0] if self._window else None


def _fresh_identity(message: Message, job_id: int, count: int) -> Message:
    """A repeated delivery is a new message (its own id), as ActiveMQ's scheduler makes it."""
    base = message.message_id or f"ID:polymq-scheduled-{job_id}"
    m = message.copy(message_id=f"{base}:{count}")
    for k in _ID_ANNOTATIONS:
        m.annotations.pop(k, None)
    return m


def headers_delay(headers: dict, name: str) -> int | None:
    """A delay in ms from a header that may be an int, a float or a decimal string."""
    v = headers.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    try:
        return int(float(v)) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        return None

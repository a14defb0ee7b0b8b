"""Prometheus ``/metrics``: one custom collector reading broker state at scrape time.

Rendered on the reactor thread (prometheus_client's own Twisted resource runs collectors in a
thread pool, where iterating dicts the reactor changes is unsafe). Nothing is counted on the
message path: totals come from :class:`~.state.Sampler`, depths from the queues themselves.
Names follow Prometheus conventions and RabbitMQ's / kafka_exporter's where users alert on them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from twisted.web.server import Request

from polymq.core.queue import Queue
from polymq.core.stats import Histogram
from polymq.core.stream import Stream

from .state import State, memory_bytes


class BrokerCollector:
    """``per_object``: one series per queue (``/metrics/per-object``); otherwise queue figures
    are summed, so a scrape stays cheap and small however many queues exist (as RabbitMQ's
    ``/metrics``): rendering costs some microseconds per series."""

    def __init__(self, state: State, per_object: bool = False) -> None:
        self.state = state
        self.per_object = per_object

    def collect(self):
        st = self.state
        broker = st.broker
        sampler = st.sampler
        sampler.sample(record=False)  # totals up to now, without a chart point
        reg = st.registry
        from polymq.core.cli import version

        info = GaugeMetricFamily("polymq_build_info", "polymq version", labels=["version"])
        info.add_metric([version()], 1)
        yield info
        yield GaugeMetricFamily(
            "polymq_uptime_seconds",
            "Seconds since the broker started",
            value=sampler.clock.seconds() - sampler.started_at,
        )
        conns = GaugeMetricFamily("polymq_connections", "Open connections", labels=["protocol"])
        protocols = set(sampler.totals.protocols) | {i.protocol for i in reg}
        protocols |= {n for n, s in st.config.get("adapters", {}).items() if s.get("enabled")}
        for p in sorted(protocols):
            conns.add_metric([p], reg.count(p))
        yield conns
        yield CounterMetricFamily(
            "polymq_connections_opened", "Connections accepted", value=reg.opened
        )
        sched = broker.scheduler
        yield GaugeMetricFamily(
            "polymq_scheduled_messages", "Scheduled (delayed) messages waiting", value=sched.pending
        )
        yield CounterMetricFamily(
            "polymq_scheduled_deliveries", "Deliveries made by the scheduler", value=sched.delivered
        )
        yield CounterMetricFamily(
            "polymq_connections_refused", "Connections refused by a limit", value=reg.refused
        )
        names = (
            ("polymq_messages_received", "Messages received from clients", 0),
            ("polymq_messages_sent", "Messages sent to clients", 1),
            ("polymq_received_bytes", "Bytes received from clients", 2),
            ("polymq_sent_bytes", "Bytes sent to clients", 3),
        )
        for name, doc, i in names:
            fam = CounterMetricFamily(name, doc, labels=["protocol"])
            for p in sorted(protocols):
                fam.add_metric([p], sampler.totals.protocols.get(p, [0, 0, 0, 0])[i])
            yield fam
        yield CounterMetricFamily(
            "polymq_queue_messages_published",
            "Messages routed into queues (all queues)",
            value=sampler.totals.enqueued,
        )
        yield CounterMetricFamily(
            "polymq_stream_messages_appended",
            "Messages appended to streams (all streams)",
            value=sampler.totals.appended,
        )

        qlabels = ["vhost", "queue"] if self.per_object else []
        ready = GaugeMetricFamily(
            "polymq_queue_messages_ready", "Messages ready for delivery", labels=qlabels
        )
        unacked = GaugeMetricFamily(
            "polymq_queue_messages_unacked",
            "Messages delivered, not yet acknowledged",
            labels=qlabels,
        )
        qbytes = GaugeMetricFamily(
            "polymq_queue_messages_bytes", "Bytes of ready messages", labels=qlabels
        )
        consumers = GaugeMetricFamily("polymq_queue_consumers", "Consumers", labels=qlabels)
        sums = [0, 0, 0, 0]
        nqueues = 0
        nconsumers = 0
        part_end = GaugeMetricFamily(
            "kafka_topic_partition_current_offset",
            "Log-end offset of a partition",
            labels=["topic", "partition"],
        )
        part_start = GaugeMetricFamily(
            "kafka_topic_partition_oldest_offset",
            "First offset still kept",
            labels=["topic", "partition"],
        )
        partitions = GaugeMetricFamily(
            "kafka_topic_partitions", "Partitions of a topic", labels=["topic"]
        )
        for vh in broker.vhosts.values():
            for q in vh.queues.values():
                nconsumers += q.consumer_count
                if isinstance(q, Queue):
                    if q.exclusive_owner is not None:
                        continue  # per-connection queues: unbounded label values
                    nqueues += 1
                    figures = (q.message_count, len(q.unacked), q.byte_count, q.consumer_count)
                    if self.per_object:
                        labels = [vh.name, q.name]
                        ready.add_metric(labels, figures[0])
                        unacked.add_metric(labels, figures[1])
                        qbytes.add_metric(labels, figures[2])
                        consumers.add_metric(labels, figures[3])
                    else:
                        for i in range(4):
                            sums[i] += figures[i]
                elif isinstance(q, Stream):
                    partitions.add_metric([q.name], len(q.partitions))
                    for p in q.partitions:
                        part_end.add_metric([q.name, str(p.index)], p.next_offset)
                        part_start.add_metric([q.name, str(p.index)], p.start_offset)
        if not self.per_object:
            for family, total in zip((ready, unacked, qbytes, consumers), sums, strict=True):
                family.add_metric([], total)
        yield ready
        yield unacked
        yield qbytes
        yield consumers
        yield GaugeMetricFamily("polymq_queues", "Queues", value=nqueues)
        yield GaugeMetricFamily(
            "polymq_consumers", "Consumers of every queue and stream", value=nconsumers
        )
        yield partitions
        yield part_end
        yield part_start

        lag = GaugeMetricFamily(
            "kafka_consumergroup_lag",
            "Log-end offset minus committed",
            labels=["consumergroup", "topic", "partition"],
        )
        current = GaugeMetricFamily(
            "kafka_consumergroup_current_offset",
            "Committed offset",
            labels=["consumergroup", "topic", "partition"],
        )
        lag_sum = GaugeMetricFamily(
            "kafka_consumergroup_lag_sum", "Lag over partitions", labels=["consumergroup", "topic"]
        )
        members = GaugeMetricFamily(
            "kafka_consumergroup_members", "Group members", labels=["consumergroup"]
        )
        for g in st.groups():
            sums: dict[str, int] = {}
            members.add_metric([g["group"]], len(g["members"]))
            for p in g["partitions"]:
                labels = [g["group"], p["topic"], str(p["partition"])]
                current.add_metric(labels, p["current_offset"])
                if p["lag"] is not None:
                    lag.add_metric(labels, p["lag"])
                    sums[p["topic"]] = sums.get(p["topic"], 0) + p["lag"]
            for topic, total in sorted(sums.items()):
                lag_sum.add_metric([g["group"], topic], total)
        yield lag
        yield current
        yield lag_sum
        yield members

        yield GaugeMetricFamily(
            "polymq_resident_memory_bytes", "Resident memory", value=memory_bytes()
        )
        yield GaugeMetricFamily(
            "polymq_alarm",
            "1 while the resource alarm holds publishers",
            value=1 if reg.blocked else 0,
        )
        # the store's own counters, where its backend keeps them (sqlite does); the average
        # group-commit size is rate(operations) / rate(commits)
        backend = getattr(broker.store, "name", type(broker.store).__name__)
        for attr, metric, doc in STORE_COUNTERS:
            value = getattr(broker.store, attr, None)
            if type(value) is int:
                fam = CounterMetricFamily(metric, doc, labels=["backend"])
                fam.add_metric([backend], value)
                yield fam
        for attr, metric, doc in STORE_HISTOGRAMS:
            hist = getattr(broker.store, attr, None)
            if isinstance(hist, Histogram):
                fam = HistogramMetricFamily(metric, doc, labels=["backend"])
                fam.add_metric([backend], hist.cumulative(), sum_value=hist.sum)
                yield fam


# store attribute -> counter (without _total), help
STORE_COUNTERS = (
    ("commits", "polymq_store_commits", "Transactions committed (one fsync each)"),
    ("flushes", "polymq_store_flushes", "Batches handed to the store's writer"),
    ("ops_written", "polymq_store_operations", "Operations written"),
    (
        "cancelled",
        "polymq_store_cancelled_writes",
        "Message writes dropped because the message was gone before they reached the disk",
    ),
    ("checkpoints", "polymq_store_checkpoints", "WAL checkpoints"),
    ("segment_fsyncs", "polymq_store_segment_fsyncs", "fsyncs of stream segment files"),
    ("segment_writes", "polymq_store_segment_writes", "writes to stream segment files"),
)


# store attribute (a polymq.core.stats.Histogram) -> histogram, help
STORE_HISTOGRAMS = (
    (
        "commit_seconds",
        "polymq_store_commit_duration_seconds",
        "Duration of one group commit, its fsyncs included",
    ),
    ("commit_sizes", "polymq_store_group_commit_operations", "Operations in one group commit"),
    (
        "segment_sync_seconds",
        "polymq_store_segment_fsync_duration_seconds",
        "Duration of the fsyncs of the stream segment files written by one commit",
    ),
)


class MetricsRenderer:
    """``/metrics`` (aggregated) and ``/metrics/per-object`` (a series per queue)."""

    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(state))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.per_object = CollectorRegistry(auto_describe=False)
        self.per_object.register(BrokerCollector(state, per_object=True))

    def __call__(self, request: Request) -> bytes:
        path = [p for p in request.postpath if p]
        if path not in ([], [b"per-object"]):
            request.setResponseCode(404)
            return b"not found: /metrics or /metrics/per-object\n"
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode())
        return encoder(self.per_object if path else self.registry)

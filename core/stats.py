"""Cheap histograms for what a store or the broker measures off the hot path (a commit's
duration, a group commit's size), read by the management plugin's Prometheus collector.

``observe`` is a bisect and two additions; it is called once per commit on the store's writer
thread, never per message. Readers get a consistent enough copy under the GIL.
"""

from __future__ import annotations

from bisect import bisect_left

# seconds: a commit with fsync takes from well under a millisecond (tmpfs) to a second (a slow
# disk under load)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# operations in one group commit
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive), their sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations at or below it), ending with +Inf."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

"""Per-method call latency of the plugin's own work, for the benchmark and `pybridge stats`
(GET /pybridge/stats). The last KEEP latencies of each method are kept as C doubles in a ring
(8 bytes each: a deque of Python floats took 32, 3 MB at rest after a busy day)."""

from __future__ import annotations

import threading
from array import array
from collections import defaultdict

KEEP = 5000
# the plugin's work for one container's endpoint, all its calls summed (CreateEndpoint to
# DeleteEndpoint: the calls that name the endpoint), as one pseudo-method
PER_CONTAINER = "(per container) endpoint calls summed"
OPEN_MAX = 20000  # endpoints being summed at once (more: the oldest sum is dropped)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[idx]


class _Ring:
    __slots__ = ("values", "count")

    def __init__(self):
        self.values = array("d")
        self.count = 0  # all ever recorded; the newest is at (count - 1) % KEEP

    def add(self, value: float, keep: int) -> None:
        if len(self.values) < keep:
            self.values.append(value)
        else:
            self.values[self.count % keep] = value
        self.count += 1


class CallStats:
    def __init__(self, keep: int = KEEP):
        self._keep = keep
        self._lock = threading.Lock()
        self._calls: dict[str, _Ring] = defaultdict(_Ring)
        self._errors: dict[str, int] = defaultdict(int)
        self._open: dict[str, float] = {}  # endpoint -> seconds so far
        self.calls = 0  # all calls since start (reset() keeps it): tells activity from idleness

    def record(self, method: str, seconds: float, ok: bool, endpoint: str = "") -> None:
        with self._lock:
            self.calls += 1
            self._calls[method].add(seconds, self._keep)
            if not ok:
                self._errors[method] += 1
            if endpoint:
                self._open[endpoint] = self._open.get(endpoint, 0.0) + seconds
                if method == "NetworkDriver.DeleteEndpoint":
                    self._calls[PER_CONTAINER].add(self._open.pop(endpoint), self._keep)
                elif len(self._open) > OPEN_MAX:
                    del self._open[next(iter(self._open))]

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._errors.clear()
            self._open.clear()

    def summary(self) -> dict:
        with self._lock:
            snap = {m: r.values.tolist() for m, r in self._calls.items()}
            errors = dict(self._errors)
        return {
            m: {
                "count": len(v),
                "errors": errors.get(m, 0),
                "p50_ms": round(percentile(v, 50) * 1000, 3),
                "p99_ms": round(percentile(v, 99) * 1000, 3),
                "max_ms": round(max(v) * 1000, 3),
            }
            for m, v in sorted(snap.items())
            if v
        }

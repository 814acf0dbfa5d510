"""Per-method call latency of the plugin's own work, for the benchmark (GET /pybridge/stats)."""

from __future__ import annotations

import threading
from collections import defaultdict, deque


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[idx]


class CallStats:
    def __init__(self, keep: int = 5000):
        self._lock = threading.Lock()
        self._calls: dict[str, deque] = defaultdict(lambda: deque(maxlen=keep))
        self._errors: dict[str, int] = defaultdict(int)
        self.calls = 0          # all calls since start (reset() keeps it): tells activity from idleness

    def record(self, method: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self.calls += 1
            self._calls[method].append(seconds)
            if not ok:
                self._errors[method] += 1

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._errors.clear()

    def summary(self) -> dict:
        with self._lock:
            snap = {m: list(v) for m, v in self._calls.items()}
            errors = dict(self._errors)
        return {m: {"count": len(v), "errors": errors.get(m, 0),
                    "p50_ms": round(percentile(v, 50) * 1000, 3),
                    "p99_ms": round(percentile(v, 99) * 1000, 3),
                    "max_ms": round(max(v) * 1000, 3)} for m, v in sorted(snap.items()) if v}

"""Per-method call latency of the plugin's own work, for the benchmark and `pybridge stats`
(GET /pybridge/stats). The last KEEP latencies of each method are kept as C doubles in a ring
(8 bytes each: a deque of Python floats took 32, 3 MB at rest after a busy day).

Beside each call's wall time, from the kernel's schedstat of the thread that ran it (the newest
KEEP_CPU): the CPU time it spent on the call, and the time it sat runnable in a run queue while
other processes had the CPUs. Wall time far above both is waiting on a lock or a peer (etcd); the
bench prints all three, so a slow tail says whether the plugin worked, waited, or was starved."""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections import defaultdict
from typing import Literal

KEEP = 5000
KEEP_CPU = 1000
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

    def __init__(self, typecode: Literal["d", "f"] = "d"):
        self.values: array[float] = array(typecode)
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
        # (C floats: 4 bytes each, a microsecond's precision up to seconds; together 12 KB per
        # method at most, for a plugin whose idle memory is measured against 60 MB)
        self._cpu: dict[str, _Ring] = defaultdict(lambda: _Ring("f"))
        self._queued: dict[str, _Ring] = defaultdict(lambda: _Ring("f"))
        self._unqueued: dict[str, _Ring] = defaultdict(lambda: _Ring("f"))  # wall less run queue
        self._thread = threading.local()  # each thread's /proc/thread-self/schedstat, opened once
        self._errors: dict[str, int] = defaultdict(int)
        self._open: dict[str, float] = {}  # endpoint -> seconds so far
        self.calls = 0  # all calls since start (reset() keeps it): tells activity from idleness

    def clock(self) -> tuple[float, float | None]:
        """The calling thread's CPU time and run-queue wait so far, in seconds, from its
        schedstat (the wait is None where the kernel keeps no schedstat)."""
        fd = getattr(self._thread, "fd", None)
        if fd is None:
            try:
                fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                fd = -1
            self._thread.fd = fd
        if fd >= 0:
            try:
                ran, waited = os.pread(fd, 64, 0).split()[:2]
                return int(ran) / 1e9, int(waited) / 1e9
            except (OSError, ValueError):
                pass
        return time.thread_time(), None

    def record(
        self,
        method: str,
        seconds: float,
        ok: bool,
        endpoint: str = "",
        cpu: float | None = None,
        queued: float | None = None,
    ) -> None:
        with self._lock:
            self.calls += 1
            self._calls[method].add(seconds, self._keep)
            if cpu is not None:
                self._cpu[method].add(cpu, min(self._keep, KEEP_CPU))
            if queued is not None:
                self._queued[method].add(queued, min(self._keep, KEEP_CPU))
                self._unqueued[method].add(max(0.0, seconds - queued), min(self._keep, KEEP_CPU))
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
            self._cpu.clear()
            self._queued.clear()
            self._unqueued.clear()
            self._errors.clear()
            self._open.clear()

    def summary(self) -> dict:
        with self._lock:
            snap = {m: r.values.tolist() for m, r in self._calls.items()}
            cpu = {m: r.values.tolist() for m, r in self._cpu.items()}
            queued = {m: r.values.tolist() for m, r in self._queued.items()}
            unqueued = {m: r.values.tolist() for m, r in self._unqueued.items()}
            errors = dict(self._errors)
        out: dict[str, dict] = {}
        for m, v in sorted(snap.items()):
            if not v:
                continue
            out[m] = {
                "count": len(v),
                "errors": errors.get(m, 0),
                "p50_ms": round(percentile(v, 50) * 1000, 3),
                "p99_ms": round(percentile(v, 99) * 1000, 3),
                "max_ms": round(max(v) * 1000, 3),
            }
            if cpu.get(m):
                out[m]["cpu_p50_ms"] = round(percentile(cpu[m], 50) * 1000, 3)
                out[m]["cpu_p99_ms"] = round(percentile(cpu[m], 99) * 1000, 3)
            if queued.get(m):
                out[m]["queued_p99_ms"] = round(percentile(queued[m], 99) * 1000, 3)
                out[m]["queued_max_ms"] = round(max(queued[m]) * 1000, 3)
                out[m]["unqueued_p99_ms"] = round(percentile(unqueued[m], 99) * 1000, 3)
        return out

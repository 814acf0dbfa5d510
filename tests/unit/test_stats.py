"""The per-method latency kept for `pybridge stats` and the bench: the newest KEEP of each."""

import time

from plugin.protocol.stats import CallStats


def test_keeps_the_newest_latencies_and_counts_every_call_and_error():
    s = CallStats(keep=3)
    for i in range(5):
        s.record("m", i / 1000, ok=i % 2 == 0)
    assert s.summary() == {"m": {"count": 3, "errors": 2, "p50_ms": 3.0, "p99_ms": 4.0, "max_ms": 4.0}}
    assert s.calls == 5
    s.reset()
    assert s.summary() == {} and s.calls == 5  # reset clears the figures, not the activity count


def test_a_containers_endpoint_calls_are_summed_from_create_to_delete():
    from plugin.protocol.stats import PER_CONTAINER

    s = CallStats()
    for method, ms in (("CreateEndpoint", 3), ("Join", 2), ("Leave", 1)):
        s.record(f"NetworkDriver.{method}", ms / 1000, True, "e1")
    s.record("NetworkDriver.Join", 0.5, True, "e2")  # another endpoint, not ended yet
    s.record("IpamDriver.RequestAddress", 0.25, True)  # no endpoint: not summed
    assert PER_CONTAINER not in s.summary()
    s.record("NetworkDriver.DeleteEndpoint", 0.004, True, "e1")
    assert s.summary()[PER_CONTAINER]["count"] == 1
    assert s.summary()[PER_CONTAINER]["max_ms"] == 10.0


def test_the_cpu_time_of_a_call_is_kept_beside_its_wall_time():
    s = CallStats()
    s.record("m", 0.030, True, cpu=0.001)  # waited 29 ms: on a lock, etcd or the run queue
    s.record("m", 0.002, True, cpu=0.002)
    s.record("m", 0.001, True, cpu=0.001)
    s.record("n", 0.001, True)  # no CPU time given: none shown
    out = s.summary()
    assert (out["m"]["p99_ms"], out["m"]["cpu_p99_ms"], out["m"]["cpu_p50_ms"]) == (30.0, 2.0, 1.0)
    assert "cpu_p99_ms" not in out["n"]
    s.record("q", 0.050, True, cpu=0.001, queued=0.045)  # starved: 45 ms runnable, not running
    s.record("q", 0.004, True, cpu=0.001, queued=0.0)
    q = s.summary()["q"]
    assert (q["queued_p99_ms"], q["queued_max_ms"], q["unqueued_p99_ms"]) == (45.0, 45.0, 5.0)
    s.reset()
    s.record("m", 0.001, True)
    assert "cpu_p99_ms" not in s.summary()["m"]


def test_the_app_records_each_calls_thread_cpu_time(monkeypatch):
    from plugin import app as app_mod

    seen = []
    monkeypatch.setattr(CallStats, "record", lambda self, *a, **k: seen.append(a))

    class _Life:
        retired = False

    class _Services:
        lifecycle = _Life()
        metrics = None

    view = app_mod._view(_Services(), CallStats(), "Plugin.Activate", lambda services, body: {})
    flask = app_mod.Flask("t")
    with flask.test_request_context("/", method="POST", data=b"{}"):
        view()
    ((method, took, ok, endpoint, cpu, queued),) = seen
    assert method == "Plugin.Activate" and ok and 0 <= cpu <= took + 0.01
    assert queued is not None and 0 <= queued <= took + 0.01  # this kernel keeps schedstat


def test_the_clock_reads_the_calling_threads_own_schedstat():
    import threading

    s = CallStats()
    here = s.clock()
    spin = time.thread_time() + 0.05
    while time.thread_time() < spin:
        pass
    after = s.clock()
    assert after[0] - here[0] >= 0.04  # this thread's CPU time, which the spin added to
    other: list = []
    t = threading.Thread(target=lambda: other.append(s.clock()))
    t.start()
    t.join()
    assert other[0][0] < 0.04  # a new thread opens its own: its CPU time starts near nothing

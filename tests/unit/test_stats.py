"""The per-method latency kept for `pybridge stats` and the bench: the newest KEEP of each."""

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

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

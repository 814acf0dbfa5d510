"""Waiting for a condition instead of asserting a wall-clock time: shared by every kind of test."""

import time


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):
    """The predicate's first true value, or its last value once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)

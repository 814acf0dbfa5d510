"""The plugin hands freed memory back after a burst of work, once the burst is over, and never
while it goes on or while nothing happens (plugin/server.py _trim_when_idle)."""

import gc

import pytest

from plugin import server


def test_trims_once_after_each_burst_and_never_during_one(monkeypatch):
    readings = iter(
        [
            0,  # at start
            0,
            0,  # idle: nothing to trim
            4,
            9,  # a burst
            9,  # over: trim
            9,
            9,  # idle again: no second trim
            12,
            12,
        ]
    )  # another burst, over: trim
    trims = []
    monkeypatch.setattr(gc, "collect", lambda: trims.append("gc"))

    def sleep(_):
        pass

    monkeypatch.setattr(server.time, "sleep", sleep)

    def activity():
        try:
            return next(readings)
        except StopIteration:
            raise KeyboardInterrupt from None  # ends the loop

    with pytest.raises(KeyboardInterrupt):
        server._trim_when_idle(activity)
    assert trims == ["gc", "gc"]

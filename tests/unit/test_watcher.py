"""Issue 8, item 10: the Docker event watcher backs off until the stream has proven itself,
ignores events that cannot change a name or an address, and reports Docker's bridges. A fake
Docker API and a fake clock (driven by the watcher's own waits): nothing is timed."""

import pytest

import plugin.docker.watcher as watcher_module
from plugin.docker.watcher import DockerWatcher


class FakeDocker:
    """Answers the few API paths the watcher uses; the event stream fails at once (or after a
    given number of fake seconds), as when dockerd is half up."""

    def __init__(self, clock, stream_lasts=0.0, events=()):
        self.clock, self.stream_lasts, self.events = clock, stream_lasts, list(events)
        self.gets: list[str] = []

    def get(self, url, **kw):
        path = url.split("docker.sock", 1)[-1] if "docker.sock" in url else url
        self.gets.append(path)
        if "/events" in path:
            self.clock.now += self.stream_lasts
            return _Stream(self.events)
        if path.startswith("/containers/json"):
            return _Json([{"Id": "a" * 64}])
        if path.startswith("/containers/"):
            return _Json(
                {
                    "Id": "a" * 64,
                    "Name": "/web",
                    "State": {"Running": True},
                    "NetworkSettings": {
                        "Networks": {"app": {"NetworkID": "n1", "IPAddress": "10.200.1.2", "Aliases": []}}
                    },
                }
            )
        if path.startswith("/networks"):
            return _Json(
                [
                    {
                        "Name": "bridge",
                        "Id": "1" * 64,
                        "Driver": "bridge",
                        "Options": {"com.docker.network.bridge.name": "docker0"},
                    },
                    {"Name": "app2", "Id": "0123456789abcdef" * 4, "Driver": "bridge", "Options": {}},
                    {
                        "Name": "custom",
                        "Id": "2" * 64,
                        "Driver": "bridge",
                        "Options": {"com.docker.network.bridge.name": "mycustom"},
                    },
                    {
                        "Name": "weird",
                        "Id": "3" * 64,
                        "Driver": "bridge",
                        "Options": {"com.docker.network.bridge.name": "bad name\n"},
                    },
                    {"Name": "ours", "Id": "4" * 64, "Driver": "pybridge", "Options": {}},
                ]
            )
        raise AssertionError(path)


class _Json:
    def __init__(self, data):
        self.data = data

    def raise_for_status(self):
        pass

    def json(self):
        return self.data


class _Stream:
    def __init__(self, events):
        self.events = events

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def raise_for_status(self):
        pass

    def iter_lines(self):
        import json

        for e in self.events:
            yield json.dumps(e).encode()
        raise ConnectionError("the event stream dropped")


class Clock:
    def __init__(self):
        self.now = 1000.0


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(watcher_module.time, "monotonic", lambda: c.now)
    return c


def run_rounds(w, clock, rounds):
    """Run the watcher's loop until it has waited `rounds` times; return the waits."""
    waits = []

    class Stop:
        def is_set(self):
            return len(waits) >= rounds

        def wait(self, seconds):
            waits.append(seconds)
            clock.now += seconds
            return len(waits) >= rounds

        def set(self):
            pass

    w._stop = Stop()
    w._run()
    return waits


def test_a_failing_event_stream_backs_off_instead_of_resyncing_every_half_second(clock):
    docker = FakeDocker(clock)
    w = DockerWatcher("/x/docker.sock", lambda state, changed: None)
    w._session = lambda: docker
    waits = run_rounds(w, clock, 8)
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], waits
    resyncs = sum(1 for g in docker.gets if g.startswith("/containers/json"))
    assert resyncs == 8, "one full resync per attempt, not one every 0.5 s"
    assert w.reconnects == 7, "the first connection is not a reconnect; each later one is (metrics)"


def test_a_stream_that_proved_itself_is_retried_at_once_when_it_drops(clock):
    docker = FakeDocker(clock, stream_lasts=600.0)
    w = DockerWatcher("/x/docker.sock", lambda state, changed: None)
    w._session = lambda: docker
    assert run_rounds(w, clock, 3) == [0.5, 0.5, 0.5]


def test_events_that_cannot_change_names_cause_no_inspect(clock):
    noise = [
        {"Type": "container", "Action": a, "Actor": {"ID": "a" * 64}}
        for a in (
            "exec_create: sh -c check",
            "exec_start: sh -c check",
            "exec_die",
            "health_status: healthy",
            "top",
            "attach",
            "resize",
            "commit",
        )
    ]
    useful = [
        {"Type": "container", "Action": "start", "Actor": {"ID": "a" * 64}},
        {"Type": "network", "Action": "connect", "Actor": {"ID": "n1", "Attributes": {"container": "a" * 64}}},
    ]
    docker = FakeDocker(clock, events=noise * 50 + useful)
    changes = []
    w = DockerWatcher("/x/docker.sock", lambda state, changed: changes.append(set(changed)))
    w._session = lambda: docker
    run_rounds(w, clock, 1)
    inspects = [g for g in docker.gets if g.startswith("/containers/a")]
    assert len(inspects) == 1 + 2, f"{len(inspects)} inspects: one at resync, one per useful event"
    assert changes == [{"n1"}], "one write, for the resync; the same state twice is no change"


def test_dockers_bridge_names_are_reported(clock):
    docker = FakeDocker(clock, events=[{"Type": "network", "Action": "create", "Actor": {"ID": "9" * 64}}])
    seen = []
    w = DockerWatcher("/x/docker.sock", lambda state, changed: None, on_bridges=seen.append)
    w._session = lambda: docker
    run_rounds(w, clock, 1)
    assert seen and seen[0] == {"docker0", "br-0123456789ab", "mycustom"}
    assert len(seen) == 2, "listed at resync and again on a network event"


def test_containers_of_reads_restart_policies_and_swarm_service_names():
    """Issue 10: a container that restarts by itself is marked (the IPAM gives its address back);
    a swarm task answers to its service's name and tasks.<service> (DNS round robin)."""
    from plugin.docker.watcher import containers_of

    inspect = {
        "Id": "a" * 64,
        "Name": "/svc.1.xyz",
        "State": {"Running": True},
        "HostConfig": {"RestartPolicy": {"Name": "always"}},
        "Config": {"Labels": {"com.docker.swarm.service.name": "svc"}},
        "NetworkSettings": {
            "Networks": {"sw": {"NetworkID": "s1ri11csg9exlsvtpkyh4z3ha", "IPAddress": "10.200.1.3", "Aliases": None}}
        },
    }
    ((name, entry),) = containers_of(inspect).values()
    assert entry.restarts and entry.aliases == ("svc", "tasks.svc") and entry.name == "svc.1.xyz"
    inspect["HostConfig"]["RestartPolicy"]["Name"] = "no"
    inspect["Config"]["Labels"] = {"com.docker.swarm.service.name": ["not", "text"]}
    ((name, entry),) = containers_of(inspect).values()
    assert not entry.restarts and entry.aliases == ()


def test_the_watcher_reports_every_container_at_resync_and_removals_as_they_happen(clock, monkeypatch):
    seen = []
    fake = FakeDocker(clock, events=[{"Type": "container", "Action": "destroy", "Actor": {"ID": "b" * 64}}])
    w = DockerWatcher(
        "/run/docker.sock",
        lambda state, changed: None,
        on_containers=lambda state, changed, existing, gone: seen.append((set(changed), existing, gone)),
    )
    monkeypatch.setattr(w, "_session", lambda: fake)
    session = w._session()
    w._resync(session)
    w._event(session, {"Type": "container", "Action": "destroy", "Actor": {"ID": "b" * 64}})
    assert seen[0] == ({"n1"}, frozenset({"a" * 64}), frozenset())
    assert seen[1][2] == frozenset({"b" * 64}) and seen[1][1] is None


def test_a_container_dockerd_is_too_busy_to_describe_is_not_taken_for_gone(clock):
    """At a thousand starts at once dockerd answered an inspect after the watcher's timeout, and
    the watcher dropped that running container's names until its next event. A timeout now ends
    the stream (which starts again with a full resync); only a 404 means gone."""
    from plugin.docker.api import DockerApiError

    class Busy(FakeDocker):
        answer: DockerApiError | None = None

        def get(self, url, **kw):
            if "/containers/" + "a" * 64 in url and self.answer is not None:
                self.gets.append(url)
                raise self.answer
            return super().get(url, **kw)

    docker = Busy(clock)
    w = DockerWatcher("/x/docker.sock", lambda state, changed: None)
    w._resync(docker)
    assert "a" * 64 in w.state["n1"][1]
    start = {"Type": "container", "Action": "start", "Actor": {"ID": "a" * 64}}
    docker.answer = DockerApiError("GET /containers/a/json: timed out")
    with pytest.raises(DockerApiError):
        w._event(docker, start)
    assert docker.gets[-1].endswith("/json"), "the inspect was asked, and failed"
    assert "a" * 64 in w.state["n1"][1], "a container dockerd did not describe in time is still there"
    docker.answer = DockerApiError("GET /containers/a/json: HTTP 404", 404)
    w._event(docker, {"Type": "container", "Action": "destroy", "Actor": {"ID": "a" * 64}})
    assert "a" * 64 not in w.state["n1"][1], "a 404 is a container gone"

"""Learning container names from Docker, asynchronously, outside every plugin handler.

A thread resynchronises fully (list + inspect every running container), then follows the event
stream, re-inspecting a container on each network or container event. When the stream drops or
dockerd is away it retries with back-off; the DNS keeps serving the last records meanwhile.
Calls to dockerd have timeouts: at dockerd's start its socket exists before the API answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable
from urllib.parse import quote

from .records import ContainerInfo

log = logging.getLogger(__name__)

# network id -> (network name, {container id: ContainerInfo})
State = dict[str, tuple[str, dict[str, ContainerInfo]]]
EVENT_FILTER = json.dumps({"type": ["container", "network"]})


def containers_of(inspect: dict) -> dict[str, tuple[str, ContainerInfo]]:
    """network id -> (network name, this container's entry) from a container inspect."""
    out = {}
    cid, name = inspect.get("Id", ""), (inspect.get("Name") or "").lstrip("/")
    running = (inspect.get("State") or {}).get("Running", False)
    networks = ((inspect.get("NetworkSettings") or {}).get("Networks") or {})
    for net_name, ep in networks.items():
        ep = ep or {}
        if not running or not ep.get("NetworkID") or not (ep.get("IPAddress") or ep.get("GlobalIPv6Address")):
            continue
        aliases = tuple(a for a in (ep.get("Aliases") or []) if isinstance(a, str))
        out[ep["NetworkID"]] = (net_name, ContainerInfo(id=cid, name=name, aliases=aliases,
                                                        ipv4=ep.get("IPAddress") or "",
                                                        ipv6=ep.get("GlobalIPv6Address") or ""))
    return out


class DockerWatcher:
    def __init__(self, socket_path: str, on_change: Callable[[State, set[str]], None]):
        self.base = "http+unix://" + quote(socket_path, safe="")
        self.on_change = on_change
        self.state: State = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pybridge-docker-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _session(self):
        import requests_unixsocket
        return requests_unixsocket.Session()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                session = self._session()
                since = int(time.time())
                self._resync(session)
                backoff = 0.5
                self._follow(session, since)
            except Exception as e:  # dockerd away, stream dropped: keep the last records
                log.info("docker events: %s; retrying in %.1fs", e, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _get(self, session, path: str, timeout: float = 5.0):
        resp = session.get(self.base + path, timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def _resync(self, session) -> None:
        state: State = {}
        for c in self._get(session, "/containers/json"):
            try:
                info = self._get(session, f"/containers/{c['Id']}/json")
            except Exception:
                continue
            for nid, (net_name, entry) in containers_of(info).items():
                state.setdefault(nid, (net_name, {}))[1][entry.id] = entry
        changed = set(state) | set(self.state)
        self.state = state
        self.on_change(state, changed)

    def _follow(self, session, since: int) -> None:
        url = f"{self.base}/events?since={since}&filters={quote(EVENT_FILTER)}"
        with session.get(url, stream=True, timeout=(5, None)) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if line:
                    self._event(session, json.loads(line))

    def _event(self, session, event: dict) -> None:
        actor = event.get("Actor") or {}
        if event.get("Type") == "network":
            cid = (actor.get("Attributes") or {}).get("container", "")
        else:
            cid = actor.get("ID", "")
        if not cid:
            return
        try:
            now = containers_of(self._get(session, f"/containers/{cid}/json"))
        except Exception:
            now = {}  # gone
        state = {nid: (name, dict(members)) for nid, (name, members) in self.state.items()}
        changed = set()
        for nid, (name, members) in state.items():
            if cid in members and nid not in now:
                del members[cid]
                changed.add(nid)
        for nid, (net_name, entry) in now.items():
            name, members = state.setdefault(nid, (net_name, {}))
            if members.get(cid) != entry:
                members[cid] = entry
                changed.add(nid)
        if changed:
            self.state = state
            self.on_change(state, changed)

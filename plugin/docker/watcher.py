"""Learning container names, swarm services and restart policies (and Docker's bridges) from
Docker, asynchronously, outside every plugin handler: for the DNS, and for the IPAM, which gives
a container that restarts by itself its address back.

A thread resynchronises fully (list + inspect every running container, list the networks), then
follows the event stream, re-inspecting a container only on the events that can change a name
or an address (health checks and execs cannot). When the stream drops or dockerd is away it
retries with a back-off that is reset only once the stream has proven itself (stayed up for
PROVEN seconds): a stream that fails at once costs one resync per back-off, not one every half
second. The DNS keeps serving the last records meanwhile. Calls to dockerd have timeouts: at
dockerd's start its socket exists before the API answers.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Callable
from urllib.parse import quote

from ..domain.addresses import parse_ip
from .api import DockerApiError
from ..domain.errors import InvalidRequest
from ..domain.model import ContainerInfo
from ..domain.naming import is_valid_ifname

log = logging.getLogger(__name__)

# network id -> (network name, {container id: ContainerInfo})
State = dict[str, tuple[str, dict[str, ContainerInfo]]]
CONTAINER_EVENTS = frozenset({"start", "die", "destroy", "rename"})  # can change names or addresses
NETWORK_EVENTS = frozenset({"connect", "disconnect", "create", "destroy"})
EVENT_FILTER = json.dumps({"type": ["container", "network"], "event": sorted(CONTAINER_EVENTS | NETWORK_EVENTS)})
SWARM_SERVICE = "com.docker.swarm.service.name"
RESTART_POLICIES = frozenset({"always", "unless-stopped", "on-failure"})
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
PROVEN = 30.0  # seconds a stream must stay up before a drop is retried at once


def _address(value, version: int) -> str:
    """An address Docker reports, parsed like any other input ('' when absent or malformed)."""
    if not value or not isinstance(value, str):
        return ""
    try:
        return str(parse_ip("address", value, version))
    except InvalidRequest:
        log.warning("ignoring a malformed IPv%d address %r from Docker", version, value[:64])
        return ""


_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")


def container_id(value) -> str:
    """A container ID as Docker writes it (hex), or '': it becomes part of an API path."""
    return value if isinstance(value, str) and _CONTAINER_ID.fullmatch(value) else ""


def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value, limit: int = 255) -> str:
    return value if isinstance(value, str) and len(value) <= limit and value.isprintable() else ""


def containers_of(inspect: dict) -> dict[str, tuple[str, ContainerInfo]]:
    """network id -> (network name, this container's entry) from a container inspect. Every
    value is checked: names are printable text, addresses parse, IDs are IDs."""
    out: dict[str, tuple[str, ContainerInfo]] = {}
    if not isinstance(inspect, dict):
        return out
    cid, name = _text(inspect.get("Id")), _text(inspect.get("Name")).lstrip("/")
    running = _object(inspect.get("State")).get("Running", False) is True
    restarts = _object(_object(inspect.get("HostConfig")).get("RestartPolicy")).get("Name") in RESTART_POLICIES
    networks = _object(_object(inspect.get("NetworkSettings")).get("Networks"))
    if not running or not cid:
        return out
    for net_name, ep in networks.items():
        ep = _object(ep)
        nid = _text(ep.get("NetworkID"), 128)
        ipv4, ipv6 = _address(ep.get("IPAddress"), 4), _address(ep.get("GlobalIPv6Address"), 6)
        if not nid or not (ipv4 or ipv6):
            continue
        aliases = tuple(a for a in (ep.get("Aliases") or []) if _text(a))
        service = _text(_object(_object(inspect.get("Config")).get("Labels")).get(SWARM_SERVICE))
        if service:  # a swarm task: its service's name (DNS round robin) and tasks.<service>
            aliases += (service, f"tasks.{service}")
        out[nid] = (
            _text(net_name),
            ContainerInfo(id=cid, name=name, aliases=aliases, ipv4=ipv4, ipv6=ipv6, restarts=restarts),
        )
    return out


def bridge_names(networks) -> set[str]:
    """The Linux bridges of Docker's bridge networks: docker0 and custom names from their options,
    br-<id[:12]> otherwise. Names that are not valid interface names are left out."""
    out = set()
    for n in networks if isinstance(networks, list) else []:
        if not isinstance(n, dict) or n.get("Driver") != "bridge":
            continue
        name = _object(n.get("Options")).get("com.docker.network.bridge.name") or f"br-{_text(n.get('Id'))[:12]}"
        if isinstance(name, str) and is_valid_ifname(name):
            out.add(name)
    return out


# (state, changed networks, every container ID there is or None, containers removed)
OnContainers = Callable[[State, set[str], "frozenset[str] | None", "frozenset[str]"], None]


class DockerWatcher:
    def __init__(
        self,
        socket_path: str,
        on_change: Callable[[State, set[str]], None],
        on_bridges: Callable[[set[str]], None] | None = None,
        on_containers: OnContainers | None = None,
    ):
        self.base = "http+unix://" + quote(socket_path, safe="")
        self.on_change = on_change
        self.on_bridges = on_bridges
        self.on_containers = on_containers
        self.state: State = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0  # times the event stream was opened again after it failed

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pybridge-docker-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _session(self):
        from .api import UnixSession

        return UnixSession()

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        first = True
        while not self._stop.is_set():
            started = time.monotonic()
            if not first:
                self.reconnects += 1
            first = False
            try:
                session = self._session()
                since = int(time.time())
                self._resync(session)
                self._follow(session, since)
            except Exception as e:  # dockerd away, stream dropped: keep the last records
                if time.monotonic() - started >= PROVEN:
                    backoff = BACKOFF_MIN
                log.info("docker events: %s; retrying in %.1fs", e, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _get(self, session, path: str, timeout: float = 5.0):
        resp = session.get(self.base + path, timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def _resync(self, session) -> None:
        state: State = {}
        listed = self._get(session, "/containers/json")
        for cid in (container_id(_object(c).get("Id")) for c in (listed if isinstance(listed, list) else [])):
            if not cid:
                continue
            try:
                info = self._get(session, f"/containers/{cid}/json")
            except Exception:
                continue
            for nid, (net_name, entry) in containers_of(info).items():
                state.setdefault(nid, (net_name, {}))[1][entry.id] = entry
        changed = {nid for nid in set(state) | set(self.state) if state.get(nid) != self.state.get(nid)}
        self.state = state
        if changed:
            self.on_change(state, changed)
        if self.on_containers is not None:
            every = self._get(session, "/containers/json?all=1")
            existing = frozenset(
                filter(None, (container_id(_object(c).get("Id")) for c in (every if isinstance(every, list) else [])))
            )
            self.on_containers(state, set(state), existing, frozenset())
        self._bridges(session)

    def _bridges(self, session) -> None:
        if self.on_bridges is not None:
            self.on_bridges(bridge_names(self._get(session, "/networks")))

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
        if not isinstance(event, dict):
            return
        actor, action, kind = _object(event.get("Actor")), event.get("Action"), event.get("Type")
        if kind == "network" and action in ("create", "destroy"):
            self._bridges(session)
            return
        if kind == "network" and action in NETWORK_EVENTS:
            cid = container_id(_object(actor.get("Attributes")).get("container"))
        elif kind == "container" and action in CONTAINER_EVENTS:
            cid = container_id(actor.get("ID"))
        else:
            return  # health checks, execs, attach...: no name can change
        if not cid:
            return
        try:
            info = self._get(session, f"/containers/{cid}/json")
        except DockerApiError as e:
            if e.status != 404:
                # dockerd too busy to answer in time (a thousand starts at once): the container
                # is not gone. The stream starts again, with a full resync, rather than drop its
                # names until its next event
                raise
            info = None  # gone
        try:
            now = containers_of(info) if info is not None else {}
        except Exception:
            now = {}  # what does not parse names nothing
        state = {nid: (name, dict(members)) for nid, (name, members) in self.state.items()}
        changed = set()
        for nid, (_name, members) in state.items():
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
        if self.on_containers is not None and (changed or action == "destroy"):
            self.on_containers(state, changed, None, frozenset({cid}) if action == "destroy" else frozenset())

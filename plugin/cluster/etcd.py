"""EtcdKV: ClusterKVPort on etcd v3, through etcd3gw (etcd's HTTP/JSON gateway).

etcd3gw does the HTTP, leases and transactions; this adapter adds what pybridge needs on top:
several endpoints (the next one is tried when one does not answer, and stays in use), typed
transactions, and a watch that resumes from the last revision it saw, so that nothing is lost
when a stream breaks (an endpoint restarts, a proxy drops an idle connection).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
from typing import Any, Callable, Sequence

import requests
from etcd3gw import Etcd3Client
from etcd3gw import exceptions as etcd_errors
from etcd3gw.lease import Lease

from ..config import EtcdTls
from .interfaces import (
    Absent,
    ClusterUnavailable,
    Condition,
    Delete,
    DeleteUnder,
    Event,
    LeaseExpired,
    NoneUnder,
    Operation,
    Put,
    ValueIs,
    WatchCompacted,
)

log = logging.getLogger(__name__)

# what etcd answers when a token is no longer good (expired, or made by a restarted member)
TOKEN_REFUSED = ("invalid auth token", "user name is empty", "auth: revision in header is old")


class AuthOff(ClusterUnavailable):
    """etcd has authentication off while this host is set up with a user: refused."""


REQUEST_TIMEOUT = 2.0  # a plugin call that needs etcd fails within a few seconds
GRPC_NOT_FOUND = 5  # the gateway's error code for "requested lease not found"
WATCH_IDLE = 10.0  # an idle watch stream is re-made this often (liveness, lossless)


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text or "")


def _range_end(prefix: str) -> str:
    """The first key after every key that starts with prefix."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _grpc_code(e: Exception) -> int | None:
    """The gRPC status code in an error reply of etcd's gateway ({"error": ..., "code": 5})."""
    try:
        body = json.loads(getattr(e, "detail_text", None) or "")
    except (TypeError, ValueError):
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def _said(text: str, limit: int) -> str:
    """What etcd (or anything on the way) answered, for an error or a log line: at most `limit`
    characters, with no control character (a line break would forge a log line)."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text[:limit])


def _failure(e: Exception) -> str:
    """What a failed connection says, for the log and the error: its kind, and for TLS the
    reason OpenSSL gives (a certificate refused, none sent), never more of its text."""
    text = f"{e} {getattr(e, 'detail_text', '') or ''}"  # (etcd3gw keeps requests' text there)
    reason = re.search(r"\[SSL: ([A-Z0-9_]+)\]|alert ([a-z ]+) \(|(CERTIFICATE_[A-Z_]+|certificate required)", text)
    kind = "SSLError" if "SSLError" in text else type(e).__name__
    if "SSLEOFError" in text or "EOF occurred in violation of protocol" in text:
        return f"{kind} (etcd ended the handshake: it accepts no client certificate, or not this one)"
    return kind + (f" ({next(g for g in reason.groups() if g)})" if reason else "")


def _session(tls: EtcdTls | None) -> requests.Session:
    """A session that takes nothing from the environment: requests would let
    REQUESTS_CA_BUNDLE override the CA given here, and send etcd's traffic to an HTTP(S)_PROXY."""
    session = requests.Session()
    session.trust_env = False
    if tls is not None and tls.ca:
        session.verify = tls.ca
    if tls is not None and tls.cert and tls.key:
        session.cert = (tls.cert, tls.key)
    return session


class EtcdKV:
    def __init__(
        self,
        endpoints: Sequence[tuple[str, str, int]],
        timeout: float = REQUEST_TIMEOUT,
        tls: EtcdTls | None = None,
        login: tuple[str, str] | None = None,
    ):
        """`tls`: etcd's CA (then the only one trusted) and this host's client certificate.
        `login`: this host's etcd user and password; etcd must have authentication on then."""
        self._login = login
        self._clients = [
            Etcd3Client(host=h, port=p, protocol=s, timeout=timeout, api_path="/v3/", session=_session(tls))
            for s, h, p in endpoints
        ]
        self._current = 0
        self._lock = threading.Lock()

    def _call(self, what: str, fn: Callable[[Etcd3Client], Any]) -> Any:
        """fn on the endpoint in use; on a connection failure, on each other one in turn."""
        with self._lock:
            first = self._current
        errors = []
        for i in range(len(self._clients)):
            index = (first + i) % len(self._clients)
            client = self._clients[index]
            try:
                result = self._authenticated(client, fn)
            except (
                etcd_errors.ConnectionFailedError,
                etcd_errors.ConnectionTimeoutError,
                requests.RequestException,
            ) as e:
                errors.append(f"{client.base_url}: {_failure(e)}")
                continue
            except etcd_errors.Etcd3Exception as e:
                if _grpc_code(e) == GRPC_NOT_FOUND and what == "transaction":
                    raise LeaseExpired(f"etcd at {client.base_url}: the lease of this host expired") from e
                raise ClusterUnavailable(
                    f"etcd {what} at {client.base_url} failed: {_said(e.detail_text or str(e), 200)}"
                ) from e
            if index != first:
                with self._lock:
                    self._current = index
                log.info("etcd: using %s", client.base_url)
            return result
        raise ClusterUnavailable(f"etcd unreachable ({what}): " + "; ".join(errors))

    def _authenticated(self, client: Etcd3Client, fn: Callable[[Etcd3Client], Any]) -> Any:
        """fn with this host's token (a token is per etcd member: each client gets its own);
        once more with a new token when etcd no longer takes the one it had."""
        if self._login is None:
            return fn(client)
        if "Authorization" not in client.session.headers:
            self._authenticate(client)
        try:
            return fn(client)
        except etcd_errors.Etcd3Exception as e:
            if not any(s in (e.detail_text or str(e)) for s in TOKEN_REFUSED):
                raise
        self._authenticate(client)
        return fn(client)

    def _authenticate(self, client: Etcd3Client) -> None:
        assert self._login is not None
        user, password = self._login
        client.session.headers.pop("Authorization", None)
        try:
            resp = client.session.post(
                client.get_url("/auth/authenticate"), json={"name": user, "password": password}, timeout=client.timeout
            )
        except requests.RequestException as e:
            raise etcd_errors.ConnectionFailedError(str(e)) from e
        try:
            answer = resp.json()
        except ValueError:
            answer = {}
        token = answer.get("token") if isinstance(answer, dict) else None
        if resp.status_code == 200 and isinstance(token, str) and token:
            client.session.headers["Authorization"] = token
            return
        if isinstance(answer, dict) and (answer.get("message") or answer.get("error")):
            message = _said(str(answer.get("message") or answer.get("error")), 160)
        else:
            message = _said(resp.text.strip() or str(resp.reason), 160)
        if "CommonName" in message:
            raise ClusterUnavailable(
                f"etcd at {client.base_url} refuses this host's client certificate through its HTTP gateway "
                "while authentication is on, because it has a common name: issue it without one (subject O=, "
                "OU= only); the password gives the host its etcd user"
            )
        if "authentication is not enabled" in message:
            raise AuthOff(
                f"etcd at {client.base_url} has authentication off, and this host has an etcd user "
                f"({user}): cluster mode does not start, since any etcd client could then write any host's "
                "records (etcdctl auth enable; see the README's multi-host section)"
            )
        raise ClusterUnavailable(f"etcd at {client.base_url} refused user {user}: {message}")

    def _post(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self._call(what, lambda c: c.post(c.get_url(path), json=body))
        if not isinstance(answer, dict):
            raise ClusterUnavailable(f"etcd answered {what} with {str(answer)[:64]!r}")
        return answer

    # leases
    def grant(self, ttl: int) -> int:
        return int(self._post("lease grant", "/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> bool:
        return int(self._call("lease keepalive", lambda c: Lease(lease, c).refresh())) > 0

    def revoke(self, lease: int) -> None:
        try:
            self._call("lease revoke", lambda c: Lease(lease, c).revoke())
        except ClusterUnavailable as e:
            if "not found" not in str(e):
                raise

    # keys
    def get(self, key: str) -> bytes | None:
        r = self._post("get", "/kv/range", {"key": _b64(key)})
        kvs = r.get("kvs") or []
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def range(self, prefix: str) -> tuple[dict[str, bytes], int]:
        found, revision = self.range_created(prefix)
        return {k: v for k, (v, _) in found.items()}, revision

    def range_created(self, prefix: str) -> tuple[dict[str, tuple[bytes, int]], int]:
        r = self._post("range", "/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        out = {}
        for kv in r.get("kvs") or []:
            try:
                out[_unb64(kv["key"]).decode()] = (_unb64(kv.get("value", "")), int(kv.get("create_revision", 0) or 0))
            except (KeyError, UnicodeDecodeError, ValueError):
                continue
        return out, int(r.get("header", {}).get("revision", 0))

    def txn(self, conditions: Sequence[Condition], operations: Sequence[Operation]) -> bool:
        body = {
            "compare": [self._compare(c) for c in conditions],
            "success": [self._operation(o) for o in operations],
            "failure": [],
        }
        r = self._call("transaction", lambda c: c.post(c.get_url("/kv/txn"), data=json.dumps(body)))
        return bool(r.get("succeeded", False))

    @staticmethod
    def _compare(c: Condition) -> dict[str, Any]:
        if isinstance(c, Absent):
            return {"key": _b64(c.key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        if isinstance(c, ValueIs):
            return {"key": _b64(c.key), "target": "VALUE", "result": "EQUAL", "value": _b64(c.value)}
        if isinstance(c, NoneUnder):
            return {
                "key": _b64(c.prefix),
                "range_end": _range_end(c.prefix),
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": "0",
            }
        raise TypeError(f"unknown condition {c!r}")

    @staticmethod
    def _operation(o: Operation) -> dict[str, Any]:
        if isinstance(o, Put):
            put = {"key": _b64(o.key), "value": _b64(o.value)}
            if o.lease:
                put["lease"] = str(o.lease)
            return {"request_put": put}
        if isinstance(o, Delete):
            return {"request_delete_range": {"key": _b64(o.key)}}
        if isinstance(o, DeleteUnder):
            return {"request_delete_range": {"key": _b64(o.prefix), "range_end": _range_end(o.prefix)}}
        raise TypeError(f"unknown operation {o!r}")

    # watch
    def watch(
        self, prefix: str, start_revision: int, on_events: Callable[[list[Event]], None], stop: threading.Event
    ) -> int:
        """Deliver the changes under prefix from start_revision on, until stop is set; returns
        the revision to resume from. A stream that breaks or idles for WATCH_IDLE seconds is made
        again from there (lossless). Raises ClusterUnavailable when no endpoint answers (the
        caller resumes after the last event it got), and WatchCompacted when etcd no longer has
        the revision asked for."""
        revision = start_revision
        while not stop.is_set():
            revision = self._call(
                "watch",
                functools.partial(self._stream, prefix=prefix, revision=revision, on_events=on_events, stop=stop),
            )
        return revision

    def _stream(
        self,
        client: Etcd3Client,
        prefix: str,
        revision: int,
        on_events: Callable[[list[Event]], None],
        stop: threading.Event,
    ) -> int:
        body = {
            "create_request": {"key": _b64(prefix), "range_end": _range_end(prefix), "start_revision": str(revision)}
        }
        try:
            resp = client.session.post(
                client.get_url("/watch"), json=body, stream=True, timeout=(REQUEST_TIMEOUT, WATCH_IDLE)
            )
        except requests.RequestException as e:
            raise etcd_errors.ConnectionFailedError(str(e)) from e
        try:
            if resp.status_code != 200:
                raise etcd_errors.Etcd3Exception(resp.text[:200], resp.reason)
            first = True
            for line in resp.iter_lines(chunk_size=None):  # type: ignore[call-overload]  # None: as data comes
                if stop.is_set():
                    break
                if not line.strip():
                    continue
                message = json.loads(line)
                if first and isinstance(message.get("error"), dict):  # (a token refused, a permission)
                    raise etcd_errors.Etcd3Exception(json.dumps(message["error"])[:200], "watch refused")
                first = False
                result = message.get("result") or {}
                if int(result.get("compact_revision", 0) or 0) > 0:
                    raise WatchCompacted(f"etcd compacted past revision {revision}")
                events = []
                for ev in result.get("events") or []:
                    kv = ev.get("kv") or {}
                    key = _unb64(kv.get("key", "")).decode(errors="replace")
                    deleted = ev.get("type") == "DELETE"
                    events.append(
                        Event(
                            key,
                            None if deleted else _unb64(kv.get("value", "")),
                            int(kv.get("mod_revision", 0) or 0),
                            0 if deleted else int(kv.get("create_revision", 0) or 0),
                        )
                    )
                if events:
                    revision = max(revision, max(e.revision for e in events) + 1)
                    on_events(events)
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
            pass  # idle timeout or a broken stream: made again from `revision`
        except ValueError as e:
            log.warning("etcd watch: unreadable message (%s); watching again", e)
        finally:
            resp.close()
        return revision

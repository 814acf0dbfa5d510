"""The interface of the shared store the hosts of a cluster use (etcd). The cluster use cases
depend on this, not on etcd3gw; the real adapter (plugin.cluster.etcd) and the test fake both
implement it, and a unit test checks that they agree."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, Union

from ..domain.errors import PybridgeError


class ClusterUnavailable(PybridgeError):
    """No etcd endpoint answered (or answered with an error)."""


class LeaseExpired(PybridgeError):
    """A transaction named a lease etcd no longer has (it expired: this host was silent longer
    than its TTL). Nothing of the transaction was applied."""


class WatchCompacted(PybridgeError):
    """The revision a watch should resume from is gone: read everything again."""


# Conditions of a transaction
@dataclass(frozen=True)
class Absent:
    key: str


@dataclass(frozen=True)
class ValueIs:
    key: str
    value: bytes


@dataclass(frozen=True)
class NoneUnder:
    """No key starts with `prefix`."""

    prefix: str


# Operations of a transaction
@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0  # 0: the key lives until deleted


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class DeleteUnder:
    prefix: str


Condition = Union[Absent, ValueIs, NoneUnder]
Operation = Union[Put, Delete, DeleteUnder]


@dataclass(frozen=True)
class Event:
    key: str
    value: bytes | None  # None: deleted (or expired with its lease)
    revision: int
    created: int = 0  # the revision that created the key (0 for a delete)


# What one transaction may hold: etcd refuses one with more conditions, or more operations,
# than its --max-txn-ops (128 unless set), and applies none of it (ClusterUnavailable here).
TXN_OPS = 128


class ClusterKVPort(Protocol):
    """Keys and values shared by the hosts, leases that expire when a host stops renewing them,
    all-or-nothing transactions (of at most TXN_OPS conditions and TXN_OPS operations), and a
    watch of a prefix. Every call raises ClusterUnavailable when no endpoint answers, or when etcd
    refuses it; txn raises LeaseExpired when a Put names a lease that is gone."""

    def grant(self, ttl: int) -> int: ...
    def keepalive(self, lease: int) -> bool: ...
    def revoke(self, lease: int) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def range(self, prefix: str) -> tuple[dict[str, bytes], int]: ...
    def range_created(self, prefix: str) -> tuple[dict[str, tuple[bytes, int]], int]:
        """As range, each value with the revision that created its key (which no client can
        forge: it orders who wrote first)."""
        ...

    def txn(self, conditions: Sequence[Condition], operations: Sequence[Operation]) -> bool: ...
    def watch(
        self, prefix: str, start_revision: int, on_events: Callable[[list[Event]], None], stop: threading.Event
    ) -> int: ...

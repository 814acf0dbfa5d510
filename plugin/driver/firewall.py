"""How the use cases write the firewall: a change of a few elements, or the whole table
rewritten from the state store when the change fails; nothing once the instance is retired."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from ..domain.errors import KernelError, PybridgeError
from ..kernel.interfaces import FirewallPort
from ..store.db import Tx
from .ports import Lifecycle

log = logging.getLogger(__name__)

T = TypeVar("T")


class FirewallWriter:
    def __init__(self, firewall: FirewallPort, lifecycle: Lifecycle):
        self.port = firewall
        self.lifecycle = lifecycle

    def sync(self, tx: Tx, foreign: tuple[str, ...] | None = None) -> None:
        """Rewrite our whole table from the state as this transaction sees it (and with these
        bridges that are not ours; None: those the firewall holds)."""
        if self.lifecycle.retired:
            return
        self.port.sync(tx.networks.all(), tx.networks.endpoints(), foreign=foreign)

    def change(self, tx: Tx, change: Callable[..., None], *args: object) -> None:
        """One change of a few elements or chains, made after the transaction's state changed.
        Should it fail (our table was changed behind our back, the helper died), the whole table
        is rewritten from that state; should that fail too, the error stands and the
        transaction rolls back, with the kernel as it was."""
        if self.lifecycle.retired:
            return
        try:
            change(*args)
        except KernelError as e:
            log.warning("firewall change failed (%s): rewriting the table", e)
            self.sync(tx)


def collect(errors: list[str], fn: Callable[..., object], *args: object) -> None:
    """Run one teardown step; record its failure and keep going (teardown is best effort)."""
    try:
        fn(*args)
    except PybridgeError as e:
        errors.append(str(e))
    except OSError as e:
        errors.append(f"{getattr(fn, '__name__', 'step')}: {e}")

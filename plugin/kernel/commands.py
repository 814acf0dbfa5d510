"""Running a kernel tool (iptables, ip netns exec ...): its output, or KernelError naming it."""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Iterable

from ..domain.errors import KernelError, KernelFault

TIMEOUT = 20


# What a token of iptables(-restore) input may contain: names, addresses, ports, flags.
# Whitespace, newlines, quotes, '#' and '%' (and everything else) never reach the kernel tool.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.:/,+!\[\]-]+")


def is_safe(token: object) -> bool:
    return bool(_SAFE_TOKEN.fullmatch(str(token)))


def safe(token: object) -> str:
    """A token of a rule, refused unless it is plainly one token."""
    text = str(token)
    if not _SAFE_TOKEN.fullmatch(text):
        raise KernelError(f"refusing to write an unsafe token {text[:64]!r} into a firewall rule")
    return text


def line(tokens: Iterable[object]) -> str:
    """One rule line from its tokens, each checked."""
    return " ".join(safe(t) for t in tokens)


def run(argv: list[str], stdin: str | None = None, name: str | None = None) -> str:
    """argv's stdout; `name` (default argv[0]) is what an error says failed."""
    what = name or argv[0]
    try:
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError(f"{what}: {e}") from e
    if res.returncode < 0:
        try:
            how = signal.Signals(-res.returncode).name
        except ValueError:
            how = f"signal {-res.returncode}"
        raise KernelFault(f"{what} was killed by {how}")
    if res.returncode != 0:
        raise KernelError(f"{what} failed: {res.stderr.strip() or res.returncode}")
    return res.stdout

"""Running a kernel tool (iptables, ip netns exec ...): its output, or KernelError naming it."""

from __future__ import annotations

import signal
import subprocess

from ..domain.errors import KernelError, KernelFault

TIMEOUT = 20


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

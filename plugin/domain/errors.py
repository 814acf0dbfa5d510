"""The error tree. The HTTP layer maps every PybridgeError to HTTP 500 + {"Err": message}.

Messages are for users: they name the field, the value and the conflict.
"""


class PybridgeError(Exception):
    """Base of every error pybridge reports to dockerd."""


class InvalidRequest(PybridgeError):
    """The request or an option in it is malformed or out of range."""


class NotFound(PybridgeError):
    """A network, endpoint or pool the request names is not known to pybridge."""


class Conflict(PybridgeError):
    """The request collides with something that exists (a subnet, an address, a link name)."""


class Exhausted(PybridgeError):
    """No subnet or address is left to allocate."""


class KernelError(PybridgeError):
    """A netlink or firewall operation failed."""


class KernelFault(KernelError):
    """Not the kernel's or a tool's answer but a fault: a tool killed by a signal, a bug of ours
    in firewall work. The call fails; the process goes on, and doctor and the metrics report it."""


class ConfigError(PybridgeError):
    """A plugin setting is invalid."""


class CorruptState(PybridgeError):
    """A row of the state store cannot be read back (restore skips it; doctor reports it)."""

"""The one parser for every value that names an IP address, an interface address or a network.

Python's ipaddress accepts an IPv6 scope ID ("::1%<anything>", spaces and newlines included),
and such a value must never reach a kernel tool. Addresses and CIDRs are written with hex
digits, '.', ':' and '/' only: anything else is refused before ipaddress sees it, and the error
names the field and the value. A version pins the family the field means.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, TypeVar

from .errors import InvalidRequest
from .model import IPAddress, IPInterface, IPNetwork

_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:]{2,45}")
_CIDR_CHARS = re.compile(r"[0-9A-Fa-f.:]{2,45}/[0-9]{1,3}")


def _checked(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidRequest(f"invalid {field} {value!r}: not {what}")
    return value


P = TypeVar("P", bound="IPAddress | IPInterface | IPNetwork")


def _family(field: str, value: str, parsed: P, version: int | None) -> P:
    if version is not None and parsed.version != version:
        raise InvalidRequest(f"invalid {field} {value!r}: expected an IPv{version} address")
    return parsed


def _address(field: str, value: object, version: int | None, pattern: re.Pattern[str], parse: Callable[[str], P]) -> P:
    text = _checked(field, value, pattern, "an IP address")
    try:
        parsed = parse(text)
    except ValueError:
        raise InvalidRequest(f"invalid {field} {value!r}: not an IP address") from None
    return _family(field, text, parsed, version)


def parse_ip(field: str, value: object, version: int | None = None) -> IPAddress:
    """A bare address ('10.1.0.5', 'fd70::5')."""
    return _address(field, value, version, _ADDRESS_CHARS, ipaddress.ip_address)


def parse_ip_interface(field: str, value: object, version: int | None = None) -> IPInterface:
    """An address with a prefix length ('10.1.0.1/24'); a bare address gets a host prefix."""
    pattern = _CIDR_CHARS if "/" in str(value) else _ADDRESS_CHARS
    return _address(field, value, version, pattern, ipaddress.ip_interface)


def parse_cidr(field: str, value: object, version: int | None = None) -> IPNetwork:
    """A network in CIDR form with no host bits set ('10.1.0.0/24', not '10.1.0.5/24')."""
    if isinstance(value, str) and "/" not in value and _ADDRESS_CHARS.fullmatch(value):
        raise InvalidRequest(f"invalid {field} {value!r}: a prefix length is required (e.g. {value}/24)")
    value = _checked(field, value, _CIDR_CHARS, "an IP network in CIDR form")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidRequest(f"invalid {field} {value!r}: not an IP network in CIDR form") from None
    if net.network_address != ipaddress.ip_address(value.split("/", 1)[0]):
        raise InvalidRequest(f"invalid {field} {value!r}: host bits are set; did you mean {net}?")
    if version is not None and net.version != version:
        raise InvalidRequest(f"invalid {field} {value!r}: expected an IPv{version} network")
    return net

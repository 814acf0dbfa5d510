"""Reading fields out of dockerd's JSON bodies, tolerant of missing keys and nulls, strict
about types. Every error names the field."""

from __future__ import annotations

import re
from typing import Any

from ..domain.errors import InvalidRequest
from ..domain.options import IpamDataSpec

MAX_STRING = 4096
MAX_ITEMS = 1024
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def text(body: dict, key: str, *, max_len: int = MAX_STRING) -> str:
    """A string field; missing or null is ''."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string, got {type(value).__name__}")
    if len(value) > max_len or "\x00" in value:
        raise InvalidRequest(f"{key} is too long or contains a NUL byte")
    return value


def ident(body: dict, key: str, valid=lambda v: bool(_ID_RE.fullmatch(v))) -> str:
    """A required ID (NetworkID, EndpointID): 1-128 safe characters."""
    value = text(body, key, max_len=256)
    if not value:
        raise InvalidRequest(f"{key} is required")
    if not valid(value):
        raise InvalidRequest(f"{key} {value[:64]!r} is not a valid ID")
    return value


def pool_ident(body: dict, key: str) -> str:
    """PoolIDs are ours ('10.1.0.0/24#ab12cd34'): any printable text up to 256 characters."""
    return ident(body, key, valid=str.isprintable)


def flag(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise InvalidRequest(f"{key} must be a boolean, got {type(value).__name__}")


def mapping(body: dict, key: str) -> dict[str, Any]:
    """An object field; missing or null is {}."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{key} must be an object, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise InvalidRequest(f"{key} has too many entries")
    return value


def string_map(body: dict, key: str) -> dict[str, str]:
    """An object of scalars, as strings (driver options may arrive as numbers or booleans)."""
    out = {}
    for k, v in mapping(body, key).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        elif v is None:
            v = ""
        elif not isinstance(v, str):
            raise InvalidRequest(f"{key}[{k!r}] must be a string, got {type(v).__name__}")
        if len(k) > 256 or len(v) > MAX_STRING or "\x00" in k or "\x00" in v:
            raise InvalidRequest(f"{key}[{k[:64]!r}] is too long or contains a NUL byte")
        out[k] = v
    return out


def items(body: dict, key: str) -> list:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{key} must be a list, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise InvalidRequest(f"{key} has too many entries")
    return value


def ipam_data(body: dict, key: str) -> list[IpamDataSpec]:
    out = []
    for i, entry in enumerate(items(body, key)):
        if not isinstance(entry, dict):
            raise InvalidRequest(f"{key}[{i}] must be an object")
        pool = text(entry, "Pool")
        if not pool:
            raise InvalidRequest(f"{key}[{i}].Pool is required")
        aux = tuple(sorted(string_map(entry, "AuxAddresses").items()))
        out.append(
            IpamDataSpec(
                pool=pool, gateway=text(entry, "Gateway"), aux=aux, space=text(entry, "AddressSpace", max_len=256)
            )
        )
    return out

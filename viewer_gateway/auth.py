"""Who is asking: API keys (hashed at rest) with roles, or anonymous if a site allows it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from vna.errors import Forbidden, Unauthorized
from vna.settings import GatewaySettings


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # read | admin


ANONYMOUS = Principal("anonymous", "read")


def hash_key(key: str) -> str:
    """What goes in the settings file for a key: its SHA-256, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(
    settings: GatewaySettings, authorization: str | None, key_param: str | None = None
) -> Principal:
    """The caller named by `Authorization: Bearer|ApiKey <key>`; Unauthorized if none fits."""
    presented = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() in ("bearer", "apikey") and value.strip():
            presented = value.strip()
        else:
            raise Unauthorized("Authorization must be 'Bearer <key>' or 'ApiKey <key>'")
    elif key_param:
        presented = key_param
    if presented is None:
        if settings.allow_anonymous:
            return ANONYMOUS
        raise Unauthorized("credentials required (Authorization: Bearer <key>)")
    digest = hash_key(presented)
    for key in settings.keys:
        if hmac.compare_digest(digest, key.sha256.lower()):
            return Principal(key.name, key.role)
    raise Unauthorized("unknown key")


def require(principal: Principal, role: str) -> None:
    if role == "admin" and principal.role != "admin":
        raise Forbidden("this needs the admin role")

"""Who is asking: API keys (hashed at rest) with roles, or anonymous if a site allows it."""

from __future__ import annotations

import base64
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
    settings: GatewaySettings,
    authorization: str | None,
    key_param: str | None = None,
    basic: bool = False,
) -> Principal:
    """The caller named by `Authorization: Bearer|ApiKey <key>`; Unauthorized if none fits.

    With `basic`, also HTTP Basic with the key as password: what a browser sends for a
    page a person opens (the admin pages), never asked of DICOMweb clients.
    """
    presented = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() in ("bearer", "apikey") and value.strip():
            presented = value.strip()
        elif basic and scheme.lower() == "basic":
            presented = _basic_password(value)
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


def _basic_password(value: str) -> str:
    try:
        _user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except ValueError:  # bad base64 (binascii.Error) or not UTF-8: both ValueErrors
        raise Unauthorized("malformed Basic credentials") from None
    if not password:
        raise Unauthorized("credentials required (the key as the password)")
    return password


def require(principal: Principal, role: str) -> None:
    if role == "admin" and principal.role != "admin":
        raise Forbidden("this needs the admin role")

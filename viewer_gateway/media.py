"""Content negotiation and multipart framing (PS3.18 8.7, RFC 2387).

Real clients send `type=` quoted and unquoted, several comma-separated media
ranges, and `transfer-syntax=*`; all are read here, in one place.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vna.errors import NotAcceptable


@dataclass(frozen=True)
class MediaRange:
    type: str  # e.g. multipart/related
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes."""
    out, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return [p.strip() for p in out if p.strip()]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, best first; NotAcceptable if it cannot be read."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for part in _split(header, ","):
        pieces = _split(part, ";")
        mtype = pieces[0].lower()
        if "/" not in mtype or " " in mtype:
            raise NotAcceptable(f"malformed Accept media range {part!r}")
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            key, sep, value = piece.partition("=")
            if not sep:
                raise NotAcceptable(f"malformed Accept parameter {piece!r}")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    raise NotAcceptable(f"malformed Accept quality {value!r}") from None
            else:
                params[key] = value
        ranges.append(MediaRange(mtype, params, q))
    return sorted(ranges, key=lambda r: -r.q)


@dataclass(frozen=True)
class Choice:
    """What a multipart response will carry: the part type and transfer syntax."""

    part_type: str
    transfer_syntax: str | None  # None: leave as stored ("*")


def choose_multipart(
    accept: list[MediaRange], part_types: Iterable[str], default_syntax: str
) -> Choice:
    """Pick the multipart part type and transfer syntax a client accepts."""
    allowed = list(part_types)
    for r in accept:
        if r.type in ("*/*", "multipart/*", "multipart/related"):
            part = r.params.get("type", allowed[0]).lower()
            if part not in allowed:
                continue
            syntax = r.params.get("transfer-syntax", default_syntax)
            return Choice(part, None if syntax == "*" else syntax)
    wanted = ", ".join(r.type + "".join(f";{k}={v}" for k, v in r.params.items()) for r in accept)
    raise NotAcceptable(
        f"cannot produce any of: {wanted}; offered multipart/related with {allowed}"
    )


def accepts(accept: list[MediaRange], media_type: str) -> bool:
    main = media_type.split("/")[0]
    return any(r.type in (media_type, "*/*", f"{main}/*") for r in accept)


class Multipart:
    """Streams parts with a random boundary; `content_type` goes in the response header."""

    def __init__(self, part_type: str) -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f'multipart/related; type="{part_type}"; boundary={self.boundary}'

    def head(self, length: int, content_type: str, location: str | None = None) -> bytes:
        """The delimiter and headers of a part whose body of `length` bytes follows (then CRLF)."""
        head = f"--{self.boundary}\r\nContent-Type: {content_type}\r\n"
        if location:
            head += f"Content-Location: {location}\r\n"
        head += f"Content-Length: {length}\r\n\r\n"
        return head.encode()

    def part(self, body: bytes, content_type: str, location: str | None = None) -> bytes:
        return self.head(len(body), content_type, location) + body + b"\r\n"

    def whole(self, parts: Iterable[tuple[bytes, str]]) -> bytes:
        """Every part and the closing delimiter as one body (for small answers)."""
        pieces: list[bytes] = []
        for body, ctype in parts:
            pieces += (self.head(len(body), ctype), body, b"\r\n")
        pieces.append(self.end())
        return b"".join(pieces)

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def stream(self, parts: Iterable[tuple[bytes, str]]) -> Iterator[bytes]:
        for body, ctype in parts:
            yield self.part(body, ctype)
        yield self.end()

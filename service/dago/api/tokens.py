"""Page tokens: one opaque format for every paged RPC.

A token is the URL-safe base64 of ``<kind>:<part>:<part>...``: the kind says which listing
made it (a token of one listing is refused by another), the parts are where the next page
starts. Clients treat tokens as opaque; a token that was not made here, or was altered, is
INVALID_ARGUMENT naming ``page_token``, never an internal error.
"""

from __future__ import annotations

import base64
import binascii

from dago.api import errors

MAX_TOKEN = 512
"""Longer tokens are refused before decoding (ours are far shorter)."""


def encode(kind: str, *parts: str | int) -> str:
    """The token of listing ``kind`` that resumes at ``parts``."""
    text = ":".join([kind, *map(str, parts)])
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode(token: str, kind: str, count: int) -> list[str]:
    """The ``count`` parts of a token ``encode(kind, ...)`` made (the last may hold ``:``)."""
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError("too long")
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        head, *parts = text.split(":", count)
        if head != kind or len(parts) != count:
            raise ValueError("not a token of this listing")
        return parts
    except (ValueError, binascii.Error, UnicodeError):
        raise _bad() from None


def decode_int(part: str, low: int = 0, high: int = 2**63 - 1) -> int:
    """A numeric part of a token, within [low, high]: ASCII digits only (``str.isdigit``
    also takes superscripts and other scripts' digits, which ``int`` refuses or reads as
    another number), at most 19 of them, so every value fits the int64 fields and Redis
    scores and ids it becomes."""
    if not (0 < len(part) <= 19 and part.isascii() and part.isdigit()):
        raise _bad()
    value = int(part)
    if not low <= value <= high:
        raise _bad()
    return value


def _bad() -> errors.ApiError:
    return errors.invalid_field("page_token", "is not a token this API returned")

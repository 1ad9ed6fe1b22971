"""User-facing errors.

Every mistake a user can make (a bad config key, an impossible value, a malformed trace line) is
raised as a :class:`UserError` subclass whose message is one line naming the field or line and the
fix. The CLI prints it and exits with code 2; anything else is a bug and may show a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message is shown as-is on one line."""


class ConfigError(UserError):
    """A scenario config (YAML or ``--set``) is invalid."""


class TraceError(UserError):
    """A trace file cannot be read or has a malformed line."""


SHOWN_CHARS = 80  # longest value echoed back in a message


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` on one line (newlines escaped), cut to ``limit`` characters with an ellipsis,
    so an absurd input never makes an absurd error line."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` repr'd for a one-line message, cut to ``limit`` characters."""
    return clip(repr(value), limit)


def shown_path(path: object, limit: int = 2 * SHOWN_CHARS) -> str:
    """A file name for a message, as given (not repr'd), with its middle cut out if it is long:
    the start and the file name at the end are what tell files apart."""
    text = str(path).replace("\n", "\\n").replace("\r", "\\r")
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return text[:keep] + "..." + text[-keep:]

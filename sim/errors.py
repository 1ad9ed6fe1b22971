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

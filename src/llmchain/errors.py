"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, flags or config: the message names the place and the fix."""

    exit_code = 2


class DataError(UserError):
    """A malformed input record or file (raised only under --strict; otherwise counted and rejected)."""


class ConfigError(UserError):
    """A bad config file, field or flag."""


class Interrupted(UserError):
    """A run stopped by SIGTERM/Ctrl-C after saving a checkpoint (exit code 130, like an interrupted shell job)."""

    exit_code = 130

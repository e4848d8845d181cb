"""Exceptions that carry a one-line message meant for the user."""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "UserAbort", "Terminated"]


class ConfigError(ValueError):
    """A parameter (YAML key, recipe requirement) has an invalid value.

    The message is a single line naming the key, the value received and what
    is allowed; the command-line shell prints it as ``error: <message>`` and
    exits with status 2.
    """


class InputError(ValueError):
    """An input file or its data cannot be used (missing, wrong shape, NaN...)."""


class UserAbort(RuntimeError):
    """The user asked to stop (key ``x`` in an interactive figure)."""


class Terminated(BaseException):
    """The process received SIGTERM (e.g. from a batch system); handled like Ctrl-C.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except
    Exception`` on the way swallows it.
    """

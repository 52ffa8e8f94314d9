"""What counts as the user's mistake. The CLI prints these as one line (exit 2); any other exception is a bug and
keeps its traceback. They subclass the built-in type a Python caller would expect (ValueError, ...)."""
from __future__ import annotations


class UserError(ValueError):
    """A bad flag, config key or value, or bad input data: the message names it and what is accepted."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a command needs) is not there; the message says how to get it."""


class OutputExistsError(UserError, FileExistsError):
    """An output folder or file already holds something that must not be overwritten without asking."""


class RunMismatchError(UserError):
    """A run folder holds a run with other settings or inputs than the one asked for (each change named)."""


class WaitTimeoutError(UserError, TimeoutError):
    """Processes did not meet within the process-group timeout (`--dist-timeout`): the message names the ones
    missing and what to check."""

"""The one exception type users see: a clear, one-line message about bad input."""

from __future__ import annotations


class CsekitError(Exception):
    """Bad input (a missing file, a malformed line, an unknown name): the CLI prints it as one line."""


class Interrupted(CsekitError):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving what it needs to continue."""

    exit_code = 130  # the shell's code for a process stopped by Ctrl-C


class CsekitNote(UserWarning):
    """Something the user should know about a result that is still valid (the CLI prints it as one line)."""

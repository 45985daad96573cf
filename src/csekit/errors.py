"""The one exception type users see: a clear, one-line message about bad input."""

from __future__ import annotations


class CsekitError(Exception):
    """Bad input (a missing file, a malformed line, an unknown name): the CLI prints it as one line."""

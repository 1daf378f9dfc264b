"""The one exception family for bad input a user can fix.

The CLI prints a :class:`UserError`'s message (which names the culprit and the
fix) without a traceback and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad params, missing inputs or weights, an unavailable device: the message says what to fix."""

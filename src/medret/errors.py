"""The one exception type for problems a user can fix."""

from __future__ import annotations


class MedretError(Exception):
    """A user-facing problem: bad input, config, file or checkpoint.

    The message is one line that names the file or config key and says how to fix it.
    The workflow scripts print it as-is, without a traceback.
    """

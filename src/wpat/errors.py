"""User-facing errors.

Anything a user can cause (a bad config value, a missing file, a foreign checkpoint) raises
:class:`WpatError`. The CLI prints its message on one line and exits non-zero; a raw traceback
is shown only with ``--debug``.
"""


class WpatError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

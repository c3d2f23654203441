"""The one exception type users see.

Anything the user can fix (a missing file, a wrong flag, a model that returns garbage)
raises `SmoothInvError` with a one-line message that says what is wrong and what to do.
The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
"""


class SmoothInvError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2

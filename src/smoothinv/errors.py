"""The one exception type users see.

Anything the user can fix (a missing file, a wrong argument, a model that returns garbage)
raises `SmoothInvError` with a one-line message that says what is wrong and what to do.
The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.

Messages speak of parameters, never of command-line flags: a parameter is written with
`param`, as the backquoted name of the Python parameter of the public function the user
called (`` `num_classes` ``). The CLI renders such a name as its flag (``--num-classes``).
"""


class SmoothInvError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2


def param(name: str) -> str:
    """`name`, a parameter of the public function the user called, as messages write it:
    `` `name` `` (the CLI shows the matching flag instead)."""
    return f"`{name}`"

"""One-line exception text for SmoothInvError messages.

Model files and models fail with multi-line exceptions (TorchScript's interpreter puts
the useful line last); every reader and loader in this package reports them the same way.
"""

from __future__ import annotations

_TORCHSCRIPT_FAILED = "The following operation failed in the TorchScript interpreter"


def one_line(exc: BaseException) -> str:
    """The informative line of an exception message (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith(_TORCHSCRIPT_FAILED):
        return lines[-1]
    return lines[0]

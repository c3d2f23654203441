"""Run one call of untrusted model code with a time limit.

A model file can hold a module that never returns (a TorchScript ``while`` loop, a pickled
module that sleeps). Native code cannot be cancelled from Python, so the call runs in a
daemon thread and the caller gives up waiting after ``seconds``: the command then fails with
a clear message and exits, and the abandoned thread ends with the process.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from ..errors import SmoothInvError, param

T = TypeVar("T")
PROBE_TIMEOUT_S = 120.0
"""Default limit for the first forward pass (generous: a large model's first call on CPU is slow)."""


class ModelTimeout(SmoothInvError):
    """A call into model code did not return in time."""


def call_with_timeout(call: Callable[[], T], seconds: float | None, what: str, limit_name: str = "timeout") -> T:
    """``call()``'s result, or SmoothInvError if it has not returned after ``seconds`` (None: no limit).

    ``limit_name`` is the caller's parameter that set ``seconds``, which the message advises raising.
    Exceptions from ``call`` propagate unchanged."""
    if seconds is None:
        return call()
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="smoothinv-model-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise ModelTimeout(f"{what} did not return within {seconds:g} s; the model may loop forever "
                           f"(raise {param(limit_name)} if it is just slow)")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]

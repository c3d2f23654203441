"""Ctrl-C always stops the command, even while a model is stuck in native code.

Python runs its SIGINT handler only between bytecodes of the main thread, so a TorchScript
model that loops forever inside one C++ call would ignore Ctrl-C. The command therefore runs
in a worker thread while the main thread only waits. On Ctrl-C the main thread raises
KeyboardInterrupt inside the worker (so output directories and checkpoints are cleaned up
or saved as usual) and waits up to ``GRACE_S`` for it; a worker that does not stop in time,
or a second Ctrl-C, ends the process at once with status 130. SIGTERM is handled like Ctrl-C. A stale ``.partial`` folder
left that way is removed by the next run. ``SMOOTHINV_INTERRUPT_GRACE_S`` overrides the grace
period (tests use 1 s).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
GRACE_S = 10.0
"""Seconds a Ctrl-C waits for the command to unwind before the process is ended."""
POLL_S = 0.2
INTERRUPTED = 130


def run_interruptibly(command: Callable[[], T]) -> T:
    """``command()`` in a worker thread; its result, or its exception re-raised here.

    Ctrl-C raises KeyboardInterrupt here once the worker has unwound (or been abandoned)."""
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = command()
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="smoothinv-command", daemon=True)
    previous = _terminate_like_ctrl_c()
    worker.start()
    try:
        # Wait on an Event, not Thread.join: a KeyboardInterrupt inside join() can leave the
        # thread marked as stopped while it still runs (CPython < 3.13).
        while not done.wait(POLL_S):
            pass
    except KeyboardInterrupt:
        _stop(worker, done)
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]


def _terminate_like_ctrl_c() -> object | None:
    """SIGTERM (e.g. `kill`, a job scheduler) takes the same clean path as Ctrl-C; returns the
    handler to restore (None when not on the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _stop(worker: threading.Thread, done: threading.Event) -> None:
    """Interrupt the worker and wait for it to clean up; exit hard if it cannot."""
    _raise_in(worker, KeyboardInterrupt)
    grace = _grace_seconds()
    try:
        finished = done.wait(grace)
    except KeyboardInterrupt:  # a second Ctrl-C: the user does not want to wait
        _exit_now("interrupted")
    if not finished:
        _exit_now(f"interrupted; the model did not return within {grace:g} s (stuck in native code), so the "
                  "process was ended; a leftover partial output is removed by the next run")


def _grace_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("SMOOTHINV_INTERRUPT_GRACE_S", GRACE_S)))
    except ValueError:
        return GRACE_S


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise `exc_type` in `thread` at its next Python bytecode (CPython API)."""
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))


def _exit_now(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED)

"""The Ray backend: each model's task is one Ray task, on this machine or on a cluster.

Ray is an optional extra (``pip install "smoothinv[ray]"``). By default `ray.init()` starts
Ray on this machine with every usable core; an `address` ("auto", "ray://host:port") joins a
running cluster instead, whose nodes need smoothinv installed and the same paths to the models
and clean sets (the results come back to the driver, which alone writes the output folder).
A task asks for `threads` CPUs, and for a GPU where the cluster has GPUs. Each task runs in a
fresh worker process (`max_calls=1`), so a model that leaks or hangs takes only itself down;
one over its time limit is cancelled with force (its worker is killed).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from ..errors import SmoothInvError, param
from .backends import Done, Parallelism, usable_cores
from .task import Outcome, Task, run_task

POLL_S = 0.5
INSTALL_HINT = 'install it with: pip install "smoothinv[ray]"'


def import_ray() -> Any:
    """The `ray` module, or a one-line error that says how to get it (or to use the local pool)."""
    try:
        import ray
    except ImportError:
        raise SmoothInvError(f"Ray is not installed; {INSTALL_HINT}, or run on the local process pool "
                             f"({param('backend')}=local)") from None
    return ray


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import_ray()
    except SmoothInvError:
        return False
    return True


class RayBackend:
    """Ray tasks; `address` None starts Ray here (and stops it afterwards), else joins that cluster.
    `gpus_per_task`: None = 1 where the cluster has GPUs, else 0; a fraction lets tasks share a GPU."""

    name = "ray"
    enforces_timeout = True
    max_workers = None

    def __init__(self, address: str | None = None, gpus_per_task: float | None = None) -> None:
        self.address = address
        self.gpus_per_task = gpus_per_task
        self._ray: Any = None
        self._started_here = False

    def __enter__(self) -> RayBackend:
        ray = self._ray = import_ray()
        if ray.is_initialized():
            return self
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.WARNING}
        if self.address is None:
            import torch

            options.update(num_cpus=usable_cores(), num_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
        try:
            ray.init(address=self.address, **options)
        except Exception as e:  # Ray's own errors: no cluster at the address, a port in use, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = f"join the Ray cluster at {self.address}" if self.address else "start Ray on this machine"
            raise SmoothInvError(f"could not {where} ({first}); check {param('address')}, or run on the local "
                                 f"process pool ({param('backend')}=local)") from None
        self._started_here = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here and self._ray is not None:
            self._ray.shutdown()
            self._started_here = False

    def _resources(self) -> dict[str, float]:
        if self._ray is None:
            raise RuntimeError("use the Ray backend inside `with backend:`")
        return dict(self._ray.cluster_resources())

    def cores(self) -> int:
        return max(1, int(self._resources().get("CPU", 1)))

    def gpus(self) -> int:
        return int(self._resources().get("GPU", 0))

    def run(self, tasks: Sequence[Task], parallelism: Parallelism, timeout: float | None, done: Done) -> None:
        ray = self._ray
        gpus = self.gpus_per_task if self.gpus_per_task is not None else (1 if self.gpus() else 0)
        remote = ray.remote(max_calls=1)(run_task).options(num_cpus=min(parallelism.threads, self.cores()),
                                                           num_gpus=gpus, max_retries=0, name="smoothinv-scan")
        pending = list(tasks)
        running: dict[Any, tuple[Task, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < parallelism.workers:
                    task = pending.pop(0)
                    running[remote.remote(task)] = (task, time.monotonic())
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    task, started = running.pop(ref)
                    done(self._outcome(ref, task, started))
                for ref, (task, started) in list(running.items()):
                    if timeout is not None and time.monotonic() - started > timeout:
                        del running[ref]
                        ray.cancel(ref, force=True)
                        done(Outcome.failed(task, f"did not finish within {timeout:g} s ({param('model_timeout')}); "
                                                  "stopped", time.monotonic() - started))
        finally:
            for ref in running:
                ray.cancel(ref, force=True)

    def _outcome(self, ref: Any, task: Task, started: float) -> Outcome:
        try:
            outcome = self._ray.get(ref)
        except Exception as e:  # the worker died, Ray ran out of memory, the task was lost
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return Outcome.failed(task, f"the Ray task scanning this model failed ({type(e).__name__}: {first[:200]}); "
                                        f"nothing was saved for it (rerun with {param('retry_failed')}=True to try "
                                        "again)", time.monotonic() - started)
        return outcome if isinstance(outcome, Outcome) else Outcome.failed(task, "the Ray task returned no outcome")

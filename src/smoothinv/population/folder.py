"""A population's output folder: the per-model results (`models/<name>/`), the summary files,
and the guards that make it safe to rerun into.

The folder is created on the first run and marked (`.smoothinv-output`, kind "scan-many"); a
rerun writes into it again, and only into a folder so marked, so a typo in the output path can
never scatter results into (or replace anything in) a folder of the user's. It never lies in
or holds the inputs. While a run writes, it holds a lock: a second run into the same folder at
the same time is refused.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .. import __version__
from ..errors import SmoothInvError, param
from ..reporting.outputs import MARKER, check_destination, read_marker, write_json
from .store import FolderStore
from .summary import MODELS_FOLDER

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None  # type: ignore[assignment]

KIND = "scan-many"
LOCK = ".scan-many.lock"


class PopulationFolder:
    """The output folder of a population run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(os.path.abspath(path))
        self.store = FolderStore(self.path / MODELS_FOLDER)

    def prepare(self, inputs: Sequence[str | os.PathLike[str]]) -> bool:
        """Create and mark the folder, or check that an existing one is a population's output.
        Returns whether it already held one (a rerun). Fails before any work."""
        marker = read_marker(self.path) if self.path.is_dir() else None
        if marker is not None and marker.get("kind") == KIND:
            self._refuse_input_holders(inputs)
            return True
        if marker is not None or (self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir()))):
            raise SmoothInvError(f"output directory {self.path} exists and is not the output of an earlier population "
                                 f"scan; choose another {param('out')}")
        check_destination(self.path, False, inputs)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / MARKER, {"tool": "smoothinv", "version": __version__, "kind": KIND,
                                        "output": self.path.name, "pid": os.getpid(), "host": socket.gethostname(),
                                        "created_unix": time.time()})
        return False

    def _refuse_input_holders(self, inputs: Sequence[str | os.PathLike[str]]) -> None:
        real = Path(os.path.realpath(self.path))
        for item in inputs:
            inp = Path(os.path.realpath(item))
            if inp == real or real in inp.parents or (inp in real.parents and inp.is_dir()):
                raise SmoothInvError(f"{param('out')} {self.path} holds or lies inside the input {item}; "
                                     "choose an output folder outside your inputs")

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the folder's lock while the block runs (the kernel drops it if the process dies)."""
        lock = self.path / LOCK
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SmoothInvError(f"another population scan is writing to {self.path} right now; wait for it to "
                                 f"finish or choose another {param('out')}") from None
        try:
            yield
        finally:
            os.close(fd)

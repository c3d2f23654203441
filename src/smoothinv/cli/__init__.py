"""The `smoothinv` command line. ``run`` is the entry point: it imports the commands (torch
takes seconds to import) inside a guard, so Ctrl-C during start-up exits quietly."""

from __future__ import annotations

import sys


def run() -> None:
    """Entry point of the `smoothinv` script and of `python -m smoothinv`."""
    try:
        from .main import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    main()

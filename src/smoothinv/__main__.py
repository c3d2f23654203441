"""`python -m smoothinv` = the `smoothinv` command."""

from .cli import run

run()

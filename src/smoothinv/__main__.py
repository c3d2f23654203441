"""`python -m smoothinv` = the `smoothinv` command."""

from .cli.main import main

main()

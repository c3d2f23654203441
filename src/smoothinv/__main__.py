"""`python -m smoothinv` = the `smoothinv` command."""

from .cli import run

if __name__ == "__main__":  # not when a worker process re-imports the main module
    run()

"""`python -m transferkit ...`: the command line."""

from .cli import run

run()

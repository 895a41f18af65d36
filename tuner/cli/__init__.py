"""The command line: parse, call the library, render."""

from tuner.cli.main import main

__all__ = ["main"]

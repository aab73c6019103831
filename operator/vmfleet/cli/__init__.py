"""The command line: a thin door onto the engine."""

from .main import main

__all__ = ["main"]

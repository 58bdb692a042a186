"""The command line; see cli/main.py."""

from reconciler.cli.main import main, parser

__all__ = ["main", "parser"]

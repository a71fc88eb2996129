"""The `scratchlm` command: one module per pipeline stage, each a thin call into its stage."""

from scratchlm.cli.main import main

__all__ = ["main"]

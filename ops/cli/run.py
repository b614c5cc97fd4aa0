"""``jobctl worker|beat|flower|migrate|demo``: thin wrappers with our defaults."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the run commands to the top-level app."""
    del app

"""What the sub-command modules (model/cli.py, node/cli.py, phantom/cli.py) share with the entry point cli.py:
the user-error exception and argument types. Its own module, so that the sub-commands need not import cli.py,
which imports them (and so that `python -m ercp_node.cli`, which runs cli.py as __main__, catches the same
CLIError class the sub-commands raise)."""

from __future__ import annotations

import argparse
import datetime as dt


class CLIError(Exception):
    """A user error: printed as one clear line, exit status 2."""


def iso_date(text: str) -> dt.date:
    """argparse type for YYYY-MM-DD dates."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date in YYYY-MM-DD form: {text!r}") from None

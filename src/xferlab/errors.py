"""The user-facing error type: the CLI prints it as one `error: ...` line and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XferlabError(Exception):
    """Bad input or settings. The message names the file or field, what is wrong and how to fix it."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest valid choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""

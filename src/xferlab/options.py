"""argparse types for the command-line options that are not config fields (bench, predict, export, explain,
phantoms): a value out of range is refused naming what was received and the accepted range, worded as the config
fields' own errors are (xferlab.config.accepted_range). Torch- and pydantic-free, so `xferlab --help` stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable

MAX_SEED = 2**32 - 1  # every seed's upper bound (xferlab.data.config.Seed): scikit-learn's random_state refuses more


def accepted_whole_numbers(low: int, high: int | None = None) -> str:
    """'a whole number >= 1', 'a whole number from 0 to 4294967295'."""
    return f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """The type of an option taking a whole number in [low, high] (no upper bound when `high` is None)."""
    accepted = accepted_whole_numbers(low, high)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number; accepted: {accepted}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; accepted: {accepted}")
        return value

    parse.__name__ = "int"  # argparse names the type in its own messages
    return parse


positive_int = whole_number(1)

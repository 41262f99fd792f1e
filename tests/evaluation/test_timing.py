"""Timing helpers of xferlab.evaluation.timing."""

from xferlab.evaluation.timing import format_seconds


def test_seconds_are_printed_with_enough_digits_to_be_non_zero():
    assert [format_seconds(v) for v in (45.04, 1.0, 0.0062, 0.31, 0.0, None)] == \
        ["45.0", "1.0", "0.0062", "0.31", "0.0", "n/a"]

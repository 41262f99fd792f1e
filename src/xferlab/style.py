"""The look every figure and table shares, wherever it is drawn (report/ and the audit's own figures and report
blocks): one colour and one marker per split, the font sizes, and how a number reads in a table. At the bottom of the
layers, so the audit need not import the report to match its look."""

from __future__ import annotations

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
SPLIT_MARKERS = {"train": "o", "val": "s", "test": "^"}  # splits told apart by marker as well as colour

# The report shows a PNG at most at its own pixel size (the page's column is 1116 px; figures are drawn <= 11 in
# wide, grid cells <= 5.4 in), so a font of >= 9 pt at 100 dpi stays >= 9 pt on screen at 100 % zoom.
MIN_FONT_PT = 9
FONT_RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
           "legend.fontsize": 9, "figure.titlesize": 10}  # matplotlib rcParams, applied by the modules that draw


def format_number(value, digits: int = 3, scientific: bool = True) -> str:
    """A table cell's text: '–' for a missing value, yes / no for a flag, a float to `digits` decimals (with
    `scientific`, one below 10^-digits as 1.2e-05, so a small p-value is not shown as 0.000), anything else as is."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        tiny = scientific and 0 < abs(value) < 10 ** -digits
        return f"{value:.1e}" if tiny else f"{value:.{digits}f}"
    return str(value)

"""The look every figure shares, wherever it is drawn (report/ and the audit's own figures): one colour and one marker
per split, and the font sizes. Constants only, at the bottom of the layers, so the audit need not import the report to
match its look."""

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
SPLIT_MARKERS = {"train": "o", "val": "s", "test": "^"}  # splits told apart by marker as well as colour

# The report shows a PNG at most at its own pixel size (the page's column is 1116 px; figures are drawn <= 11 in
# wide, grid cells <= 5.4 in), so a font of >= 9 pt at 100 dpi stays >= 9 pt on screen at 100 % zoom.
MIN_FONT_PT = 9
FONT_RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
           "legend.fontsize": 9, "figure.titlesize": 10}  # matplotlib rcParams, applied by the modules that draw

"""The look every figure shares, wherever it is drawn (report/ and the audit's own figures): one colour per split.
Constants only, at the bottom of the layers, so the audit need not import the report to match its colours."""

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}

"""Figures (matplotlib) drawn from saved results."""

"""Metrics and timing."""

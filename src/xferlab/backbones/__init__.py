"""Backbones: the registry (weights, normalisation, head, stages), weight resolution and training regimes."""

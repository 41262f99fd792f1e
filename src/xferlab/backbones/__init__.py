"""Backbones: the registry (weights, normalisation, head, stages), weight resolution and training regimes.

Importing this package registers the built-in backbones (xferlab.backbones.zoo), so `create_model` and
`list_backbones` know them wherever they are imported from; a new backbone is one `@register` entry in zoo.py.
"""

import xferlab.backbones.zoo  # noqa: F401  (registers the built-in backbones)

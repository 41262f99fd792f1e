"""Training engine: the fit loop, the feature cache for fixed backbones, run folders."""

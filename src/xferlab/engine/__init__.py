"""Training engine: the fit loop, the feature cache for fixed backbones, run folders, device settings and
torch.distributed (torchrun) scale-out."""

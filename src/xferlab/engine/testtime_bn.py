"""Test-time BatchNorm (`--test-bn adapt`): AdaBN with the evaluated split's own statistics (Li et al. 2016,
"Revisiting Batch Normalization for Practical Domain Adaptation", arXiv:1603.04779).

Every BatchNorm's running mean and variance are re-estimated on the unlabelled images of the split being evaluated
(or predict's inputs), the trained weights and head are kept, and the split is evaluated again. The result uses the
test images' statistics, so it is transductive: it is reported beside the plain numbers (metrics.json `test_bn`),
never instead of them, and it needs enough images for the statistics to mean something.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from xferlab.backbones.regimes import has_batchnorm
from xferlab.backbones.registry import TransferModel
from xferlab.engine.distributed import SINGLE, Dist
from xferlab.engine.loop import adapt_batchnorm, evaluate
from xferlab.errors import XferlabError
from xferlab.evaluation.metrics import classification_metrics

TEST_BN_MODES = ("off", "adapt")
# One reference batch (32 images): fewer, and a late layer's 2×2 map gives each channel's variance from ~100 values
# drawn from a handful of patients; AdaBN's paper adapts on whole target domains.
DEFAULT_MIN_IMAGES = 32
NOTE = ("transductive: BatchNorm statistics re-estimated on each evaluated split's own unlabelled images (AdaBN, "
        "Li et al. 2016); the plain val/test numbers stay the run's result")


def check_count(split: str, n: int, min_images: int) -> None:
    if n < min_images:
        raise XferlabError(f"--test-bn adapt: the {split} split has {n} images, fewer than the {min_images} its "
                           f"BatchNorm statistics need (test_bn_min_images); use --test-bn off or more images")


def check_split_counts(counts: dict[str, int], min_images: int) -> None:
    """Every non-empty evaluated split must have enough images; called before training so a run fails at once."""
    for split, n in counts.items():
        if n:
            check_count(split, n, min_images)


def check_adaptable(model: TransferModel) -> None:
    if not has_batchnorm(model.body):  # backbones.regimes, as for adabn
        raise XferlabError(f"--test-bn adapt: backbone '{model.spec.name}' has no BatchNorm layers to adapt; "
                           "use --test-bn off")


def adapted_model(model: TransferModel, images, preprocess, batch_size: int, seed: int = 0,
                  min_images: int = DEFAULT_MIN_IMAGES, dist: Dist = SINGLE, where: str = "inputs") -> TransferModel:
    """A copy of `model` whose BatchNorm statistics are those of `images` (uint8 tensor or streamed images), in eval
    mode; the original is untouched. For predict: adapt once on its inputs, then predict with the copy."""
    check_count(where, len(images), min_images)
    check_adaptable(model)
    adapted = copy.deepcopy(model)
    adapt_batchnorm(adapted.body, images, preprocess, batch_size, torch.Generator().manual_seed(seed), dist)
    return adapted.eval()


def evaluate_test_bn(model: TransferModel, split_images: dict, split_labels: dict[str, torch.Tensor],
                     labels_np: dict[str, np.ndarray], make_forward, preprocess, batch_size: int, device,
                     seed: int = 0, min_images: int = DEFAULT_MIN_IMAGES, dist: Dist = SINGLE) -> tuple[dict, dict]:
    """metrics.json's `test_bn` record and the adapted class probabilities per split. `make_forward(model, images)`
    is the run's fixed pass of the adapted model over those images (xferlab.engine.runtime.fixed_pass: its `record`
    goes into the record's `runtime`); each split gets its own adapted copy, never another split's."""
    record = {"mode": "adapt", "transductive": True, "min_images": min_images, "note": NOTE}
    probs = {}
    for split, images in split_images.items():
        adapted = adapted_model(model, images, preprocess, batch_size, seed, min_images, dist, where=split)
        forward = make_forward(adapted, images)
        _, _, probs[split] = evaluate(forward, images, split_labels[split], batch_size, device, dist)
        record[split] = classification_metrics(labels_np[split], probs[split])
        record.setdefault("runtime", {})[split] = forward.record.as_dict()
        del adapted
    return record, probs

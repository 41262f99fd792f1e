"""A run's degenerate flags (evaluation.flags.run_flags) resample patients when the run knows them, as a study's
evaluation does: a few patients with many images each are not many independent cases."""

from __future__ import annotations

import numpy as np

from xferlab.evaluation.evaluate import BootstrapSettings
from xferlab.evaluation.flags import AUROC_AT_CHANCE, run_flags


def _clustered(patients_per_class: int = 5, images: int = 40, seed: int = 2):
    """Every image of a patient has its patient's score; scores overlap between classes (AUROC 0.77, seed 2)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], patients_per_class * images)
    patient_scores = np.concatenate([rng.uniform(0.2, 0.7, patients_per_class), rng.uniform(0.35, 0.85,
                                                                                            patients_per_class)])
    scores = np.repeat(patient_scores, images) + rng.normal(0, 0.01, len(labels))
    groups = np.repeat([f"p{i}" for i in range(2 * patients_per_class)], images)
    probs = np.stack([1 - scores, scores], axis=1)
    return labels, probs, groups


def test_flags_with_patients_use_the_cluster_bootstrap():
    labels, probs, groups = _clustered()
    settings = BootstrapSettings(resamples=500)
    by_image = run_flags({"test": (labels, probs)}, settings)
    by_patient = run_flags({"test": (labels, probs)}, settings, groups={"test": groups})
    assert AUROC_AT_CHANCE not in by_image["flags"]["test"]  # 400 images look like plenty
    assert AUROC_AT_CHANCE in by_patient["flags"]["test"]  # 10 patients do not

"""The re-split finding: too few re-splits to reach alpha is inconclusive, never ok; the audit's own accuracies are
said to be its own model's."""

from xferlab.audit.verdict import resplit_finding


def _resplit(resplits: int, note: str | None) -> dict:
    place = {"percentile": 0.0, "resplit_mean": 0.893, "resplit_sd": 0.003, "p_lower": 1 / (resplits + 1),
             "p_higher": 1.0}
    return {"status": "ok", "regime": "frozen", "resplits": resplits, "note": note,
            "original": {"test": 0.374, "val": 0.941, "gap": 0.567},
            "test_accuracy": place, "gap": {**place, "resplit_mean": 0.01, "p_higher": 1 / (resplits + 1)},
            "test_lower": False, "gap_larger": False, "test_higher": False}


def test_an_underpowered_resplit_test_is_inconclusive():
    level, text = resplit_finding(_resplit(3, "with 3 re-splits the smallest p-value is 0.25, above alpha 0.05"))
    assert level == "caution" and "inconclusive, not ok" in text and "smallest p-value is 0.25" in text
    assert "consistent with a random split" not in text


def test_a_powered_resplit_without_evidence_is_ok_and_names_its_own_model():
    level, text = resplit_finding(_resplit(19, None))
    assert level == "ok" and text.endswith("consistent with a random split.")
    assert "the audit's own model's original test accuracy 0.374" in text

"""Config validation (xferlab.config): every error names the file, the key and the fix."""

from __future__ import annotations

import pytest

from xferlab.config import AuditConfig, StudyConfig, TrainConfig, build, read_yaml
from xferlab.errors import XferlabError

DATA = {"path": "d"}


@pytest.mark.parametrize("model, values", [
    (TrainConfig, {"data": DATA, "regime": "frozn"}),
    (AuditConfig, {"regime": "frozn"}),
])
def test_an_unknown_regime_names_the_file_and_key(model, values):
    with pytest.raises(XferlabError) as err:
        build(model, values, where="x.yaml")
    assert str(err.value).startswith("x.yaml: 'regime' = 'frozn' is invalid: unknown regime 'frozn'")
    assert "did you mean 'frozen'" in str(err.value)


def test_a_regime_error_of_a_yaml_file_gives_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  path: d\nregime: partial:x\n")
    with pytest.raises(XferlabError, match=r"run.yaml line 3: 'regime' = 'partial:x' is invalid: .*K must be a whole"):
        build(TrainConfig, read_yaml(path), where=str(path))


def test_a_study_regime_error_names_the_list_item(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("data:\n  path: d\nbackbones: [resnet18]\nregimes:\n  - frozen\n  - adabm\n")
    with pytest.raises(XferlabError, match=r"line 6: 'regimes.1' = 'adabm' is invalid: .*did you mean 'adabn'"):
        build(StudyConfig, read_yaml(path), where=str(path))


def test_the_audit_refuses_adabn_and_says_what_to_use():
    with pytest.raises(XferlabError, match=r"x.yaml: 'regime' = 'adabn' is invalid: .*cannot re-estimate BatchNorm "
                                           r"per re-split.*use frozen, finetune or partial:K"):
        build(AuditConfig, {"regime": "adabn"}, where="x.yaml")
    for regime in ("frozen", "finetune", "partial:2"):
        assert build(AuditConfig, {"regime": regime}).regime == regime
    assert build(TrainConfig, {"data": DATA, "regime": "adabn"}).regime == "adabn"  # training may use it


@pytest.mark.parametrize("model, values, message", [
    (TrainConfig, {"data": DATA, "epoch": 3}, "unknown key 'epoch' (did you mean 'epochs'?)"),
    (TrainConfig, {"data": {**DATA, "val_splitt": "random"}},
     "unknown key 'data.val_splitt' (did you mean 'val_split'?)"),
    (StudyConfig, {"data": DATA, "backbones": ["resnet18"], "audit": {"permutation": 9}},
     "unknown key 'audit.permutation' (did you mean 'permutations'?)"),
    (TrainConfig, {"data": DATA, "learning_rate": 0.1}, "unknown key 'learning_rate'; remove it"),  # nothing close
])
def test_an_unknown_key_suggests_the_closest_valid_one(model, values, message):
    with pytest.raises(XferlabError) as err:
        build(model, values, where="x.yaml")
    assert str(err.value).startswith(f"x.yaml: {message}")

"""The Python API: xferlab.load_run, LoadedRun.predict, xferlab.list_backbones, and the snippets of the docs' Python
page and of README."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xferlab
from hospitalfiles import write_dicom
from xferlab import artifacts
from xferlab.errors import XferlabError

ROOT = Path(__file__).resolve().parents[2]


def test_import_xferlab_lists_every_backbone():
    from xferlab.backbones.registry import list_backbones

    names = xferlab.list_backbones()
    assert {"resnet18", "resnet34", "densenet121", "efficientnet_lite0"} <= set(names) and names == list_backbones()
    assert set(xferlab.__all__) >= {"load_run", "list_backbones", "LoadedRun", "XferlabError"}


def test_load_run_exposes_config_metrics_classes_and_an_eval_model(tiny_run):
    run = xferlab.load_run(tiny_run)
    assert isinstance(run, xferlab.LoadedRun)
    assert run.config.backbone == "resnet18" and run.config.regime == "frozen"
    assert run.class_names == ["normal", "pneumonia"] and run.metrics["class_names"] == run.class_names
    assert not run.model.training and run.preprocessing.image_size == (32, 32)


def test_predict_paths_pil_and_arrays_agree(tiny_run, tiny_data, tmp_path):
    run = xferlab.load_run(tiny_run)
    images = np.load(tiny_data / "test_pneumonia.npy")[:3]
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    from_array = run.predict(images)
    assert from_array.shape == (3, 2) and np.allclose(from_array.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(run.predict([str(p) for p in paths]), from_array, atol=1e-6)
    np.testing.assert_allclose(run.predict([Image.open(p) for p in paths]), from_array, atol=1e-6)
    np.testing.assert_allclose(run.predict(images[..., None]), from_array, atol=1e-6)  # N×H×W×1
    rgb = np.repeat(images[:, None], 3, axis=1)
    np.testing.assert_allclose(run.predict(rgb), from_array, atol=1e-5)  # gray as 3 equal channels: same input
    # another size is resized to the run's 32×32 first
    big = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.Resampling.NEAREST)) for im in images])
    assert run.predict(big).shape == (3, 2)


def test_predict_refuses_what_is_not_images(tiny_run):
    run = xferlab.load_run(tiny_run)
    with pytest.raises(XferlabError, match="not images"):
        run.predict(np.zeros((2, 2, 8, 8, 8), np.uint8))
    with pytest.raises(XferlabError, match="float pixels range"):
        run.predict(np.full((1, 8, 8), 300.0))
    with pytest.raises(XferlabError, match="no such file|not found"):
        run.predict(["missing.png"])


def test_load_run_errors_name_the_folder_and_the_fix(tmp_path, tiny_run):
    with pytest.raises(XferlabError, match=r"not a run folder"):
        xferlab.load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / artifacts.CONFIG_YAML).write_text(artifacts.read_config_text(tiny_run))
    with pytest.raises(XferlabError, match=r"half: no metrics\.json"):
        xferlab.load_run(tmp_path / "half")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, tiny_run):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in artifacts.RUN_FILES:
        (bad / name).write_bytes((tiny_run / name).read_bytes())
    torch.save({"state_dict": {}, "evil": Image.new("L", (2, 2))}, bad / artifacts.MODEL_PT)  # needs full unpickling
    with pytest.raises(XferlabError, match=r"model\.pt: not a weights-only xferlab checkpoint"):
        xferlab.load_run(bad)


@pytest.mark.parametrize("page", ["docs/python.md", "README.md"])
def test_documented_snippet_runs(page, tiny_run, tmp_path, monkeypatch):
    """The Python snippet of docs/python.md ("Using a trained model") and README's, run as written (with the files
    they name written here)."""
    text = (ROOT / page).read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "lite0-frozen").symlink_to(tiny_run)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "chest.png")
    write_dicom(tmp_path / "chest.dcm", np.arange(1600, dtype=np.uint16).reshape(40, 40), 12)
    exec(compile(snippet, page, "exec"), {})


def test_the_exported_intensity_mapping_is_the_training_one(tiny_run):
    from xferlab.use.export import _WithPreprocessing

    run = xferlab.load_run(tiny_run)
    batch = torch.arange(0, 256, dtype=torch.uint8).view(1, 1, 16, 16)
    expected = run._preprocess(batch)
    mapped = _WithPreprocessing(run.model, run.preprocessing).prepare(batch.expand(-1, 3, -1, -1))
    torch.testing.assert_close(mapped, expected, atol=1e-6, rtol=0)


def test_the_checkpoints_input_record_is_used_and_old_checkpoints_get_the_defaults(tiny_run):
    from xferlab.inputs import InputSpec
    from xferlab.use.runfolder import input_spec

    run = xferlab.load_run(tiny_run)
    assert run.preprocessing.input == InputSpec()  # resnet18: ImageNet's 3 channels, 0..1, mean/std, no fixed side
    xrv_like = {"mean": [0.0], "std": [1.0], "preprocessing": {"channels": 1, "mean": [0.0], "std": [1.0],
                                                               "value_range": [-1024.0, 1024.0], "size": 224}}
    assert input_spec(xrv_like, tiny_run) == InputSpec(1, (0.0,), (1.0,), (-1024.0, 1024.0), 224)
    old = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}  # saved before the record existed
    assert input_spec(old, tiny_run) == InputSpec(mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(XferlabError, match="does not know; update xferlab"):
        input_spec({**old, "preprocessing": {"channels": 3, "gamma": 2.2}}, tiny_run)


def test_loading_a_flagged_run_warns_once_and_old_runs_get_their_flags_computed(tiny_run, tmp_path, caplog):
    """metrics.json's flags decide (a run flagged as degenerate warns once, on loading; predicting warns no more);
    a run saved before runs recorded flags gets them from its predictions, as a study would."""
    import json
    import logging
    import shutil

    from xferlab.evaluation.flags import RUN_FLAG_KEYS
    from xferlab.use.model import load_run

    flagged, old = tmp_path / "flagged", tmp_path / "old"
    for copy in (flagged, old):
        shutil.copytree(tiny_run, copy)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(RUN_FLAG_KEYS) <= set(metrics)
    (flagged / "metrics.json").write_text(json.dumps({**metrics, "flags": {"val": ["one_class"], "test": []},
                                                      "degenerate": True, "flag_text": "val: predicts normal for "
                                                                                       "100% of cases"}))
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k not in RUN_FLAG_KEYS}))
    with caplog.at_level(logging.WARNING, logger="xferlab"):
        run = load_run(flagged)
        run.predict(np.zeros((2, 32, 32), np.uint8))
        run.adapted(np.zeros((4, 32, 32), np.uint8), min_images=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "flagged as a degenerate run (val: predicts normal for 100% of cases)" in warnings[0]
    assert run.degenerate and run.flags == {"val": ["one_class"], "test": []}
    reloaded = load_run(old)
    assert reloaded.flags == metrics["flags"] and reloaded.degenerate == metrics["degenerate"]

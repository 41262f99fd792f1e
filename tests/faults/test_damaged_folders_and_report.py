"""Second fault suite, saved folders and the report: a damaged or hand-edited run folder makes `xferlab report` name
the file and what to rerun (xferlab.checks through xferlab.artifacts' readers, which predict / export / the API
reuse); every user-provided string is
escaped, and report.html loads nothing from elsewhere and runs no script."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from faultkit import png_folder

from xferlab import artifacts
from xferlab.cli import main
from xferlab.errors import XferlabError

XSS_CLASS = "<img src=x onerror=alert(1)>"
NON_UTF8_CLASS = os.fsdecode(b"0 caf\xe9")  # Latin-1 bytes in a folder name: not UTF-8
XSS_STUDY = "</title><script>alert(2)</script>"
RUN = "resnet18-frozen-seed0"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """One real study on a folder dataset whose class names and study name are hostile or not UTF-8."""
    root = tmp_path_factory.mktemp("hostile")
    data = png_folder(root / 'data "><b>', size=16, n=6, classes=(NON_UTF8_CLASS, XSS_CLASS))
    doc = {"name": XSS_STUDY, "data": {"path": str(data), "format": "folder"}, "backbones": ["resnet18"],
           "regimes": ["frozen"], "bootstrap_resamples": 100,
           "train": {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1}}
    (root / "study.yaml").write_text(yaml.safe_dump(doc))
    assert main(["study", str(root / "study.yaml"), "--out", str(root / "out")]) == 0
    return root / "out"


def _link_weights(src: str, dst: str) -> None:
    """Copy, except model.pt (45 MB), which is hard-linked: a test that edits it unlinks it first."""
    (os.link if src.endswith("model.pt") else shutil.copy2)(src, dst)


@pytest.fixture
def copy(study, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(study, out, copy_function=_link_weights)
    return out


# ---- saved folders: `xferlab report` names the file and what to rerun ---------------------------------------------

def test_a_truncated_metrics_json(copy, fails):
    path = copy / "runs" / RUN / "metrics.json"
    path.write_text(path.read_text()[:40])
    fails(["report", copy], copy, f"{RUN}/metrics.json", "not valid JSON", "rerun `xferlab study`")


def test_metrics_json_edited_to_one_class(copy, fails):
    path = copy / "runs" / RUN / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["class_names"] = ["only"]
    path.write_text(json.dumps(metrics))
    fails(["report", copy], copy, f"{RUN}/metrics.json", "at least two class names")


def test_predictions_of_the_wrong_shape(copy, fails):
    path = copy / "runs" / RUN / "predictions.npz"
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["val_probs"] = np.full((len(arrays["val_labels"]), 3), 1 / 3)  # three classes, the run has two
    np.savez(path, **arrays)
    fails(["report", copy], copy, f"{RUN}/predictions.npz", "val_probs has shape", "× 2")


def test_predictions_with_labels_out_of_range(copy, fails):
    path = copy / "runs" / RUN / "predictions.npz"
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["test_labels"] = arrays["test_labels"] + 5
    np.savez(path, **arrays)
    fails(["report", copy], copy, f"{RUN}/predictions.npz", "test_labels range", "outside 0..1")


def _edit_checkpoint(copy: Path, edit) -> None:
    path = copy / "runs" / RUN / "model.pt"
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    path.unlink()  # hard-linked to the shared study's file
    torch.save(ckpt, path)


def test_a_model_pt_saved_for_another_backbone(copy, fails):
    _edit_checkpoint(copy, lambda c: c.update(backbone="densenet121"))
    fails(["report", copy], copy, f"{RUN}/model.pt", "'densenet121'", "'resnet18'")


def test_a_model_pt_whose_weights_are_another_architecture(copy, fails):
    def resnet50_head(ckpt):  # the label kept, the head copied from a ResNet-50 run (2048 features)
        ckpt["state_dict"]["head.weight"] = torch.zeros(2, 2048)

    _edit_checkpoint(copy, resnet50_head)
    fails(["report", copy], copy, f"{RUN}/model.pt", "takes 2048 features", "gives 512")


def test_a_model_pt_with_another_class_count(copy, fails):
    def three_classes(ckpt):
        ckpt["state_dict"]["head.weight"] = torch.zeros(3, 512)
        ckpt["state_dict"]["head.bias"] = torch.zeros(3)

    _edit_checkpoint(copy, three_classes)
    fails(["report", copy], copy, f"{RUN}/model.pt", "3 outputs", "2 classes")


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path(__file__).parent / 'PWNED'}",))


def test_a_model_pt_that_would_run_code_is_refused_unrun(copy, fails, tmp_path):
    marker = Path(__file__).parent / "PWNED"
    (copy / "runs" / RUN / "model.pt").unlink()  # hard-linked to the shared study's file
    with open(copy / "runs" / RUN / "model.pt", "wb") as f:
        pickle.dump({"state_dict": _RunsCode()}, f)
    fails(["report", copy], copy, f"{RUN}/model.pt", "weights-only")
    assert not marker.exists()


def test_a_hand_edited_config_yaml(copy, fails):
    path = copy / "runs" / RUN / "config.yaml"
    path.write_text(path.read_text() + "learning_rate: 0.5\n")
    fails(["report", copy], copy, f"{RUN}/config.yaml", "unknown key 'learning_rate'", "rerun")


def test_history_with_text_where_numbers_belong(copy, fails):
    path = copy / "runs" / RUN / "history.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[1], "oops", 1)
    path.write_text("\n".join(lines) + "\n")
    fails(["report", copy], copy, f"{RUN}/history.csv", "per-epoch table")


def test_a_hand_edited_results_json_is_refused_by_readers_and_rebuilt_by_report(copy, capsys):
    doc = json.loads((copy / "results.json").read_text())
    doc["runs"][0]["test"]["metrics"]["accuracy"]["value"] = float("nan")  # "improved" by hand
    (copy / "results.json").write_text(json.dumps(doc))
    with pytest.raises(XferlabError, match=r"results\.json: unreadable or hand-edited .*NaN.*xferlab report"):
        artifacts.read_results(copy)
    doc["runs"][0]["test"]["metrics"]["accuracy"]["value"] = 0.5
    (copy / "results.json").write_text(json.dumps({**doc, "schema_version": artifacts.SCHEMA_VERSION + 98}))
    with pytest.raises(XferlabError, match=f"schema_version {artifacts.SCHEMA_VERSION + 98}, expected "
                                           f"{artifacts.SCHEMA_VERSION} or older"):
        artifacts.read_results(copy)
    assert main(["report", str(copy)]) == 0  # the report never reads results.json: it rebuilds it from the runs
    rebuilt = artifacts.read_results(copy)
    assert rebuilt["runs"][0]["run"] == RUN and rebuilt["runs"][0]["test"]["metrics"]["accuracy"]["value"] >= 0


def test_a_full_disk_while_writing_the_report_keeps_the_old_report(copy, fails, monkeypatch):
    from xferlab import files

    out = copy
    old = (out / "report.html").read_bytes()
    real = files.write_text

    def full(path, text):
        if Path(path).name == "report.html":  # half the report reaches the disk, then the device is full
            return files.write_file(path, lambda f: (f.write(text[: len(text) // 2].encode()),
                                                     _raise(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))))
        return real(path, text)

    monkeypatch.setattr(files, "write_text", full)
    fails(["report", out], out, "report.html", "No space left on device", "free disk space")
    assert (out / "report.html").read_bytes() == old


def _raise(err: Exception):
    raise err


# ---- the report: escaped, self-contained, no script ---------------------------------------------------------------

class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text, self.style = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]

    def handle_data(self, data):
        (self.style if self.tags and self.tags[-1] == "style" else self.text).append(data)


@pytest.fixture(scope="module")
def page(study) -> _Page:
    parsed = _Page()
    parsed.feed((study / "report.html").read_text(encoding="utf-8"))
    return parsed


def test_a_class_folder_named_like_an_img_tag_shows_as_text(page):
    images = [v for tag, k, v in page.attrs if tag == "img" and k == "src"]
    assert images and all(v.startswith("data:image/png;base64,") for v in images)  # only the report's own figures
    assert any(XSS_CLASS in text for text in page.text)  # the name, shown as text


def test_the_study_name_and_data_path_are_escaped(page, study):
    assert "script" not in page.tags
    assert any(XSS_STUDY in text for text in page.text)
    assert any('data "><b>' in text for text in page.text) and "b" not in page.tags


def test_a_non_utf8_class_name_does_not_break_the_report(study, page):
    html = (study / "report.html").read_bytes()
    html.decode("utf-8")  # valid UTF-8 throughout
    # the class is named by its bytes, \xe9 for the Latin-1 byte, in metrics.json, the figures and the report
    assert json.loads((study / "runs" / RUN / "metrics.json").read_text())["class_names"][0] == "0 caf\\xe9"


def test_the_report_loads_nothing_from_elsewhere_and_runs_no_script(page):
    assert not {"script", "iframe", "object", "embed", "link", "base", "frame", "meta"} & set(page.tags) - {"meta"}
    assert not [a for a in page.attrs if a[1].startswith("on")]  # no event handlers
    for tag, key, value in page.attrs:
        if key in ("src", "href", "action", "formaction", "srcset", "poster", "data"):
            assert value.startswith(("data:image/png;base64,", "#")), (tag, key, value[:80])
    css = "".join(page.style)
    assert "url(" not in css and "@import" not in css
    assert [v for t, k, v in page.attrs if t == "meta"] == ["utf-8"]  # the charset, no refresh or redirect

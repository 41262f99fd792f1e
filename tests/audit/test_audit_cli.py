"""`xferlab audit` end to end (audit.json, figures, the HTML section) and its error cases (`error:` + exit 2)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from xferlab.cli import main
from xferlab.data.phantoms import generate_phantoms
from xferlab.errors import XferlabError
from xferlab.report.audit import render_audit_section


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def small_shifted(tmp_path_factory):
    return generate_phantoms(tmp_path_factory.mktemp("small") / "ph", size=32, n_per_class=40, n_test_per_class=15,
                             shift="acquisition")


def test_audit_end_to_end_flags_a_shifted_test_split(small_shifted, tmp_path, capsys):
    config = tmp_path / "audit.yaml"
    config.write_text("data:\n  val_split: random\naudit:\n  epochs: 10\n  permutations: 199\n")
    out = tmp_path / "audit"
    threads = torch.get_num_threads()
    rc = main(["audit", "-c", str(config), "--data", str(small_shifted), "--out", str(out), "--resplits", "19",
               "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("PROBLEM: ") and f"audit folder: {out}" in printed
    assert torch.get_num_threads() == threads  # the caller's thread setting survives
    names = {p.name for p in out.iterdir()}
    assert {"audit.json", "audit_arrays.npz", "shift.png", "pixels.png", "test_like.png", "resplit.png"} <= names
    assert "leakage.png" not in names and not list(tmp_path.glob(".audit.*"))
    result = _strict_json(out / "audit.json")
    assert result["config"]["data"]["val_split"] == "random" and result["config"]["audit"]["epochs"] == 10
    assert result["config"]["audit"]["resplits"] == 19
    assert result["dataset"]["counts"] == {"train": [32, 32], "val": [8, 8], "test": [15, 15]}
    assert result["shift"]["within_class"]["reject"] is True
    assert result["resplit"]["status"] == "ok" and len(result["resplit"]["runs"]) == 19
    assert result["verdict"]["level"] == "problem"
    assert {f["topic"] for f in result["verdict"]["findings"]} == {"shift", "class_balance", "pixels", "leakage",
                                                                  "resplit", "labels"}
    labels = next(f for f in result["verdict"]["findings"] if f["topic"] == "labels")
    assert labels["level"] != "problem"  # beside an image shift, more flags in test are not told apart from it
    assert set(result["seconds"]) >= {"embedding", "shift", "pixels", "leakage", "resplit", "figures", "total"}
    arrays = np.load(out / "audit_arrays.npz")
    assert arrays["pixel_stats"].shape == (110, len(arrays["stat_names"]))

    html = render_audit_section(out)
    assert html.startswith('<section id="audit">') and html.endswith("</section>")
    flagged = result["labels"].get("status") == "ok" and result["labels"]["per_split"]["test"]["count"] > 0
    assert (out / "labels.png").exists() == flagged  # the label check's thumbnails, when it flags test images
    shown = 4 + flagged
    assert html.count("<img ") == shown and html.count("data:image/png;base64,") == shown
    assert "Split audit" in html and "Re-split experiment" in html and "nan" not in html.lower().split("base64")[0]
    assert re.search(r'class="verdict problem"', html)


def test_a_split_too_small_for_the_tests_is_reported_not_crashed(tiny_npy, tmp_path, capsys):
    """8 test images per class: no per-class p-value, a message instead; the rest of the audit still runs."""
    out = tmp_path / "audit"
    rc = main(["audit", "--data", str(tiny_npy), "--out", str(out), "--resplits", "2", "--permutations", "99",
               "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Image shift: not tested" in printed and "at least 10 per side" in printed
    result = _strict_json(out / "audit.json")
    for name in ("normal", "pneumonia"):
        per_class = result["shift"]["per_class"][name]
        assert per_class["status"] == "skipped" and "only 8 test images" in per_class["reason"]
        assert result["pixels"]["tests"][name]["status"] == "skipped"
    assert result["shift"]["within_class"]["reject"] is None
    assert result["verdict"]["level"] in ("caution", "problem")
    assert "not tested" in render_audit_section(out)


@pytest.mark.parametrize("argv, message", [
    ([], "no data given; pass --data"),
    (["--backbone", "resnet19"], "unknown backbone 'resnet19' (did you mean 'resnet18'?)"),
    (["--resplits", "-1"], "--resplits -1 is out of range; accepted: a whole number >= 0"),
    (["--regime", "partial:x"], "regime 'partial:x': K must be a whole number"),
    (["--alpha", "1.5"], "--alpha 1.5 is out of range; accepted: a number > 0 and < 1"),
])
def test_bad_options_are_one_error_line_and_exit_2(argv, message, tiny_npy, tmp_path, capsys):
    data = [] if not argv else ["--data", str(tiny_npy)]
    rc = main(["audit", *data, *argv, "--out", str(tmp_path / "audit")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "audit").exists()


@pytest.mark.parametrize("text, message", [
    ("dataa:\n  path: x\n", "unknown key 'dataa' (did you mean 'data'?)"),
    ("audit:\n  permutation: 10\n", "unknown key 'audit.permutation' (did you mean 'permutations'?)"),
    ("data:\n  val_splitt: random\n", "unknown key 'data.val_splitt' (did you mean 'val_split'?)"),
    ("audit: [1]\n", "the audit: section must be a mapping"),
    ("data: [1, 2\n", "YAML syntax error"),
])
def test_bad_config_files_are_one_error_line_and_exit_2(text, message, tiny_npy, tmp_path, capsys):
    config = tmp_path / "audit.yaml"
    config.write_text(text)
    rc = main(["audit", "-c", str(config), "--data", str(tiny_npy), "--out", str(tmp_path / "audit")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err


def test_an_existing_audit_folder_needs_overwrite(tiny_npy, tmp_path, capsys):
    (tmp_path / "audit").mkdir()
    assert main(["audit", "--data", str(tiny_npy), "--out", str(tmp_path / "audit")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_missing_data_and_missing_audit_are_clear_errors(tmp_path, capsys):
    assert main(["audit", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "audit")]) == 2
    assert "data path does not exist" in capsys.readouterr().err
    with pytest.raises(XferlabError, match="no readable audit.json"):
        render_audit_section(tmp_path)


def test_a_dataset_without_a_test_split_gets_the_leakage_checks_and_messages(tiny_npy, tmp_path, capsys):
    for f in tiny_npy.glob("test_*.npy"):
        f.unlink()
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(tiny_npy), "--out", str(out), "--device", "cpu"]) == 0
    result = _strict_json(out / "audit.json")
    assert result["resplit"]["status"] == "skipped" and "no test split" in result["resplit"]["reason"]
    assert result["class_balance"]["status"] == "skipped"
    assert "test split has no images" in result["shift"]["pooled"]["reason"]
    assert result["leakage"]["exact"]["cross_split_groups"] == 0  # train vs val is still checked
    assert "Re-split experiment: not run" in capsys.readouterr().out
    assert "Not run" in render_audit_section(out)

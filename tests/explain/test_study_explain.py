"""`explain: true` in a study YAML: every run explained into DIR/explain/<run>, shown in the report's own section."""

from __future__ import annotations

from pathlib import Path

import yaml

from xferlab.cli import main
from xferlab.engine.accel import num_threads


def test_study_explains_its_runs_and_the_report_shows_them(shortcut_phantoms: Path, tmp_path: Path) -> None:
    study = {"name": "explained", "data": {"path": str(shortcut_phantoms)}, "backbones": ["resnet18"],
             "regimes": ["frozen"], "seeds": [0], "bootstrap_resamples": 100, "explain": True,
             "train": {"epochs": 1, "batch_size": 16, "weights": "none", "device": "cpu"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    out = tmp_path / "study"
    with num_threads(1):
        assert main(["study", str(tmp_path / "s.yaml"), "--out", str(out)]) == 0
    explained = out / "explain" / "resnet18-frozen-seed0"
    assert (explained / "explain.json").is_file() and (explained / "contact_test.png").is_file()
    html = (out / "report.html").read_text()
    assert 'id="explain"' in html and "Where the models look" in html and "border band" in html
    assert html.count("data:image/png;base64,") > 2  # the contact sheets are embedded
    # a rerun skips the finished explanation (its file is not rewritten)
    stamp = (explained / "explain.json").stat().st_mtime_ns
    with num_threads(1):
        assert main(["study", str(tmp_path / "s.yaml"), "--out", str(out)]) == 0
    assert (explained / "explain.json").stat().st_mtime_ns == stamp


def test_report_without_explanations_has_no_section(tmp_path: Path) -> None:
    from xferlab.report.explain import render_explain_section

    assert render_explain_section(tmp_path) == ""

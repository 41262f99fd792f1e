"""benchmarks/gpu_study.py in its --smoke mode (the GPU script's code paths on the CPU at toy sizes, so the script
cannot rot between GPU sessions) and benchmarks/gpu_docs.py, which turns its JSON into the docs site's GPU page
(docs/performance/gpu.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
GPU_PAGE = ROOT / "docs" / "performance" / "gpu.md"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_study")
    assert _load("gpu_study").main(["--smoke", "--work", str(work), "--out", str(work / "gpu_study.json")]) == 0
    return json.loads((work / "gpu_study.json").read_text())


@pytest.mark.slow
def test_smoke_mode_measures_every_section(smoke):
    assert smoke["environment"]["smoke"] is True and smoke["device"] == "cpu"
    for section in ("reference", "study", "graphs_off", "bench_256", "ddp", "backbones"):
        assert "error" not in smoke[section], smoke[section]
    runs = smoke["study"]
    assert set(runs) == {"resnet18-frozen", "resnet18-finetune", "resnet34-frozen", "resnet34-finetune"}
    assert smoke["reference_study_training_seconds"] == pytest.approx(sum(r["training_s"] for r in runs.values()))
    assert smoke["frozen_speedup"] == pytest.approx(smoke["reference"]["frozen"]["wall_s"]
                                                    / runs["resnet18-frozen"]["wall_s"])
    assert smoke["finetune_speedup"] > 0
    assert runs["resnet18-frozen"]["accel"]["trainer"] == "head_epoch"
    assert smoke["graphs_off"]["resnet18-finetune"]["accel"]["cuda_graphs"] is False
    assert {k.split("@")[0] for k in smoke["backbones"]} == set(_load("gpu_study").BUILT_IN)
    assert all(r["train_images_per_s"] > 0 for r in smoke["backbones"].values())
    assert smoke["ddp"]["distributed"] == "gloo" and smoke["ddp"]["ddp_over_plain"] > 0


@pytest.mark.slow
def test_docs_page_section_is_rewritten_from_the_json(smoke, tmp_path):
    page_script = _load("gpu_docs")
    (tmp_path / "study.json").write_text(json.dumps(smoke))
    page = tmp_path / "gpu.md"
    page.write_text("# GPU\n\nprose\n<!-- gpu-study:begin: old -->\nold numbers\n<!-- gpu-study:end -->\n\n## Next\n")
    assert page_script.main(["--json", str(tmp_path / "study.json"), "--page", str(page)]) == 0
    text = page.read_text()
    assert "old numbers" not in text and text.startswith("# GPU\n\nprose\n") and text.endswith("\n\n## Next\n")
    total = f"{smoke['reference_study_training_seconds']:,.1f} s of training in total"
    assert total in text and "| efficientnet_lite2 | 2 |" in text
    assert page_script.main(["--json", str(tmp_path / "study.json"), "--page", str(page)]) == 0
    assert page.read_text() == text  # a second rewrite changes nothing


def test_the_script_writes_the_docs_page_by_default():
    """Its default target is the site's GPU page, which holds the pair of markers it replaces between."""
    page_script = _load("gpu_docs")
    assert page_script.PAGE == GPU_PAGE
    text = GPU_PAGE.read_text()
    assert text.index(page_script.BEGIN) < text.index(page_script.END)
    assert page_script.replace_section(text, "new body\n").count("new body") == 1


def test_script_without_json_is_an_error_line(tmp_path, capsys):
    assert _load("gpu_docs").main(["--json", str(tmp_path / "missing.json"), "--page", str(tmp_path / "P")]) == 2
    assert "run benchmarks/gpu_study.py first" in capsys.readouterr().err

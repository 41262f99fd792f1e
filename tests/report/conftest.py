"""Report fixtures: one real study (2 backbones × 2 regimes, one epoch, tiny phantoms) with a stand-in split audit,
trained once per session; tests build the report from its saved folders."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml

# What the stand-in audit's render_audit_section returns: a self-contained fragment with one inline image.
FAKE_AUDIT_SECTION = ('<section id="audit"><h2>Split audit</h2><p>stand-in verdict</p>'
                      '<img alt="stand-in" src="data:image/png;base64,iVBORw0KGgo="></section>')


def install_fake_audit(monkeypatch) -> None:
    """xferlab.audit and xferlab.report.audit replaced by stand-ins that write and render a minimal audit."""

    def run_audit(data_cfg, audit_cfg, out_dir, progress=True):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "audit.json").write_text(json.dumps({"verdict": "stand-in"}))
        return {"verdict": "stand-in"}

    audit = types.ModuleType("xferlab.audit")
    audit.run_audit = run_audit
    report = types.ModuleType("xferlab.report.audit")
    report.render_audit_section = lambda audit_dir: FAKE_AUDIT_SECTION
    monkeypatch.setitem(sys.modules, "xferlab.audit", audit)
    monkeypatch.setitem(sys.modules, "xferlab.report.audit", report)


@pytest.fixture
def fake_audit(monkeypatch):
    install_fake_audit(monkeypatch)


@pytest.fixture(scope="session")  # one tiny study for every report test: training it is the slow part
def study_dir(tmp_path_factory) -> Path:
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.study import load_study, run_study

    root = tmp_path_factory.mktemp("report_study")
    data = generate_phantoms(root / "phantoms", size=32, n_per_class=10, n_test_per_class=6, seed=0)
    doc = {"name": "report test <study>", "data": {"path": str(data)}, "backbones": ["resnet18", "resnet34"],
           "regimes": ["frozen", "finetune"], "bootstrap_resamples": 200, "audit": {"resplits": 2},
           "train": {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1}}
    (root / "study.yaml").write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as mp:
        install_fake_audit(mp)
        run_study(load_study(root / "study.yaml"), root / "out", progress=False)
    return root / "out"

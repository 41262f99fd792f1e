"""The audit's extension point (docs/architecture.md, "Where to add things"): a check is its functions plus one entry
of xferlab.audit.checks.CHECKS, which the runner, the verdict and the report read. A dummy check added here as one
entry and nothing else shows up in audit.json, audit_arrays.npz, the verdict (with a headline of its own), the
figures and the report's audit section; a check whose optional package is missing is recorded as skipped with the
install line, noted in the verdict and the report, and never computed."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from PIL import Image

import xferlab.audit.checks as checks
from xferlab import artifacts
from xferlab.audit import run_audit
from xferlab.audit.blocks import Block, Figure, Table, Text
from xferlab.audit.entry import AuditCheck, Computed
from xferlab.audit.verdict import HEADLINE_PROBLEM, make_verdict
from xferlab.config import AuditConfig, DataConfig
from xferlab.report.audit import render_audit_section


def _compute(inputs) -> Computed:
    test = inputs.data.splits == "test"
    return Computed({"status": "ok", "flagged": int(test.sum())}, {"dummy_scores": test.astype(np.float32)})


def _finding(record: dict, audit: dict) -> tuple[str, str]:
    return "problem", f"Dummy: {record['flagged']} test images flagged."


def _block(record: dict, audit: dict) -> Block:
    return Block("Dummy check", [Table(["", "value"], [["flagged", record["flagged"]], ["share", 0.25]]),
                                 Figure(audit["figures"].get("dummy"), "dummy thumbnails"),
                                 Text("how to read the dummy check", muted=True)])


def _figures(inputs, record: dict, arrays: dict, out) -> dict:
    """A strip of thumbnails: the images the check flags, side by side."""
    flagged = inputs.data.images[arrays["dummy_scores"] > 0][:4]
    Image.fromarray(np.concatenate(list(flagged), axis=-1)).save(out / "dummy.png")
    return {"dummy": "dummy.png"}


def _never(inputs) -> Computed:
    raise AssertionError("a check whose optional package is missing is never computed")


DUMMY = AuditCheck("dummy", "Dummy check", _compute, _finding, _block, _figures,
                   headline="Do not trust the test labels: the dummy check flags them.")
NEEDS_EXTRA = AuditCheck("needs_extra", "Label check", _never, needs=("xferlab_no_such_package", "labels"))


def test_a_check_is_one_entry(tiny_npy, tmp_path, monkeypatch):
    monkeypatch.setitem(checks.CHECKS, "dummy", DUMMY)
    monkeypatch.setitem(checks.CHECKS, "needs_extra", NEEDS_EXTRA)
    n = sum(len(np.load(f, mmap_mode="r")) for f in tiny_npy.glob("*.npy"))
    embeddings = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)  # no backbone pass
    out = tmp_path / "audit"
    cfg = AuditConfig(resplits=0, permutations=20, device="cpu", num_threads=1)
    run_audit(DataConfig(path=tiny_npy), cfg, out, progress=False, embeddings=embeddings)

    saved = json.loads((out / artifacts.AUDIT_JSON).read_text())
    flagged = saved["dataset"]["counts"]["test"]
    assert saved["dummy"] == {"status": "ok", "flagged": sum(flagged)}
    assert saved["needs_extra"]["status"] == "skipped" and saved["needs_extra"]["missing"] == "xferlab_no_such_package"
    assert "pip install 'xferlab[labels]'" in saved["needs_extra"]["reason"]
    assert "shortcut" not in saved  # a check this audit does not enable leaves no trace
    findings = {f["topic"]: f for f in saved["verdict"]["findings"]}
    assert list(findings)[-2:] == ["dummy", "needs_extra"]  # the registry's order
    assert findings["dummy"]["level"] == "problem" and saved["verdict"]["level"] == "problem"
    assert findings["needs_extra"]["level"] == "ok"
    assert findings["needs_extra"]["text"].startswith("Label check: not checked (needs the optional package")
    assert saved["figures"]["dummy"] == "dummy.png" and (out / "dummy.png").is_file()
    assert "dummy" in saved["seconds"] and "needs_extra" not in saved["seconds"]
    with np.load(out / artifacts.AUDIT_ARRAYS_NPZ) as arrays:
        assert arrays["dummy_scores"].sum() == sum(flagged) and len(arrays["dummy_scores"]) == n

    html = render_audit_section(out)
    assert "<h3>Dummy check</h3>" in html and 'alt="dummy thumbnails" src="data:image/png;base64,' in html
    assert "<td>0.250</td>" in html and '<p class="muted">how to read the dummy check</p>' in html
    assert "<h3>Label check</h3>" in html and "Not run: needs the optional package xferlab_no_such_package" in html


def test_the_first_problem_with_a_headline_of_its_own_names_the_verdict():
    result = {"dummy": {"status": "ok", "flagged": 3}, "other": {"status": "ok", "flagged": 1}}
    other = replace(DUMMY, name="other", headline=None)
    assert make_verdict(result, [other, DUMMY])["headline"] == DUMMY.headline
    assert make_verdict(result, [other])["headline"] == HEADLINE_PROBLEM  # the test split is not a random sample
    first = replace(DUMMY, name="other", headline="The first check's headline.")
    verdict = make_verdict(result, [first, DUMMY])
    assert verdict["headline"] == "The first check's headline." and [f["topic"] for f in verdict["findings"]] == \
        ["other", "dummy"]

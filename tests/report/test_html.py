import base64
import shutil
from html.parser import HTMLParser

import pytest

import xferlab.engine.run as engine_run
from xferlab.cli import main
from xferlab.report import build_outputs
from xferlab.report.html import SECTIONS, Section


class ReportParser(HTMLParser):
    """Collects section ids, every tag name, every URL-bearing attribute and the <style> text."""

    def __init__(self):
        super().__init__()
        self.sections, self.tags, self.urls, self.images, self.css, self._in_style = [], set(), [], [], "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        for name in ("src", "href", "srcset", "action", "data", "poster"):
            if name in attrs:
                self.urls.append((tag, name, attrs[name]))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style:
            self.css += data

    def handle_endtag(self, tag):
        self._in_style = False


def _parse(path):
    parser = ReportParser()
    parser.feed(path.read_text())
    return parser


def test_the_report_has_every_section_and_is_self_contained(study_dir, fake_audit):
    _, report = build_outputs(study_dir)
    page = _parse(report)
    # audit included: study_dir/audit/audit.json exists; no explain: the study was not explained
    assert page.sections == [s for s in SECTIONS if s != "explain"]
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base"}
    assert "url(" not in page.css and "@import" not in page.css
    for tag, attr, url in page.urls:  # links stay inside the page, images are inline PNGs
        assert url.startswith("#") if attr == "href" else url.startswith("data:image/png;base64,"), (tag, url[:60])
    # comparison 1 + curves 4 + timing 1 + confusion 4 + ROC 1 + reliability 1 + the audit's own 1
    assert len(page.images) == 13
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    html = report.read_text()
    assert "report test &lt;study&gt;" in html and "<study>" not in html  # text is escaped
    assert "stand-in verdict" in html
    for run in ("resnet18-frozen-seed0", "resnet34-finetune-seed0"):
        assert f"{run}/config.yaml" in html
    assert "Is the bigger backbone better beyond the confidence intervals?" in html
    assert "What does fine-tuning gain over the frozen backbone" in html


def test_without_an_audit_there_is_no_audit_section(study_dir, tmp_path, fake_audit):
    copy = tmp_path / "copy"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("audit"))
    (copy / "environment.json").unlink()
    _, report = build_outputs(copy)
    page = _parse(report)
    assert page.sections == [s for s in SECTIONS if s not in ("audit", "explain")]
    assert "captured when this report was built" in report.read_text()


def test_xferlab_report_rebuilds_everything_without_training(study_dir, monkeypatch, capsys, fake_audit):
    def no_training(*args, **kwargs):
        raise AssertionError("xferlab report must not train")

    monkeypatch.setattr(engine_run, "train", no_training)
    for name in ("report.html", "results.csv", "results.json"):
        (study_dir / name).unlink(missing_ok=True)
    assert main(["report", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert f"report: {study_dir / 'report.html'}" in out and "resnet34" in out
    assert all((study_dir / name).is_file() for name in ("report.html", "results.csv", "results.json"))


def test_xferlab_report_on_a_folder_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no finished runs" in err


def test_an_audit_that_cannot_be_rendered_is_noted_not_fatal(study_dir, tmp_path, monkeypatch):
    import sys

    copy = tmp_path / "copy"
    shutil.copytree(study_dir, copy)
    monkeypatch.setitem(sys.modules, "xferlab.report.audit", None)
    _, report = build_outputs(copy)
    assert "holds a split audit, but xferlab.audit cannot be imported" in report.read_text()
    assert _parse(report).sections == [s for s in SECTIONS if s != "explain"]


@pytest.mark.parametrize("missing", ["history.csv", "predictions.npz"])
def test_a_damaged_run_folder_is_a_clear_error(study_dir, tmp_path, missing, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(study_dir, copy)
    (copy / "runs" / "resnet18-frozen-seed0" / missing).unlink()
    assert main(["report", str(copy)]) == 2
    assert f"resnet18-frozen-seed0/{missing}: missing" in capsys.readouterr().err


def test_the_report_shows_calibration_and_operating_points(study_dir):
    from xferlab.report.calibration import render_calibration_section
    from xferlab.study import collect_results

    results = collect_results(study_dir)
    section = render_calibration_section(results)
    assert section.startswith('<section id="calibration">')
    record = results.records[0]
    cal = record.calibration["test"]
    assert f"<td>{cal['ece']:.3f}</td>" in section and "Guo et al. 2017" in section
    youden = record.operating_points[0]
    assert youden["rule"] == "youden" and f"<td>{youden['threshold']:.3f}</td>" in section
    assert "sensitivity 0.95" in section and 'alt="reliability diagrams"' in section


def test_xferlab_report_takes_a_run_folder(study_dir, tmp_path, capsys):
    """`xferlab report RUN`: RUN/report.html with a single run's sections, its flags as a study of one run shows
    them; nothing else is written."""
    import json

    run = tmp_path / "finetune-run"
    shutil.copytree(study_dir / "runs" / "resnet18-finetune-seed0", run)
    before = sorted(p.name for p in run.iterdir())
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == sorted({*before, "curves.png", "report.html"})  # curves if missing
    parsed = _parse(run / "report.html")
    assert parsed.sections == [s.id for s in SECTIONS.values() if s.in_run]
    assert not [u for u in parsed.urls if not u[2].startswith(("data:", "#"))]
    assert f"report: {run / 'report.html'}" in out and "Ranked by" not in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert ("! degenerate" in out) == metrics["degenerate"] and ("degenerate" in (run / "report.html").read_text()) \
        == metrics["degenerate"]


def test_a_study_whose_runs_all_diverged_still_reports(tmp_path, capsys):
    """No finished run: results.csv and results.json list the diverged runs, the report has its summary (with the
    reasons) and environment, and `xferlab report` exits 0 (rebuilding the outputs went well)."""
    from xferlab import artifacts
    from xferlab.config import DataConfig, TrainConfig, to_yaml

    for regime, lr in (("frozen", 1e6), ("finetune", 1e12)):
        run = tmp_path / "out" / "runs" / f"resnet18-{regime}-seed0"
        run.mkdir(parents=True)
        cfg = TrainConfig(data=DataConfig(path=tmp_path), regime=regime, lr=lr, weights="none")
        history = [{"epoch": 1, "train_loss": 1e9, "train_acc": 0.5, "val_loss": 1e9, "val_acc": 0.5,
                    "test_loss": 1e9, "test_acc": 0.5, "train_seconds": 1.0, "eval_seconds": 0.1}]
        artifacts.write_diverged_run(run, to_yaml(cfg), history, {"epoch": 1, "split": "train", "loss": 1e9,
                                                                 "rule": "far above chance", "lr": lr,
                                                                 "reason": f"epoch 1: train loss 1e+09 ({regime})"})
    assert main(["report", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "finetune  diverged" in out and "! resnet18-frozen-seed0 diverged, epoch 1: train loss 1e+09 (frozen)" in out
    without_results = [s.id for s in SECTIONS.values() if s.without_results and s.id != "audit"]
    assert _parse(tmp_path / "out" / "report.html").sections == without_results
    csv_text = (tmp_path / "out" / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("run,status,") and csv_text.count(",diverged,") == 2


def test_a_report_section_is_one_entry(legacy_report, monkeypatch):
    """docs/architecture.md: a section is its render function plus one Section entry; nothing else names it (the
    navigation, the order and which reports have it come from the entry)."""
    from xferlab.report import html
    from xferlab.report.render import render

    def dummy(results):
        return render("figures.html", sid="dummy", title="Dummy <section>", intro=f"{len(results.records)} run(s)",
                      figures=[], grid=False, message="text of the dummy section")

    monkeypatch.setitem(html.SECTIONS, "dummy", Section("dummy", "Dummy <section>", dummy, in_run=False))
    text = html.render_report(legacy_report[1])
    page = ReportParser()
    page.feed(text)
    assert page.sections[-2:] == ["environment", "dummy"]
    assert ("a", "href", "#dummy") in page.urls
    assert '<a href="#dummy">Dummy &lt;section&gt;</a>' in text and "text of the dummy section" in text
    assert "1 run(s)" in text

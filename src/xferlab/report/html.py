"""The study report: one self-contained report.html (CSS inline, figures as base64 PNG data URIs, no scripts, no
links out), built only from saved results, so it opens from a file anywhere and `xferlab report DIR` can rebuild it.
The HTML comes from Jinja2 templates (report/templates/, values escaped by autoescape; xferlab.report.render).

A section is one entry of SECTIONS (a Section: its id, title, render function, and whether a single run's report and
a report without results have it); render_report reads nothing else. Sections, in order: summary, answers, metrics,
comparison, curves, timing, confusion, roc, calibration, audit (when DIR/audit/audit.json exists), explain (when
DIR/explain/<run>/explain.json exist), environment. A single run's report (`xferlab report RUN`, results of kind
'run') leaves out the comparisons between runs, the audit and the explanations; runs that diverged are listed in the
summary, and a study all of whose runs diverged has only the summary, audit and environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from markupsafe import Markup

import xferlab.report.figures as figures
from xferlab import artifacts
from xferlab.artifacts import EVAL_SPLITS as SPLITS
from xferlab.evaluation.metrics import METRIC_TABLE, METRICS, roc_curves
from xferlab.evaluation.timing import format_seconds
from xferlab.report.calibration import render_calibration_section
from xferlab.report.explain import TITLE as EXPLAIN_TITLE
from xferlab.report.explain import render_explain_section
from xferlab.report.figures import figure_uri
from xferlab.report.render import Cell, render
from xferlab.study.answers import answer_questions
from xferlab.study.environment import capture_environment
from xferlab.study.results import StudyResults, bootstrap_method, timing
from xferlab.study.summary import (
    audit_sentence,
    diverged_by_configuration,
    diverged_label,
    diverged_lines,
    rank_label,
    ranked,
    ranking_note,
)

log = logging.getLogger(__name__)

METRIC_LABELS = {m.name: m.label for m in METRIC_TABLE}


@dataclass(frozen=True)
class Section:
    """One section of report.html: its HTML id, its title (heading and navigation), `render(results)` -> the whole
    `<section>` ('' when it has nothing to show), and whether a single run's report (`in_run`) and a report whose runs
    all diverged (`without_results`) have it."""

    id: str
    title: str
    render: Callable[[StudyResults], str]
    in_run: bool = True
    without_results: bool = False


def _figure(fig, alt: str, caption: str = "") -> dict:
    """A matplotlib figure (closed here) as the templates' figure: {uri, alt, caption}."""
    return {"uri": figure_uri(fig), "alt": alt, "caption": caption}


def _section(sid: str, template: str, intro: str = "", **context) -> str:
    """A section from its template, under the title its entry gives."""
    return render(template, sid=sid, title=SECTIONS[sid].title, intro=intro, **context)


def _value_ci(value: float | None, low: float | None = None, high: float | None = None, sd: float | None = None,
              n: int = 1) -> Cell | str:
    """A metric with its uncertainty on a second, smaller line: [low, high] (one run) or ± sd (n seeds)."""
    if value is None:
        return "n/a"
    if n > 1 and sd is not None:
        return Cell(f"{value:.3f}", f"± {sd:.3f} (n={n})")
    if low is None:
        return f"{value:.3f}"
    return Cell(f"{value:.3f}", f"[{low:.3f}, {high:.3f}]")


def _config_cell(config: dict, split: str, metric: str) -> Cell | str:
    stats = config.get(split, {}).get(metric)
    if not stats:
        return "n/a"
    low, high = config.get("ci", {}).get(split, {}).get(metric, (None, None))
    return _value_ci(stats["mean"], low, high, stats["sd"], stats["n"])


def _label(record) -> str:
    c = record.config
    return f"{c['backbone']} · {c['regime']} · seed {c.get('seed', 0)}"


def _summary(results: StudyResults) -> str:
    split, conf = results.primary_split, f"{100 * results.settings.confidence:.0f}%"
    configs = ranked(results)
    header = ["#", "backbone", "regime", "params (trainable)", "val accuracy", f"{split} accuracy",
              f"{split} AUROC", f"{split} balanced acc.", "training s", "s / epoch", "flags"]
    rows, classes = [], []
    diverged = diverged_by_configuration(results)
    for c in configs:
        t = c["timing"]
        marks = [m for m in ("degenerate" if c["flag_text"] else "", diverged_label(c, diverged)) if m]
        rows.append([rank_label(c), c["backbone"], c["regime"], _params(c["params"], c["trainable_params"]),
                     _config_cell(c, "val", "accuracy"),
                     *(_config_cell(c, split, m) for m in ("accuracy", "auroc", "balanced_accuracy")),
                     format_seconds(t["train_seconds"]["mean"]), format_seconds(t["seconds_per_epoch"]["mean"]),
                     Cell("; ".join(marks), cls="flag") if marks else ""])
        classes.append("degenerate" if marks else "best" if c["rank"] == 1 else "")
    ranked_keys = {(c["backbone"], c["regime"]) for c in configs}
    for (backbone, regime), runs in diverged.items():
        if (backbone, regime) not in ranked_keys:  # every run of it diverged: a row without numbers
            rows.append(["-", backbone, regime, "n/a", *["diverged"] * 4, "", "",
                         Cell(f"{len(runs)} diverged", cls="flag")])
            classes.append("degenerate")
    seeds = sorted({s for c in configs for s in c["seeds"]})
    ci = f"value [{conf} CI: {bootstrap_method(results)}, {results.settings.resamples} resamples]"
    spread = ci if not seeds else f"{ci}, seed {seeds[0]}" if len(seeds) == 1 else \
        f"mean ± sd across seeds {', '.join(map(str, seeds))} ({ci} for a single run)"
    ranking = "" if results.kind == "run" else f"{ranking_note(results)} "
    intro = (f"{ranking}{spread}. Each run's best epoch was chosen on val accuracy; test never chooses anything.")
    flagged = [(f"{c['backbone']} · {c['regime']}", c["flag_text"]) for c in configs if c["flag_text"]]
    return _section("summary", "summary.html", intro, sentence=audit_sentence(results), header=header, rows=rows,
                    row_classes=classes, flagged=flagged, diverged=diverged_lines(results) if results.diverged else [],
                    missing=results.missing)


def _params(total: int | None, trainable: int | None) -> Cell | str:
    """Parameters of the whole model (backbone + head) and, below, those the regime trains."""
    if total is None:
        return "n/a"
    return Cell(f"{total / 1e6:.2f}M total", f"{(trainable or 0) / 1e6:.3f}M trained")


def _answers(results: StudyResults) -> str:
    intro = ("Computed from the numbers below. Differences between two runs are paired: both are scored on the same "
             "bootstrap resamples of the same cases.")
    return _section("answers", "answers.html", intro, answers=answer_questions(results))


def _ci(metric: dict) -> Cell | str:
    return _value_ci(metric["value"], metric["low"], metric["high"])


def _metrics(results: StudyResults) -> str:
    tables = []
    for split in SPLITS:
        records = [r for r in results.records if split in r.evaluation]
        if not records:
            continue
        rows = [[r.name, r.evaluation[split]["n"], *(_ci(r.evaluation[split]["metrics"][m]) for m in METRICS)]
                for r in records]
        tables.append({"heading": f"{split} (best epoch)", "header": ["run", "n", *(METRIC_LABELS[m] for m in METRICS)],
                       "rows": rows})
    multi = [c for c in ranked(results) if len(c["runs"]) > 1]
    if multi:
        for split in SPLITS:
            rows = [[f"{c['backbone']} · {c['regime']}", len(c["runs"]),
                     *(_config_cell(c, split, m) for m in METRICS)] for c in multi if split in c]
            if rows:
                tables.append({"heading": f"{split}: mean ± sd across seeds",
                               "header": ["configuration", "seeds", *(METRIC_LABELS[m] for m in METRICS)],
                               "rows": rows})
    k = len(results.records[0].class_names)
    positive = results.records[0].class_names[1] if k == 2 else None
    how = (f"binary: '{positive}' is the positive class" if positive else
           "multi-class: macro averages, one-vs-rest AUROC")
    intro = (f"value [{100 * results.settings.confidence:.0f}% CI]: {bootstrap_method(results)}, "
             f"{results.settings.resamples} resamples, seed {results.settings.seed}; {how}.{_patients_note(results)}"
             f"{_excluded_note(results)}")
    return _section("metrics", "tables.html", intro, tables=tables)


def _patients_note(results: StudyResults) -> str:
    """How many patients each split's intervals resampled, when runs saved patient ids."""
    counts = {s: ev["patients"] for r in results.records for s, ev in r.evaluation.items() if ev.get("patients")}
    if not counts:
        return ""
    per_split = next((r.metrics["patients"] for r in results.records if r.metrics.get("patients")), {})
    shown = "; ".join(f"{s} {c['patients']} patients, {c['images']} images, median {c['median']:g}, max {c['max']}, "
                      f"{100 * c['share_multi']:.0f} % with more than one" for s, c in per_split.items())
    return " Patients resampled: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + \
        " (a patient drawn twice counts all its images twice; docs/patients.md)." + \
        (f" Images per patient: {shown}." if shown else "")


def _excluded_note(results: StudyResults) -> str:
    """The images left out by data.exclude (--exclude), as the runs recorded them (metrics.json's `excluded`)."""
    excluded = {(e["file"], e["count"]) for r in results.records if (e := r.metrics.get("excluded"))}
    if not excluded:
        return ""
    named = "; ".join(f"{n} images excluded by {file}" for file, n in sorted(excluded))
    return (f" Data: {named}, before the splits were made (data.exclude); these numbers are of the remaining images, "
            "not an accuracy on clean labels.")


def _figures_section(sid: str, figures_: list[dict], intro: str = "", grid: bool = False, message: str = "",
                     **table) -> str:
    return _section(sid, "figures.html", intro, figures=figures_, grid=grid, message=message, **table)


def _comparison(results: StudyResults) -> str:
    runs = [(r.config["backbone"], r.config["regime"], r.history) for r in results.records]
    fig = _figure(figures.comparison_figure(runs), "val accuracy and loss of every run")
    return _figures_section("comparison", [fig], "Every configuration's val accuracy and loss per epoch on shared "
                                                 "axes (the reference's Fig. 2).")


def _curves(results: StudyResults) -> str:
    items = [_figure(figures.curves_figure(r.history, title=_label(r)), f"curves of {r.name}", r.name)
             for r in results.records]
    return _figures_section("curves", items, "Train, val and test accuracy and loss per epoch; the dotted line is "
                                             "the epoch chosen on val.", grid=True)


def _timing(results: StudyResults) -> str:
    runs = [(r.name, timing(r)) for r in results.records]
    fig = _figure(figures.timing_figure(runs), "timing per run")
    rows = []
    for r, (_, t) in zip(results.records, runs):
        m = r.metrics
        rows.append([r.name, r.metrics.get("device", ""), format_seconds(t["feature_seconds"]),
                     format_seconds(t["fit_seconds"]), format_seconds(t["train_seconds"]),
                     format_seconds(t["seconds_per_epoch"]), format_seconds(t["eval_seconds"]),
                     _num(t["total_seconds"], 1), _num(t["inference_images_per_s"], 0),
                     _params(m.get("params"), m.get("trainable_params"))])
    header = ["run", "device", "features s", "loop s", "training s", "s / epoch", "evaluation s", "run total s",
              "inference img/s", "params (trainable)"]
    intro = ("Training = feature caching (fixed backbones compute their features once) + the training loop; "
             "evaluation = val and test passes of every epoch; inference img/s measured after warm-up, "
             "synchronised on GPU.")
    return _figures_section("timing", [fig], intro, table_header=header, table_rows=rows)


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _confusion(results: StudyResults) -> str:
    items = []
    for r in results.records:
        matrices = {s: r.evaluation[s]["confusion_matrix"] for s in SPLITS if s in r.evaluation}
        items.append(_figure(figures.confusion_figure(matrices, r.class_names, title=_label(r)),
                             f"confusion matrices of {r.name}"))
    return _figures_section("confusion", items, "Rows: true class; columns: predicted class (argmax), at the best "
                                                "epoch.", grid=True)


def _roc(results: StudyResults) -> str:
    names = results.records[0].class_names
    if len(names) == 2:
        panels = []
        for split in SPLITS:
            curves = [(r.name, *roc_curves(*r.predictions[split]).get(1, (None, None, None)))
                      for r in results.records if split in r.predictions]
            curves = [c for c in curves if c[1] is not None]
            if curves:
                panels.append((f"{split} ({names[1]} positive)", curves))
    else:
        split = results.primary_split
        panels = [(f"{r.name} · {split}",
                   [(names[c], *curve) for c, curve in roc_curves(*r.predictions[split]).items()])
                  for r in results.records]
    if not panels:
        return _figures_section("roc", [], message="No split has both classes, so there is no ROC curve.")
    intro = "Binary: one curve per run; multi-class: one-vs-rest curve per class."
    return _figures_section("roc", [_figure(figures.roc_figure(panels), "ROC curves")], intro)


def _audit(results: StudyResults) -> str:
    audit_dir = results.out / artifacts.AUDIT
    if not artifacts.is_finished_audit(audit_dir):
        return ""
    try:  # imported here: the audit's modules are heavier than a report without an audit needs
        from xferlab.report.audit import render_audit_section
    except ImportError as err:
        log.warning("audit results exist but xferlab.audit cannot be imported: %s", err)
        return _figures_section("audit", [], message=f"{audit_dir} holds a split audit, but xferlab.audit cannot be "
                                                     f"imported to show it ({err}).")
    return render_audit_section(audit_dir)


def _explain(results: StudyResults) -> str:
    """The "Where the models look" section when the study has explanations (DIR/explain, `explain: true`)."""
    return render_explain_section(results.out)


def _environment(results: StudyResults) -> str:
    env = results.environment
    note = "captured when the study last ran"
    if env is None:
        env = capture_environment()
        note = "captured when this report was built (a run folder keeps no environment record)" \
            if results.kind == "run" else "no environment.json in the study folder: captured when this report was built"
    rows = [["python", env["python"]], ["platform", env["platform"]], ["CPU", f"{env['cpu']} ({env['cpu_count']} "
            f"logical cores, torch threads {env['torch_threads']})"],
            ["GPU", ", ".join(env["gpus"]) or "none visible"], ["CUDA (torch build)", env["cuda_version"] or "none"],
            ["run devices", ", ".join(sorted({str(r.metrics.get('device')) for r in results.records}))],
            ["run torch threads", ", ".join(sorted({str(r.config.get("num_threads") or "torch default")
                                                    for r in results.records}))],
            ["captured", env["captured_at"]]]
    packages = [[name, version or "not installed"] for name, version in env["packages"].items()]
    seeds = [["training seeds", ", ".join(sorted({str(r.config.get("seed")) for r in results.records}))],
             ["data seed", ", ".join(sorted({str((r.config.get("data") or {}).get("seed")) for r in results.records}))],
             ["bootstrap seed", results.settings.seed]]
    if results.study is not None and results.study.audit is not None:
        seeds.append(["audit seed", results.study.audit.seed])
    configs = []
    study_yaml = artifacts.study_yaml_path(results.out)
    if study_yaml is not None:
        configs.append(("study.yaml (resolved)", study_yaml.read_text()))
    configs += [(f"{r.name}/config.yaml", artifacts.read_config_text(r.path)) for r in results.records]
    return _section("environment", "environment.html", note, rows=rows, packages=packages, seeds=seeds,
                    configs=configs)


SECTIONS: dict[str, Section] = {s.id: s for s in (
    Section("summary", "Summary", _summary, without_results=True),
    Section("answers", "Answers", _answers, in_run=False),
    Section("metrics", "All metrics", _metrics),
    Section("comparison", "Validation curves", _comparison, in_run=False),
    Section("curves", "Per-run curves", _curves),
    Section("timing", "Timing", _timing),
    Section("confusion", "Confusion matrices", _confusion),
    Section("roc", "ROC curves", _roc),
    Section("calibration", "Calibration", render_calibration_section),
    Section("audit", "Split audit", _audit, in_run=False, without_results=True),  # a study folder's, not a run's
    Section("explain", EXPLAIN_TITLE, _explain, in_run=False),
    Section("environment", "Environment", _environment, without_results=True),
)}


def report_sections(results: StudyResults) -> list[Section]:
    """The sections this report has: a study's, a single run's, or (every run diverged) those without results."""
    if not results.records:
        return [s for s in SECTIONS.values() if s.without_results]
    return [s for s in SECTIONS.values() if s.in_run or results.kind != "run"]


def render_report(results: StudyResults) -> str:
    """The whole report as one HTML string."""
    title = results.study.name if results.study else results.out.name
    configs = [r.config for r in results.records] + [r.config for r in results.diverged]
    data = configs[0].get("data", {}) if configs else {}
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rendered = [(s, s.render(results)) for s in report_sections(results)]
    # a section's render gives HTML (its own templates escaped the values in it), kept as is here
    sections = [{"id": s.id, "title": s.title, "html": Markup(html)} for s, html in rendered if html]
    what = "run" if results.kind == "run" else f"{len(results.records)} runs" + \
        (f" ({len(results.diverged)} more diverged)" if results.diverged else "")
    return render("page.html", title=title, what=what, data_path=str(data.get("path", "")),
                  data_format=str(data.get("format", "")), built=built, sections=sections) + "\n"


def write_report(results: StudyResults) -> Path:
    """Write DIR/report.html atomically and return its path."""
    return artifacts.write_report_html(results.out, render_report(results))

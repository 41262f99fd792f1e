"""The study report: one self-contained report.html (CSS inline, figures as base64 PNG data URIs, no scripts, no
links out), built only from saved results, so it opens from a file anywhere and `xferlab report DIR` can rebuild it.

Sections (HTML ids): summary, answers, metrics, comparison, curves, timing, confusion, roc, audit (when
DIR/audit/audit.json exists), explain (when DIR/explain/<run>/explain.json exist), environment. A single run's report
(`xferlab report RUN`, results of kind 'run') has RUN_SECTIONS; runs that diverged are listed in the summary, and a
study all of whose runs diverged has only the summary, audit and environment.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import xferlab.report.figures as figures
from xferlab import artifacts
from xferlab.artifacts import EVAL_SPLITS as SPLITS
from xferlab.artifacts import REPORT_HTML  # noqa: F401  (re-exported)
from xferlab.evaluation.metrics import METRIC_TABLE, METRICS, roc_curves
from xferlab.evaluation.timing import format_seconds
from xferlab.report.calibration import render_calibration_section
from xferlab.report.explain import render_explain_section
from xferlab.report.figures import png_uri  # noqa: F401  (re-exported)
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

SECTIONS = ("summary", "answers", "metrics", "comparison", "curves", "timing", "confusion", "roc", "calibration",
            "audit", "explain", "environment")
# A single run: no comparison between runs, no audit or explanations (those belong to a study folder).
RUN_SECTIONS = ("summary", "metrics", "curves", "timing", "confusion", "roc", "calibration", "environment")
NO_RESULTS_SECTIONS = ("summary", "audit", "environment")  # every run diverged: nothing to plot or compare
TITLES = {"summary": "Summary", "answers": "Answers", "metrics": "All metrics", "comparison": "Validation curves",
          "curves": "Per-run curves", "timing": "Timing", "confusion": "Confusion matrices", "roc": "ROC curves",
          "calibration": "Calibration", "audit": "Split audit", "explain": "Where the models look",
          "environment": "Environment"}
METRIC_LABELS = {m.name: m.label for m in METRIC_TABLE}

STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1em 2em 4em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav { position: sticky; top: 0; background: #fff; padding: 0.4em 0; border-bottom: 1px solid #eee; z-index: 1; }
nav a { margin-right: 1em; color: #2457a6; text-decoration: none; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; } th.left, td.left, table.kv td { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; } .ci { color: #666; font-size: 0.86em; }
tr.best td { background: #eef8f0; font-weight: 600; }
tr.degenerate td { background: #fdf0ee; }
.flag { color: #b3261e; font-weight: 600; }
.verdict-banner { border-left: 6px solid #b3261e; background: #fdf0ee; padding: 0.6em 1em; font-weight: 600; }
img { max-width: 100%; height: auto; }
figure { margin: 0.6em 0 1.4em; } figcaption { color: #555; font-size: 0.88em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 0.8em 1.4em; }
.muted { color: #666; font-size: 0.88em; }
.answer { border-left: 5px solid #2457a6; background: #f3f6fb; padding: 0.5em 1em; margin: 0.8em 0; }
.answer h3 { margin: 0.1em 0 0.3em; font-size: 1em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.82em; }
details { margin: 0.3em 0; }
</style>"""


def figure_uri(fig) -> str:
    """A matplotlib figure as a data: URI (PNG, base64); the figure is closed."""
    return png_uri(figures.to_png(fig))


def _figure(fig, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{escape(alt)}" src="{figure_uri(fig)}">{cap}</figure>'


class Html(str):
    """Text that is already HTML (built here from escaped parts); _table does not escape it again."""


def _cell(value) -> str:
    return value if isinstance(value, Html) else escape(str(value))


def _table(header: list[str], rows: list[list], row_classes: list[str] | None = None, cls: str = "",
           text_columns: int = 1) -> str:
    """An HTML table in a horizontally scrolling box (wide tables never widen the page); cells are escaped here.
    The first `text_columns` columns are left-aligned, the rest (numbers) right-aligned."""

    def align(i: int) -> str:
        return ' class="left"' if i < text_columns else ""

    head = "".join(f"<th{align(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        f'<tr class="{rc}">' + "".join(f"<td{align(i)}>{_cell(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row, rc in zip(rows, row_classes or [""] * len(rows)))
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _value_ci(value: float | None, low: float | None = None, high: float | None = None, sd: float | None = None,
              n: int = 1) -> Html:
    """A metric with its uncertainty on a second, smaller line: [low, high] (one run) or ± sd (n seeds)."""
    if value is None:
        return Html("n/a")
    if n > 1 and sd is not None:
        return Html(f'{value:.3f}<br><span class="ci">± {sd:.3f} (n={n})</span>')
    if low is None:
        return Html(f"{value:.3f}")
    return Html(f'{value:.3f}<br><span class="ci">[{low:.3f}, {high:.3f}]</span>')


def _config_cell(config: dict, split: str, metric: str) -> Html:
    stats = config.get(split, {}).get(metric)
    if not stats:
        return Html("n/a")
    low, high = config.get("ci", {}).get(split, {}).get(metric, (None, None))
    return _value_ci(stats["mean"], low, high, stats["sd"], stats["n"])


def _section(sid: str, body: str, intro: str = "") -> str:
    note = f'<p class="muted">{escape(intro)}</p>' if intro else ""
    return f'<section id="{sid}"><h2>{escape(TITLES[sid])}</h2>{note}{body}</section>'


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
        flags = Html(f'<span class="flag">{escape("; ".join(marks))}</span>') if marks else ""
        rows.append([rank_label(c), c["backbone"], c["regime"], _params(c["params"], c["trainable_params"]),
                     _config_cell(c, "val", "accuracy"),
                     *(_config_cell(c, split, m) for m in ("accuracy", "auroc", "balanced_accuracy")),
                     format_seconds(t["train_seconds"]["mean"]), format_seconds(t["seconds_per_epoch"]["mean"]),
                     flags])
        classes.append("degenerate" if marks else "best" if c["rank"] == 1 else "")
    ranked_keys = {(c["backbone"], c["regime"]) for c in configs}
    for (backbone, regime), runs in diverged.items():
        if (backbone, regime) not in ranked_keys:  # every run of it diverged: a row without numbers
            rows.append(["-", backbone, regime, "n/a", *["diverged"] * 4, "", "",
                         Html(f'<span class="flag">{len(runs)} diverged</span>')])
            classes.append("degenerate")
    seeds = sorted({s for c in configs for s in c["seeds"]})
    ci = f"value [{conf} CI: {bootstrap_method(results)}, {results.settings.resamples} resamples]"
    spread = ci if not seeds else f"{ci}, seed {seeds[0]}" if len(seeds) == 1 else \
        f"mean ± sd across seeds {', '.join(map(str, seeds))} ({ci} for a single run)"
    ranking = "" if results.kind == "run" else f"{ranking_note(results)} "
    intro = (f"{ranking}{spread}. Each run's best epoch was chosen on val accuracy; test never chooses anything.")
    body = _table(header, rows, classes, text_columns=3)
    flagged = [f"<li><strong>{escape(c['backbone'])} · {escape(c['regime'])}</strong>: {escape(c['flag_text'])}</li>"
               for c in configs if c["flag_text"]]
    if flagged:
        body += ('<p class="flag">Degenerate runs (do not read their accuracy as a result):</p>'
                 f'<ul>{"".join(flagged)}</ul>')
    if results.diverged:
        items = "".join(f"<li>{escape(line)}</li>" for line in diverged_lines(results))
        body += ('<p class="flag">Runs whose losses diverged (training stopped; no results, not ranked; lower the '
                 f'learning rate and rerun the study with --retry-diverged):</p><ul>{items}</ul>')

    sentence = audit_sentence(results)
    if sentence:
        body = f'<p class="verdict-banner">{escape(sentence)} <a href="#audit">See the split audit.</a></p>' + body
    if results.missing:
        body += f'<p class="muted">Not run yet (no run folder): {escape(", ".join(results.missing))}.</p>'
    return _section("summary", body, intro)


def _params(total: int | None, trainable: int | None) -> Html:
    """Parameters of the whole model (backbone + head) and, below, those the regime trains."""
    if total is None:
        return Html("n/a")
    return Html(f'{total / 1e6:.2f}M total<br><span class="ci">{(trainable or 0) / 1e6:.3f}M trained</span>')


def _answers(results: StudyResults) -> str:
    items = []
    for a in answer_questions(results):
        details = "".join(f"<li>{escape(d)}</li>" for d in a.details)
        items.append(f'<div class="answer"><h3>{escape(a.question)}</h3><p>{escape(a.headline)}</p>'
                     f"<ul>{details}</ul></div>")
    body = "".join(items) or "<p>These questions need at least two backbones or two regimes.</p>"
    intro = ("Computed from the numbers below. Differences between two runs are paired: both are scored on the same "
             "bootstrap resamples of the same cases.")
    return _section("answers", body, intro)


def _ci(metric: dict) -> Html:
    return _value_ci(metric["value"], metric["low"], metric["high"])


def _metrics(results: StudyResults) -> str:
    parts = []
    for split in SPLITS:
        records = [r for r in results.records if split in r.evaluation]
        if not records:
            continue
        rows = [[r.name, r.evaluation[split]["n"], *(_ci(r.evaluation[split]["metrics"][m]) for m in METRICS)]
                for r in records]
        header = ["run", "n", *(METRIC_LABELS[m] for m in METRICS)]
        parts.append(f"<h3>{split} (best epoch)</h3>" + _table(header, rows))
    multi = [c for c in ranked(results) if len(c["runs"]) > 1]
    if multi:
        for split in SPLITS:
            rows = [[f"{c['backbone']} · {c['regime']}", len(c["runs"]),
                     *(_config_cell(c, split, m) for m in METRICS)] for c in multi if split in c]
            if rows:
                parts.append(f"<h3>{split}: mean ± sd across seeds</h3>" +
                             _table(["configuration", "seeds", *(METRIC_LABELS[m] for m in METRICS)], rows))
    k = len(results.records[0].class_names)
    positive = results.records[0].class_names[1] if k == 2 else None
    how = (f"binary: '{positive}' is the positive class" if positive else
           "multi-class: macro averages, one-vs-rest AUROC")
    intro = (f"value [{100 * results.settings.confidence:.0f}% CI]: {bootstrap_method(results)}, "
             f"{results.settings.resamples} resamples, seed {results.settings.seed}; {how}.{_patients_note(results)}")
    return _section("metrics", "".join(parts), intro)


def _patients_note(results: StudyResults) -> str:
    """How many patients each split's intervals resampled, when runs saved patient ids."""
    counts = {s: ev["patients"] for r in results.records for s, ev in r.evaluation.items() if ev.get("patients")}
    if not counts:
        return ""
    return " Patients resampled: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + \
        " (a patient drawn twice counts all its images twice; docs/patients.md)."


def _comparison(results: StudyResults) -> str:
    runs = [(r.config["backbone"], r.config["regime"], r.history) for r in results.records]
    fig = figures.comparison_figure(runs)
    return _section("comparison", _figure(fig, "val accuracy and loss of every run"),
                    "Every configuration's val accuracy and loss per epoch on shared axes (the reference's Fig. 2).")


def _curves(results: StudyResults) -> str:
    items = [_figure(figures.curves_figure(r.history, title=_label(r)), f"curves of {r.name}", r.name)
             for r in results.records]
    return _section("curves", f'<div class="grid">{"".join(items)}</div>',
                    "Train, val and test accuracy and loss per epoch; the dotted line is the epoch chosen on val.")


def _timing(results: StudyResults) -> str:
    runs = [(r.name, timing(r)) for r in results.records]
    fig = figures.timing_figure(runs)
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
    return _section("timing", _figure(fig, "timing per run") + _table(header, rows, text_columns=2), intro)


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _confusion(results: StudyResults) -> str:
    items = []
    for r in results.records:
        matrices = {s: r.evaluation[s]["confusion_matrix"] for s in SPLITS if s in r.evaluation}
        items.append(_figure(figures.confusion_figure(matrices, r.class_names, title=_label(r)),
                             f"confusion matrices of {r.name}"))
    return _section("confusion", f'<div class="grid">{"".join(items)}</div>',
                    "Rows: true class; columns: predicted class (argmax), at the best epoch.")


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
        return _section("roc", "<p>No split has both classes, so there is no ROC curve.</p>")
    intro = "Binary: one curve per run; multi-class: one-vs-rest curve per class."
    return _section("roc", _figure(figures.roc_figure(panels), "ROC curves"), intro)


def _calibration(results: StudyResults) -> str:
    return render_calibration_section(results, _table, _figure)


def _audit(results: StudyResults) -> str:
    audit_dir = results.out / artifacts.AUDIT
    if not artifacts.is_finished_audit(audit_dir):
        return ""
    try:  # imported here: the audit's modules are heavier than a report without an audit needs
        from xferlab.report.audit import render_audit_section
    except ImportError as err:
        log.warning("audit results exist but xferlab.audit cannot be imported: %s", err)
        return _section("audit", f"<p>{escape(str(audit_dir))} holds a split audit, but xferlab.audit cannot be "
                                 f"imported to show it ({escape(str(err))}).</p>")
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
        configs.append(f"<details><summary>study.yaml (resolved)</summary><pre>{escape(study_yaml.read_text())}"
                       "</pre></details>")
    for r in results.records:
        text = artifacts.read_config_text(r.path)
        configs.append(f"<details><summary>{escape(r.name)}/config.yaml</summary><pre>{escape(text)}</pre></details>")
    body = (_table(["", "value"], rows, cls="kv") + "<h3>Packages</h3>" +
            _table(["package", "version"], packages, cls="kv") + "<h3>Seeds</h3>" +
            _table(["", "value"], seeds, cls="kv") + "<h3>Resolved configs</h3>" + "".join(configs))
    return _section("environment", body, note)


RENDERERS = {"summary": _summary, "answers": _answers, "metrics": _metrics, "comparison": _comparison,
             "curves": _curves, "timing": _timing, "confusion": _confusion, "roc": _roc, "calibration": _calibration,
             "audit": _audit, "explain": _explain, "environment": _environment}


def report_sections(results: StudyResults) -> tuple[str, ...]:
    """The sections this report has: a study's, a single run's, or (every run diverged) those without results."""
    if not results.records:
        return NO_RESULTS_SECTIONS
    return RUN_SECTIONS if results.kind == "run" else SECTIONS


def render_report(results: StudyResults) -> str:
    """The whole report as one HTML string."""
    title = results.study.name if results.study else results.out.name
    configs = [r.config for r in results.records] + [r.config for r in results.diverged]
    data = configs[0].get("data", {}) if configs else {}
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [RENDERERS[sid](results) for sid in report_sections(results)]
    present = [s for s in SECTIONS if f'id="{s}"' in "".join(sections)]
    nav = "".join(f'<a href="#{s}">{escape(TITLES[s])}</a>' for s in present)
    what = "run" if results.kind == "run" else f"{len(results.records)} runs" + \
        (f" ({len(results.diverged)} more diverged)" if results.diverged else "")
    header = (f"<h1>{escape(title)}</h1><p class=\"muted\">{what} · data "
              f"{escape(str(data.get('path', '')))} ({escape(str(data.get('format', '')))}) · built {built} by xferlab"
              "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)} · xferlab report</title>{STYLE}</head><body>{header}<nav>{nav}</nav>"
            + "\n".join(s for s in sections if s) + "</body></html>\n")


def write_report(results: StudyResults) -> Path:
    """Write DIR/report.html atomically and return its path."""
    return artifacts.write_report_html(results.out, render_report(results))

"""The reference study's questions answered in words, computed from a study's results.

1. Is the bigger backbone better beyond the confidence intervals? (largest vs smallest backbone by parameters, per
   regime, paired bootstrap CI of the accuracy difference on the same cases)
2. What does fine-tuning gain over the frozen backbone, and what does it cost in time? (per backbone)
3. Does the test split agree with val? (val–test accuracy gap and whether their CIs overlap)

Each answer is a headline plus detail sentences; every number in them comes from StudyResults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xferlab import artifacts
from xferlab.evaluation.bootstrap import paired_difference
from xferlab.evaluation.timing import format_seconds
from xferlab.study.results import RunRecord, StudyResults, timing

METRIC = "accuracy"  # the reference study's metric; the report's tables give all the others


@dataclass
class Answer:
    key: str  # backbone_size, finetune_gain or val_test_gap
    question: str
    headline: str
    details: list[str] = field(default_factory=list)


def answer_questions(results: StudyResults) -> list[Answer]:
    answers = [_bigger_backbone(results), _finetune_gain(results), _val_test_gap(results)]
    return [a for a in answers if a is not None]


def when(regime: str) -> str:
    """A regime as the end of 'better when ...': 'frozen', 'fine-tuned', 'frozen with AdaBN statistics', ..."""
    if regime == "finetune":
        return "fine-tuned"
    if regime == "adabn":
        return "frozen with AdaBN statistics"
    if regime.startswith("partial:"):
        k = regime.split(":", 1)[1]
        return f"fine-tuned in its last {k} stage{'s' if k != '1' else ''}"
    return regime


def training_name(regime: str) -> str:
    """What a regime does beyond the frozen backbone, named as what it is (AdaBN re-estimates BatchNorm statistics;
    it does not fine-tune)."""
    if regime == "adabn":
        return "AdaBN (BatchNorm statistics re-estimated on train, weights frozen)"
    if regime.startswith("partial:"):
        return f"partial fine-tuning ({regime})"
    return "fine-tuning" if regime == "finetune" else regime


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def _points(x: float) -> str:
    return f"{_signed(x)} points"


def _by_cell(records: list[RunRecord]) -> dict[tuple[str, str, int], RunRecord]:
    return {(r.config["backbone"], r.config["regime"], r.config.get("seed", 0)): r for r in records}


def _compare(results: StudyResults, a: RunRecord, b: RunRecord) -> dict | None:
    """Paired bootstrap difference a − b of METRIC on the primary split (resampling patients when the runs saved
    patient ids); None if the cases differ."""
    split = results.primary_split
    (ya, pa), (yb, pb) = a.predictions[split], b.predictions[split]
    if len(ya) != len(yb) or (ya != yb).any():
        return None
    groups = a.groups.get(split, b.groups.get(split))  # the same cases: either run's patient ids
    diff = paired_difference(ya, pa, pb, groups, **results.settings.as_kwargs())
    return diff[METRIC] if diff else None


def _difference_text(results: StudyResults, pairs: list[tuple[RunRecord, RunRecord]]) -> tuple[str, int, int]:
    """'+3.1 points (95% CI +0.4 to +5.8)' per seed pair; also how many pairs are beyond the CI and how many
    have a CI at all."""
    conf = f"{100 * results.settings.confidence:.0f}%"
    parts, beyond, with_ci = [], 0, 0
    for a, b in pairs:
        d = _compare(results, a, b)
        if d is None:
            continue
        with_ci += 1
        excludes_zero = d["low"] > 0 or d["high"] < 0
        beyond += excludes_zero
        seed = f"seed {a.config.get('seed')}: " if len(pairs) > 1 else ""
        parts.append(f"{seed}{_points(d['value'])} ({conf} CI {_signed(d['low'])} to {_signed(d['high'])})")
    return "; ".join(parts), beyond, with_ci


def _mean_metric(runs: list[RunRecord], split: str) -> float:
    values = [r.evaluation[split]["metrics"][METRIC]["value"] for r in runs]
    return sum(values) / len(values)


def _paired(results: StudyResults, a_key: tuple[str, str], b_key: tuple[str, str]) -> list[tuple[RunRecord, RunRecord]]:
    cells = _by_cell(results.records)
    return [(cells[(*a_key, s)], cells[(*b_key, s)]) for (bb, rr, s) in sorted(cells)
            if (bb, rr) == a_key and (*b_key, s) in cells]


def _bigger_backbone(results: StudyResults) -> Answer | None:
    question = "Is the bigger backbone better beyond the confidence intervals?"
    params = {r.config["backbone"]: r.metrics.get("params") or 0 for r in results.records}
    if len(params) < 2:
        return None
    small, big = min(params, key=params.get), max(params, key=params.get)
    split = results.primary_split
    details, verdicts = [], []
    for regime in dict.fromkeys(r.config["regime"] for r in results.records):
        pairs = _paired(results, (big, regime), (small, regime))
        if not pairs:
            continue
        text, beyond, with_ci = _difference_text(results, pairs)
        acc_big, acc_small = _mean_metric([a for a, _ in pairs], split), _mean_metric([b for _, b in pairs], split)
        verdict = "beyond" if with_ci and beyond == with_ci else "not beyond" if beyond == 0 else "partly beyond"
        verdicts.append((regime, verdict, acc_big - acc_small))
        details.append(f"{regime}: {big} {_pct(acc_big)} vs {small} {_pct(acc_small)} {split} {METRIC}; "
                       f"difference {text or 'n/a (different cases)'} — {verdict} the uncertainty.")
    if not verdicts:
        return None
    better = [r for r, v, d in verdicts if v == "beyond" and d > 0]
    worse = [r for r, v, d in verdicts if v == "beyond" and d < 0]
    head = (f"{big} ({params[big] / 1e6:.1f}M parameters in total) vs {small} ({params[small] / 1e6:.1f}M): ")
    phrase = lambda regimes: " or ".join(when(r) for r in regimes)  # noqa: E731
    if better and not worse:
        head += f"the bigger backbone is better beyond the CI when {phrase(better)}"
        rest = [r for r, _, _ in verdicts if r not in better]
        head += f", not when {phrase(rest)}." if rest else "."
    elif worse and not better:
        head += f"the bigger backbone is worse beyond the CI when {phrase(worse)}."
    elif not better and not worse:
        head += "no difference beyond the confidence intervals in any regime."
    else:
        head += f"the bigger backbone is better beyond the CI when {phrase(better)}, worse when {phrase(worse)}."
    return Answer("backbone_size", question, head, details)


def _finetune_gain(results: StudyResults) -> Answer | None:
    regimes = dict.fromkeys(r.config["regime"] for r in results.records)
    question = "What does fine-tuning gain over the frozen backbone, and what does it cost in time?"
    if "adabn" in regimes:  # AdaBN is not fine-tuning: the question names it for what it is
        question = ("What do fine-tuning and AdaBN (re-estimated BatchNorm statistics) gain over the frozen backbone, "
                    "and what do they cost in time?")
    if "frozen" not in regimes or len(regimes) < 2:
        return None
    split = results.primary_split
    details, gains = [], []
    for other in (r for r in regimes if r != "frozen"):
        for backbone in dict.fromkeys(r.config["backbone"] for r in results.records):
            pairs = _paired(results, (backbone, other), (backbone, "frozen"))
            if not pairs:
                continue
            text, beyond, with_ci = _difference_text(results, pairs)
            t_other = sum(timing(a)["train_seconds"] for a, _ in pairs) / len(pairs)
            t_frozen = sum(timing(b)["train_seconds"] for _, b in pairs) / len(pairs)
            gain = _mean_metric([a for a, _ in pairs], split) - _mean_metric([b for _, b in pairs], split)
            sure = "beyond the uncertainty" if with_ci and beyond == with_ci else "within the uncertainty" \
                if beyond == 0 else "beyond the uncertainty for some seeds"
            ratio = f"{t_other / t_frozen:.1f}×" if t_frozen > 0 else "n/a"
            gains.append((backbone, other, gain, sure, ratio))
            details.append(f"{backbone}: {training_name(other)} vs frozen, {split} {METRIC} {text} — {sure}; "
                           "training time "
                           f"{format_seconds(t_other)} s vs {format_seconds(t_frozen)} s ({ratio}).")
    if not gains:
        return None
    head = "; ".join(f"{b}: {training_name(o)} {_points(g)} {split} {METRIC} ({s}) at {r} the training time"
                     for b, o, g, s, r in gains) + "."
    return Answer("finetune_gain", question, head, details)


def _val_test_gap(results: StudyResults) -> Answer | None:
    question = "Does the test split agree with val?"
    runs = [r for r in results.records if "test" in r.evaluation and "val" in r.evaluation]
    if not runs:
        return None
    gaps, separate = [], 0
    for r in runs:
        val, test = r.evaluation["val"]["metrics"][METRIC], r.evaluation["test"]["metrics"][METRIC]
        gaps.append(val["value"] - test["value"])
        if None not in (val["low"], test["low"]) and (test["high"] < val["low"] or val["high"] < test["low"]):
            separate += 1
    below = sum(g > 0 for g in gaps)
    conf = f"{100 * results.settings.confidence:.0f}%"
    head = (f"Test {METRIC} is below val in {below} of {len(runs)} runs (val − test from {_points(min(gaps))} to "
            f"{_points(max(gaps))}, mean {_points(sum(gaps) / len(gaps))}); the two {conf} CIs do not overlap in "
            f"{separate} of {len(runs)}.")
    details = []
    if separate:
        audit = "the split audit below" if artifacts.is_finished_audit(results.out / artifacts.AUDIT) else \
            "a split audit (audit: in the study YAML)"
        details.append(f"A gap beyond the uncertainty is what a test split drawn from another distribution than "
                       f"train/val produces (a different site, scanner or population); check it with {audit}.")
    else:
        details.append("Val and test agree within the uncertainty: nothing here suggests a biased test split.")
    return Answer("val_test_gap", question, head, details)

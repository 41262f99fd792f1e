"""The ranked summary of a study (configurations by accuracy on the primary split) and its terminal table, told
honestly: the split audit's verdict stands above the ranking, ties are shown as ties, degenerate runs are flagged,
runs that diverged are listed with their reason (they have no results to rank).
"""

from __future__ import annotations

from xferlab import artifacts
from xferlab.errors import XferlabError
from xferlab.evaluation.flags import describe
from xferlab.evaluation.timing import format_seconds
from xferlab.study.results import StudyResults, configurations

RANK_METRIC = "accuracy"
DIGITS = 3  # values are shown with 3 decimals: two values equal at that precision are a tie


def _interval(config: dict, split: str) -> tuple[float, float] | None:
    """The uncertainty of a configuration's ranking value: its bootstrap CI (one seed) or mean ± sd (several)."""
    stats = config.get(split, {}).get(RANK_METRIC) or {}
    if stats.get("mean") is None:
        return None
    if stats["n"] > 1 and stats["sd"] is not None:
        return stats["mean"] - stats["sd"], stats["mean"] + stats["sd"]
    low, high = config.get("ci", {}).get(split, {}).get(RANK_METRIC, (None, None))
    return (low, high) if low is not None else None


def _ties(a: dict, b: dict, split: str) -> bool:
    """Two configurations tie when their values are equal as shown, or their uncertainty intervals overlap."""
    va, vb = (c.get(split, {}).get(RANK_METRIC, {}).get("mean") for c in (a, b))
    if va is None or vb is None:
        return va is vb
    if round(va, DIGITS) == round(vb, DIGITS):
        return True
    ia, ib = _interval(a, split), _interval(b, split)
    return ia is not None and ib is not None and ia[0] <= ib[1] and ib[0] <= ia[1]


def ranked(results: StudyResults) -> list[dict]:
    """Configurations (runs grouped over seeds), best first by mean accuracy on the primary split; each gains `rank`
    (shared by ties: a configuration tied with the first of a group takes its rank, and `tie` is True), `flags`
    (split -> the degenerate flags of any of its runs, xferlab.evaluation.flags) and, with one seed, the run's own
    confidence intervals (`ci`: split -> metric -> (low, high))."""
    split = results.primary_split
    configs = configurations(results.records)
    by_name = {r.name: r for r in results.records}
    for c in configs:
        runs = [by_name[name] for name in c["runs"]]
        if len(runs) == 1:
            ev = runs[0].evaluation
            c["ci"] = {s: {m: (v["low"], v["high"]) for m, v in ev[s]["metrics"].items()} for s in ev}
        c["flags"] = {s: sorted({f for r in runs for f in r.flags.get(s, [])}) for s in runs[0].flags}
        c["flag_text"] = "; ".join(t for r in runs for s in r.flags
                                   if (t := describe(r.flags[s], s, r.evaluation[s], r.class_names)))
    configs.sort(key=lambda c: -(c.get(split, {}).get(RANK_METRIC, {}).get("mean") or 0.0))
    leader = None
    for i, c in enumerate(configs, 1):
        if leader is not None and _ties(leader, c, split):
            c["rank"], c["tie"] = leader["rank"], True
            leader["tie"] = True
        else:
            leader, c["rank"], c["tie"] = c, i, False
    return configs


def diverged_by_configuration(results: StudyResults) -> dict[tuple[str, str], list]:
    """(backbone, regime) -> the runs of that configuration that diverged (artifacts.DivergedRun)."""
    groups: dict[tuple[str, str], list] = {}
    for run in results.diverged:
        groups.setdefault((run.config.get("backbone"), run.config.get("regime")), []).append(run)
    return groups


def diverged_label(config: dict, diverged: dict[tuple[str, str], list]) -> str:
    """'1 of 3 runs diverged' for a configuration some of whose runs diverged (its numbers are the others'), or ''."""
    n = len(diverged.get((config["backbone"], config["regime"]), []))
    return f"{n} of {n + len(config['runs'])} runs diverged" if n else ""


def diverged_lines(results: StudyResults) -> list[str]:
    """'resnet18-finetune-seed0 diverged, epoch 1: train loss 1.8e+14 (...), lr 1e+12: no results', one per run."""
    return [f"{run.name} diverged, {run.divergence['reason']}, lr {run.divergence.get('lr'):g}: no results"
            for run in results.diverged]


def rank_label(config: dict) -> str:
    """'2' or, for a tie, '2=' (the convention of sports tables)."""
    return f"{config['rank']}=" if config.get("tie") else str(config["rank"])


def ranking_note(results: StudyResults) -> str:
    """How the table is ranked and what a tie is, in one sentence."""
    split = results.primary_split
    conf = f"{100 * results.settings.confidence:.0f}%"
    diverged = " A run whose losses diverged has no results: it is listed, not ranked." if results.diverged else ""
    return (f"Ranked by mean {split} {RANK_METRIC}; '=' marks a tie (equal to {DIGITS} decimals, or overlapping "
            f"{conf} CIs, or mean ± sd across seeds); a degenerate run (one class for most cases, sensitivity or "
            f"specificity near 0, or an AUROC CI holding 0.5) is flagged.{diverged}")


def audit_verdict(results: StudyResults) -> dict | None:
    """The split audit's verdict ({level, headline, findings}) when the study folder holds an audit, else None."""
    folder = results.out / artifacts.AUDIT
    if not artifacts.is_finished_audit(folder):
        return None
    try:
        verdict = artifacts.read_audit(folder).result.get("verdict")
    except XferlabError:  # unreadable or newer than this xferlab: the report's audit section says so
        return None
    return verdict if isinstance(verdict, dict) and "level" in verdict else None


def audit_sentence(results: StudyResults) -> str | None:
    """One sentence for above the ranking when the audit says caution or problem: its verdict and reason."""
    verdict = audit_verdict(results)
    if verdict is None or verdict["level"] == "ok":
        return None
    topics = [f["topic"].replace("_", " ") for f in verdict.get("findings", []) if f["level"] == verdict["level"]]
    reason = f" (audit findings: {', '.join(topics)})" if topics else ""
    return (f"Split audit verdict {verdict['level'].upper()}: {verdict['headline'].rstrip('.')}{reason}; "
            f"read the test column below with that in mind.")


def format_value(config: dict, split: str, metric: str, digits: int = DIGITS) -> str:
    """'0.842 [0.801, 0.879]' for one seed, '0.842 ± 0.012 (n=3)' for several, 'n/a' when undefined."""
    stats = config.get(split, {}).get(metric)
    if not stats or stats["mean"] is None:
        return "n/a"
    value = f"{stats['mean']:.{digits}f}"
    if stats["n"] > 1:
        return f"{value} ± {stats['sd']:.{digits}f} (n={stats['n']})"
    low, high = config.get("ci", {}).get(split, {}).get(metric, (None, None))
    return f"{value} [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else value


def summary_table(results: StudyResults) -> str:
    """The audit's verdict (when not ok), the ranked configurations as a fixed-width table, the ranking key and the
    degenerate runs in words, for the terminal."""
    conf = f"{100 * results.settings.confidence:.0f}% CI"
    header = ("#", "backbone", "regime", "val acc", f"test acc [{conf}]", "test AUROC", "train s", "s/epoch", "flags")
    rows, notes = [], []
    configs = ranked(results)
    diverged = diverged_by_configuration(results)
    for c in configs:
        t = c["timing"]
        flagged = any(c["flags"].values())
        marks = "; ".join(m for m in ("degenerate" if flagged else "", diverged_label(c, diverged)) if m)
        rows.append((rank_label(c), c["backbone"], c["regime"], format_value(c, "val", "accuracy").split(" [")[0],
                     format_value(c, "test", "accuracy"), format_value(c, "test", "auroc").split(" [")[0],
                     format_seconds(t["train_seconds"]["mean"]), format_seconds(t["seconds_per_epoch"]["mean"]),
                     f"! {marks}" if marks else ""))
        if flagged:
            notes.append(f"  ! {c['backbone']} {c['regime']}: {c['flag_text']}")
    ranked_keys = {(c["backbone"], c["regime"]) for c in configs}
    for (backbone, regime), runs in diverged.items():
        if (backbone, regime) not in ranked_keys:  # every run of it diverged: a row without numbers
            rows.append(("-", backbone, regime, "diverged", "", "", "", "", f"! {len(runs)} diverged"))
    notes += [f"  ! {line}" for line in diverged_lines(results)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    sentence = audit_sentence(results)
    ranking = [ranking_note(results)] if results.kind != "run" else []  # a single run is not ranked
    lines = ([sentence] if sentence else []) + lines + ranking + notes
    if results.missing:
        lines.append(f"not run yet: {', '.join(results.missing)}")
    return "\n".join(lines)

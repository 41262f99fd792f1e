"""The ranked summary of a study (configurations by accuracy on the primary split) and its terminal table."""

from __future__ import annotations

from xferlab.study.results import StudyResults, configurations

RANK_METRIC = "accuracy"


def ranked(results: StudyResults) -> list[dict]:
    """Configurations (runs grouped over seeds), best first by mean accuracy on the primary split; each gains `rank`
    and, with one seed, the run's own confidence intervals (`ci`: split -> metric -> (low, high))."""
    split = results.primary_split
    configs = configurations(results.records)
    by_name = {r.name: r for r in results.records}
    for c in configs:
        if len(c["runs"]) == 1:
            ev = by_name[c["runs"][0]].evaluation
            c["ci"] = {s: {m: (v["low"], v["high"]) for m, v in ev[s]["metrics"].items()} for s in ev}
    configs.sort(key=lambda c: -(c.get(split, {}).get(RANK_METRIC, {}).get("mean") or 0.0))
    for i, c in enumerate(configs, 1):
        c["rank"] = i
    return configs


def format_value(config: dict, split: str, metric: str, digits: int = 3) -> str:
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
    """The ranked configurations as a fixed-width text table for the terminal."""
    conf = f"{100 * results.settings.confidence:.0f}% CI"
    header = ("#", "backbone", "regime", "val acc", f"test acc [{conf}]", "test AUROC", "train s", "s/epoch")
    rows = []
    for c in ranked(results):
        t = c["timing"]
        rows.append((str(c["rank"]), c["backbone"], c["regime"], format_value(c, "val", "accuracy").split(" [")[0],
                     format_value(c, "test", "accuracy"), format_value(c, "test", "auroc").split(" [")[0],
                     f"{t['train_seconds']['mean']:.0f}", f"{t['seconds_per_epoch']['mean']:.1f}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    if results.missing:
        lines.append(f"not run yet: {', '.join(results.missing)}")
    return "\n".join(lines)

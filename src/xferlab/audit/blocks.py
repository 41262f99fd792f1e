"""Report blocks: what each audit check shows in the report, as neutral data (a title and parts: paragraphs, lists,
tables of raw values, figure files of the audit folder). xferlab.report.audit renders any block the same way, so the
audit never imports the report (the report sits above it) and a new check brings its block in its own entry
(xferlab.audit.checks). The blocks of the checks xferlab ships, and the dataset block above them, are here; they read
audit.json as written by this version or earlier ones (keys added later are optional)."""

from __future__ import annotations

from dataclasses import dataclass, field

from xferlab.audit.pixels import STATS
from xferlab.audit.shift import METHODS
from xferlab.style import format_number


@dataclass(frozen=True)
class Text:
    """A paragraph; `muted`: a note in small grey type."""

    text: str
    muted: bool = False


@dataclass(frozen=True)
class Items:
    """A bulleted list."""

    items: list[str]


@dataclass(frozen=True)
class Table:
    """A table of raw values (numbers, text, None, flags), written by style.format_number; the first column is text."""

    header: list[str]
    rows: list[list]


@dataclass(frozen=True)
class Figure:
    """A PNG in the audit folder (None or a missing file: nothing is shown), with its alternative text."""

    file: str | None
    alt: str


Part = Text | Items | Table | Figure


@dataclass(frozen=True)
class Block:
    """One check's part of the report's audit section."""

    title: str
    parts: list[Part] = field(default_factory=list)


def _figure(audit: dict, key: str, alt: str) -> Figure:
    return Figure((audit.get("figures") or {}).get(key), alt)


def dataset_block(audit: dict) -> Block | None:
    """Images per patient per split, when the data named patients (audit.json's dataset.patients)."""
    per_split = audit["dataset"].get("patients")
    if not per_split:
        return None
    rows = [[split, c["patients"], c["images"], c["median"], c["max"], c["share_multi"]]
            for split, c in per_split.items()]
    source = audit["dataset"].get("groups_from")
    where = f" (patient ids from {source})" if source else ""
    table = Table(["split", "patients", "images", "images per patient: median", "max",
                   "share of patients with more than one"], rows)
    note = Text("Splits, re-splits, shift-test folds and permutations, and the bootstrap count patients, not images "
                "(docs/patients.md).", muted=True)
    return Block(f"Patients{where}", [table, note])


def shift_block(shift: dict, audit: dict) -> Block:
    rows, notes = [], []
    for scope, r in {"all classes": shift["pooled"], **shift["per_class"]}.items():
        if r.get("status") != "ok":
            notes.append(f"{scope}: {r['reason']}")
            continue
        rows.append([scope, r["n_ref"], r["n_test"], r["classifier"]["auc"], r["classifier"]["p"], r["mmd"]["mmd2"],
                     r["mmd"]["p"], max(r["ks"]["d"]), r["ks"]["p"]])
    parts: list[Part] = [Table(["scope", "train+val", "test", "classifier AUC", "p", "MMD²", "p", "max KS D",
                                "p (Bonferroni)"], rows)]
    if notes:
        parts.append(Items(notes))
    d = shift["within_class"]
    if d["status"] == "ok":
        per_method = ", ".join(f"{m} {format_number(d['method_p'][m])}" for m in METHODS)
        unit = (" Folds and permutations by patient (each patient's images stay together)."
                if d.get("unit") == "patient" else "")
        parts.append(Text(f"Within-class decision (Bonferroni over classes, then over tests): p = "
                          f"{format_number(d['p'])} ({per_method}); image shift "
                          f"{'detected' if d['reject'] else 'not detected'} at alpha {d['alpha']}.{unit}"))
        if d.get("note"):
            parts.append(Text(d["note"], muted=True))
    else:
        parts.append(Text(f"Within-class decision: not made ({d['reason']})."))
    parts.append(_figure(audit, "shift", "embeddings and shift-test p-values"))
    return Block("Shift tests: train+val vs test", parts)


def balance_block(balance: dict, audit: dict) -> Block:
    counts = balance["counts"]
    rows = [[s] + counts[s] + [sum(counts[s])] for s in ("train", "val", "test") if sum(counts[s])]
    parts: list[Part] = [Table(["split"] + audit["dataset"]["class_names"] + ["total"], rows)]
    if balance.get("status") == "ok" and "dof" in balance:
        unit = " on patients (each by its majority label)" if balance.get("unit") == "patient" else ""
        parts.append(Text(f"Chi-square train+val vs test{unit}: {format_number(balance['chi2'])} (dof "
                          f"{balance['dof']}), p = {format_number(balance['p'])}."))
    else:
        parts.append(Text(balance.get("reason") or balance.get("note") or ""))
    if balance.get("note"):
        parts.append(Text(balance["note"], muted=True))
    return Block("Class balance", parts)


def pixels_block(pixels: dict, audit: dict) -> Block:
    rows = []
    for cls, tests in pixels["tests"].items():
        if tests.get("status") != "ok":
            rows.append([cls, tests["reason"], None, None, None, None])
            continue
        for stat, label in STATS.items():
            t = tests[stat]
            rows.append([f"{cls}: {label}", t["ref_median"], t["test_median"], t["auc"], t["p_adjusted"], t["reject"]])
    table = Table(["class: statistic", "train+val median", "test median", "P(test > train+val)", "p (Bonferroni)",
                   "differs"], rows)
    return Block("What differs: pixel statistics", [
        table, _figure(audit, "pixels", "pixel statistics per split and class"),
        Text("Images the within-class domain classifier finds most test-like:"),
        _figure(audit, "test_like", "most test-like images")])


LEAK_MEASURES = (("phash", "perceptual hash"), ("embedding", "embedding nearest neighbour"),
                 ("aligned", "aligned pixels (crop, rescale, JPEG, brightness, noise)"))
LISTED = 10  # findings of each kind listed under the leakage table (audit.json keeps them all)


def _leak_rows(lk: dict) -> list[list]:
    rows = [["exact copies across splits (content hash)", lk["exact"]["cross_split_groups"], "identical bytes", None]]
    for kind, label in LEAK_MEASURES:
        if kind not in lk:  # audits written before the aligned check
            continue
        r = lk[kind]
        # the embedding points at look-alikes; only the pixel measures confirm copies (leakage_audit)
        what = "look-alikes (a lead, not a leak)" if kind == "embedding" else "near-duplicates"
        if r.get("status") == "ok":
            rows.append([f"{what}: {label}", r["count"], f"≤ {format_number(r['threshold'])} {r['unit']}",
                         r["calibration"]["within_split_rate"]])
        else:
            rows.append([f"{what}: {label}", None, r.get("reason"), None])
    g = lk["groups"]
    pairs = ", ".join(f"{k} {v}" for k, v in (g.get("shared_by_splits") or {}).items())
    rows.append(["patients (groups) in more than one split", g.get("count"),
                 g.get("reason", f"of {g.get('groups')} patients{'; ' + pairs if pairs else ''}"), None])
    return rows


def _leak_items(lk: dict) -> list[str]:
    listed = []
    for kind, _ in LEAK_MEASURES:
        for p in lk.get(kind, {}).get("pairs", [])[:LISTED]:
            q, m = p["query"], p["match"]
            what = "look-alike (embedding)" if kind == "embedding" else kind
            listed.append(f"{what}: {q['split']} #{q['split_index']} ({q.get('file', q['class'])}) ~ "
                          f"{m['split']} #{m['split_index']} ({m.get('file', m['class'])}), "
                          f"distance {format_number(p['distance'])}")
    for grp in lk["exact"]["cross_split"][:LISTED]:
        names = ", ".join(f"{i['split']} #{i['split_index']}" for i in grp["images"])
        listed.append(f"exact copy: {names}")
    for patient in lk["groups"].get("overlapping", [])[:LISTED]:
        where = ", ".join(f"{split} {n}" for split, n in patient["counts"].items())
        listed.append(f"patient {patient['group']} in more than one split: {where} images")
    return listed


def leakage_block(leakage: dict, audit: dict) -> Block:
    table = Table(["check", "findings", "threshold", "within-split rate below threshold"], _leak_rows(leakage))
    items = _leak_items(leakage)
    return Block("Leakage", [table, *([Items(items)] if items else []),
                             _figure(audit, "leakage", "leakage findings")])


BY_IMAGE_NOTE = ("Re-splits by patient keep each patient in one split; those by image let a patient's images fall "
                 "into several splits, as re-splitting images does. The difference between the two is what patients "
                 "seen twice add to \"re-splitting closes the gap\"; the verdict's p-values are the by-patient ones.")


def resplit_block(r: dict, audit: dict) -> Block:
    if r.get("status") != "ok":
        return Block("Re-split experiment", [Text(f"Not run: {r['reason']}.")])
    o = r["original"]
    ways = [("", r)] if "by_image" not in r else [("by patient: ", r), ("by image: ", r["by_image"])]
    rows = [[prefix + name, o[key], p[place]["resplit_mean"], p[place]["resplit_sd"], p[place]["percentile"],
             p[place]["p_lower"], p[place]["p_higher"]]
            for prefix, p in ways for name, key, place in (("test accuracy", "test", "test_accuracy"),
                                                           ("val − test gap", "gap", "gap"))]
    parts: list[Part] = [Table(["", "original", f"re-split mean (R = {r['resplits']})", "sd", "percentile",
                                "p (as low)", "p (as high)"], rows)]
    if r.get("note"):
        parts.append(Text(r["note"], muted=True))
    if "by_image" in r:
        parts.append(Text(BY_IMAGE_NOTE, muted=True))
    parts.append(_figure(audit, "resplit", "accuracy before and after re-splitting"))
    return Block(f"Re-split experiment ({r['regime']})", parts)


# The check's measured error rates (benchmarks/shortcut_check.py; docs/explanations.md), and those of its first design.
SHORTCUT_RATES = ("The zone's most salient windows against those where a diagnosis is (the reference region), per "
                  "image. On 32 px phantoms at alpha 0.05 (benchmarks/shortcut_check.py, docs/explanations.md): false "
                  "alarms 4/200 draws (0.020, SE 0.010), within the bound 0.081; alarms on shortcut phantoms 43/100 "
                  "(0.43, SE 0.05), so a quiet check does not clear a run.")
SHORTCUT_FIRST_DESIGN = ("Recorded by the check's first design (the zone's most salient window against random zone "
                         "windows), whose false-alarm rate on unshifted phantoms was 0.141 (20/142 draws) at alpha "
                         "0.05, above the stated bound: an alarm there is a reason to look at the maps, not proof; "
                         "audit again for the current check.")


def shortcut_block(sc: dict, audit: dict) -> Block:
    """The shortcut check on a trained run (audit.shortcut_run; xferlab.explain.audit_check)."""
    rows = [["run", sc["run"]], ["images (" + sc["split"] + ")", sc["n_images"]], ["Grad-CAM layer", sc["cam_layer"]],
            ["zone", sc["zone"]], ["share of CAM mass in the zone", sc["zone_share"]],
            ["zone area (a uniform map's share)", sc["zone_area"]]]
    if "zone_change" in sc:
        rows += [["reference region", sc["reference"]],
                 [f"largest prediction change, {sc['n_windows']} salient zone windows", sc["zone_change"]],
                 [f"largest prediction change, {sc['n_windows']} salient reference windows", sc["roi_change"]],
                 ["images where the zone's change is larger", sc["zone_wins"]],
                 ["p-value (Wilcoxon signed-rank, one-sided)", sc["p_value"]]]
        note = SHORTCUT_RATES
    else:  # an audit.json of the first design (salient zone window against random zone windows)
        rows += [["prediction change, salient window", sc["salient_change"]],
                 [f"prediction change, {sc['n_random']} random windows", sc["random_change"]],
                 ["p-value (rank test)", sc["p_value"]]]
        note = SHORTCUT_FIRST_DESIGN
    rows.append(["likely shortcut", sc["alarm"]])
    if sc.get("marker_share") is not None:
        rows.append(["share of CAM mass on recorded markers", sc["marker_share"]])
    return Block("Shortcut check", [Table(["", "value"], rows), Text(note, muted=True)])

"""The audit as a self-contained HTML fragment (`<section id="audit">`, figures inline as base64 PNG) for the study
report to embed; it reads only what run_audit saved."""

from __future__ import annotations

from html import escape
from pathlib import Path

from xferlab import artifacts
from xferlab.audit.pixels import STATS
from xferlab.audit.shift import METHODS
from xferlab.report.figures import png_uri

_STYLE = """<style>
#audit table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
#audit th, #audit td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
#audit th:first-child, #audit td:first-child { text-align: left; }
#audit .verdict { padding: 0.6em 1em; border-left: 6px solid; }
#audit .ok { border-color: #2a9d4b; background: #eef8f0; }
#audit .caution { border-color: #d89b00; background: #fdf6e3; }
#audit .problem { border-color: #c0392b; background: #fbecea; }
#audit .tag { font-size: 0.8em; font-weight: bold; text-transform: uppercase; margin-right: 0.4em; }
#audit img { max-width: 100%; }
#audit .muted { color: #666; font-size: 0.85em; }
</style>"""


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(audit_dir: Path, name: str | None, alt: str) -> str:
    if not name or not (audit_dir / name).is_file():
        return ""
    return f'<img alt="{escape(alt)}" src="{png_uri((audit_dir / name).read_bytes())}">'


def _verdict(verdict: dict) -> str:
    items = "".join(f'<li><span class="tag">{escape(f["level"])}</span>{escape(f["text"])}</li>'
                    for f in verdict["findings"])
    headline = f'<p class="verdict {escape(verdict["level"])}"><strong>{escape(verdict["headline"])}</strong></p>'
    return f"{headline}<ul>{items}</ul>"


def _shift(result: dict, audit_dir: Path) -> str:
    shift = result["shift"]
    rows, notes = [], []
    for scope, r in {"all classes": shift["pooled"], **shift["per_class"]}.items():
        if r.get("status") != "ok":
            notes.append(f"<li>{escape(scope)}: {escape(r['reason'])}</li>")
            continue
        rows.append([scope, r["n_ref"], r["n_test"], r["classifier"]["auc"], r["classifier"]["p"], r["mmd"]["mmd2"],
                     r["mmd"]["p"], max(r["ks"]["d"]), r["ks"]["p"]])
    header = ["scope", "train+val", "test", "classifier AUC", "p", "MMD²", "p", "max KS D", "p (Bonferroni)"]
    table = _table(header, rows)
    d = shift["within_class"]
    if d["status"] == "ok":
        per_method = ", ".join(f"{m} {_fmt(d['method_p'][m])}" for m in METHODS)
        unit = (" Folds and permutations by patient (each patient's images stay together)."
                if d.get("unit") == "patient" else "")
        decision = (f"<p>Within-class decision (Bonferroni over classes, then over tests): p = {_fmt(d['p'])} "
                    f"({per_method}); image shift {'detected' if d['reject'] else 'not detected'} at alpha "
                    f"{d['alpha']}.{unit}</p>")
        if d.get("note"):
            decision += f'<p class="muted">{escape(d["note"])}</p>'
    else:
        decision = f"<p>Within-class decision: not made ({escape(d['reason'])}).</p>"
    skipped = f"<ul>{''.join(notes)}</ul>" if notes else ""
    return (f"<h3>Shift tests: train+val vs test</h3>{table}{skipped}{decision}"
            f"{_image(audit_dir, result['figures'].get('shift'), 'embeddings and shift-test p-values')}")


def _balance(result: dict) -> str:
    b = result["class_balance"]
    names = result["dataset"]["class_names"]
    counts = b["counts"]
    rows = [[s] + counts[s] + [sum(counts[s])] for s in ("train", "val", "test") if sum(counts[s])]
    unit = " on patients (each by its majority label)" if b.get("unit") == "patient" else ""
    text = (f"<p>Chi-square train+val vs test{unit}: {_fmt(b['chi2'])} (dof {b['dof']}), p = {_fmt(b['p'])}.</p>"
            if b.get("status") == "ok" and "dof" in b else f"<p>{escape(b.get('reason') or b.get('note') or '')}</p>")
    if b.get("note"):
        text += f'<p class="muted">{escape(b["note"])}</p>'
    return f"<h3>Class balance</h3>{_table(['split'] + names + ['total'], rows)}{text}"


def _pixels(result: dict, audit_dir: Path) -> str:
    rows = []
    for cls, tests in result["pixels"]["tests"].items():
        if tests.get("status") != "ok":
            rows.append([cls, tests["reason"], None, None, None, None])
            continue
        for stat, label in STATS.items():
            t = tests[stat]
            rows.append([f"{cls}: {label}", t["ref_median"], t["test_median"], t["auc"], t["p_adjusted"], t["reject"]])
    table = _table(["class: statistic", "train+val median", "test median", "P(test > train+val)", "p (Bonferroni)",
                    "differs"], rows)
    return (f"<h3>What differs: pixel statistics</h3>{table}"
            f"{_image(audit_dir, result['figures'].get('pixels'), 'pixel statistics per split and class')}"
            f"<p>Images the within-class domain classifier finds most test-like:</p>"
            f"{_image(audit_dir, result['figures'].get('test_like'), 'most test-like images')}")


def _leakage(result: dict, audit_dir: Path) -> str:
    lk = result["leakage"]
    rows = [["exact copies across splits (content hash)", lk["exact"]["cross_split_groups"], "identical bytes", None]]
    for kind, label in (("phash", "perceptual hash"), ("embedding", "embedding nearest neighbour"),
                        ("aligned", "aligned pixels (crop, rescale, JPEG, brightness, noise)")):
        if kind not in lk:  # audits written before the aligned check
            continue
        r = lk[kind]
        # the embedding points at look-alikes; only the pixel measures confirm copies (leakage_audit)
        what = "look-alikes (a lead, not a leak)" if kind == "embedding" else "near-duplicates"
        if r.get("status") == "ok":
            rows.append([f"{what}: {label}", r["count"], f"≤ {_fmt(r['threshold'])} {r['unit']}",
                         r["calibration"]["within_split_rate"]])
        else:
            rows.append([f"{what}: {label}", None, r.get("reason"), None])
    g = lk["groups"]
    pairs = ", ".join(f"{k} {v}" for k, v in (g.get("shared_by_splits") or {}).items())
    rows.append(["patients (groups) in more than one split", g.get("count"),
                 g.get("reason", f"of {g.get('groups')} patients{'; ' + pairs if pairs else ''}"), None])
    table = _table(["check", "findings", "threshold", "within-split rate below threshold"], rows)
    listed = []
    for kind in ("phash", "embedding", "aligned"):
        for p in lk.get(kind, {}).get("pairs", [])[:10]:
            q, m = p["query"], p["match"]
            what = "look-alike (embedding)" if kind == "embedding" else kind
            listed.append(f"<li>{what}: {q['split']} #{q['split_index']} ({escape(q.get('file', q['class']))}) ~ "
                          f"{m['split']} #{m['split_index']} ({escape(m.get('file', m['class']))}), "
                          f"distance {_fmt(p['distance'])}</li>")
    for grp in lk["exact"]["cross_split"][:10]:
        names = ", ".join(f"{i['split']} #{i['split_index']}" for i in grp["images"])
        listed.append(f"<li>exact copy: {escape(names)}</li>")
    for patient in g.get("overlapping", [])[:10]:
        where = ", ".join(f"{split} {n}" for split, n in patient["counts"].items())
        listed.append(f"<li>patient {escape(patient['group'])} in more than one split: {escape(where)} images</li>")
    items = f"<ul>{''.join(listed)}</ul>" if listed else ""
    return (f"<h3>Leakage</h3>{table}{items}"
            f"{_image(audit_dir, result['figures'].get('leakage'), 'leakage findings')}")


def _resplit(result: dict, audit_dir: Path) -> str:
    r = result["resplit"]
    if r.get("status") != "ok":
        return f"<h3>Re-split experiment</h3><p>Not run: {escape(r['reason'])}.</p>"
    o = r["original"]
    ways = [("", r)] if "by_image" not in r else [("by patient: ", r), ("by image: ", r["by_image"])]
    rows = [[prefix + name, o[key], p[place]["resplit_mean"], p[place]["resplit_sd"], p[place]["percentile"],
             p[place]["p_lower"], p[place]["p_higher"]]
            for prefix, p in ways for name, key, place in (("test accuracy", "test", "test_accuracy"),
                                                           ("val − test gap", "gap", "gap"))]
    table = _table(["", "original", f"re-split mean (R = {r['resplits']})", "sd", "percentile", "p (as low)",
                    "p (as high)"], rows)
    note = f'<p class="muted">{escape(r["note"])}</p>' if r.get("note") else ""
    if "by_image" in r:
        note += ('<p class="muted">Re-splits by patient keep each patient in one split; those by image let a '
                 "patient's images fall into several splits, as re-splitting images does. The difference between "
                 "the two is what patients seen twice add to \"re-splitting closes the gap\"; the verdict's p-values "
                 "are the by-patient ones.</p>")
    return (f"<h3>Re-split experiment ({escape(r['regime'])})</h3>{table}{note}"
            f"{_image(audit_dir, result['figures'].get('resplit'), 'accuracy before and after re-splitting')}")


def _patients(result: dict) -> str:
    """Images per patient per split, when the data named patients (audit.json's dataset.patients)."""
    per_split = result["dataset"].get("patients")
    if not per_split:
        return ""
    rows = [[split, c["patients"], c["images"], c["median"], c["max"], c["share_multi"]]
            for split, c in per_split.items()]
    source = result["dataset"].get("groups_from")
    where = f" (patient ids from {escape(str(source))})" if source else ""
    return (f"<h3>Patients{where}</h3>"
            + _table(["split", "patients", "images", "images per patient: median", "max",
                      "share of patients with more than one"], rows)
            + '<p class="muted">Splits, re-splits, shift-test folds and permutations, and the bootstrap count '
              "patients, not images (docs/patients.md).</p>")


def _shortcut(result: dict) -> str:
    """The shortcut check on a trained run (audit.shortcut_run; xferlab.explain.audit_check), when it ran."""
    sc = result.get("shortcut")
    if not sc:
        return ""
    rows = [["run", sc["run"]], ["images (" + sc["split"] + ")", sc["n_images"]], ["Grad-CAM layer", sc["cam_layer"]],
            ["zone", sc["zone"]], ["share of CAM mass in the zone", sc["zone_share"]],
            ["zone area (a uniform map's share)", sc["zone_area"]]]
    if "zone_change" in sc:
        rows += [["reference region", sc["reference"]],
                 [f"largest prediction change, {sc['n_windows']} salient zone windows", sc["zone_change"]],
                 [f"largest prediction change, {sc['n_windows']} salient reference windows", sc["roi_change"]],
                 ["images where the zone's change is larger", sc["zone_wins"]],
                 ["p-value (Wilcoxon signed-rank, one-sided)", sc["p_value"]]]
        note = ("The zone's most salient windows against those where a diagnosis is (the reference region), per "
                "image. On 32 px phantoms at alpha 0.05 (benchmarks/shortcut_check.py, README): false alarms 4/200 "
                "draws (0.020, SE 0.010), within the bound 0.081; alarms on shortcut phantoms 43/100 (0.43, SE 0.05), "
                "so a quiet check does not clear a run.")
    else:  # an audit.json of the first design (salient zone window against random zone windows)
        rows += [["prediction change, salient window", sc["salient_change"]],
                 [f"prediction change, {sc['n_random']} random windows", sc["random_change"]],
                 ["p-value (rank test)", sc["p_value"]]]
        note = ("Recorded by the check's first design (the zone's most salient window against random zone windows), "
                "whose false-alarm rate on unshifted phantoms was 0.141 (20/142 draws) at alpha 0.05, above the "
                "stated bound: an alarm there is a reason to look at the maps, not proof; audit again for the "
                "current check.")
    rows.append(["likely shortcut", sc["alarm"]])
    if sc.get("marker_share") is not None:
        rows.append(["share of CAM mass on recorded markers", sc["marker_share"]])
    return f"<h3>Shortcut check</h3>{_table(['', 'value'], rows)}<p class=\"muted\">{escape(note)}</p>"


def render_audit_section(audit_dir: Path) -> str:
    """`<section id="audit">` with the verdict, tables and inline figures of the audit saved in `audit_dir`."""
    audit = artifacts.read_audit(Path(audit_dir))
    audit_dir, result = audit.path, audit.result
    cfg = result["config"]["audit"]
    meta = (f'<p class="muted">Backbone {escape(cfg["backbone"])} ({escape(cfg["weights"])}), {cfg["permutations"]} '
            f'permutations, alpha {cfg["alpha"]}, seed {cfg["seed"]}; {result["dataset"]["images"]} images; '
            f'{result["seconds"]["total"]:.0f} s.</p>')
    parts = [_STYLE, "<h2>Split audit</h2>", _verdict(result["verdict"]), _patients(result), _shift(result, audit_dir),
             _balance(result),
             _pixels(result, audit_dir), _leakage(result, audit_dir), _resplit(result, audit_dir), _shortcut(result),
             meta]
    return '<section id="audit">' + "\n".join(parts) + "</section>"

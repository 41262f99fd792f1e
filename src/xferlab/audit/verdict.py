"""The verdict in words: one headline and one finding per check (image shift, class balance, what differs, leakage,
re-split, and any other entry of xferlab.audit.checks), each with the numbers behind it. The findings of the checks
xferlab ships are written here; make_verdict reads every check's through its entry."""

from __future__ import annotations

from collections.abc import Iterable

from xferlab.audit.common import is_ok
from xferlab.audit.entry import AuditCheck, check_finding
from xferlab.audit.pixels import STATS
from xferlab.audit.shift import METHODS

LEVELS = ("ok", "caution", "problem")
METHOD_NAMES = {"classifier": "classifier", "mmd": "MMD", "ks": "KS"}  # the shift tests as the verdict names them
NEAR = {"phash": "perceptual hash", "embedding": "embedding distance", "aligned": "aligned pixels"}
# The measures that confirm a copy; the embedding only points at look-alikes (leakage.leakage_audit).
PIXEL_MEASURES = ("phash", "aligned")


def _p(p: float | None) -> str:
    if p is None:
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}"


def shift_detected(audit: dict) -> bool:
    """Whether the audit's image-shift finding is a problem (other checks' findings read differently beside it)."""
    return "shift" in audit and shift_finding(audit["shift"])[0] == "problem"


def shift_finding(shift: dict) -> tuple[str, str]:
    """(level, text) for the within-class image-shift decision, with the pooled tests as context."""
    decision = shift["within_class"]
    if decision["status"] != "ok":
        reasons = "; ".join(decision.get("untested_classes", {}).values()) or decision["reason"]
        return "caution", f"Image shift: not tested ({reasons})."
    tested = {c: shift["per_class"][c] for c in decision["tested_classes"]}
    aucs = [r["classifier"]["auc"] for r in tested.values()]
    mp = decision["method_p"]
    adjusted = ", ".join(f"{METHOD_NAMES[m]} {_p(mp[m])}" for m in METHODS)
    by_patient = "; folds and permutations by patient" if decision.get("unit") == "patient" else ""
    numbers = (f"domain-classifier AUC {_range(aucs)} within classes (0.5 = indistinguishable); adjusted "
               f"{adjusted}; combined {_p(decision['p'])}{by_patient}")
    skipped = decision.get("untested_classes") or {}
    extra = f" Not tested: {'; '.join(skipped.values())}." if skipped else ""
    if decision["reject"]:
        return "problem", (f"Image shift: the test images differ from train+val within classes ({numbers}), so test "
                           f"accuracy measures transfer to another distribution, not held-out performance.{extra}")
    pooled = shift["pooled"]
    note = ""
    if is_ok(pooled) and min(pooled[m]["p"] for m in METHODS) <= decision["alpha"]:
        note = " The pooled tests differ, which the within-class tests attribute to class balance rather than images."
    return "ok", f"Image shift: no evidence within classes ({numbers}).{note}{extra}"


def balance_finding(balance: dict, class_names: list[str]) -> tuple[str, str]:
    if balance.get("status") != "ok":
        return "caution", f"Class balance: not tested ({balance['reason']})."
    counts = balance["counts"]
    ref = [a + b for a, b in zip(counts["train"], counts["val"])]
    test = counts["test"]
    shares = ", ".join(f"{c} {100 * r / sum(ref):.0f} % vs {100 * t / sum(test):.0f} %"
                       for c, r, t in zip(class_names, ref, test))
    unit = " on patients" if balance.get("unit") == "patient" else ""
    stat = f"chi-square{unit} {balance['chi2']:.1f}, {_p(balance['p'])}"
    if balance["reject"]:
        return "caution", (f"Class balance differs between train+val and test ({shares}; {stat}): accuracy is not "
                           "comparable across the splits; compare balanced accuracy.")
    return "ok", f"Class balance: no evidence of a difference ({shares}; {stat})."


def pixel_finding(pixels: dict, limit: int = 4) -> tuple[str, str] | None:
    """The pixel statistics that differ most (largest effect first), one mention per statistic."""
    if not pixels.get("differs"):
        tested = [c for c, r in pixels.get("tests", {}).items() if r.get("status") == "ok"]
        by = ", patients as the unit" if pixels.get("unit") == "patient" else ""
        return ("ok", f"Pixel statistics: no significant difference within classes ({pixels['tests_count']} "
                      f"Bonferroni-adjusted tests{by}).") if tested else None
    seen, parts = set(), []
    for d in pixels["differs"]:
        if d["stat"] in seen:
            continue
        seen.add(d["stat"])
        word = "higher" if d["difference"] > 0 else "lower"
        parts.append(f"{STATS[d['stat']]} {word} in test ({d['test_median']:.3g} vs {d['ref_median']:.3g}, "
                     f"class {d['class']}, P(test > train+val) = {d['auc']:.2f}, adjusted {_p(d['p_adjusted'])})")
        if len(parts) == limit:
            break
    by = " (patients as the unit: each patient's mean)" if pixels.get("unit") == "patient" else ""
    return "caution", f"What differs{by}: " + "; ".join(parts) + "."


def patients_text(groups: dict, examples: int = 3) -> str:
    """'3 of 120 groups (patients) span more than one split (9 images; train-test 3), e.g. person23 (train 2, test
    1); ...'."""
    pairs = ", ".join(f"{k} {v}" for k, v in (groups.get("shared_by_splits") or {}).items() if v)
    shown = "; ".join(f"{g['group']} ({', '.join(f'{s} {n}' for s, n in g['counts'].items())})"
                      for g in groups["overlapping"][:examples])
    more = f" and {groups['count'] - examples} more" if groups["count"] > examples else ""
    return (f"{groups['count']} of {groups['groups']} groups (patients) span more than one split "
            f"({groups['images']} images{'; ' + pairs if pairs else ''}), e.g. {shown}{more}")


def leakage_finding(leakage: dict) -> tuple[str, str]:
    exact = leakage["exact"]["cross_split_groups"]
    near = leakage["near_duplicate_images"]
    groups = leakage["groups"]
    parts = []
    if exact:
        parts.append(f"{exact} image(s) appear pixel-identical in two splits")
    if near:
        thresholds = ", ".join(f"{NEAR[k]} ≤ {leakage[k]['threshold']:.3g} {leakage[k]['unit']}"
                               for k in PIXEL_MEASURES if is_ok(leakage.get(k)))
        parts.append(f"{near} val/test image(s) have a near-duplicate in an earlier split ({thresholds}, calibrated "
                     "on within-split nearest neighbours)")
    if groups.get("count"):
        parts.append(patients_text(groups))
    if leakage["exact"]["label_conflicts"]:
        parts.append(f"{leakage['exact']['label_conflicts']} duplicate group(s) carry conflicting labels")
    within = leakage["exact"]["within_split_groups"]
    within_text = f" {within} group(s) of exact copies sit within single splits." if within else ""
    alike = leakage.get("embedding_only_images", 0)
    more = " more" if parts else ""
    alike_text = (f" {alike}{more} val/test image(s) lie as close to an earlier split's image by embedding alone, "
                  "with pixels and perceptual hashes that do not match: look-alikes or heavier edits, to look at in "
                  "leakage.png, not counted as leaks." if alike else "")
    if parts:
        return "problem", "Leakage: " + "; ".join(parts) + "." + within_text + alike_text
    checked = ["exact copies"] + [NEAR[k] for k in NEAR if is_ok(leakage.get(k))]
    unchecked = [f"{NEAR[k]} ({leakage[k]['reason']})" for k in NEAR if k in leakage and not is_ok(leakage[k])]
    group_text = "no group overlap" if is_ok(groups) else "groups not checked (no patient ids)"
    text = f"Leakage: no copies found ({', '.join(checked)}; {group_text})"
    text += (f"; not usable: {'; '.join(unchecked)}." if unchecked else ".") + within_text + alike_text
    return ("caution" if alike else "ok"), text


def by_image_text(resplit: dict) -> str:
    """The re-splits by image beside those by patient: how much of the gap's closing patients seen twice make."""
    by_image = resplit.get("by_image")
    if not by_image:
        return ""
    t_patient, t_image = resplit["test_accuracy"], by_image["test_accuracy"]
    g_patient, g_image = resplit["gap"], by_image["gap"]
    return (f" Re-split by image instead (a patient's images may then sit in two splits): test accuracy "
            f"{t_image['resplit_mean']:.3f} vs {t_patient['resplit_mean']:.3f} by patient, val-test gap "
            f"{g_image['resplit_mean']:+.3f} ± {g_image['resplit_sd']:.3f} vs {g_patient['resplit_mean']:+.3f} ± "
            f"{g_patient['resplit_sd']:.3f}; the difference is what patients seen in two splits do to re-split "
            "numbers.")


def resplit_finding(resplit: dict) -> tuple[str, str]:
    level, text = _resplit_finding(resplit)
    return level, text + (by_image_text(resplit) if is_ok(resplit) else "")


def _resplit_finding(resplit: dict) -> tuple[str, str]:
    if not is_ok(resplit):
        return "caution", f"Re-split experiment: not run ({resplit['reason']})."
    t, g, o = resplit["test_accuracy"], resplit["gap"], resplit["original"]
    r = resplit["resplits"]
    # The audit trains its own model (the audit's backbone and regime) on each split, so its accuracies are not the
    # study's runs' and say so: "the audit quotes 0.503 where the summary shows 0.507" must not puzzle a reader.
    numbers = (f"the audit's own model's original test accuracy {o['test']:.3f} (val {o['val']:.3f}; not a study "
               f"run's) sits at percentile "
               f"{t['percentile']:.0f} of {r} re-splits ({t['resplit_mean']:.3f} ± {t['resplit_sd']:.3f}, "
               f"{_p(t['p_lower'])} for as low); val-test gap {o['gap']:+.3f} vs {g['resplit_mean']:+.3f} "
               f"± {g['resplit_sd']:.3f} after "
               f"re-splitting ({_p(g['p_higher'])} for as large)")
    note = f" ({resplit['note']})" if resplit.get("note") else ""
    if resplit.get("unit") == "patient":
        resplit = {**resplit, "regime": f"{resplit['regime']}, by patient"}
    if resplit["test_lower"] or resplit["gap_larger"]:
        closes = (f" Re-splitting closes the gap ({o['gap']:+.3f} -> {g['resplit_mean']:+.3f} on average)."
                  if resplit["gap_larger"] else "")
        return "problem", (f"Re-split ({resplit['regime']}): {numbers}; the original test split is harder than a "
                           f"random one.{closes}{note}")
    if resplit["test_higher"]:
        return "problem", (f"Re-split ({resplit['regime']}): {numbers}; the original test split is easier than a "
                           f"random one ({_p(t['p_higher'])}), as leakage would make it.{note}")
    if resplit.get("note"):  # too few re-splits for any p-value to reach alpha: no evidence either way
        return "caution", (f"Re-split ({resplit['regime']}): inconclusive, not ok: {numbers}; "
                           f"{resplit['note']}.")
    return "ok", f"Re-split ({resplit['regime']}): {numbers}; consistent with a random split."


HEADLINE_OK = "No evidence against the test split: it behaves like a random held-out sample of the same data."
HEADLINE_PROBLEM = ("Do not read the test accuracy as held-out performance: the test split is not a random sample of "
                    "the training distribution.")
HEADLINE_CAUTION = "The test split mostly holds up, with the cautions below."
LEAKAGE_HEADLINE = "Do not trust the test accuracy: images or patients leak between splits."  # the leakage check's


def _headline(level: str, findings: dict[str, tuple[str, str]], checks: Iterable[AuditCheck]) -> str:
    if level == "ok":
        return HEADLINE_OK
    if level == "caution":
        return HEADLINE_CAUTION
    problems = [c for c in checks if findings.get(c.name, ("",))[0] == "problem"]
    leading = [c for c in problems if not c.headline_defers]
    if leading:  # the first leading check's own headline, else the general one
        return next((c.headline for c in leading if c.headline), HEADLINE_PROBLEM)
    return next((c.headline for c in problems if c.headline), HEADLINE_PROBLEM)


def make_verdict(result: dict, checks: Iterable[AuditCheck]) -> dict:
    """Level ('ok', 'caution', 'problem'), a headline and the findings, from a finished audit's results: each check's
    finding (check_finding) in the order given, for the checks whose record `result` holds."""
    checks = [c for c in checks if c.name in result]
    findings = {c.name: f for c in checks if (f := check_finding(c, result)) is not None}
    level = max((lvl for lvl, _ in findings.values()), key=LEVELS.index, default="ok")
    headline = _headline(level, findings, checks)
    items = [{"topic": k, "level": lvl, "text": text} for k, (lvl, text) in findings.items()]
    return {"level": level, "headline": headline, "findings": items,
            "text": " ".join([headline] + [i["text"] for i in items])}

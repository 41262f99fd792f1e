"""The audit's checks, one entry each (an AuditCheck, xferlab.audit.entry): what a check computes, its finding for
the verdict (and the headline it calls for), its report block and its figures. The runner (audit/run.py), the verdict
(audit/verdict.py) and the report (xferlab.report.audit) read CHECKS and nothing else, so adding a check is its module
plus one entry here; the order of CHECKS is the order of the verdict's findings and of the report's blocks."""

from __future__ import annotations

from pathlib import Path

import xferlab.audit.blocks as blocks
import xferlab.audit.figures as figures
import xferlab.audit.labels as labels
import xferlab.audit.verdict as verdict
from xferlab.audit.entry import AFTER, BESIDE, AuditCheck, AuditInputs, Computed, Finding
from xferlab.audit.leakage import leakage_audit
from xferlab.audit.pixels import pixel_audit
from xferlab.audit.resplit import resplit_experiment
from xferlab.audit.shift import class_balance, shift_tests
from xferlab.backbones.regimes import parse_regime
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset


def _shift(inputs: AuditInputs) -> Computed:
    shift, scores = shift_tests(inputs.data, inputs.scan.embeddings, inputs.cfg)
    return Computed(shift, {"domain_scores": scores})


def _shift_figures(inputs: AuditInputs, shift: dict, arrays: dict, out: Path) -> dict:
    return {"shift": figures.shift_figure(inputs.data, inputs.scan.embeddings, shift, inputs.cfg.alpha,
                                          out / "shift.png")}


def _balance(inputs: AuditInputs) -> Computed:
    return Computed(class_balance(inputs.data, inputs.cfg))


def _balance_finding(balance: dict, audit: dict) -> Finding:
    return verdict.balance_finding(balance, audit["dataset"]["class_names"])


def _pixels(inputs: AuditInputs) -> Computed:
    pixels, values = pixel_audit(inputs.data, inputs.cfg, inputs.scan.pixel_stats)
    return Computed(pixels, {"pixel_stats": values})


def _pixels_figures(inputs: AuditInputs, pixels: dict, arrays: dict, out: Path) -> dict:
    """The statistics per split and class, and the images the shift check's domain classifier finds most test-like
    (the report shows them under "what differs")."""
    made = {"pixels": figures.pixel_figure(inputs.data, arrays["pixel_stats"], out / "pixels.png")}
    if "domain_scores" in arrays:
        made["test_like"] = figures.test_like_figure(inputs.data, arrays["domain_scores"], inputs.cfg.thumbnails,
                                                     out / "test_like.png")
    return made


def _pixels_finding(pixels: dict, audit: dict) -> Finding | None:
    """Pixel differences alone are context, not a verdict: a caution only beside an image shift."""
    finding = verdict.pixel_finding(pixels)
    return finding if finding is None or verdict.shift_detected(audit) else ("ok", finding[1])


def _leakage(inputs: AuditInputs) -> Computed:
    scan = inputs.scan
    return Computed(leakage_audit(inputs.data, scan.embeddings, inputs.cfg, hashes=scan.hashes, phashes=scan.phashes,
                                  descriptors=scan.descriptors, progress=inputs.progress))


def _leakage_figures(inputs: AuditInputs, leakage: dict, arrays: dict, out: Path) -> dict:
    return {"leakage": figures.leakage_figure(inputs.data, leakage, 2 * inputs.cfg.thumbnails, out / "leakage.png")}


def resplit_stage(cfg: AuditConfig) -> str:
    """BESIDE the statistics when the re-splits fit linear heads on the cached embeddings (one torch thread on a CPU,
    or an accelerator); a regime that trains the backbone uses every thread itself and runs AFTER them. The
    statistics' faiss searches use every thread too, so on 2 cores the two sides share them; measured at 58,000
    phantoms (docs/audit-at-scale.md), the whole audit took 0.74 of the time it took in sequence."""
    return BESIDE if parse_regime(cfg.regime).cache_features else AFTER


def _resplit(inputs: AuditInputs) -> Computed:
    return Computed(resplit_experiment(inputs.data, inputs.scan.embeddings, inputs.cfg, inputs.progress, inputs.stop))


def _resplit_figures(inputs: AuditInputs, resplit: dict, arrays: dict, out: Path) -> dict:
    return {"resplit": figures.resplit_figure(resplit, out / "resplit.png") if resplit.get("status") == "ok"
            else None}


def _shortcut_enabled(cfg: AuditConfig) -> bool:
    return bool(cfg.shortcut_run)


def _shortcut_prepare(data: ImageDataset, cfg: AuditConfig) -> None:
    """A run that does not fit the data fails now, not after the embeddings."""
    from xferlab.explain.audit_check import check_shortcut_run  # grad-cam and the run's model: only when asked

    check_shortcut_run(data, cfg.shortcut_run)


def _shortcut(inputs: AuditInputs) -> Computed:
    from xferlab.explain.audit_check import audit_shortcut

    cfg, data_cfg = inputs.cfg, inputs.data_cfg
    return Computed(audit_shortcut(inputs.data, data_cfg.format, Path(data_cfg.path), cfg.shortcut_run, cfg.alpha,
                                   cfg.seed, runtime=cfg.runtime))


def _shortcut_finding(record: dict, audit: dict) -> Finding:
    from xferlab.explain.audit_check import shortcut_finding

    return shortcut_finding(record)


CHECKS: dict[str, AuditCheck] = {check.name: check for check in (
    AuditCheck("shift", "Image shift", _shift, lambda shift, audit: verdict.shift_finding(shift), blocks.shift_block,
               _shift_figures),
    AuditCheck("class_balance", "Class balance", _balance, _balance_finding, blocks.balance_block,
               timed_as="shift"),  # timed with the shift tests, as audit.json's seconds have always had it
    AuditCheck("pixels", "Pixel statistics", _pixels, _pixels_finding, blocks.pixels_block, _pixels_figures),
    AuditCheck("leakage", "Leakage", _leakage, lambda leakage, audit: verdict.leakage_finding(leakage),
               blocks.leakage_block, _leakage_figures, headline=verdict.LEAKAGE_HEADLINE),
    AuditCheck("resplit", "Re-split experiment", _resplit, lambda resplit, audit: verdict.resplit_finding(resplit),
               blocks.resplit_block, _resplit_figures, stage=resplit_stage),
    # cleanlab on out-of-fold probe probabilities; BESIDE: it needs the embeddings only (docs/labels.md times it)
    AuditCheck("labels", "Label errors", labels.compute, labels.finding, labels.block, labels.figures,
               stage=BESIDE, needs=("cleanlab", "labels"), headline=labels.HEADLINE, headline_defers=True),
    # needs a trained model: the run named in the config (xferlab.explain.audit_check)
    AuditCheck("shortcut", "Shortcut check", _shortcut, _shortcut_finding, blocks.shortcut_block, stage=AFTER,
               enabled=_shortcut_enabled, prepare=_shortcut_prepare),
)}

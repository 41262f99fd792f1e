"""Split audit: can this test split be trusted? Shift tests on backbone embeddings, pixel statistics, leakage and
the re-split experiment, summed up in a verdict (`run_audit`); xferlab.report.audit draws its HTML section from
audit.json.

  common.py    the comparison (train+val vs test), size floors, permutation p-values
  scan.py      one streaming pass: hashes, descriptors, pixel statistics, embeddings per chunk of images
  embed.py     backbone embeddings, computed once (ONNX Runtime on the CPU)
  shift.py     classifier, MMD and KS two-sample tests, pooled and per class; class balance (chi-square)
  pixels.py    intensity, sharpness and noise statistics per split and class, with tests
  leakage.py   exact and near-duplicates across splits, patient-group overlap
  neighbours.py  nearest neighbours from faiss HNSW graphs per split, re-ranked exactly
  nearcopy.py  re-exported copies: spectral-descriptor candidates confirmed by alignment
  resplit.py   R stratified group-aware re-splits, trained like the original
  labels.py    label errors: cleanlab on out-of-fold probe probabilities, ranked; label_issues.csv, labels.png
  entry.py     AuditCheck: the record of one check (compute, finding, report block, figures, when it runs)
  checks.py    CHECKS: one entry per check, which the runner, the verdict and the report read
  blocks.py    each check's report block as neutral data (title, paragraphs, lists, tables, figure files)
  verdict.py   the findings in words; make_verdict over the entries
  figures.py   PNG figures
  run.py       run_audit: the scan, then every check by its stage, written to a folder
"""

from xferlab.audit.run import run_audit

__all__ = ["run_audit"]

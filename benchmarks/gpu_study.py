"""Every GPU measurement of issue #18 in one process, written as JSON to benchmarks/results/gpu_study.json.

    python benchmarks/gpu_study.py                 # one CUDA GPU: about 6 minutes on an H200, start-up included
    python benchmarks/gpu_study.py --smoke         # the same code paths on the CPU at toy sizes (tests run it)
    python benchmarks/gpu_docs.py                # then: docs/performance/gpu.md's section rewritten from the JSON

What it measures, in this order (the most important first, so a run cut short keeps them; the JSON is rewritten
after every section, and a section that fails records its error instead of stopping the rest):
1. `reference`: the reference notebook loop (benchmarks/reference_loop.py) on ResNet-18, frozen and fine-tuned, at
   the reference study's size (1,600 / 400 / 400 acquisition-shifted phantoms at 256², 30 epochs, batch 32); cuDNN
   autotuning off, as the notebook ran;
2. `study`: the reference study with xferlab's defaults (ResNet-18 and -34 × frozen and fine-tuned; cuda_graphs
   auto), its training seconds (feature pass + training loop) added up: `reference_study_training_seconds`;
3. `graphs_off`: the ResNet-18 runs again with cuda_graphs off, to show what the graphs change (speed and val acc);
4. `bench_256`: `xferlab bench` of ResNet-18 at 256², batch 256, with the share of the measured bf16 matmul rate;
5. `ddp`: the ResNet-18 fine-tune launched by torchrun as one rank (DDP; graphs do not apply) against the plain
   process running the same loop (graphs off);
6. `backbones`: `xferlab bench` of the seven built-in backbones at 224², batch 32 and 256.
Random initial weights everywhere (the GPU machine is offline); speed does not depend on the weights.
Speed-ups (`frozen_speedup`, `finetune_speedup`) are wall seconds of the reference run over wall seconds of xferlab's
default run in this same process (imports excluded, everything from data loading to the written run folder
included), as benchmarks/compare_reference.py defines them; training-only ratios sit beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu_study.json"
# The seven backbones xferlab registers itself (docs/backbones.md); other registered ones come from optional extras.
BUILT_IN = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "efficientnet_lite0",
            "efficientnet_lite2")


@dataclass(frozen=True)
class Sizes:
    image: int  # the reference study's image side
    n_per_class: int  # train pool per class (80 % train, 20 % val)
    n_test_per_class: int
    epochs: int
    batch: int  # the study's training batch
    bench_image: int
    bench_batch: int
    bench_steps: int
    zoo_image: int
    zoo_batches: tuple[int, ...]
    zoo_steps: tuple[int, ...]  # timed steps per zoo batch size
    device: str
    threads: int | None  # torch CPU threads (None: torch's choice)


FULL = Sizes(image=256, n_per_class=1000, n_test_per_class=200, epochs=30, batch=32, bench_image=256,
             bench_batch=256, bench_steps=12, zoo_image=224, zoo_batches=(32, 256), zoo_steps=(24, 6), device="cuda",
             threads=None)
# One CPU thread: on a shared CPU, OpenMP's spin-waiting makes tiny ops many times slower with two
# (docs/performance/index.md).
SMOKE = Sizes(image=32, n_per_class=8, n_test_per_class=4, epochs=1, batch=4, bench_image=32, bench_batch=4,
              bench_steps=1, zoo_image=32, zoo_batches=(2,), zoo_steps=(1,), device="cpu", threads=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing")
    p.add_argument("--out", type=Path, help=f"JSON file (default {DEFAULT_OUT.relative_to(ROOT)}; smoke: a temp dir)")
    p.add_argument("--work", type=Path, help="folder for phantoms and run folders (default: a temporary one)")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out: " + ", ".join(SECTIONS))
    return p.parse_args(argv)


# ---- sections ----------------------------------------------------------------------------------------------------


def environment(ctx) -> dict:
    import torch

    from xferlab.hardware import cpu_name

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpu": cpu_name(), "device": "cpu"}
    if ctx.sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", driver=_driver_version())
    return env


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def reference(ctx) -> dict:
    """The notebook loop, ResNet-18 frozen and fine-tuned, timed the way compare_reference.py times it."""
    import torch

    sys.path.insert(0, str(HERE))
    from reference_loop import run_reference

    from xferlab.backbones.registry import create_model

    out = {}
    for regime in ("frozen", "finetune"):
        torch.backends.cudnn.benchmark = False  # the notebook's setting; xferlab's runs turn it on for themselves
        torch.manual_seed(0)  # the same initial weights as xferlab's run of the same seed
        model = create_model("resnet18", 2, "none", image_size=ctx.sizes.image)
        t0 = time.perf_counter()
        r = run_reference(ctx.data, model, regime, ctx.sizes.epochs, ctx.sizes.batch, device=ctx.sizes.device)
        r["wall_s"] = time.perf_counter() - t0
        out[regime] = r
        del model
        _free(ctx)
    return out


def _xferlab_run(ctx, backbone: str, regime: str, name: str, **settings) -> dict:
    from xferlab.config import DataConfig, TrainConfig
    from xferlab.engine.run import train

    cfg = TrainConfig(data=DataConfig(path=ctx.data), backbone=backbone, weights="none", regime=regime,
                      epochs=ctx.sizes.epochs, batch_size=ctx.sizes.batch, device=ctx.sizes.device,
                      num_threads=ctx.sizes.threads, **settings)
    t0 = time.perf_counter()
    m = train(cfg, ctx.work / "runs" / name, overwrite=True, progress=False).metrics
    wall = time.perf_counter() - t0
    _free(ctx)
    return {"wall_s": wall, "train_s": m["train_seconds"], "feature_s": m["feature_seconds"],
            "training_s": m["train_seconds"] + m["feature_seconds"], "eval_s": m["eval_seconds"],
            "best_epoch": m["best_epoch"], "val_acc": m["val"]["accuracy"],
            "test_acc": (m["test"] or {}).get("accuracy"), "accel": m["accel"], "settings": settings}


def study(ctx) -> dict:
    return {f"{b}-{r}": _xferlab_run(ctx, b, r, f"{b}-{r}") for b in ("resnet18", "resnet34")
            for r in ("frozen", "finetune")}


def graphs_off(ctx) -> dict:
    return {f"resnet18-{r}": _xferlab_run(ctx, "resnet18", r, f"resnet18-{r}-nographs", cuda_graphs="off")
            for r in ("frozen", "finetune")}


def _bench(ctx, backbone: str, image: int, batch: int, steps: int) -> dict:
    from xferlab.engine.bench import bench

    warmup = min(3, steps) if ctx.sizes.device == "cuda" else 0
    r = bench(backbone, image, batch, ctx.sizes.device, steps=steps, warmup=warmup, matmul_flops=ctx.matmul)
    _free(ctx)
    keep = ("backbone", "image_size", "batch_size", "amp", "channels_last", "train_images_per_s",
            "inference_images_per_s", "train_matmul_fraction", "inference_matmul_fraction", "matmul_flops_per_s",
            "flops_per_image", "peak_device_mib")
    return {k: r[k] for k in keep}


def bench_256(ctx) -> dict:
    return _bench(ctx, "resnet18", ctx.sizes.bench_image, ctx.sizes.bench_batch, ctx.sizes.bench_steps)


def backbones(ctx) -> dict:
    out = {}
    for name in BUILT_IN:
        for batch, steps in zip(ctx.sizes.zoo_batches, ctx.sizes.zoo_steps, strict=True):
            try:
                out[f"{name}@{batch}"] = _bench(ctx, name, ctx.sizes.zoo_image, batch, steps)
            except Exception as err:  # noqa: BLE001  (one backbone out of memory must not lose the others)
                out[f"{name}@{batch}"] = {"error": f"{type(err).__name__}: {err}"}
                _free(ctx)
    return out


def ddp(ctx) -> dict:
    """One torchrun rank (DDP, nccl on CUDA / gloo on CPU) against the plain process running the same loop."""
    run = ctx.work / "runs" / "resnet18-finetune-ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "xferlab",
           "train", "--data", str(ctx.data), "--backbone", "resnet18", "--weights", "none", "--regime", "finetune",
           "--epochs", str(ctx.sizes.epochs), "--batch-size", str(ctx.sizes.batch), "--device", ctx.sizes.device,
           "--out", str(run), "--overwrite"]
    if ctx.sizes.threads:
        cmd += ["--num-threads", str(ctx.sizes.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=ctx.ddp_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-2000:]}")
    m = json.loads((run / "metrics.json").read_text())
    plain = ctx.results.get("graphs_off", {}).get("resnet18-finetune") or _xferlab_run(
        ctx, "resnet18", "finetune", "resnet18-finetune-nographs", cuda_graphs="off")
    default = ctx.results.get("study", {}).get("resnet18-finetune", {})
    return {"ddp_train_s": m["train_seconds"], "ddp_val_acc": m["val"]["accuracy"],
            "ddp_process_wall_s": time.perf_counter() - t0, "distributed": m["distributed"]["backend"],
            "plain_train_s": plain["train_s"], "plain_val_acc": plain["val_acc"],
            "ddp_over_plain": m["train_seconds"] / plain["train_s"],
            "ddp_over_default": m["train_seconds"] / default["train_s"] if default else None}


SECTIONS = {"reference": reference, "study": study, "graphs_off": graphs_off, "bench_256": bench_256, "ddp": ddp,
            "backbones": backbones}


# ---- the run -------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    sizes: Sizes
    work: Path
    data: Path
    matmul: float
    results: dict
    ddp_timeout: float


def _free(ctx) -> None:
    import gc

    import torch

    gc.collect()
    if ctx.sizes.device == "cuda":
        torch.cuda.empty_cache()


def warm_up(device: str) -> None:
    """CUDA context, cuBLAS and cuDNN handles before anything is timed, so the first timed run (the reference's)
    does not pay for them."""
    import torch

    from xferlab.backbones.registry import create_model

    model = create_model("resnet18", 2, "none", image_size=64).to(device)
    x = torch.randn(4, 3, 64, 64, device=device)
    model(x).sum().backward()
    if device == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x).sum().backward()
        torch.cuda.synchronize()


def summary(results: dict) -> dict:
    """The issue's top-level keys, computed from the sections that finished (None where one is missing)."""
    ref, st = results.get("reference", {}), results.get("study", {})
    runs = [st.get(f"{b}-{r}") for b in ("resnet18", "resnet34") for r in ("frozen", "finetune")]
    top = {"device": results.get("environment", {}).get("device"),
           "reference_study_training_seconds": (sum(r["training_s"] for r in runs) if all(runs) else None)}
    for regime in ("frozen", "finetune"):
        a, b = st.get(f"resnet18-{regime}"), ref.get(regime)
        top[f"{regime}_speedup"] = b["wall_s"] / a["wall_s"] if a and b else None
        top[f"{regime}_training_speedup"] = b["train_s"] / a["training_s"] if a and b else None
    bench = results.get("bench_256") or {}
    top["bench_256_train_matmul_fraction"] = bench.get("train_matmul_fraction")
    top["ddp_over_plain"] = (results.get("ddp") or {}).get("ddp_over_plain")
    return top


def write(path: Path, results: dict) -> None:
    """The JSON, atomically: the issue's keys first, then every section."""
    doc = {**summary(results), **results}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    import torch

    import xferlab.backbones.zoo  # noqa: F401  (registers the backbones)
    from xferlab.engine.accel import num_threads

    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; run with --smoke on a CPU machine", file=sys.stderr)
        return 2
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        print(f"error: --skip {','.join(sorted(unknown))}: unknown; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="xferlab-gpu-study-"))
    out = args.out or (work / "gpu_study.json" if args.smoke else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    with num_threads(sizes.threads):  # restored afterwards: the smoke test runs in the test process
        results = run_sections(sizes, work, out, args.smoke, skip)
    print(json.dumps(summary(results), indent=2))
    print(f"wrote {out}", file=sys.stderr)
    if args.work is None and not args.smoke:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_sections(sizes: Sizes, work: Path, out: Path, smoke: bool, skip: set[str]) -> dict:
    """Phantoms, warm-up and the matmul yardstick, then every section not skipped; the JSON after each."""
    import torch

    from xferlab.data.phantoms import generate_phantoms
    from xferlab.evaluation.timing import matmul_flops_per_s

    t0 = time.perf_counter()
    data = generate_phantoms(work / "phantoms", size=sizes.image, n_per_class=sizes.n_per_class,
                             n_test_per_class=sizes.n_test_per_class, shift="acquisition")
    warm_up(sizes.device)
    dtype = torch.bfloat16 if sizes.device == "cuda" else torch.float32
    matmul = matmul_flops_per_s(torch.device(sizes.device), dtype, size=None if sizes.device == "cuda" else 512)
    ctx = Context(sizes, work, data, matmul, {}, ddp_timeout=180 if sizes.device == "cuda" else 300)
    ctx.results["environment"] = {**environment(ctx), "matmul_flops_per_s": matmul,
                                  "matmul_dtype": str(dtype).replace("torch.", ""), "sizes": asdict(sizes),
                                  "smoke": smoke, "setup_s": time.perf_counter() - t0}
    for name, section in SECTIONS.items():
        if name in skip:
            continue
        t = time.perf_counter()
        print(f"== {time.strftime('%H:%M:%S')} {name}", file=sys.stderr, flush=True)
        try:
            ctx.results[name] = section(ctx)
        except Exception as err:  # noqa: BLE001  (record it; the next sections still run)
            traceback.print_exc()
            ctx.results[name] = {"error": f"{type(err).__name__}: {err}"}
        ctx.results.setdefault("seconds", {})[name] = time.perf_counter() - t
        write(out, ctx.results)
    ctx.results.setdefault("seconds", {})["total"] = time.perf_counter() - t0
    write(out, ctx.results)
    return ctx.results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())

"""`xferlab bench`: training-step and inference throughput of one backbone at one image size, and its FLOPs per image.

Synthetic uint8 images go through the engine's own code (Preprocess, train_one_epoch, the accel settings, the
fixed-backbone runtime), after warm-up steps and with device synchronisation around the timed ones, so the figures
are what a `xferlab train` step and a fixed pass (features, predict, the audit's embeddings) cost. FLOPs come from
torch.utils.flop_counter.FlopCounterMode: convolutions and matrix products only (BatchNorm, activations and the
optimizer are not counted, the usual convention), set beside the machine's matmul FLOP/s measured in the same run:
in fp32 and, for a bf16 run, in bf16 too, each before, between and after the timed passes (the median), so that a
busy neighbour slows the yardstick as it slows the passes.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import TransferModel, create_model
from xferlab.data.batches import Preprocess, batch_indices
from xferlab.data.config import MAX_IMAGE_SIZE
from xferlab.engine.accel import Accel, accelerator_scope, native_bf16, num_threads, resolve_accel
from xferlab.engine.loop import make_adam, train_one_epoch
from xferlab.engine.runtime import fixed_pass
from xferlab.errors import XferlabError
from xferlab.evaluation.timing import Timer, inference_throughput, matmul_flops_per_s, peak_rss_bytes
from xferlab.hardware import cpu_name

MIN_IMAGE_SIZE = 32  # ResNets downsample 32x: below this the last stage has no spatial extent left


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each requested gradient of a convolution costs what its forward costs.

    Replaces torch's formula (torch 2.14), which counts the weight gradient of a grouped convolution as if it were
    ungrouped: C times too many FLOPs for a depthwise one, 40x too many per EfficientNet-Lite0 training step.
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """FLOPs per image of one forward pass (labels None) or one training step (forward + backward) on `batch`.

    Counted on a copy of the model on the meta device: shapes only, no arithmetic, and the model itself (its
    BatchNorm statistics, its gradients) is left untouched. Counted eagerly: what torch.compile fuses away are the
    uncounted elementwise ops anyway.
    """
    meta = copy.deepcopy(model).to("meta")
    x = torch.empty(batch.shape, device="meta")
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    if labels is None:
        meta.eval()
        with counter, torch.no_grad():
            meta(x)
    else:
        meta.train()
        with counter:
            F.cross_entropy(meta(x), torch.empty(labels.shape, dtype=torch.long, device="meta")).backward()
    return counter.get_total_flops() / len(batch)


# A benchmark batch beyond this measures the allocator, not the model (and is a typo more often than a plan).
MAX_BATCH = 4096


def _check(image_size: int, batch_size: int, steps: int, warmup: int) -> None:
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise XferlabError(f"--image-size must be at least {MIN_IMAGE_SIZE} and at most {MAX_IMAGE_SIZE}, "
                           f"got {image_size}")
    if batch_size > MAX_BATCH:
        raise XferlabError(f"--batch-size must be at most {MAX_BATCH}, got {batch_size}")
    for name, value, low in (("batch-size", batch_size, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
        if value < low:
            raise XferlabError(f"--{name} must be at least {low}, got {value}")
    if warmup > steps:  # the warm-up batches are taken from the timed ones
        raise XferlabError(f"--warmup ({warmup}) must be at most --steps ({steps})")


def _train_rate(forward, model, images, labels, batch_size: int, steps: int, warmup: int, device) -> float:
    """Training images/s over `steps` timed steps of train_one_epoch, after `warmup` untimed ones."""
    optimizer = make_adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    if warmup:
        n = warmup * batch_size
        train_one_epoch(forward, images[:n], labels[:n], optimizer, None,
                        batch_indices(n, batch_size, generator, device=images.device), device)
    timer = Timer(device)
    with timer:  # train_one_epoch ends in .item(): the timed block waits for the device's last step
        train_one_epoch(forward, images, labels, optimizer, None,
                        batch_indices(len(images), batch_size, generator, device=images.device), device)
    return len(images) / timer.seconds


def _model(backbone: str, weights: str, regime: str, image_size: int, accel: Accel) -> TransferModel:
    model = create_model(backbone, 2, weights, image_size=image_size)
    apply_regime(model, parse_regime(regime))
    return accel.prepare(model)


# The fixed pass's runtime is chosen for a pass over this many images (`auto` weighs the work of the whole pass):
# the reference study's 2,000 + 400 images.
DATASET_IMAGES = 2400


class Yardstick:
    """The matmul FLOP/s in fp32 and, where the device has it natively, bf16, sampled next to the timed passes;
    `median()` of each."""

    def __init__(self, device: torch.device, size: int | None):
        self.device, self.size = device, size
        dtypes = (torch.float32, torch.bfloat16) if native_bf16(device) else (torch.float32,)
        self.samples: dict[torch.dtype, list[float]] = {dt: [] for dt in dtypes}

    def sample(self) -> None:
        for dtype, values in self.samples.items():
            values.append(matmul_flops_per_s(self.device, dtype, size=self.size))

    def median(self, dtype: torch.dtype) -> float:
        return statistics.median(self.samples[dtype])


def bench(backbone: str, image_size: int, batch_size: int = 32, device: str = "auto", *, weights: str = "none",
          regime: str = "finetune", amp: str = "auto", channels_last: str = "auto", compile: bool = False,
          steps: int = 4, warmup: int = 2, threads: int | None = None, matmul_size: int | None = None,
          matmul_flops: float | None = None, runtime: str = "auto", dataset_images: int = DATASET_IMAGES) -> dict:
    """Throughput and FLOPs of `backbone` on image_size² grayscale uint8 images; a JSON-ready dict.

    The training step is the uncached one in `regime` (a frozen backbone still runs forward every step) with the
    accel settings `xferlab train` would resolve for it; inference is the whole model in eval mode through the
    fixed-backbone runtime (`runtime`, chosen as for a pass over `dataset_images` images). `*_matmul_fraction` =
    achieved FLOP/s / the run's matmul FLOP/s in the pass's own precision; `*_fp32_matmul_fraction` the same over
    fp32's (the issue's yardstick: a bf16 pass may exceed 1).
    `matmul_flops` passes the yardstick in when the caller measured it once for many benches (gpu_study.py).
    """
    from xferlab.engine.run import resolve_device

    _check(image_size, batch_size, steps, warmup)
    dev = resolve_device(device)
    accel = resolve_accel(dev, amp, channels_last, compile, trains_backbone=not parse_regime(regime).cache_features,
                          image_side=image_size)
    yardstick = Yardstick(dev, matmul_size)
    with num_threads(threads), accelerator_scope():
        model = _model(backbone, weights, regime, image_size, accel)
        preprocess = Preprocess.for_input(model.spec.input, dev, channels_last=accel.channels_last)
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (steps * batch_size, image_size, image_size), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 2, (len(images),), generator=gen)
        images, labels = images.to(dev), labels.to(dev)  # resident, as a run's data is when it fits
        forward = accel.forward(model, preprocess)  # what a training run uses
        with accel.autocast():
            flops = {"train_step": count_flops(model, preprocess(images[:batch_size]), labels[:batch_size]),
                     "inference": count_flops(model, preprocess(images[:batch_size]))}
        if matmul_flops is None:
            yardstick.sample()
        train_rate = _train_rate(forward, model, images, labels, batch_size, steps, warmup, dev)
        if matmul_flops is None:
            yardstick.sample()
        inference = fixed_pass(model, preprocess, images[:batch_size], runtime, n_images=dataset_images)
        infer_rate = inference_throughput(inference, images, batch_size, dev, warmup_batches=max(warmup, 1))
        if matmul_flops is None:
            yardstick.sample()
        used_threads = torch.get_num_threads()
    peaks = ({dt: matmul_flops for dt in yardstick.samples} if matmul_flops is not None
             else {dt: yardstick.median(dt) for dt in yardstick.samples})
    return _report(backbone, regime, weights, image_size, batch_size, accel, used_threads, steps, warmup,
                   flops, train_rate, infer_rate, peaks, inference.record.as_dict())


def _report(backbone, regime, weights, image_size, batch_size, accel: Accel, threads, steps, warmup,
            flops, train_rate, infer_rate, peaks: dict, runtime: dict) -> dict:
    dev = accel.device
    fp32 = peaks[torch.float32]
    peak = peaks.get(accel.amp_dtype or torch.float32, fp32)  # the training step's precision
    infer_peak = peaks.get(torch.bfloat16, fp32) if runtime["path"] == "torch-bf16" else fp32  # the pass's
    train_flops, infer_flops = train_rate * flops["train_step"], infer_rate * flops["inference"]
    return {
        "backbone": backbone, "regime": regime, "weights": weights, "image_size": image_size,
        "batch_size": batch_size, **accel.describe(), "native_bf16": native_bf16(dev),
        "threads": threads if dev.type == "cpu" else None, "steps": steps, "warmup_steps": warmup,
        "machine": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "runtime": runtime,
        "flops_per_image": flops,
        "train_images_per_s": train_rate,
        "inference_images_per_s": infer_rate,
        "matmul_flops_per_s": peak,
        "fp32_matmul_flops_per_s": fp32,
        "bf16_matmul_flops_per_s": peaks.get(torch.bfloat16),
        "train_flops_per_s": train_flops,
        "inference_flops_per_s": infer_flops,
        "train_matmul_fraction": train_flops / peak,
        "inference_matmul_fraction": infer_flops / infer_peak,
        "train_fp32_matmul_fraction": train_flops / fp32,
        "inference_fp32_matmul_fraction": infer_flops / fp32,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "peak_device_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }

"""`xferlab export RUN --format onnx`: the run's model as ONNX, with its preprocessing baked in and described in the
model's metadata.

The graph takes uint8 images N×C×H×W at the run's image size (C = the backbone's input channels: 3 for ImageNet
backbones; resizing and gray -> C channels stay outside: the metadata says how) and returns class probabilities N×K;
the batch axis is dynamic. Inside: cast to float, the intensity mapping (x / 255 onto the value range, then
(x - mean) / std: the training Preprocess's own scale and shift), the network, softmax.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

import xferlab
from xferlab import artifacts, extras, files
from xferlab.errors import XferlabError
from xferlab.use.model import LoadedRun, Preprocessing, load_run

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXAMPLE_BATCH = 2  # the traced example; any batch size runs (the axis is exported as dynamic)


class _WithPreprocessing(nn.Module):
    """uint8 N×C×H×W -> probabilities, the run's intensity mapping as one multiply-add: the scale and shift of the
    training code's own Preprocess (Preprocess.for_input), not a second derivation of them."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        preprocess = preprocessing.batch_preprocess("cpu")
        self.register_buffer("scale", preprocess.scale.clone())
        self.register_buffer("shift", preprocess.shift.clone())

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale + self.shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(images)).softmax(1)


def _onnx_modules():
    extras.require("onnxscript", "onnx", "ONNX export")  # torch's exporter needs it
    return extras.require("onnx", "onnx", "ONNX export")


def metadata(run: LoadedRun) -> dict[str, str]:
    """What a consumer of the .onnx file needs to feed it, as ONNX metadata_props (strings)."""
    p = run.preprocessing
    spec = p.input
    return {
        "xferlab_version": xferlab.__version__,
        "backbone": run.config.backbone,
        "regime": run.config.regime,
        "class_names": json.dumps(run.class_names),
        "image_size": json.dumps(list(p.image_size)),
        "input": f"{INPUT_NAME}: uint8 N×{spec.channels}×{p.image_size[0]}×{p.image_size[1]}, batch axis dynamic",
        "input_channels": str(spec.channels),
        "gray_images": "repeat the gray channel 3 times" if spec.channels == 3 else "as they are (1 channel)",
        "resize": "not in the graph: resize to image_size first (antialiased bilinear, as xferlab's data sources)",
        "preprocessing_baked_in": f"yes: float(x) / 255 mapped onto {list(spec.value_range)}, then (x - mean) / std "
                                  "per channel",
        "value_range": json.dumps(list(spec.value_range)),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "output": f"{OUTPUT_NAME}: float32 N×{len(run.class_names)} softmax probabilities in class_names order",
        "decision_rule": "argmax",
    }


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, opset: int | None = None) -> Path:
    """Export the run in `run_dir` to ONNX at `out` (default RUN/model.onnx), written atomically."""
    onnx = _onnx_modules()
    run = load_run(run_dir, "cpu")
    out = Path(out) if out is not None else run.path / artifacts.MODEL_ONNX
    if out.is_dir():
        raise XferlabError(f"--out {out} is a folder; give a file name such as {out / artifacts.MODEL_ONNX}")
    if not out.parent.is_dir():
        raise XferlabError(f"--out {out}: give a file in an existing folder, e.g. {run.path / artifacts.MODEL_ONNX}")
    spec = run.preprocessing.input
    if spec.size is not None and (spec.size, spec.size) != run.preprocessing.image_size:
        raise XferlabError(f"{run.path}: backbone {run.config.backbone} resizes every batch to {spec.size}×{spec.size} "
                           f"after the intensity mapping, which the exported graph does not do; export is for "
                           f"backbones without a fixed input size (or runs trained at that size)")
    wrapped = _WithPreprocessing(run.model, run.preprocessing).eval()
    example = torch.zeros((EXAMPLE_BATCH, spec.channels, *run.preprocessing.image_size), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter, not the user's business
        program = torch.onnx.export(wrapped, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamo=True, opset_version=opset, verbose=False,
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata(run))
    onnx.checker.check_model(model)
    files.write_file(out, lambda f: f.write(model.SerializeToString()))
    return out

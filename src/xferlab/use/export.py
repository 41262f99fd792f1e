"""`xferlab export RUN --format onnx`: the run's model as ONNX, with its preprocessing baked in and described in the
model's metadata.

The graph takes uint8 images N×C×H×W at the run's image size (C = 3 for every ImageNet backbone; resizing and gray ->
3 channels stay outside: the metadata says how) and returns class probabilities N×K; the batch axis is dynamic.
Inside: cast to float, the intensity mapping (x / 255 onto the value range, then (x - mean) / std), the network,
softmax, as xferlab.data.batches.Preprocess and predict do.
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
from xferlab import io
from xferlab.errors import XferlabError
from xferlab.use.model import LoadedRun, Preprocessing, load_run

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXAMPLE_BATCH = 2  # the traced example; any batch size runs (the axis is exported as dynamic)


class _WithPreprocessing(nn.Module):
    """uint8 N×C×H×W -> probabilities, the run's intensity mapping folded into one multiply-add."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        scale, shift = preprocessing.scale_shift
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float() * self.scale + self.shift).softmax(1)


def _onnx_modules():
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise XferlabError("ONNX export needs onnx and onnxscript; install them with pip install 'xferlab[onnx]'") \
            from None
    return onnx


def metadata(run: LoadedRun) -> dict[str, str]:
    """What a consumer of the .onnx file needs to feed it, as ONNX metadata_props (strings)."""
    p = run.preprocessing
    return {
        "xferlab_version": xferlab.__version__,
        "backbone": run.config.backbone,
        "regime": run.config.regime,
        "class_names": json.dumps(run.class_names),
        "image_size": json.dumps(list(p.image_size)),
        "input": f"{INPUT_NAME}: uint8 N×{p.channels}×{p.image_size[0]}×{p.image_size[1]}, batch axis dynamic",
        "input_channels": str(p.channels),
        "gray_images": "repeat the gray channel 3 times" if p.channels == 3 else "as they are (1 channel)",
        "resize": "not in the graph: resize to image_size first (antialiased bilinear, as xferlab's data sources)",
        "preprocessing_baked_in": f"yes: float(x) / 255 mapped onto {list(p.value_range)}, then (x - mean) / std "
                                  "per channel",
        "value_range": json.dumps(list(p.value_range)),
        "mean": json.dumps(list(p.mean)),
        "std": json.dumps(list(p.std)),
        "output": f"{OUTPUT_NAME}: float32 N×{len(run.class_names)} softmax probabilities in class_names order",
        "decision_rule": "argmax",
    }


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, opset: int | None = None) -> Path:
    """Export the run in `run_dir` to ONNX at `out` (default RUN/model.onnx), written atomically."""
    onnx = _onnx_modules()
    run = load_run(run_dir, "cpu")
    out = Path(out) if out is not None else run.path / "model.onnx"
    if out.is_dir() or not out.parent.is_dir():
        raise XferlabError(f"--out {out}: give a file in an existing folder, e.g. {run.path / 'model.onnx'}")
    if run.preprocessing.fixed_size is not None:
        raise XferlabError(f"{run.path}: backbone {run.config.backbone} resizes every batch to a fixed side, which "
                           "the exported graph does not do; export is for backbones without a fixed input size")
    wrapped = _WithPreprocessing(run.model, run.preprocessing).eval()
    example = torch.zeros((EXAMPLE_BATCH, run.preprocessing.channels, *run.preprocessing.image_size), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter, not the user's business
        program = torch.onnx.export(wrapped, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamo=True, opset_version=opset, verbose=False,
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata(run))
    onnx.checker.check_model(model)
    io.write_file(out, lambda f: f.write(model.SerializeToString()))
    return out

"""A fixed backbone's features through ONNX Runtime on the CPU, for passes over a whole dataset (the audit's embedding).

Measured with `python benchmarks/audit_scale.py runtimes` (EfficientNet-Lite0 at 32 px, 1,024 phantoms, one thread,
both in one process): ONNX Runtime about 4× faster than eager PyTorch (README). The body is exported in memory with
torch's TorchScript-based exporter (for Lite0 it took seconds where the dynamo exporter took about 20 in one trial)
and its output is checked against PyTorch's on the first batch; any failure (onnxruntime missing, an operator the
exporter cannot write, a mismatch) leaves the caller on PyTorch with the reason, so the runtime changes speed, never
results beyond float rounding.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch

log = logging.getLogger(__name__)

# Agreement asked of ONNX Runtime's features with PyTorch's on the check batch: relative to the largest feature.
TOLERANCE = 1e-3


class OnnxFeatures:
    """`features(x)`: the body's output for a float batch x (N×C×H×W, already preprocessed) as float32 numpy."""

    def __init__(self, body: torch.nn.Module, example: torch.Tensor, threads: int):
        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes, not the user's business
            torch.onnx.export(body, (example,), buffer, input_names=["x"], output_names=["features"],
                              dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no spin-waiting between calls: the audit runs other work beside the embedding (audit/scan.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = body(example).float().numpy()
        got = self(example)
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX Runtime's features have shape {got.shape}, PyTorch's {expected.shape}")
        scale = max(float(np.abs(expected).max()), 1e-6)
        error = float(np.abs(got - expected).max()) / scale
        if not error <= TOLERANCE:
            raise RuntimeError(f"ONNX Runtime's features differ from PyTorch's by {error:.2g} of their scale")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"x": x.detach().float().contiguous().numpy()})[0]


def onnx_features(body: torch.nn.Module, example: torch.Tensor, threads: int, required: bool) -> OnnxFeatures | None:
    """OnnxFeatures for `body`, or None (with the reason logged) when it cannot be used and is not `required`; when
    it is, a RuntimeError with the reason."""
    try:
        return OnnxFeatures(body, example, threads)
    except Exception as err:  # noqa: BLE001 - any exporter or runtime failure means: stay on PyTorch
        if required:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]  # exporter messages run many lines
            raise RuntimeError(f"ONNX Runtime cannot run this backbone: {first}") from err
        log.info("embedding with PyTorch: ONNX Runtime is not usable for this backbone (%s)", err)
        return None

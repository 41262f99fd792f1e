"""A trained run in Python: `load_run(path)` -> LoadedRun with its config, metrics, class names, the model in eval mode
and predict(x) -> N×K class probabilities, with the run's own preprocessing (image size, then the backbone's input
record saved in model.pt: channels, intensity mapping, normalisation, fixed side) read from the run folder. Loading a
run flagged degenerate (xferlab.evaluation.flags: one class for most cases, ...) logs one warning.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xferlab.backbones.registry import TransferModel, create_model
from xferlab.config import TrainConfig
from xferlab.data.batches import Preprocess
from xferlab.data.images import channels_first, decode_pil, read_image_file, resize_image, stack_images, to_uint8
from xferlab.engine.run import resolve_device
from xferlab.engine.runtime import CHECK_IMAGES, FixedPass, RuntimeRecord, check_runtime, eager, fixed_pass
from xferlab.engine.testtime_bn import TEST_BN_MODES, adapted_model
from xferlab.errors import XferlabError, did_you_mean
from xferlab.evaluation.flags import saved_run_flags
from xferlab.inputs import InputSpec
from xferlab.use.runfolder import Checkpoint, TrainedRun, read_trained_run

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class Preprocessing:
    """What an input goes through before the model: uint8 -> resize to image_size (antialiased bilinear, as the data
    sources do) -> the backbone's input record as in training (xferlab.data.batches.Preprocess.for_input: gray
    broadcast to its channels, x / 255 mapped onto its value range, (x - mean) / std per channel, its fixed side)."""

    image_size: tuple[int, int]
    input: InputSpec

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> Preprocessing:
        return cls(checkpoint.image_size, checkpoint.input)

    def batch_preprocess(self, device: torch.device | str = "cpu") -> Preprocess:
        """The training code's Preprocess for this run."""
        return Preprocess.for_input(self.input, device)


def build_model(checkpoint: Checkpoint) -> TransferModel:
    """The run's architecture with its trained weights, in eval mode on the CPU."""
    model = create_model(checkpoint.backbone, len(checkpoint.class_names), weights="none",
                         image_size=checkpoint.image_size[0])
    try:
        model.load_state_dict(checkpoint.state_dict)
    except RuntimeError as err:
        raise XferlabError(f"model.pt does not fit backbone '{checkpoint.backbone}' "
                           f"({str(err).splitlines()[0]}); the run folder is damaged, retrain it") from None
    return model.eval()


def as_images(x) -> list[np.ndarray] | np.ndarray:
    """predict's input as uint8 images (H×W or 3×H×W each): a path, PIL image, array, or a sequence of them."""
    if isinstance(x, np.ndarray):
        return to_uint8(channels_first(x[None] if x.ndim == 2 else x, "array"), "array")
    if isinstance(x, (str, os.PathLike, Image.Image)):
        x = [x]
    if not isinstance(x, Sequence) or isinstance(x, (str, bytes)):
        raise XferlabError(f"cannot predict a {type(x).__name__}; give image paths, PIL images or a uint8 array")
    images = []
    for i, item in enumerate(x):
        if isinstance(item, (str, os.PathLike)):
            images.append(read_image_file(item))
        elif isinstance(item, Image.Image):
            images.append(decode_pil(item, f"image {i}"))
        elif isinstance(item, np.ndarray) and item.ndim in (2, 3):
            images.append(to_uint8(item if item.ndim == 2 or item.shape[0] in (1, 3) else item.transpose(2, 0, 1),
                                   f"array {i}"))
        else:
            raise XferlabError(f"item {i} is a {type(item).__name__}; give image paths, PIL images or uint8 arrays")
    return images


def check_test_bn(mode: str) -> str:
    if mode not in TEST_BN_MODES:
        raise XferlabError(f"test_bn must be one of {', '.join(TEST_BN_MODES)}, got {mode!r}"
                           f"{did_you_mean(str(mode), TEST_BN_MODES)}")
    return mode


class _Probabilities(torch.nn.Module):
    """The model with its softmax: what a prediction pass returns, and what the runtime's check compares."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float().softmax(1)


class LoadedRun:
    """A finished run ready to predict. Attributes: path, config (TrainConfig), metrics (metrics.json),
    class_names, model (TransferModel in eval mode), preprocessing, device, runtime (the setting predictions run
    under, xferlab.engine.runtime), test_bn ("off", or "adapt" for a copy from `adapted`), flags (split ->
    degenerate-run flags) and degenerate (any split flagged: warned once, on loading)."""

    test_bn: str = "off"

    def __init__(self, folder: TrainedRun, device: str = "cpu", runtime: str = "auto"):
        self.path: Path = folder.path
        self.config: TrainConfig = folder.config
        self.metrics: dict = folder.metrics
        self.class_names: list[str] = folder.checkpoint.class_names
        self.preprocessing = Preprocessing.of(folder.checkpoint)
        self.device = resolve_device(device)
        self.runtime = check_runtime(runtime)
        self.model: TransferModel = build_model(folder.checkpoint).to(self.device)
        self._preprocess = self.preprocessing.batch_preprocess(self.device)
        flagged = saved_run_flags(folder.metrics, folder.record.predictions, folder.record.groups)
        self.flags: dict[str, list[str]] = flagged["flags"]
        self.degenerate: bool = flagged["degenerate"]
        if self.degenerate:
            log.warning("%s is flagged as a degenerate run (%s): its predictions are unlikely to mean what its "
                        "accuracy suggests", self.path, flagged["flag_text"])
        self._pass: FixedPass | None = None
        self._chosen_for = 0  # images the runtime choice of `_pass` was made for (use_runtime; 0: none made)

    def __repr__(self) -> str:
        return (f"LoadedRun({str(self.path)!r}, backbone={self.config.backbone!r}, regime={self.config.regime!r}, "
                f"classes={self.class_names})")

    def prepare(self, images: Sequence[np.ndarray] | np.ndarray, where: str = "input") -> np.ndarray:
        """uint8 images (any size) -> one uint8 batch at the run's image size, gray or RGB as stacked."""
        size = self.preprocessing.image_size
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and tuple(images.shape[-2:]) == size:
            return images
        return stack_images([resize_image(im, size) for im in images], where, None)

    def use_runtime(self, example: np.ndarray, n_images: int) -> RuntimeRecord:
        """Choose (and check on `example`, uint8 images at the run's size) the path the next `n_images` predictions
        run through (xferlab.engine.runtime.fixed_pass, under this run's `runtime` setting)."""
        if self._pass is not None and self._chosen_for >= n_images:  # the same model: a choice made for as much work
            return self._pass.record  # holds (the audit's shortcut check predicts three times on the same images)
        example = torch.from_numpy(np.ascontiguousarray(example[:CHECK_IMAGES]))
        self._pass = fixed_pass(_Probabilities(self.model), self._preprocess, example, self.runtime,
                                n_images=n_images)
        self._chosen_for = n_images
        return self._pass.record

    @property
    def runtime_record(self) -> RuntimeRecord | None:
        """What ran the last predictions (None before any)."""
        return None if self._pass is None else self._pass.record

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (float32 N×K) of one uint8 batch already at the run's image size, through the path
        use_runtime chose (eager fp32 PyTorch before it is called)."""
        if self._pass is None:
            self._pass = FixedPass(eager(_Probabilities(self.model), self._preprocess),
                                   RuntimeRecord(self.runtime, "torch", "predict_batch before use_runtime"))
        return self._pass(torch.from_numpy(np.ascontiguousarray(batch))).cpu().numpy()

    def predict_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for batch in batches:
            yield self.predict_batch(self.prepare(batch))

    def adapted(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                seed: int = 0, min_images: int | None = None) -> LoadedRun:
        """A copy of this run whose BatchNorm statistics are re-estimated on `images` (test-time BatchNorm, AdaBN:
        xferlab.engine.testtime_bn.adapted_model); this run is untouched. Its predictions are transductive: they depend
        on the other images given. Refused below `min_images` (default: the run's test_bn_min_images)."""
        batch = torch.from_numpy(np.ascontiguousarray(self.prepare(images))).to(self.device)
        limit = self.config.test_bn_min_images if min_images is None else min_images
        other = copy.copy(self)
        other.model = adapted_model(self.model, batch, self._preprocess, batch_size, seed, limit)
        other.test_bn = "adapt"
        other._pass, other._chosen_for = None, 0  # another model: its predictions choose their path anew
        return other

    def predict(self, x, batch_size: int = DEFAULT_BATCH_SIZE, test_bn: str = "off") -> np.ndarray:
        """N×K class probabilities (columns in class_names order) for image paths (PNG/JPEG/TIFF/DICOM ...), PIL
        images, or a uint8 array N×H×W, N×H×W×C or N×C×H×W (one H×W image also works).

        test_bn="adapt": BatchNorm statistics re-estimated on these images first (`adapted`; transductive)."""
        check_test_bn(test_bn)
        images = as_images(x)
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        run = self.adapted(images, batch_size) if test_bn == "adapt" else self
        run.use_runtime(run.prepare(images[:CHECK_IMAGES]), len(images))
        chunks = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        return np.concatenate(list(run.predict_batches(chunks)))


def load_run(path: str | os.PathLike, device: str = "cpu", runtime: str = "auto") -> LoadedRun:
    """Load a run folder written by `xferlab train` (or one run of a study) for prediction on `device`; `runtime`
    says what runs its predictions (xferlab.engine.runtime: auto, onnxruntime, torch, torch-bf16, compile)."""
    return LoadedRun(read_trained_run(path), device, runtime)

"""Typed, validated configs for data and training runs; YAML in (safe loader) and out.

Every config rejects unknown keys, so a typo in a YAML file is an error that names the key rather than a silently
ignored setting.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from xferlab.data.config import MAX_SEED, DataConfig, Seed  # noqa: F401  (DataConfig, MAX_SEED: re-exported)
from xferlab.data.config import StrictModel as _Strict
from xferlab.errors import XferlabError, did_you_mean
from xferlab.files import YamlValues, read_yaml  # noqa: F401  (read_yaml: part of this module's API)

# Upper bound that catches a typo (an extra zero) before it allocates: 1024 threads is beyond any CPU this runs on.
MAX_THREADS = 1024
# The reference study's Adam learning rate (the course report: "Adam 1e-3"); hints about a diverged run name it.
DEFAULT_LR = 1e-3


def _known_regime(v: str) -> str:
    """parse_regime's check, its XferlabError turned into a ValueError so that build() adds the file, line and key."""
    from xferlab.backbones.regimes import parse_regime

    try:
        parse_regime(v)
    except XferlabError as err:
        raise ValueError(str(err)) from None
    return v


RegimeName = Annotated[str, AfterValidator(_known_regime)]  # a regime of xferlab.backbones.regimes, by name


def _known_backbone(v: str) -> str:
    """A registered backbone (did-you-mean otherwise), so a misspelt name fails when the config is read."""
    from xferlab.backbones.registry import get_spec  # importing xferlab.backbones registers them

    try:
        get_spec(v)
    except XferlabError as err:
        raise ValueError(str(err)) from None
    return v


BackboneName = Annotated[str, AfterValidator(_known_backbone)]  # a backbone of xferlab.backbones, by name


TrackerName = Literal["mlflow", "tensorboard"]

# Where runs, the audit's re-splits, bench and predict compute (xferlab.engine.run.resolve_device): the one list of
# --device choices.
DeviceName = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(DeviceName)
# How a fixed backbone's passes run (xferlab.engine.runtime, which decides and records it): frozen / adabn features,
# test-time BatchNorm, predict, the audit's embeddings, Grad-CAM below its layer.
RuntimeName = Literal["auto", "onnxruntime", "torch", "torch-bf16", "compile"]
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)
# Training steps on a CPU with native bf16 (xferlab.engine.accel): `auto` turns bf16 autocast and channels_last on
# for a backbone that trains on images of at least this side. At 224 px both made fine-tuning steps faster for every
# benchmark backbone in every run; at 64 px the runs disagreed for EfficientNet-Lite0 (bf16 slower in two, faster in
# one: docs/performance-real-sizes.md), so small images, where the tests and golden runs live, stay in fp32.
CPU_BF16_MIN_SIDE = 128
RUNTIME_HELP = ("what runs a fixed backbone's passes (features, test-time BatchNorm, predict, audit embeddings): "
                "torch (eager fp32), onnxruntime (CPU), torch-bf16 (native bf16 only), compile; auto: onnxruntime "
                "on the CPU unless the pass is too small for the export to pay back, torch-bf16 on a GPU with native "
                "bf16; checked against eager fp32 on the first images, falling back with a warning")


TRACK_FIELD = Field([], description="experiment trackers to mirror into (xferlab.tracking): mlflow, tensorboard; "
                   "they never change results")
TRACK_URI_FIELD = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a SQLite store "
                        "mlflow.db beside the output folder")


class TrackOptions(_Strict):
    """The tracking section of an audit YAML (train and study configs have the same two keys)."""

    track: list[TrackerName] = TRACK_FIELD
    track_uri: str | None = TRACK_URI_FIELD


class TrainConfig(_Strict):
    """One training run. Defaults are the reference study's (Adam 1e-3, cosine per step, batch 32, 30 epochs)."""

    data: DataConfig
    backbone: BackboneName = Field(
        "resnet18", description="registered backbone, timm:NAME or xrv:WEIGHTS (xferlab backbones --all)")
    weights: str = Field("imagenet", description="imagenet or pretrained (the backbone's own: chest X-rays for xrv:), "
                         "none, or a state-dict / .safetensors file")
    regime: RegimeName = Field("frozen", description="frozen, adabn, finetune or partial:K")
    epochs: int = Field(30, gt=0, description="training epochs")
    batch_size: int = Field(32, gt=0, description="global batch of one optimiser step")
    lr: float = Field(DEFAULT_LR, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    scheduler: Literal["cosine", "none"] = Field("cosine", description="learning-rate schedule, stepped per batch")
    seed: Seed = Field(0, description="seed of the head's initialisation and of the training batches")
    device: DeviceName = Field("auto", description="auto: cuda when a GPU is visible")
    num_threads: int | None = Field(None, gt=0, le=MAX_THREADS,
                                    description="CPU threads for torch; default: torch's choice")
    # Speed settings (xferlab.engine.accel); the defaults pick what measured fastest without changing results on CPU.
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="bf16 autocast of training steps; auto: on for a CUDA GPU with native bf16, and on a CPU "
        f"with native bf16 for finetune / partial:K at images >= {CPU_BF16_MIN_SIDE} px; else off (fp32)"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC memory layout; auto: on for CUDA, and on a CPU where amp's auto turns bf16 on"
    )
    compile: bool = Field(False, description="torch.compile the model (first batches of each shape compile)")
    test_bn: Literal["off", "adapt"] = Field(
        "off", description="adapt: also evaluate val and test with BatchNorm statistics re-estimated on each split's "
        "own images (AdaBN; transductive, reported under metrics.json test_bn beside the plain numbers)"
    )
    test_bn_min_images: int = Field(32, ge=2, description="--test-bn adapt is refused for a split with fewer images")

    cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto", description="replay training steps from CUDA graphs (a fixed backbone's head: one graph per epoch; "
        "fine-tuning: one per full batch, the short last batch eager); auto: on for one CUDA process without "
        "--compile; a no-op on CPU. Changes results only by float rounding"
    )
    inference_batch_size: int | None = Field(
        None, gt=0, description="batch size of the fixed-backbone feature pass (no gradients, so larger than the "
        "training batch costs only memory); default: 256 on CUDA, the training batch on CPU. Float rounding aside, "
        "changes no result"
    )
    runtime: RuntimeName = Field("auto", description=RUNTIME_HELP)
    track: list[TrackerName] = TRACK_FIELD
    track_uri: str | None = TRACK_URI_FIELD


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds: the annotation itself, or the model of an `X | None`."""
    for candidate in (annotation, *get_args(annotation)):
        if inspect.isclass(candidate) and not get_args(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _key_choices(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys valid where `loc` points: the fields of the model reached by walking `loc[:-1]` through nested
    configs; none when the walk leaves them (a list item, a free-form mapping)."""
    for name in loc[:-1]:
        field = model.model_fields.get(name) if model is not None and isinstance(name, str) else None
        model = _nested_model(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


# pydantic's error types for a number out of its bounds, or not a number of the field's kind
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_NOT_A_NUMBER_ERRORS = ("int_parsing", "int_from_float", "int_type", "float_parsing", "float_type", "finite_number")


def _numeric(annotation: Any) -> type | None:
    """int or float for a numeric annotation (an `X | None` too), else None (bool is not a number here)."""
    for candidate in (annotation, *get_args(annotation)):
        if candidate in (int, float):
            return candidate
    return None


def _field_at(model: type[BaseModel] | None, loc: tuple) -> tuple[Any, list, Any] | None:
    """(annotation, constraints, default) of the field `loc` points to, walking nested configs; a list item
    (an index in `loc`) is the list's item type, with the constraints of its Annotated metadata and no default."""
    annotation, metadata, default = None, [], None
    for name in loc:
        if isinstance(name, int):
            args = get_args(annotation)
            if not args:
                return None
            item = args[0]
            annotation, metadata, default = get_args(item)[0] if get_args(item) else item, \
                list(getattr(item, "__metadata__", ())), None
            continue
        field = model.model_fields.get(name) if model is not None else None
        if field is None:
            return None
        annotation, metadata = field.annotation, list(field.metadata)
        default = None if field.is_required() else field.default
        model = _nested_model(annotation)
    return annotation, metadata, default


def _bound(value: float, kind: type) -> str:
    return str(int(value)) if kind is int else f"{value:g}"


def accepted_range(kind: type, constraints: list) -> str:
    """'a whole number from 1 to 4096', 'a number > 0 and < 1', 'a number >= 0': what a numeric field accepts."""
    low = high = None
    for c in constraints:
        if getattr(c, "gt", None) is not None:
            low = (c.gt + 1, ">=") if kind is int else (c.gt, ">")
        elif getattr(c, "ge", None) is not None:
            low = (c.ge, ">=")
        if getattr(c, "lt", None) is not None:
            high = (c.lt - 1, "<=") if kind is int else (c.lt, "<")
        elif getattr(c, "le", None) is not None:
            high = (c.le, "<=")
    noun = "a whole number" if kind is int else "a number"
    if kind is int and low and high:
        return f"{noun} from {_bound(low[0], kind)} to {_bound(high[0], kind)}"
    parts = [f"{b[1]} {_bound(b[0], kind)}" for b in (low, high) if b is not None]
    return f"{noun} {' and '.join(parts)}".rstrip()


def _numeric_problem(e: dict, model: type[BaseModel] | None) -> str | None:
    """'is out of range; accepted: a number > 0 (default 0.001)' for a numeric field's bound or type error."""
    if e["type"] not in _RANGE_ERRORS + _NOT_A_NUMBER_ERRORS:
        return None
    found = _field_at(model, tuple(e["loc"]))
    kind = _numeric(found[0]) if found else None
    if kind is None:
        return None
    _, constraints, default = found
    shown = "" if default is None or isinstance(default, list) else f" (default {_bound(default, kind)})"
    what = "is out of range" if e["type"] in _RANGE_ERRORS else \
        f"is not {'a whole number' if kind is int else 'a finite number'}"
    return f"{what}; accepted: {accepted_range(kind, constraints)}{shown}"


def format_validation_error(
    err: ValidationError, where: str, key_lines: dict | None = None, model: type[BaseModel] | None = None,
    options: dict[tuple[str, ...], str] | None = None,
) -> str:
    """One line naming the first offending field (and its YAML line), what was received and what is allowed.

    With the validated `model`, an unknown key also gets the closest valid key ("did you mean ...") and a number
    out of range the accepted range and the default. `options` maps a field's path to the command-line option that
    set it ({('lr',): '--lr'}): such a field is named by its option, not by a YAML line.
    """
    e = err.errors()[0]
    path = tuple(str(p) for p in e["loc"])
    loc = ".".join(path) or "(top level)"
    numeric = _numeric_problem(e, model)
    option = (options or {}).get(path)
    if option is not None:
        return f"{option} {e.get('input')!r} {numeric or 'is invalid: ' + _message(e)}"
    line = next(((key_lines or {}).get(path[:n]) for n in range(len(path), 0, -1)
                 if (key_lines or {}).get(path[:n])), None)
    where = f"{where} line {line}" if line else where
    if e["type"] == "extra_forbidden":
        hint = did_you_mean(path[-1], _key_choices(model, e["loc"])) if path else ""
        return f"{where}: unknown key '{loc}'{hint}; remove it or check its spelling"
    if e["type"] == "missing":
        return f"{where}: '{loc}' is required"
    return f"{where}: '{loc}' = {e.get('input')!r} {numeric or 'is invalid: ' + _message(e)}"


def _message(e: dict) -> str:
    msg = e["msg"]
    return msg[len("Value error, "):] if msg.startswith("Value error, ") else msg


def build(model: type[BaseModel], values: dict[str, Any], where: str = "config",
          options: dict[tuple[str, ...], str] | None = None):
    """Validate `values` into `model`, turning pydantic's report into an XferlabError (with the YAML line when
    `values` came from read_yaml; with the option's name for the paths in `options`, set on the command line)."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise XferlabError(format_validation_error(err, where, getattr(values, "key_lines", None), model,
                                                   options)) from None


def to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config as YAML (paths as strings), saved beside every result."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class AuditConfig(_Strict):
    """The split audit: shift tests, pixel statistics, leakage and the re-split experiment (xferlab.audit).

    Defaults are sized for the demo phantoms (1300 images at 64 px): about a minute on 2 CPU cores.
    """

    backbone: BackboneName = Field("efficientnet_lite0",
                                   description="fixed backbone whose embeddings the shift tests use")
    weights: str = Field("imagenet", description="imagenet, none, or a state-dict / .safetensors file")
    regime: RegimeName = Field("frozen", description="regime trained on every re-split: frozen, finetune or partial:K")
    resplits: int = Field(20, ge=0, description="R stratified, group-aware re-splits of the pooled data (0 skips)")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level")
    permutations: int = Field(1000, ge=1, description="permutations for the MMD and classifier tests")
    seed: Seed = Field(0, description="seed of the audit's permutations, re-splits and training")
    components: int = Field(32, ge=2, description="PCA components the classifier and MMD tests work on")
    ks_components: int = Field(8, ge=1, description="leading PCA components tested one by one with KS (Bonferroni)")
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds of the domain classifier")
    near_duplicate_quantile: float = Field(
        0.01, gt=0, lt=0.5, description="near-duplicate calibration: this quantile of within-split NN distances ..."
    )
    near_duplicate_factor: float = Field(
        0.5, gt=0, le=1, description="... times this factor is the distance below which a cross-split pair is flagged"
    )
    thumbnails: int = Field(8, ge=1, le=32, description="images per row in the thumbnail figures")
    epochs: int = Field(30, gt=0, description="re-split training epochs (the reference study's 30)")
    batch_size: int = Field(32, gt=0)
    lr: float = Field(DEFAULT_LR, gt=0)
    device: DeviceName = Field("auto", description="auto: cuda when a GPU is visible")
    num_threads: int | None = Field(None, gt=0, le=MAX_THREADS,
                                    description="CPU threads for torch; default: torch's choice")
    runtime: RuntimeName = Field("auto", description=RUNTIME_HELP)
    shortcut_run: str | None = Field(None, description="a run folder trained on this data: run the shortcut check "
                                     "(Grad-CAM + occlusion, xferlab.explain.shortcut) on its model")

    @field_validator("regime")
    @classmethod
    def _fixed_embeddings_cannot_adapt(cls, v: str) -> str:
        if v == "adabn":
            raise ValueError("adabn is not available in the audit: its re-splits train a fixed backbone's head on "
                             "the audit's cached embeddings, which cannot re-estimate BatchNorm per re-split (adabn "
                             "would run as frozen); use frozen, finetune or partial:K")
        return v


# Training options a study sets per grid cell, so they may not appear in its `train`/`per_*` option maps.
GRID_KEYS = ("data", "backbone", "regime", "seed")


class StudyConfig(_Strict):
    """A study: every combination of backbones × regimes × seeds trained on one dataset (xferlab.study).

    Training options come from `train`, then `per_backbone[name]`, then `per_regime[name]`; one key set by both a
    backbone and a regime override is an error rather than a silent precedence. The bootstrap settings are the
    evaluation's (xferlab.evaluation.bootstrap); `audit`, when given, runs the split audit once into DIR/audit.
    """

    name: str = Field("study", min_length=1, description="title of the report")
    data: DataConfig
    backbones: list[BackboneName] = Field(min_length=1)
    regimes: list[RegimeName] = Field(["frozen", "finetune"], min_length=1)
    seeds: list[Seed] = Field([0], min_length=1)
    train: dict[str, Any] = Field({}, description="any TrainConfig option (epochs, batch_size, lr, weights, ...)")
    per_backbone: dict[str, dict[str, Any]] = Field({}, description="backbone name -> TrainConfig options")
    per_regime: dict[str, dict[str, Any]] = Field({}, description="regime name -> TrainConfig options")
    bootstrap_resamples: int = Field(2000, ge=100, description="resamples of every bootstrap confidence interval")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_seed: Seed = 0
    target_sensitivity: float = Field(0.95, gt=0, lt=1, description="operating point: the threshold chosen on val "
                                      "that reaches this sensitivity, reported on test")
    audit: AuditConfig | None = None
    explain: bool = Field(False, description="Grad-CAM explanations of every run into DIR/explain (xferlab explain)")
    track: list[TrackerName] = TRACK_FIELD
    track_uri: str | None = TRACK_URI_FIELD

    @field_validator("backbones", "regimes", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        repeated = sorted({str(x) for x in v if v.count(x) > 1})
        if repeated:
            raise ValueError(f"lists each value once; repeated: {', '.join(repeated)}")
        return v

    @field_validator("train")
    @classmethod
    def _train_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_train_keys(v, "")
        return v

    @field_validator("per_backbone", "per_regime")
    @classmethod
    def _override_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, options in v.items():
            _check_train_keys(options, f"{name}: ")
        return v


def _check_train_keys(options: dict[str, Any], where: str) -> None:
    """Training option maps hold TrainConfig keys other than the grid's own."""
    for key in options:
        if key in TrackOptions.model_fields:
            raise ValueError(f"{where}'{key}' is set for the whole study: write it at the top of the study YAML")
        if key in GRID_KEYS:
            raise ValueError(f"{where}'{key}' is set by the study grid (data, backbones, regimes, seeds), not here")
        if key not in TrainConfig.model_fields:
            choices = [k for k in TrainConfig.model_fields if k not in GRID_KEYS and k not in TrackOptions.model_fields]
            raise ValueError(f"{where}unknown training option '{key}'{did_you_mean(str(key), choices)}; "
                             f"valid: {', '.join(choices)}")

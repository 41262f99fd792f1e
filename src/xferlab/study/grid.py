"""A study YAML in, the list of runs out: one TrainConfig per backbone × regime × seed, each with its folder name;
and the I-th of N disjoint parts of that list (`--shard I/N`, one part per job of a job array)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xferlab.config import StudyConfig, TrainConfig, build, read_yaml
from xferlab.errors import XferlabError, did_you_mean


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: its run-folder name, coordinates and fully resolved training config."""

    name: str
    backbone: str
    regime: str
    seed: int
    config: TrainConfig


def run_name(backbone: str, regime: str, seed: int) -> str:
    """Folder name of a grid cell, e.g. 'resnet18-partial2-seed0', 'timm_convnext_atto-frozen-seed0' (a ':' is not
    portable in file names)."""
    return f"{backbone.replace(':', '_')}-{re.sub(r'[^A-Za-z0-9_.]+', '', regime)}-seed{seed}"


def load_study(path: str | os.PathLike, data: str | os.PathLike | None = None,
               train: dict[str, Any] | None = None, exclude: str | os.PathLike | None = None) -> StudyConfig:
    """Read and validate a study YAML. `data` replaces data.path, `exclude` data.exclude; `train` options (e.g. from
    the command line) override the file's, per-backbone and per-regime ones included. The data path (and the exclude
    file) is made absolute, so the saved run configs do not depend on the working directory. Every run's training
    options are validated here, so a bad value is an error naming this file and its line before anything runs."""
    values = read_yaml(path)
    data_values = dict(values.get("data") or {})
    if data is not None:
        data_values["path"] = str(data)
    if "path" not in data_values:
        raise XferlabError(f"{path}: no data path; pass --data DIR (or set data.path in the study YAML)")
    data_values["path"] = str(Path(data_values["path"]).expanduser().resolve())
    if exclude is not None:
        data_values["exclude"] = str(exclude)
    if data_values.get("exclude"):  # absolute too: the runs' config.yaml names the file wherever they run
        data_values["exclude"] = str(Path(data_values["exclude"]).expanduser().resolve())
    values["data"] = data_values
    if train:
        _override_training(values, train)
    study = build(StudyConfig, values, where=str(path))
    expand_grid(study, where=str(path), values=values)
    return study


def _override_training(values: dict, options: dict[str, Any]) -> None:
    """Set `options` in the study's `train` map and remove them from every per-backbone/per-regime map."""
    values["train"] = {**(values.get("train") or {}), **options}
    for section in ("per_backbone", "per_regime"):
        overrides = values.get(section) or {}
        values[section] = {name: {k: v for k, v in (opts or {}).items() if k not in options}
                           for name, opts in overrides.items()}


def expand_grid(study: StudyConfig, where: str = "study", values: dict | None = None) -> list[RunSpec]:
    """Every backbone × regime × seed, in that nesting order, with its resolved TrainConfig. `values`: the study YAML
    as read (read_yaml, with key lines), so that a bad training option is named by its line."""
    _check_override_names(study.per_backbone, study.backbones, "per_backbone", "backbones", where)
    _check_override_names(study.per_regime, study.regimes, "per_regime", "regimes", where)
    specs = []
    for backbone in study.backbones:
        for regime in study.regimes:
            by_backbone, by_regime = study.per_backbone.get(backbone, {}), study.per_regime.get(regime, {})
            clash = sorted(set(by_backbone) & set(by_regime))
            if clash:
                raise XferlabError(f"{where}: '{clash[0]}' is set for backbone {backbone} and for regime {regime}; "
                                   "set it in one place (per_backbone or per_regime)")
            for seed in study.seeds:
                name = run_name(backbone, regime, seed)
                run_values = {**study.train, **by_backbone, **by_regime, "data": study.data, "backbone": backbone,
                              "regime": regime, "seed": seed}
                lines = {(key,): f"{where} line {line}: '{'.'.join(map(str, keys))}' ="
                         for key in run_values if (keys := _set_at(values, backbone, regime, key))
                         and (line := values.key_lines[keys])}
                cfg = build(TrainConfig, run_values, f"{where}: run {name}", options=lines)
                specs.append(RunSpec(name, backbone, regime, seed, cfg))
    return specs


def _set_at(values: dict | None, backbone: str, regime: str, key: str) -> tuple[str, ...] | None:
    """The YAML key path that set training option `key` of a run, in expand_grid's order of precedence."""
    lines = getattr(values, "key_lines", {})
    return next((keys for keys in (("per_regime", regime, key), ("per_backbone", backbone, key), ("train", key))
                 if keys in lines), None)


def option_origin(values: dict, path: str | os.PathLike, config: dict, key: str) -> str:
    """Where the study YAML read into `values` (read_yaml: with key lines) set training option `key` of the run whose
    resolved config is `config`, in expand_grid's order of precedence: 'study.yaml line 12: per_regime.finetune.lr',
    'study.yaml line 9: train.lr', or 'the default'."""
    keys = _set_at(values, config.get("backbone"), config.get("regime"), key)
    return f"{path} line {values.key_lines[keys]}: {'.'.join(map(str, keys))}" if keys else "the default"


def retry_advice(values: dict, diverged: list[dict], finished: list[dict], key: str = "lr") -> str:
    """Where to lower option `key` for the diverged runs (their resolved configs) without changing it for a finished
    run (`finished`: every finished, not diverged, run of the study), which a resumed study would then refuse
    (study.runner.check_finished_run): the YAML key that set it when every diverged run reads it there and no
    finished run does, else a per_regime (or per_backbone) entry for the diverged runs alone."""
    def readers(keys: tuple[str, ...]) -> list[dict]:
        return [c for c in finished if _set_at(values, c.get("backbone"), c.get("regime"), key) == keys]

    keys = {_set_at(values, c.get("backbone"), c.get("regime"), key) for c in diverged}
    if len(keys) == 1 and None not in keys and not readers(next(iter(keys))):
        return f"lower {'.'.join(map(str, next(iter(keys))))} in the study YAML"
    lines = getattr(values, "key_lines", {})
    for section, coordinate, other in (("per_regime", "regime", "per_backbone"), ("per_backbone", "backbone",
                                                                                  "per_regime")):
        names = sorted({c.get(coordinate) for c in diverged})
        clash = any(k[0] == other and k[-1] == key for k in lines)  # one key set by both kinds of override: an error
        if not clash and not [c for c in finished if c.get(coordinate) in names]:
            return f"set a lower {key} for them under {section}: " + ", ".join(f"{section}.{n}.{key}" for n in names)
    return (f"lower {key} for them in the study YAML; finished runs whose {key} changes with it are refused on "
            "resume: give their cells their own value or rerun everything with --force")


def _check_override_names(overrides: dict, names: list[str], section: str, grid_key: str, where: str) -> None:
    for name in overrides:
        if name not in names:
            raise XferlabError(f"{where}: {section} names '{name}'{did_you_mean(name, names)}, which is not in "
                               f"{grid_key} ({', '.join(names)}); fix the name or add it to {grid_key}")


# Shown with every malformed --shard: the accepted form, and how a SLURM job array fills it in.
SHARD_FORM = ("expected I/N with 1 <= I <= N, e.g. --shard 1/4 for the first of 4 parts; with SLURM: "
              "--shard ${SLURM_ARRAY_TASK_ID}/4 and --array=1-4")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four parts, 1-based like GNU split's K/N."""
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
    index, count = (int(match[1]), int(match[2])) if match else (0, 0)
    if not 1 <= index <= count:
        raise XferlabError(f"--shard {text!r}: {SHARD_FORM}")
    return index, count


def shard_specs(specs: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """The cells of shard (I, N): cell k (0-based, in expand_grid order) belongs to shard k % N + 1. Round-robin, so
    the cells of one expensive backbone, adjacent in the grid, are spread over the shards. None: every cell."""
    if shard is None:
        return list(specs)
    index, count = shard
    return [spec for k, spec in enumerate(specs) if k % count == index - 1]


def preflight(specs: list[RunSpec]) -> None:
    """Fail before the first run, not hours into the study: unknown backbones and weights that cannot be loaded."""
    from xferlab.backbones.registry import PRETRAINED, get_spec
    from xferlab.backbones.weights import is_offline

    for spec in specs:
        backbone = get_spec(spec.backbone)
        weights = spec.config.weights
        if weights in PRETRAINED and is_offline() and not backbone.weights.available():
            backbone.weights.load()  # raises the error that names the file to place in the cache
        elif weights not in (*PRETRAINED, "none") and not Path(weights).is_file():
            raise XferlabError(f"run {spec.name}: weights file {weights} does not exist; check 'weights' in the study")

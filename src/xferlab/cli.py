"""The `xferlab` command: parse arguments, call the library, turn XferlabError into `error: ...` and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xferlab.errors import XferlabError
from xferlab.explain import commands as explain_commands
from xferlab.options import MAX_SEED, positive_int, whole_number
from xferlab.use import commands as use_commands

log = logging.getLogger("xferlab")


# The options each command takes from a config model: option name, type, choices, default and help all come from the
# model's fields (xferlab.config), so they exist once. Options default to None here, so that only the options given
# on the command line are laid over a YAML file; --help shows the model's default.
DATA_OPTIONS = ("path", "format", "image_size", "val_split", "groups", "unmatched", "medmnist_flag", "skip_unreadable",
                "allow_external_links", "memory_budget_mb", "loader_workers", "exclude")
TRAIN_OPTIONS = ("backbone", "weights", "regime", "epochs", "batch_size", "lr", "weight_decay", "scheduler", "seed",
                 "device", "num_threads", "cuda_graphs", "inference_batch_size", "test_bn", "runtime")
SPEED_OPTIONS = ("amp", "channels_last", "compile")
AUDIT_OPTIONS = ("backbone", "weights", "regime", "resplits", "permutations", "alpha", "seed", "device", "num_threads",
                 "runtime", "shortcut_run")
TRACK_OPTIONS = ("track", "track_uri")  # TrainConfig, StudyConfig and TrackOptions (an audit) share these fields
OPTION_NAMES = {"path": "data"}  # field -> option where they differ (--data sets data.path)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: argparse's own where it has one; config-model options carry the
    model's default in their help already (their argparse default is None: "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _shows_default(action) and "default" not in text:
            # "default" already in the text: the option's help says it (or an option without help got it above)
            text += " (default: %(default)s)"
        return text


def _shows_default(action: argparse.Action) -> bool:
    """An option whose default is worth showing: given (not None, SUPPRESS or a store_true's False); 0 is shown."""
    return bool(action.option_strings) and not any(action.default is v for v in (None, False, argparse.SUPPRESS))


def _option_type(annotation) -> tuple[type | None, list | None, bool]:
    """(argparse type, choices, repeatable) of a field: Literal -> choices; X | None -> X; Annotated[str, ...] -> str;
    list[X] -> X's, the option given once per item."""
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is list:
        return *_option_type(get_args(annotation)[0])[:2], True
    if get_origin(annotation) is Literal:
        return None, list(get_args(annotation)), False
    for candidate in (annotation, *get_args(annotation)):
        if candidate in (int, float, bool):
            return candidate, None, False
    return str, None, False


def add_model_options(group, model, names: tuple[str, ...]) -> None:
    """One option per field of `model` named in `names`, described by the field itself."""
    for name in names:
        field = model.model_fields[name]
        kind, choices, repeatable = _option_type(field.annotation)
        text = (field.description or name.replace("_", " ")).replace("%", "%%")
        if repeatable:  # the option replaces the YAML's whole list
            text += "; repeat the option for several"
        default = "" if field.default is None or field.is_required() else f" (default: {_shown(field.default)})"
        flag = _option_flag(name)
        dest = OPTION_NAMES.get(name, name)
        if kind is bool:
            group.add_argument(flag, dest=dest, action="store_true", default=None, help=text + default)
        else:
            parse = _number_type(kind, field) if kind in (int, float) else kind
            group.add_argument(flag, dest=dest, type=parse, choices=choices, help=text + default,
                               action="append" if repeatable else "store")


def _number_type(kind: type, field) -> Any:
    """argparse's type for a numeric field: text that is not a number is refused naming the field's accepted range
    (the range itself is checked by the config model, for the command line and YAML files alike)."""
    from xferlab.config import accepted_range

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; accepted: "
                                             f"{accepted_range(kind, list(field.metadata))}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _shown(default: Any) -> str:
    """A field's default as --help shows it (an empty list: none)."""
    if isinstance(default, list):
        return ", ".join(map(str, default)) or "none"
    return str(default)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from xferlab.config import DataConfig

    add_model_options(p.add_argument_group("data"), DataConfig, DATA_OPTIONS)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from xferlab.config import TrainConfig

    g = p.add_argument_group("training (defaults: the reference study)")
    add_model_options(g, TrainConfig, TRAIN_OPTIONS)
    _add_speed_args(g)


def _add_track_args(p: argparse.ArgumentParser, model) -> None:
    """--track and --track-uri, from `model`'s track and track_uri fields (docs/tracking.md)."""
    add_model_options(p.add_argument_group("experiment tracking (docs/tracking.md)"), model, TRACK_OPTIONS)


def _add_speed_args(g) -> None:
    from xferlab.config import TrainConfig

    add_model_options(g, TrainConfig, SPEED_OPTIONS)
    for action in g._actions:  # a group shares its parser's list
        if action.dest == "amp":
            action.help += _cpu_auto_note()


def _cpu_auto_note() -> str:
    """What amp's and channels_last's `auto` gives on this machine's CPU (read from /proc/cpuinfo, torch-free)."""
    from xferlab.config import CPU_BF16_MIN_SIDE
    from xferlab.hardware import cpu_model, cpu_native_bf16

    native = cpu_native_bf16()
    if native is None:
        return ""
    if not native:
        return f"; this CPU ({cpu_model()}) has no native bf16: auto is fp32, contiguous here"
    return (f"; this CPU ({cpu_model()}) has native bf16: auto gives bf16 + channels_last to finetune / partial:K at "
            f">= {CPU_BF16_MIN_SIDE} px, fp32 to anything else")


DESCRIPTION = """Transfer-learning studies on chest X-rays (or any image classes), offline.
Which pretrained backbone, frozen or fine-tuned, and can the test split be trusted?"""
EPILOG = """first steps:
  xferlab demo                                   the offline demo study -> runs/demo/report.html
  xferlab phantoms data/phantoms                 synthetic chest radiographs to try things on
  xferlab train --data data/phantoms --backbone efficientnet_lite0 --out runs/lite0
  xferlab study reference --data DIR             the reference study (configs/reference.yaml)
  xferlab audit --data DIR                       can this test split be trusted?
`xferlab COMMAND --help` lists a command's options."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xferlab")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


def _output_options() -> argparse.ArgumentParser:
    """-v and -q, accepted before or after the command; SUPPRESS so a subcommand's absent flag keeps the top's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show xferlab's debug messages (other libraries stay at warnings)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress output; results and errors only")
    return common


def build_parser() -> argparse.ArgumentParser:
    from xferlab.data.phantoms import DEFAULT_N_PER_CLASS, DEFAULT_N_TEST_PER_CLASS, DEFAULT_SIZE

    common = _output_options()
    parser = argparse.ArgumentParser(prog="xferlab", description=DESCRIPTION, epilog=EPILOG, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xferlab {_version()}")
    sub = _SubcommandsWithParents(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    p = sub.add_parser("phantoms", help="write synthetic chest-radiograph phantoms in the npy layout")
    p.add_argument("out", type=Path, help="folder to write (<class>.npy, test_<class>.npy, phantoms.json)")
    p.add_argument("--size", type=positive_int, default=DEFAULT_SIZE,
                   help="image side in pixels")
    p.add_argument("--n-per-class", type=positive_int,
                   help=f"train-pool images per class, 80%% train and 20%% val (default: {DEFAULT_N_PER_CLASS})")
    p.add_argument("--n-test-per-class", type=positive_int,
                   help=f"test images per class (default: {DEFAULT_N_TEST_PER_CLASS})")
    p.add_argument("--shift", choices=["none", "acquisition", "shortcut"], default="none",
                   help="acquisition: render the test split as if from another site; shortcut: a burned-in marker "
                        "with 90%% of pneumonia and 10%% of normal train/val images, none in test")
    p.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0, help="random seed")
    p.add_argument("--images-per-patient", type=positive_int, default=1,
                   help="K consecutive images per patient (one anatomy, repositioned and re-imaged), named in "
                        "groups.csv (docs/patients.md)")

    p = sub.add_parser("backbones", help="list registered backbones and whether weights are available offline")
    p.add_argument("--all", action="store_true", help="also every timm model with pretrained weights (timm:NAME) "
                   "and torchxrayvision's chest X-ray DenseNets (xrv:WEIGHTS), with local weight availability")
    p.add_argument("--filter", metavar="GLOB", help="only names matching GLOB, e.g. 'timm:vit_*' or '*convnext*'")

    p = sub.add_parser("train", help="train one backbone in one regime; writes a run folder")
    p.add_argument("-c", "--config", type=Path, help="run YAML; command-line options override it")
    p.add_argument("--out", type=Path, required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    _add_data_args(p)
    _add_train_args(p)
    from xferlab.config import TrainConfig

    _add_track_args(p, TrainConfig)

    p = sub.add_parser("demo", help="the offline demo: a study of EfficientNet-Lite0/2 × frozen/finetune on the "
                                    "phantoms, with the split audit")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="study folder")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="train every run this many epochs, >= 1 (a quick look); default: configs/demo.yaml's")
    p.add_argument("--force", action="store_true", help="rerun finished runs and the audit")

    p = sub.add_parser("bench", help="training-step and inference throughput and FLOPs per image, as JSON")
    p.add_argument("--backbone", required=True, help="registered backbone (xferlab backbones)")
    # a number out of range is bench's own one-line error (engine/bench.py: the backbones' sizes)
    p.add_argument("--image-size", type=int, required=True, help="square image side S")
    p.add_argument("--batch-size", type=positive_int, default=32)
    from xferlab.config import DEVICES, RUNTIMES

    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--regime", default="finetune", help="what the timed training step trains (default finetune)")
    p.add_argument("--weights", default="none", help="none (default: speed does not depend on them), imagenet, file")
    p.add_argument("--steps", type=positive_int, default=4, help="timed training steps (and inference batches)")
    p.add_argument("--warmup", type=whole_number(0), default=2, help="untimed steps first")
    p.add_argument("--num-threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help="what runs the timed inference pass "
                   "(xferlab.engine.runtime; auto: chosen as for a pass over the reference study's 2,400 images)")
    _add_speed_args(p)
    _add_audit_parser(sub)
    _add_study_parsers(sub)
    use_commands.add_parsers(sub)  # predict, export
    explain_commands.add_parsers(sub)  # explain
    for command in sub.choices.values():
        command.formatter_class = DefaultsFormatter
        for action in command._actions:  # an option without help text still shows its default
            if not action.help and _shows_default(action):
                action.help = "default: %(default)s"
    return parser


class _SubcommandsWithParents:
    """add_parser with the shared -v/-q options and the one-line help as the command's description."""

    def __init__(self, sub, common: argparse.ArgumentParser):
        self.sub, self.common = sub, common

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return self.sub.add_parser(name, parents=[self.common], **kwargs)

    @property
    def choices(self) -> dict[str, argparse.ArgumentParser]:
        return self.sub.choices


def _add_study_parsers(sub) -> None:
    p = sub.add_parser("study", help="train a grid of backbones × regimes × seeds; results.csv/json and report.html")
    p.add_argument("study", type=Path, help="study YAML, or the name of a bundled one: reference, demo, pretraining")
    p.add_argument("--out", type=Path, help="study folder (default: runs/<YAML name>)")
    p.add_argument("--data", help="dataset path; replaces data.path of the YAML")
    from xferlab.config import DEVICES, DataConfig

    add_model_options(p.add_argument_group("data"), DataConfig, ("exclude",))  # replaces data.exclude of the YAML
    p.add_argument("--device", choices=DEVICES, help="device of every run")
    p.add_argument("--force", action="store_true", help="rerun finished runs and the audit")
    p.add_argument("--retry-diverged", action="store_true",
                   help="train again the runs recorded as diverged (kept as they are otherwise; "
                        "docs/runs-that-go-wrong.md)")
    p.add_argument("--shard", metavar="I/N",
                   help="train only the I-th of N disjoint parts of the grid (1-based, cell k in part k %% N + 1), "
                        "e.g. one job of a job array; no report: run `xferlab report DIR` once every part has finished")
    from xferlab.config import StudyConfig

    _add_track_args(p, StudyConfig)

    p = sub.add_parser("report", help="rebuild report.html, results.csv and results.json of a study folder, or "
                                      "write report.html of a single run folder")
    p.add_argument("dir", type=Path, help="study folder (xferlab study --out DIR) or run folder (xferlab train --out "
                                          "RUN)")


def _add_audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="can the test split be trusted? shift tests, pixel statistics, leakage, "
                                     "re-split experiment; writes audit.json and figures")
    p.add_argument("-c", "--config", type=Path, help="YAML with data: and audit: sections; options override it")
    p.add_argument("--out", type=Path, default=Path("runs/audit"), help="audit folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing audit folder")
    _add_data_args(p)
    from xferlab.config import AuditConfig, TrackOptions

    add_model_options(p.add_argument_group("audit"), AuditConfig, AUDIT_OPTIONS)
    _add_track_args(p, TrackOptions)
    p.add_argument("--embeddings", type=Path, help="precomputed embeddings (.npy, one row per image in dataset "
                   "order) instead of the backbone pass")


def _given(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The options among `keys` given on the command line (argparse leaves the others None), by name."""
    return {key: value for key in keys if (value := getattr(args, key)) is not None}


def _option_flag(name: str) -> str:
    return "--" + OPTION_NAMES.get(name, name).replace("_", "-")


def _given_paths(args: argparse.Namespace, keys: tuple[str, ...], section: tuple[str, ...] = ()) -> dict:
    """{config path: option} of the options among `keys` given on the command line ({('data', 'path'): '--data'}),
    so that a bad value is named by the option that set it (config.build's `options`)."""
    return {(*section, key): _option_flag(key) for key in keys if getattr(args, OPTION_NAMES.get(key, key)) is not None}


def _train_options(args: argparse.Namespace) -> dict[tuple[str, ...], str]:
    return {**_given_paths(args, DATA_OPTIONS, ("data",)),
            **_given_paths(args, TRAIN_OPTIONS + SPEED_OPTIONS + TRACK_OPTIONS)}


def _data_values(args: argparse.Namespace, values: dict[str, Any]) -> dict[str, Any]:
    """The config's data: section with the data options given on the command line laid over it."""
    given = _given(args, tuple(OPTION_NAMES.get(n, n) for n in DATA_OPTIONS))
    if "data" in given:
        given["path"] = given.pop("data")
    section = values.get("data") or {}
    if not isinstance(section, dict):
        where = getattr(args, "config", None) or "config"
        raise XferlabError(f"{where}: data: must be a mapping (path:, format:, ...), "
                           f"got {type(section).__name__}; write it as data: {{path: ...}}")
    data = {**section, **given}
    if "path" not in data:
        raise XferlabError("no data given; pass --data DIR (or set data.path in the config)")
    return data


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the YAML file (if any) with the options given on the command line."""
    from xferlab.config import read_yaml

    values = read_yaml(args.config) if args.config else {}
    data = _data_values(args, values)
    values["data"] = data
    values.update(_given(args, TRAIN_OPTIONS + SPEED_OPTIONS + TRACK_OPTIONS))
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from xferlab.config import TrainConfig, build
    from xferlab.engine.distributed import is_main_process
    from xferlab.engine.guards import Diverged
    from xferlab.engine.run import train
    from xferlab.tracking import epoch_hooks
    from xferlab.tracking import session as tracking

    values = _train_values(args)
    cfg = build(TrainConfig, values, where=str(args.config or "options"), options=_train_options(args))
    with tracking.train_run(cfg, args.out, enabled=is_main_process()) as tracker:
        try:
            result = train(cfg, args.out, overwrite=args.overwrite, progress=not _quiet(args),
                           hooks=epoch_hooks(tracker))
        except Diverged as err:  # the hint names where the learning rate was set
            raise err.with_origin(_lr_origin(args, values)) from None
        if is_main_process():  # under torchrun every rank trains; rank 0 draws the curves and reports
            from xferlab.report.figures import write_run_curves

            write_run_curves(result.out, result.history, cfg.model_dump(mode="json"))
            tracking.finished_run(tracker, result.out)  # after the curves: curves.png is one of the run's files
    if is_main_process():
        _print_run_summary(result)
    return 0


def _lr_origin(args: argparse.Namespace, values: dict) -> str:
    """Where `xferlab train` took its learning rate from: --lr, the config file's line, or the default."""
    if args.lr is not None:
        return "--lr"
    line = getattr(values, "key_lines", {}).get(("lr",))
    return f"{args.config} line {line}" if line else "the default"


def _print_run_summary(result) -> None:
    m = result.metrics
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{m['backbone']} {m['regime']}: best epoch {m['best_epoch']}, "
          f"val acc {fmt(m['val']['accuracy'])}, test acc {fmt((m['test'] or {}).get('accuracy'))}, "
          f"train {m['train_seconds'] + m['feature_seconds']:.1f}s, total {m['total_seconds']:.1f}s")
    if m.get("files_per_s"):  # image files decoded into memory: how fast, end to end
        print(f"  image files read in {m['load_seconds']:.1f}s ({m['files_per_s']:.1f} files/s)")
    if m.get("excluded"):  # data.exclude: the images are not in any split
        print(f"  {m['excluded']['count']} images excluded by {m['excluded']['file']}")
    runtime = m.get("runtime") or {}
    if runtime.get("path"):
        print(f"  fixed-backbone pass: {m['inference_images_per_s']:.1f} images/s through {runtime['path']}")
    if m.get("test_bn"):
        tb = m["test_bn"]
        print(f"  test-time BatchNorm (transductive): val acc {fmt(tb['val']['accuracy'])}, "
              f"test acc {fmt((tb.get('test') or {}).get('accuracy'))}")
    print(f"run folder: {result.out}")
    if m.get("degenerate"):  # the last line: a result that is not one says so where the eye lands
        print(f"! degenerate run (do not read its accuracy as a result): {m['flag_text']}")


def cmd_phantoms(args: argparse.Namespace) -> int:
    from xferlab.data.phantoms import generate_phantoms

    counts = {k: v for k, v in (("n_per_class", args.n_per_class), ("n_test_per_class", args.n_test_per_class))
              if v is not None}
    out = generate_phantoms(args.out, size=args.size, shift=args.shift, seed=args.seed,
                            images_per_patient=args.images_per_patient, **counts)
    print(f"phantoms written to {out}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    if args.all or args.filter:
        return _list_all_backbones(args.filter)
    from xferlab.backbones.registry import count_parameters, get_spec, list_backbones

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        body = spec.build(224)
        rows.append((name, f"{count_parameters(body) / 1e6:.2f}M", spec.feature_dim,
                     "yes" if spec.weights.available() else "no", spec.weights.describe()))
    _print_table(("backbone", "params (backbone, no head)", "features", "offline weights", "weights source"), rows)
    print("more: xferlab backbones --all (timm:NAME, xrv:WEIGHTS) or --filter GLOB")
    return 0


def _list_all_backbones(pattern: str | None) -> int:
    """Registered backbones and family members by name, without building them (timm alone lists over a thousand)."""
    from xferlab.backbones.registry import list_available, list_families
    from xferlab.extras import install_line

    rows = [(n, "yes" if w.available() else "no", w.describe()) for n, w in list_available(pattern)]
    _print_table(("backbone", "offline weights", "weights source"), rows)
    print(f"{len(rows)} backbones, {sum(r[1] == 'yes' for r in rows)} with weights on this machine")
    for family in list_families():
        if not family.installed():
            print(f"{family.prefix}: not installed ({install_line(family.extra)})")
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_demo(args: argparse.Namespace) -> int:
    from xferlab.demo import run_demo
    from xferlab.study.summary import summary_table

    results, report, seconds = run_demo(args.out, epochs=args.epochs, force=args.force, progress=not _quiet(args))
    print(f"\n{summary_table(results)}")
    print(f"demo finished in {seconds:.0f}s; report: {report}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from xferlab.engine.distributed import is_main_process
    from xferlab.report import build_outputs
    from xferlab.study import load_study, run_study
    from xferlab.study.grid import parse_shard
    from xferlab.study.summary import summary_table
    from xferlab.tracking import session as tracking

    shard = parse_shard(args.shard) if args.shard is not None else None
    study_file = _study_file(args.study)
    study = load_study(study_file, data=args.data, exclude=args.exclude,
                       train={"device": args.device} if args.device else None)
    _override_tracking(study, args)
    out = args.out or Path("runs") / args.study.stem
    try:
        with tracking.study_run(study, out, enabled=is_main_process()) as parent:  # the parent run, with --track
            outcome = run_study(study, out, force=args.force, shard=shard, tracker=parent,
                                progress=not _quiet(args), retry_diverged=args.retry_diverged)
            # other shards may still be running: the report is built once, by `xferlab report`
            if is_main_process() and shard is None:
                results, report = build_outputs(out)
                tracking.study_outputs(parent, out)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        done = sorted(p.name for p in (out / "runs").glob("*") if not p.name.startswith(".")) if out.is_dir() else []
        print(f"\n{'terminated' if isinstance(stop, Terminated) else 'interrupted'}: {len(done)} finished run(s) "
              f"kept in {out}; resume with: {_study_command(args, out, shard)}", file=sys.stderr)
        return _stop_status(stop)
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    counts = f"{len(outcome.trained)} runs trained, {len(outcome.skipped)} already finished" + \
        (f", {len(outcome.diverged)} diverged (no results)" if outcome.diverged else "")
    if shard is not None:
        print(f"\nshard {shard[0]}/{shard[1]}: {counts}; when every shard has finished: xferlab report {out}")
    else:
        print(f"\n{counts}")
        print(summary_table(results))
        print(f"report: {report}")
    if outcome.diverged:  # after everything is written: the study's exit status says that some runs went wrong
        raise XferlabError(_diverged_message(study_file, out, outcome))
    return 0


def _diverged_message(study_file: Path, out: Path, outcome) -> str:
    """One line: how many runs diverged, the first one's reason and learning rate with the study YAML line that set
    it, and how to retry them."""
    from xferlab import artifacts
    from xferlab.config import read_yaml
    from xferlab.engine.guards import lr_hint
    from xferlab.study.grid import option_origin, retry_advice

    runs = out / artifacts.RUNS
    diverged = [artifacts.read_diverged_run(runs / name) for name in outcome.diverged]
    first = diverged[0]
    total = len(outcome.trained) + len(outcome.skipped)
    more = f" and {len(outcome.diverged) - 1} more" if len(outcome.diverged) > 1 else ""
    values = read_yaml(study_file)
    origin = option_origin(values, study_file, first.config, "lr")
    where = f"{runs} (results.csv once `xferlab report {out}` merges the shards)" \
        if outcome.shard is not None else f"{out / artifacts.RESULTS_CSV} and the report"
    # every finished run of the study (other shards' too), not the diverged ones this call trained or kept
    finished = [artifacts.read_run_config(run) for run in sorted(runs.iterdir())
                if artifacts.is_finished_run(run) and not artifacts.is_diverged_run(run)]
    fix = retry_advice(values, [run.config for run in diverged], finished)
    return (f"{len(outcome.diverged)} of {total} runs diverged, recorded as such in {where}: {first.name} "
            f"({first.divergence['reason']}){more}; {lr_hint(first.divergence['lr'], origin)}; {fix} and "
            f"resume with --retry-diverged (the other runs are kept)")


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _study_file(path: Path) -> Path:
    """The study YAML: the path given, or a bundled config by name (`reference` -> configs/reference.yaml)."""
    if path.exists() or path.suffix:
        return path
    from xferlab.demo import config_path

    try:
        return config_path(f"{path.name}.yaml")
    except XferlabError:
        raise XferlabError(f"{path}: no such study file or bundled study; give a YAML path, or one of the bundled "
                           "names: reference, demo, pretraining") from None


def _override_tracking(config, args: argparse.Namespace) -> None:
    """--track / --track-uri replace the YAML's track: / track_uri: (validated on assignment)."""
    from pydantic import ValidationError

    from xferlab.config import format_validation_error

    try:
        for key, value in _given(args, TRACK_OPTIONS).items():
            setattr(config, key, value)
    except ValidationError as err:
        raise XferlabError(format_validation_error(err, "options")) from None


def _study_command(args: argparse.Namespace, out: Path, shard: tuple[int, int] | None) -> str:
    """The `xferlab study` command line that resumes this one (its study, folder, data, device and shard)."""
    import shlex

    words = ["xferlab", "study", str(args.study), "--out", str(out)]
    for option, value in (("--data", args.data), ("--device", args.device),
                          ("--shard", shard and f"{shard[0]}/{shard[1]}")):
        words += [option, str(value)] if value is not None else []
    for tool in getattr(args, "track", None) or []:  # the trackers too: the resumed study logs to the same runs
        words += ["--track", tool]
    if getattr(args, "track_uri", None):
        words += ["--track-uri", args.track_uri]
    return shlex.join(words)


def cmd_report(args: argparse.Namespace) -> int:
    from xferlab.report import build_outputs
    from xferlab.study.summary import summary_table

    results, report = build_outputs(args.dir)
    print(summary_table(results))
    print(f"report: {report}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from xferlab.engine.bench import bench
    from xferlab.files import write_text

    result = bench(args.backbone, args.image_size, args.batch_size, args.device, weights=args.weights,
                   regime=args.regime, amp=args.amp or "auto", channels_last=args.channels_last or "auto",
                   compile=bool(args.compile), steps=args.steps, warmup=args.warmup, threads=args.num_threads,
                   runtime=args.runtime)
    text = json.dumps(result, indent=2)
    if args.out:
        write_text(args.out, text + "\n")
    print(text)
    return 0


AUDIT_YAML_KEYS = ("data", "audit", *TRACK_OPTIONS)


def _audit_configs(args: argparse.Namespace):
    """DataConfig, AuditConfig and TrackOptions from the YAML file (data: and audit: sections, track: and
    track_uri:) and the command-line options."""
    from xferlab.config import AuditConfig, DataConfig, TrackOptions, build, read_yaml
    from xferlab.errors import did_you_mean

    values = read_yaml(args.config) if args.config else {}
    for key in values:
        if key not in AUDIT_YAML_KEYS:
            raise XferlabError(f"{args.config}: unknown key '{key}'{did_you_mean(str(key), AUDIT_YAML_KEYS)}; an audit "
                               "config has a data: and an audit: section (and optionally track: and track_uri:)")
        if key in ("data", "audit") and values[key] is not None and not isinstance(values[key], dict):
            raise XferlabError(f"{args.config}: the {key}: section must be a mapping of keys to values, "
                               f"got {type(values[key]).__name__}")
    data = _data_values(args, values)
    audit = {**(values.get("audit") or {}), **_given(args, AUDIT_OPTIONS)}
    track = {**{k: values[k] for k in TRACK_OPTIONS if k in values}, **_given(args, TRACK_OPTIONS)}
    where = str(args.config or "options")
    for section, values_, model in (("data", data, DataConfig), ("audit", audit, AuditConfig)):
        for key in values_:
            if key not in model.model_fields:
                hint = did_you_mean(str(key), model.model_fields)
                raise XferlabError(f"{where}: unknown key '{section}.{key}'{hint}; remove it or check its spelling")
    options = {**_given_paths(args, DATA_OPTIONS), **_given_paths(args, AUDIT_OPTIONS + TRACK_OPTIONS)}
    return (build(DataConfig, data, where=where, options=options), build(AuditConfig, audit, where=where,
                                                                          options=options),
            build(TrackOptions, track, where=where, options=options))


def cmd_audit(args: argparse.Namespace) -> int:
    from xferlab.audit import run_audit
    from xferlab.files import staged_dir
    from xferlab.tracking import session as tracking

    data_cfg, audit_cfg, track = _audit_configs(args)
    with tracking.audit_run(track.track, track.track_uri, data_cfg, audit_cfg, args.out) as tracker:
        with staged_dir(args.out, overwrite=args.overwrite) as stage:
            result = run_audit(data_cfg, audit_cfg, stage, embeddings=args.embeddings,
                               progress=not _quiet(args))
        tracking.audited(tracker, args.out)
    verdict = result["verdict"]
    print(f"{verdict['level'].upper()}: {verdict['headline']}")
    for finding in verdict["findings"]:
        print(f"  [{finding['level']}] {finding['text']}")
    print(f"audit folder: {args.out} (audit.json, figures; {result['seconds']['total']:.0f}s)")
    return 0


COMMANDS = {"train": cmd_train, "phantoms": cmd_phantoms, "backbones": cmd_backbones, "demo": cmd_demo,
            "bench": cmd_bench, "audit": cmd_audit, "study": cmd_study, "report": cmd_report,
            **use_commands.COMMANDS, **explain_commands.COMMANDS}


DISTRIBUTED_COMMANDS = ("train", "study")


def _check_launch(command: str) -> None:
    """Only train and study are distributed; another command under a torchrun of several processes would run (and
    write) once per process."""
    if "WORLD_SIZE" not in os.environ or command in DISTRIBUTED_COMMANDS:
        return
    from xferlab.engine.distributed import env_world, launched_by_torchrun

    if launched_by_torchrun() and env_world()[1] > 1:
        raise XferlabError(f"`xferlab {command}` runs as one process; start it without torchrun (only "
                           f"{' and '.join(DISTRIBUTED_COMMANDS)} are distributed)")


def _setup_output(verbose: bool, quiet: bool) -> None:
    """Other libraries' loggers stay at WARNING (Pillow and matplotlib log a flood at DEBUG); -v lowers xferlab's own
    logger only. --quiet silences progress."""
    from xferlab.engine.progress import set_quiet

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    log.setLevel(logging.DEBUG if verbose else logging.NOTSET)
    set_quiet(quiet)


def _with_fix(err: XferlabError, command: str) -> str:
    """The error text, with the fix that works for this command where the library cannot know it."""
    from xferlab.backbones.weights import WeightsUnavailable

    if not isinstance(err, WeightsUnavailable):
        return str(err)
    from xferlab.backbones.registry import get_spec, list_backbones

    offline = ", ".join(n for n in list_backbones() if get_spec(n).weights.available()) or "none"
    if command == "study":
        return (f"{err.reason}; or set train: {{weights: none}} in the study YAML (random weights), or list "
                f"backbones whose weights are available offline: {offline}")
    return f"{err}; backbones whose weights are available offline: {offline}"


def _printable(text: str) -> str:
    """Bytes of a non-UTF-8 file name (held as surrogates) shown as \\xNN: any stderr can print the line."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, `kill`), raised where the program is so it unwinds as Ctrl-C does: staged
    folders removed, finished runs kept, the resume command printed; exit status 143 (128 + SIGTERM)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _stop_status(stop: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(stop, Terminated) else 130


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C for the command's duration (main thread only; the old handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_output(getattr(args, "verbose", False), getattr(args, "quiet", False))
    status = 1  # an unexpected exception propagates with its traceback
    try:
        with _sigterm_as_interrupt():
            _check_launch(args.command)
            status = COMMANDS[args.command](args)
    except XferlabError as err:
        print(f"error: {_printable(_with_fix(err, args.command))}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt as stop:
        print("terminated" if isinstance(stop, Terminated) else "interrupted", file=sys.stderr)
        status = _stop_status(stop)
    finally:
        if "xferlab.engine.distributed" in sys.modules:  # a command that trained under torchrun: leave its group
            sys.modules["xferlab.engine.distributed"].shutdown(barrier=status == 0)
    return status


if __name__ == "__main__":
    sys.exit(main())

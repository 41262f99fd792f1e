"""The CLI explains itself: --version, user-facing help, validated options, errors whose fix works for the command
at hand, bundled studies by name, -v for xferlab's own debug lines only. In-process (cli.main)."""

import logging

import pytest
import yaml

from xferlab.cli import _setup_output, _study_file, main
from xferlab.errors import XferlabError


def _run(capsys, argv):
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own exits (--help, --version, bad option values)
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_version_and_user_facing_help(capsys):
    status, out, _ = _run(capsys, ["--version"])
    assert status == 0 and out.startswith("xferlab ")
    status, out, _ = _run(capsys, ["--help"])
    assert status == 0 and "xferlab demo" in out and "xferlab.config" not in out and "XferlabError" not in out
    status, out, _ = _run(capsys, ["audit", "--help"])
    assert status == 0 and "xferlab.config" not in out and "--quiet" in out
    status, out, _ = _run(capsys, ["phantoms", "--help"])
    assert "(default: 64)" in out and "(default: 1000)" in out and "(default: 0)" in out  # seed 0 shown too


def test_demo_epochs_zero_is_refused(capsys):
    status, _, err = _run(capsys, ["demo", "--epochs", "0", "--out", "unused"])
    assert status == 2 and "argument --epochs: 0 is out of range; accepted: a whole number >= 1" in err


def test_partial_without_k_says_how(capsys, tiny_npy, tmp_path):
    status, _, err = _run(capsys, ["train", "--data", str(tiny_npy), "--regime", "partial", "--out",
                                   str(tmp_path / "run")])
    assert status == 2 and "partial:K, e.g. partial:2" in err and not (tmp_path / "run").exists()


def test_a_folder_layout_without_format_folder_is_told_to_add_it(capsys, tmp_path):
    (tmp_path / "xray" / "train" / "normal").mkdir(parents=True)
    status, _, err = _run(capsys, ["train", "--data", str(tmp_path / "xray"), "--out", str(tmp_path / "run")])
    assert status == 2 and "--format folder" in err


def test_offline_weights_error_names_backbones_that_work(capsys, tiny_npy, tmp_path):
    status, _, err = _run(capsys, ["train", "--data", str(tiny_npy), "--backbone", "resnet18", "--out",
                                   str(tmp_path / "run")])
    assert status == 2 and "--weights none" in err and "available offline: " in err and "efficientnet_lite0" in err


def test_study_offline_error_suggests_what_study_accepts(capsys, tiny_npy, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "data": {"path": str(tiny_npy)}, "backbones": ["resnet18"]}))
    status, _, err = _run(capsys, ["study", str(study), "--out", str(tmp_path / "out")])
    assert status == 2 and "train: {weights: none}" in err and "--weights" not in err
    assert "efficientnet_lite0" in err


def test_bundled_studies_are_found_by_name(tmp_path):
    assert _study_file(tmp_path / "mine.yaml") == tmp_path / "mine.yaml"  # a path stays a path
    reference = _study_file(tmp_path / "reference")
    assert reference.name == "reference.yaml" and "resnet34" in reference.read_text()
    with pytest.raises(XferlabError, match="bundled names: reference, demo"):
        _study_file(tmp_path / "nonesuch")


def test_verbose_shows_only_xferlabs_debug_lines():
    try:
        _setup_output(verbose=True, quiet=False)
        assert logging.getLogger("xferlab.engine").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.DEBUG)
    finally:
        _setup_output(verbose=False, quiet=False)
    assert not logging.getLogger("xferlab.engine").isEnabledFor(logging.DEBUG)


NUMERIC_OPTIONS = [  # (command, options, the value as named, the accepted range)
    ("train", ["--lr", "0"], "--lr 0.0", "a number > 0 (default 0.001)"),
    ("train", ["--weight-decay", "-1"], "--weight-decay -1.0", "a number >= 0 (default 0)"),
    ("train", ["--epochs", "0"], "--epochs 0", "a whole number >= 1 (default 30)"),
    ("train", ["--batch-size", "0"], "--batch-size 0", "a whole number >= 1 (default 32)"),
    ("train", ["--image-size", "5000"], "--image-size 5000", "a whole number from 1 to 4096"),
    ("train", ["--seed", "-1"], "--seed -1", "a whole number from 0 to 4294967295 (default 0)"),
    ("train", ["--memory-budget-mb", "-5"], "--memory-budget-mb -5.0", "a number >= 0"),
    ("train", ["--loader-workers", "-1"], "--loader-workers -1", "a whole number >= 0 (default 2)"),
    ("train", ["--num-threads", "0"], "--num-threads 0", "a whole number from 1 to 1024"),
    ("audit", ["--resplits", "-1"], "--resplits -1", "a whole number >= 0 (default 20)"),
    ("audit", ["--permutations", "0"], "--permutations 0", "a whole number >= 1 (default 1000)"),
    ("audit", ["--alpha", "1"], "--alpha 1.0", "a number > 0 and < 1 (default 0.05)"),
    ("audit", ["--seed", "4294967296"], "--seed 4294967296", "a whole number from 0 to 4294967295"),
    ("study", {"seeds": [0, -1]}, "'seeds.1' = -1", "a whole number from 0 to 4294967295"),
    ("study", {"bootstrap_resamples": 10}, "'bootstrap_resamples' = 10", "a whole number >= 100 (default 2000)"),
    ("study", {"train": {"lr": 0}}, "'train.lr' = 0", "a number > 0 (default 0.001)"),
]


@pytest.mark.parametrize("command, options, value, accepted", NUMERIC_OPTIONS,
                         ids=[f"{c}-{o[0] if isinstance(o, list) else next(iter(o))}"
                              for c, o, _, _ in NUMERIC_OPTIONS])
def test_every_numeric_option_names_the_value_and_the_accepted_range(command, options, value, accepted, tiny_npy,
                                                                      tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    if command == "study":  # a value from the study YAML: named by its key (and line)
        doc = {"data": {"path": str(tiny_npy)}, "backbones": ["resnet18"], "train": {"weights": "none"}}
        (tmp_path / "study.yaml").write_text(yaml.safe_dump({**doc, **options}))
        argv = ["study", str(tmp_path / "study.yaml"), *out]
    else:
        argv = [command, "--data", str(tiny_npy), *options, *out]
    status, _, err = _run(capsys, argv)
    lines = err.splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"{value} is out of range; accepted: {accepted}" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_numeric_option_that_is_not_a_number_names_the_accepted_range(capsys):
    status, _, err = _run(capsys, ["train", "--data", "x", "--out", "y", "--epochs", "2.5"])
    assert status == 2 and "argument --epochs: '2.5' is not a whole number; accepted: a whole number >= 1" in err


def test_a_degenerate_run_says_so_on_the_terminals_last_line(tmp_path, capsys):
    """Ten images per class (two in val): the frozen head's run is flagged as a study would flag it, in metrics.json
    and on the last line `xferlab train` prints."""
    import json

    from tinydata import write_tiny_npy

    data = write_tiny_npy(tmp_path / "tiny", n=10, n_test=4)
    status, out, _ = _run(capsys, ["train", "--data", str(data), "--weights", "none", "--epochs", "1", "--batch-size",
                                   "8", "--device", "cpu", "--num-threads", "1", "--out", str(tmp_path / "run"), "-q"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert status == 0 and metrics["degenerate"] and metrics["flags_bootstrap"]["resamples"] == 2000
    last = out.splitlines()[-1]
    assert last == f"! degenerate run (do not read its accuracy as a result): {metrics['flag_text']}"
    assert out.splitlines()[-2] == f"run folder: {tmp_path / 'run'}"


@pytest.mark.parametrize("argv, message", [
    (["bench", "--backbone", "resnet18", "--image-size", "32", "--num-threads", "-1"],
     "argument --num-threads: -1 is out of range; accepted: a whole number >= 1"),
    (["bench", "--backbone", "resnet18", "--image-size", "32", "--warmup", "-1"],
     "argument --warmup: -1 is out of range; accepted: a whole number >= 0"),
    (["predict", "run", "x.png", "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
    (["explain", "run", "--out", "o", "--max-images", "0"], "argument --max-images: 0 is out of range"),
    (["explain", "run", "--out", "o", "--seed", "4294967296"],
     "argument --seed: 4294967296 is out of range; accepted: a whole number from 0 to 4294967295"),
    (["phantoms", "--out", "o", "--seed", "-1"], "argument --seed: -1 is out of range"),
    (["bench", "--backbone", "resnet18", "--image-size", "32", "--steps", "two"],
     "argument --steps: 'two' is not a whole number; accepted: a whole number >= 1"),
])
def test_options_outside_the_configs_name_the_value_and_the_accepted_range(argv, message, capsys):
    """bench, predict, explain and phantoms options (not config fields) are checked by their argparse type: exit 2
    before anything runs, never a traceback (bench --num-threads -1 was one)."""
    status, _, err = _run(capsys, argv)
    assert status == 2 and f"error: {message}" in err and "Traceback" not in err

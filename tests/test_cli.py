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
    assert status == 2 and "0 is less than 1" in err


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

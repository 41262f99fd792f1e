"""README's example commands run as written: every `xferlab ...` line parses with the real CLI, and the ones that run
offline are run in-process on tiny phantoms (only sizes and epochs are added, so they finish in seconds)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from xferlab import artifacts
from xferlab.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--num-threads", "1", "--device", "cpu"]


def _commands() -> list[str]:
    """The `xferlab ...` lines of README's bash blocks, comments and [optional] parts removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [re.sub(r"\[[^\]]*\]", "", line).strip() for line in lines if line.startswith("xferlab ")]


def test_every_readme_command_parses():
    commands = _commands()
    assert len(commands) >= 10
    parser = build_parser()
    for command in commands:
        words = shlex.split(command)[1:]
        if words[-1] == "...":
            continue
        parser.parse_args(words)  # SystemExit (an unknown option or command) fails the test


def test_readme_commands_run_offline_on_tiny_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(README.parent / "configs")  # README's paths are relative to the checkout
    commands: dict[str, str] = {}
    for c in _commands():  # the first full command of each kind (README's quick start); "..." lines are sketches
        if not c.endswith("..."):
            commands.setdefault(c.split(" --")[0], c)
    run = [commands["xferlab phantoms data/phantoms"] + " --size 32 --n-per-class 10 --n-test-per-class 6",
           commands["xferlab train"] + " " + shlex.join(TINY),
           commands["xferlab train -c configs/run.yaml"] + " " + shlex.join(TINY)]
    for command in run:
        assert main(shlex.split(command)[1:]) == 0, (command, capsys.readouterr().err)
    assert artifacts.is_finished_run(tmp_path / "runs" / "lite0-frozen")
    assert artifacts.is_finished_run(tmp_path / "runs" / "lite0-ft")


def test_the_bundled_study_readme_names_exists():
    assert any(c.startswith("xferlab study reference ") for c in _commands())
    assert all((README.parent / "configs" / f"{name}.yaml").is_file() for name in ("reference", "demo", "run"))

"""The documentation's example commands run as written: every `xferlab ...` line in a bash block of README.md and of
the docs site's pages (docs/**/*.md) parses with the real CLI, README's quick-start commands are run in-process on tiny
phantoms (only sizes and epochs are added, so they finish in seconds), and README's links into the site resolve
(mkdocs build --strict checks the links inside docs/; README sits outside it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from xferlab import artifacts
from xferlab.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
TINY = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--num-threads", "1", "--device", "cpu"]


def _commands(page: Path) -> list[str]:
    """The `xferlab ...` lines of a page's bash blocks, comments and [optional] parts removed."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [re.sub(r"\[[^\]]*\]", "", line).strip() for line in lines if line.startswith("xferlab ")]


def test_readme_shows_the_two_commands_and_the_ten_a_user_starts_with():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert len(text.splitlines()) <= 200
    assert len({c.split()[1] for c in _commands(README)}) >= 10  # ten different commands


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_parses(page, parser):
    for command in _commands(page):
        words = shlex.split(command)[1:]
        if words[-1] == "...":
            continue
        try:
            parser.parse_args(words)
        except SystemExit:  # an unknown option or command, or a bad value
            pytest.fail(f"{page.relative_to(ROOT)}: `{command}` does not parse")


def test_the_docs_show_most_commands():
    """Not a vacuous parse: the pages hold the commands (a broken extraction would find none)."""
    assert sum(len(_commands(p)) for p in DOCS) >= 40


def test_readme_commands_run_offline_on_tiny_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # README's paths are relative to the checkout
    commands: dict[str, str] = {}
    for c in _commands(README):  # the first full command of each kind (README's quick start); "..." lines are sketches
        if not c.endswith("..."):
            commands.setdefault(c.split(" --")[0], c)
    run = [commands["xferlab phantoms data/phantoms"] + " --size 32 --n-per-class 10 --n-test-per-class 6",
           commands["xferlab train"] + " " + shlex.join(TINY),
           commands["xferlab train -c configs/run.yaml"] + " " + shlex.join(TINY)]
    for command in run:
        assert main(shlex.split(command)[1:]) == 0, (command, capsys.readouterr().err)
    assert artifacts.is_finished_run(tmp_path / "runs" / "lite0-frozen")
    assert artifacts.is_finished_run(tmp_path / "runs" / "lite0-ft")


def test_the_bundled_study_the_readme_names_exists():
    assert any(c.startswith("xferlab study reference ") for c in _commands(README))
    assert all((ROOT / "configs" / f"{name}.yaml").is_file() for name in ("reference", "demo", "run"))


def test_readme_links_and_picture_resolve():
    """Every relative link and image of README points at a file, and a #fragment at one of its headings (slugged as
    mkdocs' toc extension does, which is also GitHub's rule for these ASCII headings)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert len(local) >= 20
    for target in local:
        path, _, fragment = target.partition("#")
        file = ROOT / path
        assert file.exists(), target
        if fragment:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            assert fragment in {slugify(h, "-") for h in headings}, target
    picture = ROOT / "docs" / "images" / "report.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size < 400_000

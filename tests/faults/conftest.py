"""Fixtures of the fault suites: run the CLI in-process and check the one-line error contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import tree


@pytest.fixture
def fails(capsys):
    """fails(argv, watched, *named): run `xferlab argv` in-process and assert the contract: exit 2, exactly one
    `error:` line on stderr, its last line, naming every string of `named` (lines before it can only be the per-epoch
    progress lines a command prints when stderr is not a terminal), and nothing added or removed under `watched`."""
    from xferlab.cli import main

    def check(argv: list[str], watched: Path, *named: str) -> str:
        before = tree(watched)
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.splitlines()
        assert err.endswith("\n") and lines and lines[-1].startswith("error: "), err
        assert not any(line.startswith(("error", "Traceback")) for line in lines[:-1]), err
        err = lines[-1] + "\n"
        for text in named:
            assert text in err, (text, err)
        assert tree(watched) == before, tree(watched) ^ before
        return err

    return check

"""Fixtures of the fault suites: run the CLI in-process and check the one-line error contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import tree


@pytest.fixture
def fails(capsys):
    """fails(argv, watched, *named): run `xferlab argv` in-process and assert the contract: exit 2, exactly one
    `error:` line on stderr naming every string of `named`, and nothing added or removed under `watched`."""
    from xferlab.cli import main

    def check(argv: list[str], watched: Path, *named: str) -> str:
        before = tree(watched)
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        for text in named:
            assert text in err, (text, err)
        assert tree(watched) == before, tree(watched) ^ before
        return err

    return check

"""extras.py: one message for a missing optional package, from every way of asking."""

from __future__ import annotations

import sys

import pytest

from xferlab import extras
from xferlab.errors import XferlabError

ABSENT = "xferlab_no_such_package"


def test_a_missing_package_is_one_message_with_the_install_line(monkeypatch):
    expected = f"reading X needs the optional package {ABSENT}: pip install 'xferlab[x]'"
    with pytest.raises(XferlabError) as raised:
        extras.require(ABSENT, "x", "reading X")
    assert str(raised.value) == expected
    with pytest.raises(XferlabError) as raised:
        extras.check_installed(ABSENT, "x", "reading X")
    assert str(raised.value) == expected
    assert extras.missing(ABSENT, "x") == expected.removeprefix("reading X ")
    monkeypatch.setitem(sys.modules, "json", None)  # present but unimportable: the same message
    with pytest.raises(XferlabError, match=r"^j needs the optional package json: pip install 'xferlab\[j\]'$"):
        extras.require("json", "j", "j")


def test_an_installed_package_is_imported_and_not_missing():
    assert extras.require("numpy", "x", "y") is sys.modules["numpy"]
    assert extras.missing("numpy", "x") is None and extras.installed("numpy")
    extras.check_installed("numpy", "x", "y")


def test_the_sites_use_it(monkeypatch):
    from xferlab.data.hospital import _pydicom

    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(XferlabError, match=r"^reading DICOM files needs the optional package pydicom: "
                                           r"pip install 'xferlab\[dicom\]'$"):
        _pydicom()

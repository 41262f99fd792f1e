"""Optional packages (pyproject's extras: dicom, onnx, timm, xrv, mlflow, tensorboard, explain, labels, ...): the one
way xferlab asks whether one is installed, imports it, and says how to install it when it is missing.

Every message has the same form: "WHAT needs the optional package MODULE: pip install 'xferlab[EXTRA]'".
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from xferlab.errors import XferlabError


def install_line(extra: str) -> str:
    """The command that installs an extra: pip install 'xferlab[EXTRA]'."""
    return f"pip install 'xferlab[{extra}]'"


def needs(module: str, extra: str) -> str:
    """The reason text: needs the optional package MODULE: pip install 'xferlab[EXTRA]'."""
    return f"needs the optional package {module}: {install_line(extra)}"


def installed(module: str) -> bool:
    """Whether `module` can be imported here, found without importing it (some, mlflow, take seconds)."""
    return importlib.util.find_spec(module) is not None


def missing(module: str, extra: str) -> str | None:
    """Why something needing `module` cannot run here (`needs(...)`), or None when it is installed."""
    return None if installed(module) else needs(module, extra)


def check_installed(module: str, extra: str, what: str) -> None:
    """Raise XferlabError "WHAT needs the optional package ..." unless `module` is installed (nothing is imported)."""
    if not installed(module):
        raise XferlabError(f"{what} {needs(module, extra)}")


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise XferlabError "WHAT needs the optional package ...". When the package is there but
    one of its own dependencies is not, the import error is added in brackets (the install line still fixes it)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        inner = "" if err.name in (None, module, module.split(".")[0]) else f" ({err})"
        raise XferlabError(f"{what} {needs(module, extra)}{inner}") from None

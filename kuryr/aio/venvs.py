"""Virtualenvs of the OpenStack services the all-in-one stack runs from PyPI."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from kuryr.aio import procs

MARKER = ".kuryr-aio-installed"


def install(venv: Path, packages: Sequence[str], *, log: Path, version: str) -> None:
    """Make ``venv`` with ``packages`` unless an earlier install completed.

    The marker is written last, so an install cut short (timeout, Ctrl-C) is
    redone from scratch instead of leaving a half-populated venv that "exists".
    """
    marker = venv / MARKER
    if marker.exists():
        return
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    procs.run([sys.executable, "-m", "venv", str(venv)], log=log)
    procs.run([str(venv / "bin" / "pip"), "install", "-q", *packages], log=log, timeout=1800)
    marker.write_text(f"{version}\n")

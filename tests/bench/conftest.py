"""Running a benchmark command the way the README does: from the repository, as a module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RunBench = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_bench() -> RunBench:
    """``python -m <module> <args>`` from the repository root; fails the test on a non-zero exit
    with the command's last output."""

    def go(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc

    return go

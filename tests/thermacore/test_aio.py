"""Sources stop tasks in ways that survive a lost cancellation."""

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_sources_avoid_wait_for():
    # pyproject.toml bans asyncio.wait_for (ruff TID251), which loses cancellations on Python 3.11.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "TID251", "--output-format", "concise",
         "apps", "thermacore", "bench", "scripts", "manage.py"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr

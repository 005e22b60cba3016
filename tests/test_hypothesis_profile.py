"""The hypothesis profile follows ``CI``: derandomised in CI, random on a developer's machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import tests.conftest\n"
    "from hypothesis import settings\n"
    "s = settings(max_examples=5)\n"  # as a test's @settings(...) builds it, after conftest
    "print(s.derandomize, s.database is None)\n"
)


def _profile(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.split()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CI": "true"}, ["True", "True"]),
        ({}, ["False", "False"]),
        ({"CI": "true", "HYPOTHESIS_PROFILE": "dev"}, ["False", "False"]),
    ],
)
def test_profile_follows_the_environment(env, expected):
    assert _profile(**env) == expected

"""Shared test fixtures: the NWM reference checkpoint and its recorded inputs and outputs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from safetensors.torch import load_file

# Hypothesis: derandomised in CI (CI=true, as CI services set it), so CI never fails by chance;
# random examples, remembered in the local example database, on a developer's machine.
# HYPOTHESIS_PROFILE=ci|dev overrides. Both start from hypothesis' defaults (recent releases
# load a built-in "ci" profile by themselves under CI, which "dev" must not inherit). Loaded
# before any test module builds its settings.
_defaults = settings.get_profile("default")
settings.register_profile(
    "ci", parent=_defaults, derandomize=True, database=None, deadline=None, print_blob=True
)
settings.register_profile("dev", parent=_defaults)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() in ("true", "1") else "dev")
)

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "nwm_cdit_tiny.pth.tar"


@pytest.fixture(scope="session")
def nwm_config() -> dict[str, Any]:
    """Constructor arguments of the NWM reference CDiT."""
    return json.loads((DATA / "nwm_cdit_tiny.json").read_text())


@pytest.fixture(scope="session")
def nwm_checkpoint() -> dict[str, Any]:
    """The checkpoint as NWM's ``train.py`` saves it (``model``, ``ema``, ``opt``, ``args``...)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(CHECKPOINT, weights_only=True)


@pytest.fixture(scope="session")
def nwm_io() -> dict[str, torch.Tensor]:
    """Inputs ``x, t, y, x_cond, rel_t`` and reference outputs ``out_ema``, ``out_model``."""
    return load_file(DATA / "nwm_cdit_tiny_io.safetensors")


@pytest.fixture
def nwm_inputs(nwm_io: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(nwm_io[k].clone() for k in ("x", "t", "y", "x_cond", "rel_t"))

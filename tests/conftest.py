"""Shared pytest fixtures: the real-data folder (skipped when absent), a seeded RNG, one PyTorch thread."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real EM data folder: $REFSCOPE_SHARED_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("REFSCOPE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; the test is skipped when the folder is absent."""
    path = shared_data_dir()
    if not (path / "sem_pairs" / "pairs.json").is_file():
        pytest.skip(f"real EM data not found at {path}")
    return path


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one PyTorch thread (tiny training runs are faster and repeatable), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared fixtures. Tests read data from ../shared/data (or $RCEDETECT_DATA_DIR) and never download."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if "RCEDETECT_DATA_DIR" not in os.environ and SHARED_DATA.exists():
    os.environ["RCEDETECT_DATA_DIR"] = str(SHARED_DATA)

TINY_STEPS = 300


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["RCEDETECT_DATA_DIR"])
    assert (path / "mnist").exists(), f"test data not found at {path}: set RCEDETECT_DATA_DIR"
    return path


@pytest.fixture(scope="session")
def mnist_test(data_dir):
    from rcedetect.data import load_dataset

    return load_dataset("mnist", "test", data_dir)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_dir) -> dict:
    """Depth-8 MNIST ResNets trained with CE and RCE for a few hundred steps (seconds each)."""
    from rcedetect.config import preset_config
    from rcedetect.training import train

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        objective: train(preset_config("mnist", objective, "quick", depth=8, steps=TINY_STEPS, seed=0, precision="float32"),
                         root / objective, progress=False, data_dir=data_dir)
        for objective in ("ce", "rce")
    }


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints) -> dict:
    """{"ce": model, "rce": model} in eval mode on CPU."""
    from rcedetect.checkpoints import load_checkpoint

    torch.set_grad_enabled(True)
    return {objective: load_checkpoint(path).model for objective, path in tiny_checkpoints.items()}

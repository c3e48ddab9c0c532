"""Checkpoints: safetensors weights + a JSON sidecar with the full config, written atomically.

A trained model is a folder:
    model.safetensors   weights and BN statistics; its metadata repeats the config
    model.json          config, package version, measured test accuracy
    train_loss.safetensors  the training loss of every step ("loss", float64; under DDP the mean over
                        the ranks of each rank's loss on its share of the batch)
During training the folder also holds `train_state.safetensors` (weights, optimiser momentum, the
loss so far and the step, in one file so that a `kill -9` at any moment leaves either the old or the
new state, never a mix). Nothing is ever unpickled: safetensors and JSON only.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .config import TrainConfig
from .data import DATASETS
from .errors import CheckpointError, RceDetectError
# Re-exported for callers that still import the writers from here; their home is `rcedetect.files`.
from .files import atomic_save_tensors, atomic_write_bytes, atomic_write_json, read_tensors  # noqa: F401
from .models import resnet

FORMAT = "rcedetect-checkpoint-v1"
WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_LOSS_FILE = "train_loss.safetensors"


def build_model(config: TrainConfig) -> torch.nn.Module:
    info = DATASETS[config.dataset]
    return resnet(depth=config.depth, in_channels=info.in_channels, num_classes=info.num_classes)


def save_checkpoint(directory, model: torch.nn.Module, config: TrainConfig, metrics=None) -> Path:
    """Save the final model of a run: sidecar first, then weights (both atomic); returns the folder."""
    directory = Path(directory)
    sidecar = {
        "format": FORMAT,
        "rcedetect_version": __version__,
        "config": config.to_dict(),
        "metrics": dict(metrics or {}),
    }
    atomic_write_json(directory / SIDECAR_FILE, sidecar)
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict(), sort_keys=True)}
    atomic_save_tensors(directory / WEIGHTS_FILE, model.state_dict(), metadata)
    return directory


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    config: TrainConfig
    meta: dict
    directory: Path


def _resolve_directory(path) -> Path:
    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".safetensors", ".json"):
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the --out folder of 'rcedetect train'")
    if not (path / WEIGHTS_FILE).exists() or not (path / SIDECAR_FILE).exists():
        raise CheckpointError(
            f"{path} is not a checkpoint folder (needs {WEIGHTS_FILE} and {SIDECAR_FILE}): "
            f"pass the --out folder of 'rcedetect train'"
        )
    return path


def read_sidecar(path):
    """(folder, sidecar dict, TrainConfig) of a checkpoint, from its JSON sidecar alone (the weights are
    not read): what the command line checks options against before loading anything."""
    directory = _resolve_directory(path)
    try:
        sidecar = json.loads((directory / SIDECAR_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / SIDECAR_FILE} is not valid JSON ({exc}): re-run training to recreate it") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        sidecar = sidecar if isinstance(sidecar, dict) else {}
        raise CheckpointError(f"{directory / SIDECAR_FILE} has format {sidecar.get('format')!r}, expected {FORMAT!r}: "
                              f"re-train with this version of rcedetect")
    try:
        config = TrainConfig.from_dict(sidecar["config"])
    except (KeyError, TypeError, RceDetectError) as exc:
        raise CheckpointError(f"{directory / SIDECAR_FILE} has an invalid config ({exc}): re-train the model") from exc
    return directory, sidecar, config


def checkpoint_config(path) -> TrainConfig:
    """The `TrainConfig` of the checkpoint at `path` (sidecar only; see `read_sidecar`)."""
    return read_sidecar(path)[2]


def load_checkpoint(path, device="cpu") -> LoadedCheckpoint:
    """Load a trained model, validating the sidecar against the weights; the model is in eval mode."""
    directory, sidecar, config = read_sidecar(path)
    state, metadata = read_tensors(directory / WEIGHTS_FILE)
    if metadata.get("config") and json.loads(metadata["config"]) != config.to_json_dict():
        raise CheckpointError(f"{directory}: {SIDECAR_FILE} does not match the config stored in {WEIGHTS_FILE}: "
                              f"the two files come from different runs; re-train or restore the matching pair")
    model = build_model(config)
    check_state_matches(model, state, directory / WEIGHTS_FILE, config)
    model.load_state_dict(state)
    model.to(device).eval()
    return LoadedCheckpoint(model=model, config=config, meta=sidecar, directory=directory)


def check_state_matches(model: torch.nn.Module, state: dict, path: Path, config: TrainConfig) -> None:
    """A clear error when the weights do not fit the architecture the sidecar describes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected == found:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
              else f"shape of {wrong[0]} is {found[wrong[0]]}, expected {expected[wrong[0]]}")
    raise CheckpointError(
        f"{path} does not fit a ResNet-{config.depth} for {config.dataset} ({detail}): "
        f"the weights and {SIDECAR_FILE} are from different models; re-train or restore the matching files"
    )

"""Checkpoints: round trip, clear errors on mismatch, atomic writes, and kill -9 resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rcedetect.checkpoints import load_checkpoint, save_checkpoint
from rcedetect.cli import main
from rcedetect.config import preset_config
from rcedetect.errors import CheckpointError
from rcedetect.models import resnet


def test_round_trip_and_sidecar(tmp_path):
    config = preset_config("mnist", "rce", "quick", depth=8, steps=10)
    torch.manual_seed(0)
    model = resnet(8, 1).eval()
    save_checkpoint(tmp_path, model, config, {"test_accuracy": 0.5})
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.config == config and loaded.meta["metrics"]["test_accuracy"] == 0.5
    assert not loaded.model.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), loaded.model(x))
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["config"]["objective"] == "rce" and "rcedetect_version" in sidecar
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_mismatched_checkpoint_is_a_one_line_error(tmp_path, capsys):
    config = preset_config("mnist", "ce", "quick", depth=8, steps=10)
    save_checkpoint(tmp_path / "a", resnet(8, 1), config)
    # weights of a deeper network next to the sidecar of a depth-8 one
    other = preset_config("mnist", "ce", "quick", depth=14, steps=10)
    save_checkpoint(tmp_path / "b", resnet(14, 1), other)
    (tmp_path / "b" / "model.json").write_text((tmp_path / "a" / "model.json").read_text())
    with pytest.raises(CheckpointError, match="different runs|does not fit"):
        load_checkpoint(tmp_path / "b")
    code = main(["eval", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    config = preset_config("mnist", "ce", "quick", depth=8, steps=10)
    save_checkpoint(tmp_path, resnet(8, 1), config)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["fc.weight"] = torch.zeros(7, 64)
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "model.safetensors"))  # no metadata: only the shapes are checked
    with pytest.raises(CheckpointError, match="fc.weight"):
        load_checkpoint(tmp_path)


def test_garbage_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path)
    config = preset_config("mnist", "ce", "quick", depth=8, steps=10)
    save_checkpoint(tmp_path, resnet(8, 1), config)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file, maybe a pickle")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path)


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "rcedetect", "train", "--dataset", "mnist", "--objective", "rce",
            "--depth", "8", "--steps", "40", "--checkpoint-every", "4", "--seed", "3", "--no-progress",
            "--device", "cpu", "--out", str(out), *extra]


def test_kill_9_and_resume_gives_identical_weights(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    subprocess.run(_train_cmd(tmp_path / "full"), check=True, env=env, capture_output=True)

    victim = subprocess.Popen(_train_cmd(tmp_path / "killed"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "train_state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run on past the first save, possibly into the middle of the next
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert state.exists() and not (tmp_path / "killed" / "model.safetensors").exists(), \
        "the run finished before it could be killed: make it longer"

    # without --resume the unfinished run is protected, not overwritten
    refused = subprocess.run(_train_cmd(tmp_path / "killed"), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    subprocess.run(_train_cmd(tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
